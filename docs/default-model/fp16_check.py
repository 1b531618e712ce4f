"""float32 student vs its float16 pack: does casting the shipped weights change the sound?

Run from the repository root after `soundctm distill` and `soundctm pack`::

    python docs/default-model/fp16_check.py runs/default-student/latest PACKED_DIR 32 6.0

Generates the first N SynthCaps test prompts (seed i for prompt i) with both models at 1 and 16
steps and prints JSON: the mean absolute difference of the latents (log-mel) against their std,
the waveform difference (max abs, SNR in dB) and the SynthCaps attribute accuracy of each.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from soundctm.builtin.synthcaps.detectors import attribute_accuracy
from soundctm.engine.pipeline import Pipeline
from soundctm.eval.prompts import synthcaps_prompts


def generate(path: str, prompts: list[str], steps: int, omega: float) -> tuple[torch.Tensor, ...]:
    """(latents, audio) of ``prompts`` with seed i for prompt i."""
    pipe = Pipeline.load(path)
    latents: list[torch.Tensor] = []
    decode = pipe.autoencoder.decode

    def spy(z: torch.Tensor) -> torch.Tensor:
        latents.append(z.detach().float().clone())
        return decode(z)

    pipe.autoencoder.decode = spy  # type: ignore[method-assign]
    out = pipe.generate(prompts, seeds=list(range(len(prompts))), steps=steps, omega=omega)
    return torch.cat(latents), out.audio


def main(fp32: str, packed: str, n: int, omega: float) -> dict[str, dict[str, float]]:
    items = synthcaps_prompts(n, 16000, 3.0)
    report: dict[str, dict[str, float]] = {}
    for steps in (1, 16):
        z32, a32 = generate(fp32, items.captions, steps, omega)
        z16, a16 = generate(packed, items.captions, steps, omega)
        noise = float((a32 - a16).pow(2).mean())
        report[str(steps)] = {
            "waveform_max_abs": float((a32 - a16).abs().max()),
            "waveform_snr_db": 10 * math.log10(float(a32.pow(2).mean()) / max(noise, 1e-20)),
            "latent_mean_abs": float((z32 - z16).abs().mean()),
            "latent_std": float(z32.std()),
            "attr_acc_fp32": attribute_accuracy(items.attributes, a32.numpy(), 16000)["overall"],
            "attr_acc_fp16": attribute_accuracy(items.attributes, a16.numpy(), 16000)["overall"],
        }
    return report


if __name__ == "__main__":
    fp32_dir, packed_dir, count, scale = sys.argv[1:5]
    print(json.dumps(main(fp32_dir, packed_dir, int(count), float(scale)), indent=1))
