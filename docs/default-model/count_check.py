"""Wrong counts: extra events in the generated spectrogram, or extra onsets made by decoding it?

Run from the repository root (about 2 minutes)::

    python docs/default-model/count_check.py soundctm/models/default/teacher 160 40 6

Takes the items among the first N SynthCaps test items that state a count, words them in train
words (``phrasing_check.train_worded``, so the wording is not what fails) and generates them with
seed i for item i. Each clip's count is read twice:
- from the audio, by the detector;
- from the generated log-mel itself: the detector's hysteresis rule (onset at half-way between
  floor and peak, re-armed below 30 %) on the mel power envelope, frame by frame.
The real clips through the codec are read the same two ways, as a control. Prints the
``(audio right, spectrogram right)`` tallies as JSON.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phrasing_check import train_worded

from soundctm.builtin.synthcaps.detectors import COUNT_NAMES, detect
from soundctm.engine.pipeline import Pipeline
from soundctm.eval.prompts import synthcaps_prompts


def spectrogram_count(latent: torch.Tensor, autoencoder: object) -> str:
    """The count word read from a mel latent's power envelope (dB) by the onset rule."""
    log_mel = autoencoder.denormalise(latent).double().numpy()  # type: ignore[attr-defined]
    env = 20.0 * np.log10(np.exp(log_mel).sum(0) + 1e-16)
    top = float(env.max())
    floor = max(float(np.percentile(env, 10)), top - 50.0)
    if top - floor < 6.0:
        return "once"
    on, off = floor + 0.5 * (top - floor), floor + 0.3 * (top - floor)
    armed, events = True, 0
    for value in env:
        if armed and value > on:
            armed, events = False, events + 1
        elif not armed and value < off:
            armed = True
    return COUNT_NAMES.get(events, "repeatedly")


def main(model: str, n: int, steps: int, omega: float) -> dict[str, int]:
    pipe = Pipeline.load(model)
    ae = pipe.autoencoder
    prompts = synthcaps_prompts(n, pipe.card.sample_rate, 3.0, split="test")
    items = [i for i, a in enumerate(prompts.attributes) if "count" in a]
    captions = train_worded(prompts.attributes)
    latents: list[torch.Tensor] = []
    decode = ae.decode

    def spy(z: torch.Tensor) -> torch.Tensor:
        latents.append(z.detach().float().clone())
        return decode(z)

    ae.decode = spy  # type: ignore[method-assign]
    gen = pipe.generate(
        [captions[i] for i in items], seeds=items, steps=steps, omega=omega, batch_size=16
    )
    ae.decode = decode  # type: ignore[method-assign]
    generated = torch.cat(latents)
    tally: Counter[str] = Counter()
    rate = pipe.card.sample_rate
    for j, i in enumerate(items):
        want = prompts.attributes[i]["count"]
        real = ae.encode(torch.as_tensor(prompts.references[prompts.keys[i]])[None])[0]
        for label, latent, audio in (
            ("generated", generated[j], gen.audio[j]),
            ("real through the codec", real, decode(real[None])[0]),
        ):
            audio_ok = detect(audio.numpy(), rate)["count"] == want
            mel_ok = spectrogram_count(latent, ae) == want
            tally[f"{label}: audio {'right' if audio_ok else 'wrong'}, "
                  f"spectrogram {'right' if mel_ok else 'wrong'}"] += 1  # fmt: skip
    return dict(sorted(tally.items()))


if __name__ == "__main__":
    model, n, steps, omega = sys.argv[1:5]
    print(json.dumps(main(model, int(n), int(steps), float(omega)), indent=1))
