"""The Python half of scripts/gpu-check.sh (read that first): each subcommand prints what it
measured and writes it to WORK/NAME.json.

  python scripts/gpu_check.py torch WORK [--cpu-dry-run]   sampling on CUDA vs the CPU
  python scripts/gpu_check.py ort WORK EXPORTED [--providers cuda tensorrt] [--tensorrt] [--name N]

``torch``: the default model (1 step) and its teacher (40 steps), and an imported soundctm-dit
stand-in (tests/test_import_dit.py's writer, the released hop of 1024, 10 s clips), on the same
seeds on the GPU and the CPU: max abs difference, spectral convergence (Griffin-Lim phases may
differ, docs/onnx.md), the median warm time of each on the GPU and the ratio teacher 40 steps /
student 1 step. It saves the GPU audio and times (WORK/torch.npz, torch.json) for ``ort``.

``ort`` (run in the [gpu] venv): the exported default model with each onnxruntime provider (and,
with ``--tensorrt``, the TensorRT engines of `soundctm export --format tensorrt`) on the same
seeds: max abs difference and spectral convergence against the torch audio, which provider
really ran, and the time ratio against torch on the same device.

With ``--cpu-dry-run`` the "GPU" side is the CPU: it exercises every step on a machine without a
GPU (the differences are then 0 and the ratios compare the CPU with itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "soundctm" / "models" / "default"
PROMPTS = ["a dog barks in the distance", "rain on a tin roof", "a car horn honks twice"]
SEEDS = [0, 1, 2]
TEACHER_STEPS = 40


def median_time(fn: Callable[[], Any], repeat: int = 5, sync: bool = False) -> float:
    """Median wall time (s) of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Max abs difference, the reference's peak and the spectral convergence (docs/onnx.md)."""
    from soundctm.export.checks import waveform_spectral_convergence

    reference, other = reference.float().cpu(), other.float().cpu()
    return {
        "max_abs_diff": float((reference - other).abs().max()),
        "peak": float(reference.abs().max()),
        "spectral_convergence": waveform_spectral_convergence(reference, other),
    }


def write(work: Path, name: str, result: dict) -> None:
    (work / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({name: result}, indent=2))


# ---------------------------------------------------------------------------- torch
def standin(work: Path) -> Path:
    """A tiny official-format soundctm-dit v2 release, imported (tests/test_import_dit.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_import_dit import DAC_HOP_1024, write_official

    from soundctm.builtin.official.soundctm_dit import import_soundctm_dit

    src, out = work / "soundctm-dit-release", work / "soundctm-dit-imported"
    if not out.exists():
        write_official(src, "v2", dac_kwargs=DAC_HOP_1024)  # the released hop: 432 frames
        import_soundctm_dit(src, out, variant="v2", trust_pickle=True)
    return out


def check_torch(work: Path, dry_run: bool) -> None:
    from soundctm.engine.pipeline import Pipeline

    device = "cpu" if dry_run else "cuda"
    if not dry_run and not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if not dry_run else "cpu"}
    runs = {
        "default_1_step": (DEFAULT, {"steps": 1}),
        "teacher_40_steps": (DEFAULT / "teacher", {"steps": TEACHER_STEPS}),
        "soundctm_dit_standin_2_steps": (standin(work), {"steps": 2}),
    }
    audio: dict[str, np.ndarray] = {}
    n = 1 if dry_run else len(PROMPTS)  # the dry run only exercises the code: one prompt
    for name, (model, kw) in runs.items():
        cpu = Pipeline.load(model, device="cpu")
        gpu = Pipeline.load(model, device=device)
        ref = cpu.generate(PROMPTS[:n], seeds=SEEDS[:n], **kw).audio
        got = gpu.generate(PROMPTS[:n], seeds=SEEDS[:n], **kw).audio
        entry = compare(ref, got)

        def one(pipe: Any = gpu, kw: dict = kw) -> Any:
            return pipe.generate(PROMPTS[:1], seeds=SEEDS[:1], **kw)

        entry["gpu_seconds_batch_1"] = median_time(one, 2 if dry_run else 5, sync=not dry_run)
        print(f"{name}: {entry}", flush=True)
        result[name] = entry
        audio[name] = got.numpy()
        del cpu, gpu
    result["ratio_teacher_40_steps_over_1_step"] = (
        result["teacher_40_steps"]["gpu_seconds_batch_1"]
        / result["default_1_step"]["gpu_seconds_batch_1"]
    )
    np.savez(work / "torch.npz", **audio)
    write(work, "torch", result)


# ---------------------------------------------------------------------------- onnxruntime
def check_ort(work: Path, exported: Path, providers: list[str], tensorrt: bool, name: str) -> None:
    import onnxruntime as ort

    from soundctm.export.runtime import OrtPipeline

    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* pip packages, if any
        try:
            ort.preload_dlls()
        except Exception as exc:  # reported; the sessions below show which provider ran
            print(f"onnxruntime.preload_dlls(): {exc}", flush=True)
    ref = torch.from_numpy(np.load(work / "torch.npz")["default_1_step"])
    n = ref.shape[0]  # the prompts the torch step ran
    torch_time = json.loads((work / "torch.json").read_text())["default_1_step"]
    result: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
    }
    loaders: dict[str, Callable[[], Any]] = {
        p: (lambda p=p: OrtPipeline.load(exported, providers=[p])) for p in providers
    }
    if tensorrt:
        from soundctm.export.tensorrt import load_tensorrt

        loaders["tensorrt_engines"] = lambda: load_tensorrt(exported)
    for key, load in loaders.items():
        try:
            pipe = load()
        except Exception as exc:  # report it, go on with the next provider
            result[key] = {"error": str(exc).splitlines()[0]}
            continue
        graphs = [getattr(g, "session", None) for g in pipe_graphs(pipe)]
        ran = sorted({q for s in graphs if s is not None for q in s.get_providers()[:1]})
        got = pipe.generate(PROMPTS[:n], seeds=SEEDS[:n], steps=1).audio
        entry: dict[str, Any] = {"providers_first": ran, **compare(ref, got)}
        entry["seconds_batch_1"] = median_time(
            lambda pipe=pipe: pipe.generate(PROMPTS[:1], seeds=SEEDS[:1], steps=1)
        )
        entry["ratio_over_torch"] = entry["seconds_batch_1"] / torch_time["gpu_seconds_batch_1"]
        result[key] = entry
    write(work, name, result)


def pipe_graphs(pipe: Any) -> list[Any]:
    """The three graph runners of an OrtPipeline."""
    s = pipe.sampler
    return [s.network.graph, s.text_encoder.graph, s.autoencoder.graph]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("torch")
    t.add_argument("work", type=Path)
    t.add_argument("--cpu-dry-run", action="store_true")
    o = sub.add_parser("ort")
    o.add_argument("work", type=Path)
    o.add_argument("exported", type=Path)
    o.add_argument("--providers", nargs="+", default=["cuda", "tensorrt"])
    o.add_argument("--tensorrt", action="store_true", help="also run the TensorRT engines")
    o.add_argument("--name", default="ort", help="result file WORK/NAME.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "torch":
        check_torch(args.work, args.cpu_dry_run)
    else:
        check_ort(args.work, args.exported, args.providers, args.tensorrt, args.name)


if __name__ == "__main__":
    main()
