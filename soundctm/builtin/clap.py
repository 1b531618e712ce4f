"""``clap``: LAION-CLAP's text branch, the text encoder of the official SoundCTM-DiT.

The official SoundCTM-DiT (see docs/official-models.md) conditions its network on ONE context
token: the CLAP text embedding of the prompt, taken from ``630k-audioset-best.pt``
(LAION-CLAP, HTSAT-tiny audio branch, RoBERTa-base text branch):

- ``v1`` (the ICLR'25 setup): RoBERTa ``pooler_output`` (768) -> ``text_projection``
  Linear(768, 512), ReLU, Linear(512, 512) -> L2-normalised, 512-d;
- ``v2``: the RoBERTa ``pooler_output`` (768) without the projection, L2-normalised too.

Settled in the official code (GitHub koichi-saito-sony/soundctm_dit_iclr):
``sa_edm/models_edm.py`` calls ``get_text_embedding(text)`` once per prompt and stacks the
results as ``[B, 1, D]`` context tokens with an all-True ``[B, 1]`` mask (the unconditional
prompt is ``""``); ``sa_edm/clap_modified/modified_hook.py`` tokenises with
``RobertaTokenizer('roberta-base')``, ``padding="max_length"``, ``truncation=True``,
``max_length=77``; ``sa_edm/clap_modified/clap_module_modified/model.py``
(``CLAP_modified.encode_text``) takes the RoBERTa ``pooler_output`` (with the attention mask)
and applies ``text_projection`` only when ``projection`` is on (off for v2, see
``sa_edm/util.py`` and ``models_edm.py``), then ``get_text_embedding`` L2-normalises
(``F.normalize(dim=-1)``) in BOTH cases: v2 is normalised as well. The projection width is
``joint_embed_shape`` = 512 (the HTSAT-tiny config's ``embed_dim`` 768 is the audio branch's
output width, the input of ``audio_projection``).

The module is transformers' ``ClapTextModelWithProjection`` for v1 (state-dict names
``model.text_model.*`` and ``model.text_projection.linear1/linear2.*``, ``projection_hidden_act``
``relu``) and ``RobertaModel`` for v2 (``model.*``), built from ``config`` without any download;
the weights live in soundctm checkpoints (``checkpoint_weights = True``).
:func:`from_official_clap` converts the official file. The position-id and token-type-id
buffers are constants rebuilt by the module, so they are kept out of the state dict
(the key set is the same whatever transformers version saved it).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundctm.builtin.text import (
    DEFAULT_CACHE_SIZE,
    CachedTextEncoder,
    TextEncoderUnavailableError,
    _check_max_length,
    export_preflight,
)
from soundctm.engine.components import (
    TEXT_GRAPH_INPUTS,
    TEXT_GRAPH_OUTPUTS,
    CheckpointWeights,
    OnnxExportable,
    OnnxGraph,
    TokenizerSpec,
)
from soundctm.engine.hf import hf_source, quiet_transformers
from soundctm.errors import CheckpointError, InvalidArgumentError, first_line

VARIANTS = ("v1", "v2")
#: The official tokenisation: every prompt padded (and truncated) to 77 tokens.
MAX_LENGTH = 77
TOKENIZER = "roberta-base"

#: The RoBERTa-base text branch of LAION-CLAP (``RobertaModel.from_pretrained('roberta-base')``
#: in the official code): what the shapes of the weights cannot tell comes from here.
ROBERTA_BASE: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
#: The v1 projection MLP (``ClapTextConfig`` names): Linear(768, 512), ReLU, Linear(512, 512).
PROJECTION: dict[str, Any] = {"projection_dim": 512, "projection_hidden_act": "relu"}

#: Constant buffers of the embeddings, rebuilt by the module and never stored.
_BUFFERS = ("position_ids", "token_type_ids")
TEXT_PREFIX = "text_branch."
PROJECTION_PREFIX = "text_projection."


def official_config(variant: str) -> dict[str, Any]:
    """The text-model configuration of ``variant`` as a dict (RoBERTa-base; v1 adds the
    projection)."""
    _check_variant(variant)
    return {**ROBERTA_BASE, **(PROJECTION if variant == "v1" else {})}


def _check_variant(variant: object) -> str:
    if variant not in VARIANTS:
        raise InvalidArgumentError(
            f"the clap text encoder's variant must be v1 (projected, 512-d) or v2 (pooler "
            f"output, 768-d), got {variant!r}"
        )
    return str(variant)


def build_text_model(variant: str, config: Mapping[str, Any]) -> nn.Module:
    """The transformers module of ``variant`` built from ``config`` (random weights, nothing
    downloaded): ``ClapTextModelWithProjection`` (v1) or ``RobertaModel`` with its pooler (v2).
    The embeddings' constant buffers are made non-persistent."""
    _check_variant(variant)
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(
            f"the clap text encoder's config must be a dict, got {type(config).__name__}"
        )
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        RobertaConfig,
        RobertaModel,
    )

    try:
        with quiet_transformers():
            if variant == "v1":
                model: nn.Module = ClapTextModelWithProjection(ClapTextConfig(**config))
            else:
                model = RobertaModel(RobertaConfig(**config), add_pooling_layer=True)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"the clap text encoder's config is not valid ({first_line(exc)})"
        ) from exc
    embeddings = model.text_model.embeddings if variant == "v1" else model.embeddings
    for name in _BUFFERS:
        buffer = embeddings._buffers.get(name)
        if buffer is not None:
            embeddings.register_buffer(name, buffer, persistent=False)
    return model


