"""Variation strength is monotone: on the shipped default model, the latent a variation ends at
is less similar to the input's latent the higher the strength (docs/method.md §8).

Run it from the repository root (a minute or two on a 2-core CPU)::

    python tests/benchmarks/vary_strength.py --clips 10 --seeds 3

Inputs are SynthCaps test clips (split ``test``, generator seed 1), each varied with its own
caption at strengths 0, 0.1, ..., 1 (1 step, gamma 0). Similarities are taken on the latents the
model outputs, captured before decoding, so the Griffin-Lim inverse of the mel autoencoder does
not blur the measurement: the cosine similarity to the input latent, and the correlation (the
cosine after removing each latent's mean). The exit status is 0 when both means fall strictly.
"""

from __future__ import annotations

import argparse
import sys
from itertools import pairwise

import numpy as np
import torch

from soundctm.cli.models import default_model_path
from soundctm.engine.pipeline import Pipeline
from soundctm.engine.variation import latent_similarity, strength_sigma
from soundctm.eval.prompts import synthcaps_prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    pipe = Pipeline.load(default_model_path())
    rate, ae = pipe.sample_rate, pipe.autoencoder
    captured: list[torch.Tensor] = []

    def capture(latents: torch.Tensor) -> torch.Tensor:  # the latents, no Griffin-Lim
        captured.append(latents.detach().float().cpu().clone())
        return torch.zeros(latents.shape[0], latents.shape[-1] * ae.hop_length)

    ae.decode = capture
    ps = synthcaps_prompts(args.clips, rate, 3.0, seed=1)
    strengths = [round(0.1 * i, 1) for i in range(11)]
    seeds = list(range(args.seeds))
    cos: dict[float, list[float]] = {s: [] for s in strengths}
    cor: dict[float, list[float]] = {s: [] for s in strengths}
    for key, caption in zip(ps.keys, ps.captions, strict=True):
        audio = torch.from_numpy(ps.references[key])
        x0 = ae.encode(audio[None])
        for s in strengths:
            captured.clear()
            pipe.vary(audio, rate, [caption] * len(seeds), seeds=seeds, strength=s)
            x = torch.cat(captured)
            cos[s] += latent_similarity(x, x0.expand_as(x)).tolist()
            xc, x0c = x - x.mean(dim=(1, 2), keepdim=True), x0 - x0.mean()
            cor[s] += latent_similarity(xc, x0c.expand_as(xc)).tolist()
    c = pipe.card
    print(f"{args.clips} SynthCaps test clips x {args.seeds} seeds, own caption, 1 step, gamma 0")
    print("| strength | sigma(S) | cosine mean | correlation mean | correlation min | max |")
    print("|---|---|---|---|---|---|")
    for s in strengths:
        v = np.array(cor[s])
        sigma = strength_sigma(s, c.sigma_min, c.sigma_max, c.rho)
        print(
            f"| {s:.1f} | {sigma:.3f} | {np.mean(cos[s]):.4f} | {v.mean():.4f} | "
            f"{v.min():.4f} | {v.max():.4f} |"
        )
    falling = all(
        a > b
        for table in (cos, cor)
        for a, b in pairwise([float(np.mean(table[s])) for s in strengths])
    )
    print("means fall strictly:", falling)
    return 0 if falling else 1


if __name__ == "__main__":
    sys.exit(main())
