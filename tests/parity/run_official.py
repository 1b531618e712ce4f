"""Run the OFFICIAL SoundCTM-DiT code (koichi-saito-sony/soundctm_dit_iclr) on stand-in files and
save what it computes, for tests/parity/test_official_parity.py.

This script runs in the official code's own environment (its Python, torch 2.2, transformers 4,
audiotools, x-transformers, ...), never in soundctm's: it imports nothing from soundctm. It
follows the official ``demo.py`` step by step (training arguments from the summary line, the
settings ``auto_download_checkpoints`` adds, ``create_model_and_diffusion``, the EMA state dict
over the whole model, ``build_stage1_models``, ``z_stats.pth``, ``karras_sample`` with the
deterministic sampler, de-normalisation and ``decode_to_waveform``) with three changes, all made
here and none in the official files:

- no downloads: ``roberta-base`` (the CLAP text branch's tokenizer and architecture) resolves to
  the stand-in's ``roberta-base`` folder (``vocab.json``/``merges.txt``/``config.json``); the
  architecture is built from that config, as ``from_pretrained`` would, and the checkpoints'
  weights then replace its random ones, exactly as in the official flow;
- the stand-ins carry only the text side of LAION-CLAP, so the CLAP file and the EMA file are
  loaded non-strictly, and the run fails unless the keys left out are all audio-side (or the
  training-only ``text_transform``) and nothing else is unexpected, except the text branch's
  ``position_ids``, which transformers >= 4.31 no longer keeps;
- the initial noise ``x_T`` is given (``karras_sample(x_T=...)``) instead of drawn.

Usage (the official checkout's location is an argument; the current directory is not used)::

    OFFICIAL_PYTHON run_official.py --code OFFICIAL_CHECKOUT --src STANDIN --variant v1 \
        --spec spec.json --out OUTDIR

``spec.json``: ``prompts`` (one per row of the noise), ``jumps`` ([[t, s], ...]), ``omega``,
``runs`` ([{"name", "steps", "nu"}, ...]); the noise files ``x_T.npy`` (the initial latents,
already times sigma_max) and ``x_jump.npy`` (the input of the jumps) sit beside it. Writes
``clap.npy`` (the embeddings of ``prompts`` and of ``""``), ``jump_{i}.npy``,
``latents_{name}.npy``, ``audio_{name}.npy`` and ``versions.json`` to OUTDIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: CLAP keys the stand-ins may leave out: the audio side and the training-only text MLP.
NOT_TEXT = ("audio_branch.", "audio_projection.", "audio_transform.", "text_transform.")
NOT_TEXT_SCALARS = ("logit_scale_a", "logit_scale_t")
#: The packages whose versions the run records.
DISTRIBUTIONS = (
    "torch", "transformers", "tokenizers", "x-transformers", "descript-audiotools",
    "descript-audio-codec", "diffusers", "einops", "numpy",
)  # fmt: skip
#: Release file names of the two variants (the official ``auto_download_checkpoints``).
EMA = {"v1": "ac_v1_iclr_ema_0999_010446.pt", "v2": "ac_v2_ema_0999_030000.pt"}
SUMMARY = {"v1": "ac_v1_iclr_summary.jsonl", "v2": "ac_v2_summary.jsonl"}


def check_keys(what: str, missing: list[str], unexpected: list[str], prefix: str = "") -> None:
    """Fail unless only non-text CLAP keys are missing and only ``position_ids`` is extra."""
    bad_missing = [
        k
        for k in missing
        if not (
            k.startswith(prefix)
            and (k[len(prefix) :].startswith(NOT_TEXT) or k[len(prefix) :] in NOT_TEXT_SCALARS)
        )
    ]
    bad_extra = [k for k in unexpected if not k.endswith("text_branch.embeddings.position_ids")]
    if bad_missing or bad_extra:
        raise SystemExit(
            f"{what}: keys the official model has but the stand-in lacks: {bad_missing[:8]}; "
            f"keys the official model does not have: {bad_extra[:8]}"
        )


def patch_downloads(tokenizer_dir: Path) -> None:
    """``roberta-base`` -> the stand-in's folder, for the tokenizer and the architecture."""
    import transformers

    tok_cls = transformers.RobertaTokenizer
    tok_load = tok_cls.from_pretrained.__func__

    def tokenizer(cls, name, *args, **kwargs):
        name = str(tokenizer_dir) if name == "roberta-base" else name
        return tok_load(cls, name, *args, **kwargs)

    tok_cls.from_pretrained = classmethod(tokenizer)
    model_cls = transformers.RobertaModel
    model_load = model_cls.from_pretrained.__func__

    def model(cls, name, *args, **kwargs):
        if name == "roberta-base":
            config = transformers.RobertaConfig.from_json_file(str(tokenizer_dir / "config.json"))
            return cls(config)  # random; the CLAP checkpoint replaces every weight
        return model_load(cls, name, *args, **kwargs)

    model_cls.from_pretrained = classmethod(model)


def non_strict_clap(clap_module) -> None:
    """The official ``load_ckpt`` loads strictly; the stand-in has the text side only."""
    cls = clap_module.CLAP_modified
    strict_load = cls.load_state_dict

    def load(self, state, strict=True, **kwargs):
        result = strict_load(self, state, strict=False, **kwargs)
        check_keys("630k-audioset-best.pt", result.missing_keys, result.unexpected_keys)
        return result

    cls.load_state_dict = load