def clap_embedding(model: nn.Module, variant: str, input_ids: Tensor, mask: Tensor) -> Tensor:
    """The L2-normalised CLAP text embedding ``[B, dim]`` float32 of padded ``input_ids``."""
    out = model(input_ids=input_ids, attention_mask=mask)
    emb = out.text_embeds if variant == "v1" else out.pooler_output
    return F.normalize(emb.float(), dim=-1)


class ClapTextGraph(nn.Module):
    """``input_ids [B, L], attention_mask [B, L] -> tokens [B, 1, dim]`` (L <= ``max_length``):
    pads to ``max_length`` inside the graph, as :class:`ClapTextEncoder` does on the host, so
    the exported graph computes exactly what the torch encoder does."""

    def __init__(self, model: nn.Module, variant: str, max_length: int, pad_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.variant = variant
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        extra = self.max_length - input_ids.shape[1]
        ids = F.pad(input_ids, (0, extra), value=self.pad_token_id)
        mask = F.pad(attention_mask, (0, extra), value=0)
        return clap_embedding(self.model, self.variant, ids, mask).unsqueeze(1)


class ClapTextEncoder(CachedTextEncoder, CheckpointWeights, OnnxExportable):
    """LAION-CLAP's text embedding as ONE context token per prompt, as the official SoundCTM-DiT
    conditions on it (see docs/official-models.md).

    ``variant``: ``v1`` (pooler output -> projection MLP -> L2 norm, ``dim`` = the projection
    width, 512 officially) or ``v2`` (pooler output -> L2 norm, ``dim`` = the hidden size, 768).
    ``config``: the text-model configuration as a dict (``ClapTextConfig`` fields for v1,
    ``RobertaConfig`` for v2); ``None`` takes :func:`official_config`. The module is built from
    it with random weights: the real ones come from the checkpoint (:func:`from_official_clap`
    converts the official file). ``tokenizer``: a RoBERTa tokenizer folder or hub id (the Hugging
    Face cache is used; a download happens only where transformers allows one). ``max_length``:
    77 as the official.

    Each prompt is tokenised alone (special tokens on, truncated, right-padded to
    ``max_length``); ``""`` is ``<s></s>`` plus padding and its embedding is the unconditional
    token. Output: ``Conditioning(tokens [B, 1, dim], mask [B, 1] all True)``. ``exact=True``
    encodes each prompt in its own batch of one (as the official does); ``exact=False`` batches
    a call's cache misses (faster, equal only to about 1e-6).

    Exportable: the graph maps unpadded token ids to the token and pads them itself
    (:class:`ClapTextGraph`).
    """

    checkpoint_weights = True

    def __init__(
        self,
        variant: str = "v1",
        config: dict[str, Any] | None = None,
        tokenizer: str = TOKENIZER,
        max_length: int = MAX_LENGTH,
        device: str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
        exact: bool = True,
    ) -> None:
        super().__init__(cache_size)
        self.variant = _check_variant(variant)
        self.max_length = _check_max_length(max_length)
        self.exact = bool(exact)
        config = official_config(variant) if config is None else dict(config)
        self.model = build_text_model(variant, config)
        cfg = self.model.config
        positions = int(cfg.max_position_embeddings) - int(cfg.pad_token_id) - 1
        if max_length > positions:
            raise InvalidArgumentError(
                f"max_length {max_length} exceeds the {positions} positions of the clap text "
                "model; use at most that (77 is the official value)"
            )
        self.dim = int(cfg.projection_dim if variant == "v1" else cfg.hidden_size)
        source = hf_source(tokenizer)
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise TextEncoderUnavailableError(
                f"RoBERTa tokenizer {tokenizer!r} of the clap text encoder is not available "
                f"({first_line(exc)}); download it once with `hf download {tokenizer}` or pass "
                "a local folder"
            ) from exc
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(cfg.pad_token_id if pad is None else pad)
        self.freeze()
        self.to(device)

    @staticmethod
    def expand_params(params: dict[str, Any]) -> dict[str, Any]:
        """Card parameters with the full ``config``: the official values of the variant,
        overridden by the keys given (so a card never depends on these defaults)."""
        params = dict(params)
        variant = _check_variant(params.get("variant", "v1"))
        given = params.get("config") or {}
        if not isinstance(given, Mapping):
            raise InvalidArgumentError(
                f"the clap text encoder's config must be a dict, got {type(given).__name__}"
            )
        params["variant"] = variant
        params["config"] = {**official_config(variant), **dict(given)}
        return params

    @staticmethod
    def parameter_count(params: dict[str, Any]) -> int:
        """The number of values in the state dict of ``ClapTextEncoder(**params)``, counted on
        a build of the text model on the meta device (no tokenizer, nothing allocated).
        ``TypeError`` for a parameter the constructor does not take."""
        known = set(inspect.signature(ClapTextEncoder.__init__).parameters) - {"self"}
        unknown = set(params) - known
        if unknown:
            raise TypeError(f"ClapTextEncoder got unexpected parameters {sorted(unknown)}")
        full = ClapTextEncoder.expand_params(params)
        with torch.device("meta"):
            model = build_text_model(full["variant"], full["config"])
        return sum(int(t.numel()) for t in model.state_dict().values())

    def token_ids(self, prompt: str) -> list[int]:
        """The token ids of ``prompt``, special tokens on, truncated to ``max_length``,
        unpadded (a prompt that gives none gets one EOS/pad token)."""
        ids = list(self.tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"])
        if not ids:
            tok = self.tokenizer
            ids = [tok.eos_token_id if tok.eos_token_id is not None else self.pad_token_id]
        return ids

    def encode_prompts(self, prompts: list[str]) -> list[Tensor]:
        """The embedding ``[1, dim]`` of each prompt, padded to ``max_length``; each prompt in a
        batch of its own if ``exact``, else all in one batch."""
        ids = [self.token_ids(p) for p in prompts]
        groups = [[i] for i in ids] if self.exact else [ids]
        out: list[Tensor] = []
        for group in groups:
            emb = self._embed(group)
            out.extend(emb[row : row + 1] for row in range(len(group)))
        return out

    def _embed(self, ids: list[list[int]]) -> Tensor:
        """Embeddings ``[N, dim]`` of ``ids`` right-padded to ``max_length``."""
        n = self.max_length
        batch = torch.tensor([i + [self.pad_token_id] * (n - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        return clap_embedding(self.model, self.variant, batch.to(self.device), mask.to(self.device))

    def onnx_export(self) -> OnnxGraph:
        """The token-id graph (:class:`ClapTextGraph`), checked on the ids of
        :data:`EXPORT_EXAMPLE_PROMPT`, and the tokenisation the runtime repeats (unpadded ids;
        the graph pads). Refused for a subclass that changes the tokenisation or the forward
        pass, and for a tokenizer that cannot be saved."""
        tok, ids = export_preflight(self, ClapTextEncoder, ("encode_prompts", "_embed"))
        fallback = tok.eos_token_id if tok.eos_token_id is not None else self.pad_token_id
        return OnnxGraph(
            module=ClapTextGraph(self.model, self.variant, self.max_length, self.pad_token_id),
            example=(ids, torch.ones_like(ids)),
            input_names=TEXT_GRAPH_INPUTS,
            output_names=TEXT_GRAPH_OUTPUTS,
            dynamic={name: {0: "batch", 1: "length"} for name in TEXT_GRAPH_INPUTS},
            tokenizer=TokenizerSpec(
                save=lambda folder: tok.save_pretrained(str(folder)),
                max_length=int(self.max_length),
                pad_token_id=self.pad_token_id,
                fallback_token_id=int(fallback),
                exact=self.exact,
            ),
        )


# ---------------------------------------------------------------------- the official file
def from_official_clap(
    path: str | Path,
    variant: str = "v1",
    *,
    trust_pickle: bool = False,
    num_attention_heads: int = 12,
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """Convert LAION-CLAP's ``630k-audioset-best.pt`` to ``(params, state_dict, info)`` for
    :class:`ClapTextEncoder` (the official file layout: docs/official-models.md).

    The file (``{epoch, name, state_dict}``, every key prefixed ``module.``; a bare state dict
    is accepted too) is read with ``torch.load(weights_only=True)`` unless ``trust_pickle``.
    Only the text path is kept: ``text_branch.*`` (with or without
    ``text_branch.embeddings.position_ids``) and, for v1, ``text_projection.{0,2}``; the audio
    branch and everything else is skipped. ``params`` = ``{"variant", "config", "max_length"}``
    (add ``tokenizer``: a RoBERTa tokenizer folder or ``roberta-base``); sizes come from the
    weights (hidden size, layers, feed-forward width, vocabulary, positions, token types,
    projection width); the head count cannot be read from shapes and is
    ``num_attention_heads`` (12, RoBERTa-base). ``state_dict`` loads with ``strict=True``.
    Anything missing or inconsistent raises a one-line :class:`CheckpointError` naming the
    file.
    """
    from soundctm.builtin.official.soundctm_unet import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"CLAP checkpoint {path} does not exist; download utils_checkpoints/clap/"
            "630k-audioset-best.pt from the Hugging Face repo koichisaito/soundctm_dit"
        )
    ckpt = load_torch_file(path, trust_pickle=trust_pickle)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no state_dict dict; it is not a LAION-CLAP checkpoint")
    state = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in ((str(k), v) for k, v in state.items())
    }
    params, out, info = clap_text_state(
        state, variant, source=str(path), num_attention_heads=num_attention_heads
    )
    for key in ("epoch", "name"):
        value = ckpt.get(key) if "state_dict" in ckpt else None
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            info[key] = value
    return params, out, info


def clap_text_state(
    state: Mapping[str, Any],
    variant: str = "v1",
    *,
    source: str = "the CLAP state dict",
    num_attention_heads: int = 12,
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """:func:`from_official_clap` on a LAION-CLAP state dict already in memory, its keys
    without ``module.`` (for example the ``text_encoder.model.`` part of an official
    SoundCTM-DiT file); ``source`` names it in errors."""
    variant = _check_variant(variant)
    if (
        isinstance(num_attention_heads, bool)
        or not isinstance(num_attention_heads, int)
        or num_attention_heads < 1
    ):
        raise InvalidArgumentError(
            f"num_attention_heads must be a whole number >= 1, got {num_attention_heads!r}"
        )
    text = {
        k[len(TEXT_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(TEXT_PREFIX) and isinstance(v, Tensor)
    }
    if not text:
        raise CheckpointError(
            f"{source} has no CLAP text branch ({TEXT_PREFIX}* weights); it is not a LAION-CLAP "
            "checkpoint such as 630k-audioset-best.pt"
        )
    had_position_ids = f"embeddings.{_BUFFERS[0]}" in text
    for name in _BUFFERS:
        text.pop(f"embeddings.{name}", None)

    def need(key: str, ndim: int) -> Tensor:
        value = text.get(key)
        if value is None:
            raise CheckpointError(
                f"{source} has no {TEXT_PREFIX}{key}; its CLAP text branch is incomplete"
            )
        if value.ndim != ndim:
            raise CheckpointError(
                f"{source}: {TEXT_PREFIX}{key} has shape {tuple(value.shape)}, not {ndim}-D"
            )
        return value

    vocab, hidden = need("embeddings.word_embeddings.weight", 2).shape
    layers = sorted(
        {int(m.group(1)) for k in text if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    )
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(
            f"{source} has no consecutive {TEXT_PREFIX}encoder.layer.<i> weights (found layers "
            f"{layers[:8]}); its CLAP text branch is incomplete"
        )
    if hidden % num_attention_heads:
        raise InvalidArgumentError(
            f"num_attention_heads {num_attention_heads} does not divide the hidden size "
            f"{hidden} of {source}"
        )
    need("pooler.dense.weight", 2)
    config: dict[str, Any] = {
        **ROBERTA_BASE,
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "num_hidden_layers": len(layers),
        "num_attention_heads": num_attention_heads,
        "intermediate_size": int(need("encoder.layer.0.intermediate.dense.weight", 2).shape[0]),
        "max_position_embeddings": int(need("embeddings.position_embeddings.weight", 2).shape[0]),
        "type_vocab_size": int(need("embeddings.token_type_embeddings.weight", 2).shape[0]),
    }
    if variant == "v1":
        out = {f"model.text_model.{k}": v for k, v in text.items()}
        for index, linear in (("0", "linear1"), ("2", "linear2")):
            for kind in ("weight", "bias"):
                value = state.get(f"{PROJECTION_PREFIX}{index}.{kind}")
                if not isinstance(value, Tensor):
                    raise CheckpointError(
                        f"{source} has no {PROJECTION_PREFIX}{index}.{kind}: the projection MLP "
                        "that variant v1 needs (variant v2 uses the pooler output alone)"
                    )
                out[f"model.text_projection.{linear}.{kind}"] = value
        config.update(PROJECTION)
        config["projection_dim"] = int(out["model.text_projection.linear1.weight"].shape[0])
    else:
        out = {f"model.{k}": v for k, v in text.items()}
    _check_against_architecture(out, variant, config, source)
    out = {k: v.contiguous() for k, v in out.items()}
    kept = (TEXT_PREFIX, PROJECTION_PREFIX) if variant == "v1" else (TEXT_PREFIX,)
    skipped = sorted({k.split(".")[0] for k in state if not k.startswith(kept)})
    params = {"variant": variant, "config": config, "max_length": MAX_LENGTH}
    info = {
        "source": source,
        "variant": variant,
        "tensors": len(out),
        "values": sum(int(v.numel()) for v in out.values()),
        "had_position_ids": had_position_ids,
        "skipped": skipped,
    }
    return params, out, info


def _official_name(key: str) -> str:
    """A converted state-dict key back to the official name (for error messages)."""
    for ours, theirs in (
        ("model.text_projection.linear1.", f"{PROJECTION_PREFIX}0."),
        ("model.text_projection.linear2.", f"{PROJECTION_PREFIX}2."),
        ("model.text_model.", TEXT_PREFIX),
        ("model.", TEXT_PREFIX),
    ):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def _check_against_architecture(
    out: dict[str, Tensor], variant: str, config: dict[str, Any], source: str
) -> None:
    """The converted weights must be exactly the module's (names and shapes); the module is
    built on the meta device, so this allocates nothing."""
    with torch.device("meta"):
        expected = {
            f"model.{k}": tuple(v.shape)
            for k, v in build_text_model(variant, config).state_dict().items()
        }
    missing = sorted(set(expected) - set(out))
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} weight(s) of the CLAP text model, first "
            f"{_official_name(missing[0])}; the checkpoint is incomplete"
        )
    extra = sorted(set(out) - set(expected))
    if extra:
        raise CheckpointError(
            f"{source} has weights a RoBERTa text branch does not have, first "
            f"{_official_name(extra[0])}; it is not LAION-CLAP's RoBERTa text branch"
        )
    for key, shape in expected.items():
        if tuple(out[key].shape) != shape:
            raise CheckpointError(
                f"{source}: {_official_name(key)} has shape {tuple(out[key].shape)}, the text "
                f"model read from its sizes expects {shape}; the checkpoint is inconsistent"
            )


__all__ = [
    "MAX_LENGTH",
    "PROJECTION",
    "ROBERTA_BASE",
    "TOKENIZER",
    "VARIANTS",
    "ClapTextEncoder",
    "ClapTextGraph",
    "build_text_model",
    "clap_embedding",
    "clap_text_state",
    "from_official_clap",
    "official_config",
]
