"""Peak memory of one training step: a full fine-tune vs LoRA, on the real-size official
SoundCTM-UNet (the released diffusers configuration, 866 M parameters, random weights), CPU,
batch 1, a 10 s clip's latent (8 x 256 x 16) and 20 FLAN-T5-large context tokens (1024 wide).

Each case runs in a fresh process under ``/usr/bin/time`` (peak resident set size, the whole
process); the child also reports its own high-water mark after building the network, so the
step's share is visible. A case builds the backbone as ``train --init-from`` holds it (the
parent's weights loaded: here random), adds adapters for LoRA, builds AdamW over the trainable
parameters as the training loop does, then runs forward, backward and the optimizer step.
``--ema`` also holds the EMA copy of the backbone that ``soundctm train`` keeps (in both modes),
made as training makes it (:func:`soundctm.training.ema.ema_copy`: frozen weights shared with the
model, so a LoRA run's EMA holds only the adapters); ``--ema-full-copy`` holds a full deep copy
instead, as training did before.

    python tests/benchmarks/lora_memory.py [--rank 8] [--ema | --ema-full-copy] [--only full|lora]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHILD = """
import copy, json, resource, sys, time, torch
try:  # on a shared machine the kernel's OOM killer takes this process first
    open("/proc/self/oom_score_adj", "w").write("1000")
except OSError:
    pass
from soundctm.builtin.unet import UNet2DBackbone
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.lora import add_lora, target_layers
from soundctm.training.ema import ema_copy
mode, rank, ema = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
backbone = UNet2DBackbone(None, student=False).train()
layers = []
if mode == "lora":
    layers = target_layers(backbone)
    add_lora(backbone, layers, rank, float(rank))
shadow = None
if ema == "shared":
    shadow = ema_copy(backbone)
elif ema == "copy":
    shadow = copy.deepcopy(backbone).requires_grad_(False)
built_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = [p for p in backbone.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
x = torch.randn(1, 8, 256, 16)
cond = Conditioning(torch.randn(1, 20, 1024), torch.ones(1, 20, dtype=torch.bool))
t = torch.tensor([0.3])
t0 = time.perf_counter()
out = backbone(x, t, None, None, cond)
loss = out.float().pow(2).mean()
loss.backward()
opt.step()
opt.zero_grad(set_to_none=True)
step_s = time.perf_counter() - t0
print(json.dumps({
    "mode": mode, "trainable": sum(p.numel() for p in params),
    "total": sum(p.numel() for p in backbone.parameters()), "layers": len(layers),
    "built_gib": round(built_kib / 2**20, 2), "step_s": round(step_s, 1),
    "threads": torch.get_num_threads(),
}))
"""


def available_gib() -> float:
    """MemAvailable of /proc/meminfo in GiB (the full case needs about 16 GiB)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def run(mode: str, rank: int, ema: str) -> dict:
    from official_unet_realsize import timed

    need = (16.0 if mode == "full" else 5.0) + (3.5 if ema != "none" else 0.0)
    if available_gib() < need:  # a shared machine: never push others into the OOM killer
        raise SystemExit(f"{mode}: {available_gib():.1f} GiB available, need about {need} GiB")
    result = timed([sys.executable, "-c", CHILD, mode, str(rank), ema])
    child = json.loads(result.pop("stdout").splitlines()[-1])
    return {**child, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=8)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ema", action="store_true", help="Hold the EMA as training does.")
    group.add_argument("--ema-full-copy", action="store_true", help="Hold a full EMA copy.")
    parser.add_argument("--only", choices=("full", "lora"), help="Run one case.")
    args = parser.parse_args()
    ema = "shared" if args.ema else "copy" if args.ema_full_copy else "none"
    if args.only:
        print(json.dumps(run(args.only, args.rank, ema)))
        return
    rows = [run(mode, args.rank, ema) for mode in ("lora", "full")][::-1]
    for row in rows:
        print(json.dumps(row))
    full, lora = rows
    print(
        f"peak RSS, one step, batch 1, CPU (EMA: {ema}): "
        f"full {full['peak_gib']} GiB, LoRA r={args.rank} {lora['peak_gib']} GiB "
        f"(ratio {lora['peak_gib'] / full['peak_gib']:.2f}); trainable "
        f"{full['trainable'] / 1e6:.1f}M vs {lora['trainable'] / 1e6:.2f}M"
    )


if __name__ == "__main__":
    main()