def dac_keys_match(weights: Path, cls) -> None:
    """audiotools loads ``weights.pth`` non-strictly: make sure every key matched."""
    import torch

    stored = torch.load(weights, map_location="cpu")
    built = cls(**stored["metadata"]["kwargs"]).state_dict()
    if set(stored["state_dict"]) != set(built):
        raise SystemExit(
            f"gaussiandac/weights.pth keys differ from the official GaussianDAC's: "
            f"{sorted(set(stored['state_dict']) ^ set(built))[:8]}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, required=True, help="the official checkout")
    ap.add_argument("--src", type=Path, required=True, help="stand-in files, hub layout")
    ap.add_argument("--variant", choices=["v1", "v2"], required=True)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    code, src = args.code.resolve(), args.src.resolve()
    sys.path.insert(0, str(code))
    # SA_EDM reads configs/dit_config/dit_v{1,2}.json relative to the current directory: the
    # stand-in folder carries the stand-in's.
    os.chdir(src)

    import numpy as np
    import torch

    torch.set_grad_enabled(False)
    patch_downloads(src / "roberta-base")
    from ctm.inference_sampling import karras_sample
    from ctm.script_util import create_model_and_diffusion
    from sa_edm.clap_modified.clap_module_modified import model as clap_model
    from sa_edm.dac.model.dac import GaussianDAC
    from sa_edm.models_edm import build_stage1_models

    non_strict_clap(clap_model)

    spec = json.loads(args.spec.read_text())
    models = src / "model_checkpoints" / "soundctm"
    utils = src / "utils_checkpoints"
    v = args.variant

    # demo.py: the summary's training arguments, then what auto_download_checkpoints sets.
    train_args = _DotDict(json.loads((models / SUMMARY[v]).read_text().splitlines()[0]))
    train_args["diffusion_model_type"] = "dit"
    train_args["clap_model_path"] = str(utils / "clap" / "630k-audioset-best.pt")
    train_args["stage1_path"] = str(utils / "vae")
    train_args["version"] = v
    train_args["clap_text_branch_projection"] = v == "v1"

    model, diffusion = create_model_and_diffusion(train_args, teacher=False)
    result = model.load_state_dict(torch.load(models / EMA[v], map_location="cpu"), strict=False)
    check_keys(EMA[v], result.missing_keys, result.unexpected_keys, prefix="text_encoder.model.")
    model.eval()
    dac_keys_match(utils / "vae" / "gaussiandac" / "weights.pth", GaussianDAC)
    vae = build_stage1_models(ckpt_folder_path=train_args.stage1_path).eval()
    stats = torch.load(models / "z_stats.pth", map_location="cpu")
    z_mean, z_std = stats["z_mean"], stats["z_std"]

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(spec["prompts"])

    def save(name: str, value: torch.Tensor) -> None:
        np.save(out / f"{name}.npy", value.detach().cpu().numpy().astype(np.float32))

    # The CLAP embedding, one prompt at a time as SA_EDM.forward does (and "" for the
    # unconditional half).
    clap = [model.text_encoder.get_text_embedding(p, use_tensor=True) for p in [*prompts, ""]]
    save("clap", torch.cat([c.reshape(1, -1) for c in clap]))

    # The jump G(x, t, s) as the sampler's denoiser computes it (ctm=True, cfg=omega).
    x = torch.from_numpy(np.load(args.spec.parent / "x_jump.npy"))
    b = x.shape[0]
    omega = torch.full((b,), float(spec["omega"]))
    for i, (t, s) in enumerate(spec["jumps"]):
        g = diffusion.denoise_fn(
            model, x, torch.full((b,), float(t)), cond=prompts, s=torch.full((b,), float(s)),
            ctm=True, cfg=omega,
        )  # fmt: skip
        save(f"jump_{i}", g)

    # Samples: karras_sample as demo.py calls it, from the given x_T, then decode.
    x_t = torch.from_numpy(np.load(args.spec.parent / "x_T.npy"))
    for run in spec["runs"]:
        latents = karras_sample(
            diffusion=diffusion,
            model=model,
            shape=tuple(x_t.shape),
            steps=int(run["steps"]),
            cond=prompts,
            nu=float(run["nu"]),
            model_kwargs={},
            device=torch.device("cpu"),
            omega=float(spec["omega"]),
            sampler="deterministic",
            gamma=0.0,
            x_T=x_t.clone(),
            sigma_min=train_args.sigma_min,
            sigma_max=train_args.sigma_max,
        )
        save(f"latents_{run['name']}", latents)
        z = 2 * z_std[None, :, None] * latents + z_mean[None, :, None]
        audio = vae.decode_to_waveform(z)[:, :, : int(10.031 * 44100)]
        save(f"audio_{run['name']}", audio[:, 0])

    from importlib.metadata import version

    versions = {"python": sys.version.split()[0], "commit": _commit(code)}
    for dist in DISTRIBUTIONS:
        versions[dist] = version(dist)
    (out / "versions.json").write_text(json.dumps(versions, indent=1))


class _DotDict(dict):
    """Attribute access to the training arguments, as demo.py's ``DotDict``."""

    __getattr__ = dict.get
    __setattr__ = dict.__setitem__


def _commit(code: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(code), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SOUNDCTM_OFFICIAL_DIT_COMMIT", "unknown")


if __name__ == "__main__":
    main()
