"""How much of a caption's attributes survive a change of wording, in the text states alone?

Run from the repository root (about 2 minutes on 2 CPU cores)::

    python docs/default-model/text_transfer.py docs/default-model/text-transfer.json

The default model reads its prompt only through the frozen all-MiniLM-L6-v2 token states
(``minilm``) and a cross-attention. This script trains the same kind of reader on its own: a
small MLP on the token states (like the DiT's ``text_in``), one learned query per attribute
attending over the tokens, and a linear classifier per attribute. It learns from 4,000 train
split captions and is scored on 1,000 valid captions (new items, train wording: a control) and
1,000 test captions (new templates and synonyms, as in the evaluation). No audio is involved, so
the test score bounds how much of the wording the frozen states carry over from train words to
unseen words. Three seeds; the JSON has each and their mean.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundctm.builtin.synthcaps import synth
from soundctm.builtin.synthcaps.captions import make_caption
from soundctm.builtin.synthcaps.generator import sample_attributes
from soundctm.builtin.text import MiniLMEncoder

ATTRIBUTES = ("source", "pitch", "count", "tempo", "loudness", "envelope", "direction")


def items(split: str, n: int) -> list[tuple[str, dict[str, str]]]:
    """(caption, stated attributes) of SynthCaps items 0..n-1 of ``split`` (seed 0)."""
    out = []
    for i in range(n):
        stated, _ = sample_attributes(synth.stable_rng(0, split, i, "attributes"))
        out.append((make_caption(stated, split, synth.stable_rng(0, split, i, "caption")), stated))
    return out


def token_states(encoder: MiniLMEncoder, captions: list[str]) -> tuple[Tensor, Tensor]:
    """Right-padded token states [N, L, 384] and their mask [N, L]."""
    states = encoder.encode_prompts(captions)
    length = max(s.shape[0] for s in states)
    x = torch.stack([F.pad(s, (0, 0, 0, length - s.shape[0])) for s in states])
    mask = torch.stack([torch.arange(length) < s.shape[0] for s in states])
    return x, mask


class Reader(nn.Module):
    """Token states -> one logit vector per attribute, through attention from learned queries."""

    def __init__(self, classes: dict[str, list[str]], width: int = 128) -> None:
        super().__init__()
        self.text_in = nn.Sequential(nn.Linear(384, width), nn.SiLU(), nn.Linear(width, width))
        self.queries = nn.Parameter(torch.randn(len(ATTRIBUTES), width) * 0.02)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.heads = nn.ModuleList(nn.Linear(width, len(classes[a])) for a in ATTRIBUTES)

    def forward(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        c = self.text_in(x)
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(c)) / c.shape[-1] ** 0.5
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        z = torch.einsum("bql,bld->bqd", weights, self.value(c))
        return [head(z[:, i]) for i, head in enumerate(self.heads)]


def labels(data: list[tuple[str, dict[str, str]]], classes: dict[str, list[str]]) -> dict:
    """Class index per attribute and item; -100 where the caption does not state it."""
    return {
        a: torch.tensor([classes[a].index(s[a]) if a in s else -100 for _, s in data])
        for a in ATTRIBUTES
    }


def accuracy(reader: Reader, x: Tensor, mask: Tensor, y: dict) -> dict[str, float]:
    """Per-attribute accuracy and ``overall`` (over all stated attributes)."""
    with torch.no_grad():
        out = reader(x, mask)
    right = {
        a: int((o.argmax(-1) == y[a])[y[a] >= 0].sum())
        for o, a in zip(out, ATTRIBUTES, strict=True)
    }
    total = {a: int((y[a] >= 0).sum()) for a in ATTRIBUTES}
    acc = {a: right[a] / total[a] for a in ATTRIBUTES}
    acc["overall"] = sum(right.values()) / sum(total.values())
    return acc


def fit(seed: int, data: dict, classes: dict[str, list[str]], epochs: int = 30) -> Reader:
    """The reader trained on the train captions (AdamW 1e-3, batch 64)."""
    torch.manual_seed(seed)
    x, mask, y = data["train"]
    reader = Reader(classes)
    opt = torch.optim.AdamW(reader.parameters(), 1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for k in range(0, len(x), 64):
            idx = order[k : k + 64]
            out = reader(x[idx], mask[idx])
            loss = sum(
                F.cross_entropy(o, y[a][idx], ignore_index=-100)
                for o, a in zip(out, ATTRIBUTES, strict=True)
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
    return reader


def main(seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, object]:
    torch.set_num_threads(2)
    encoder = MiniLMEncoder(cache_size=0)
    splits = {
        "train": items("train", 4000),
        "valid": items("valid", 1000),
        "test": items("test", 1000),
    }
    pooled = [s for d in splits.values() for _, s in d]
    classes = {a: sorted({s[a] for s in pooled if a in s}) for a in ATTRIBUTES}
    data = {}
    for name, d in splits.items():
        x, mask = token_states(encoder, [c for c, _ in d])
        data[name] = (x, mask, labels(d, classes))
    runs = []
    for seed in seeds:
        reader = fit(seed, data, classes)
        runs.append({name: accuracy(reader, *data[name]) for name in splits})
    mean = {
        name: {k: sum(r[name][k] for r in runs) / len(runs) for k in runs[0][name]}
        for name in splits
    }
    return {"seeds": list(seeds), "mean": mean, "runs": runs}


if __name__ == "__main__":
    report = main()
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: round(v["overall"], 3) for k, v in report["mean"].items()}))
