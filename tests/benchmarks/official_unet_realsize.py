"""Real-size SoundCTM-UNet on this machine, with random weights in the official formats.

Writes a stand-in of the hub folder ``Sony/soundctm`` at the released sizes (UNet 866 M
parameters, FLAN-T5-large's encoder, AudioLDM's VAE + HiFi-GAN; random weights, a small
tokenizer), then measures in subprocesses: ``soundctm import soundctm-unet --teacher`` (wall time,
peak memory), loading, a 1-step 10 s generation of the student and a 40-step Heun generation of
the teacher (CFG 3.5). Needs about 15 GB of disk and 12 GB of memory; takes a long while on a CPU.

    python tests/benchmarks/official_unet_realsize.py WORKDIR [--skip-teacher]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FLAN_T5_LARGE = {
    "vocab_size": 32128, "d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24,
    "num_heads": 16, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}  # fmt: skip


def write_standin(root: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from test_audioldm import official_dict
    from test_export import _tiny_t5
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    from soundctm.builtin.unet import unet_config

    t5_dir = _tiny_t5(root / "flan-t5-large")  # a small tokenizer (ids < 64) ...
    T5Config(**FLAN_T5_LARGE).save_pretrained(t5_dir)  # ... and the real encoder's config
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(**FLAN_T5_LARGE))
    text = {f"text_encoder.{k}": v for k, v in t5.state_dict().items()}
    (root / "ckpt" / "teacher").mkdir(parents=True, exist_ok=True)
    teacher = UNet2DConditionModel(**unet_config(None, False))
    torch.save({**{f"unet.{k}": v for k, v in teacher.state_dict().items()}, **text},
               root / "ckpt" / "teacher" / "pytorch_model_2_sigma_025.bin")  # fmt: skip
    del teacher
    student = UNet2DConditionModel(**unet_config(None, True))
    state = {k.replace("class_embedding.", "s_time_embedding."): v
             for k, v in student.state_dict().items()}  # fmt: skip
    step = root / "soundctm_ckpt" / "030000"
    step.mkdir(parents=True, exist_ok=True)
    torch.save({**{f"ctm_unet.{k}": v for k, v in state.items()}, **text},
               step / "pytorch_model.bin")  # fmt: skip
    torch.save(state, step / "ema_0.999_030000.pt")
    del student, state, text, t5
    summary = {"text_encoder_name": "flan-t5-large", "sigma_data": 0.25, "sigma_min": 0.002,
               "sigma_max": 80.0}  # fmt: skip
    (step / "summary.jsonl").write_text(json.dumps(summary) + "\n", encoding="utf-8")
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=[128, 256, 512], latent_channels=8,
        layers_per_block=2, norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
    )  # fmt: skip
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
        upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3,
        normalize_before=False,
    ))  # fmt: skip
    torch.save(official_dict(vae, vocoder), root / "ckpt" / "audioldm-s-full.ckpt")


def timed(argv: list[str]) -> dict:
    """Run ``argv`` in a child under ``/usr/bin/time``: wall time and peak resident memory."""
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{r.stderr[-3000:]}")
    wall, kib = next(ln for ln in r.stderr.splitlines()[::-1] if ln.startswith("TIME ")).split()[1:]
    return {"wall_s": float(wall), "peak_gib": round(int(kib) / 2**20, 2),
            "stdout": r.stdout.strip()[-400:]}  # fmt: skip


GENERATE = """
import json, sys, time, torch
from soundctm.engine.pipeline import Pipeline
path, steps, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter(); pipe = Pipeline.load(path); load = time.perf_counter() - t0
runs = []
for i in range(n):
    t0 = time.perf_counter()
    gen = pipe.generate(["a dog barks while rain falls"], seeds=[i], steps=steps, seconds=10.0)
    runs.append(time.perf_counter() - t0)
print(json.dumps({"load_s": round(load, 1), "generate_s": [round(r, 2) for r in runs],
                  "samples": gen.audio.shape[1], "threads": torch.get_num_threads()}))
"""


def main() -> None:
    work = Path(sys.argv[1])
    src, out = work / "Sony-soundctm", work / "imported"
    if not (src / "ckpt" / "audioldm-s-full.ckpt").is_file():
        t0 = time.perf_counter()
        write_standin(src)
        print(f"stand-in written in {time.perf_counter() - t0:.0f} s", flush=True)
    exe = str(Path(sys.executable).parent / "soundctm")
    if not (out / "model.json").is_file():
        res = timed([exe, "import", "soundctm-unet", str(src), "-o", str(out), "--teacher"])
        print("import (student + teacher):", json.dumps(res), flush=True)
    student = timed([sys.executable, "-c", GENERATE, str(out), "1", "3"])
    print("student, 1 step, 10 s:", json.dumps(student), flush=True)
    if "--skip-teacher" not in sys.argv:
        teacher = timed([sys.executable, "-c", GENERATE, str(out / "teacher"), "40", "1"])
        print("teacher, Heun 40 steps, CFG 3.5, 10 s:", json.dumps(teacher), flush=True)


if __name__ == "__main__":
    main()
