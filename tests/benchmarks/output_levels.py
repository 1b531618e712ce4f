"""Output levels of ``soundctm sample`` on the shipped default model (docs/method.md §9).

Run it from the repository root (a few minutes on a 2-core CPU)::

    python tests/benchmarks/output_levels.py --prompts 50 --out /tmp/levels [--reference DIR]

It writes the first ``--prompts`` SynthCaps test captions to a file, runs ``soundctm sample``
on them with the default settings (``--normalize peak``) and with ``--normalize none`` (seed
1000 onwards), and checks: no file of the default run has a full-scale (clipped) sample; none
peaks below -30 dBFS unless a warning named its seed; and, given ``--reference DIR`` (the
output of the same command on a soundctm without ``--normalize``), every ``none`` WAV is
byte-identical to the reference one. The exit status is 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from soundctm.eval.prompts import synthcaps_prompts


def peak_dbfs(path: Path) -> tuple[float, int]:
    x, _ = sf.read(str(path), dtype="int16")
    a = np.abs(x.astype(np.int32))
    return 20 * math.log10(max(int(a.max()), 1) / 32768), int(np.sum(a >= 32767))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = args.out / "prompts.txt"
    prompts.write_text("\n".join(synthcaps_prompts(args.prompts, 16000, 3.0).captions) + "\n")
    logs = {}
    for mode in ("peak", "none"):
        cmd = [sys.executable, "-m", "soundctm", "sample", "-f", str(prompts), "--seed", "1000"]
        cmd += ["--normalize", mode, "-o", str(args.out / mode)]
        logs[mode] = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    warned = set(re.findall(r"^warning: .*\(seed (\d+)\)", logs["peak"], flags=re.M))
    levels = {p: peak_dbfs(p) for p in sorted((args.out / "peak").glob("*.wav"))}
    clipped = sum(n for _, n in levels.values())
    quiet = [
        p.name
        for p, (db, _) in levels.items()
        if db < -30 and str(json.loads(p.with_suffix(".json").read_text())["seed"]) not in warned
    ]
    peaks = [db for db, _ in levels.values()]
    print(f"peak mode: {len(levels)} files, {clipped} full-scale samples, {len(quiet)} files below")
    print(f"  -30 dBFS without a warning ({len(warned)} warnings); peaks {min(peaks):.2f} to")
    print(f"  {max(peaks):.2f} dBFS")
    ok = clipped == 0 and not quiet
    if args.reference is not None:
        ref = sorted(args.reference.glob("*.wav"))
        same = sum((args.out / "none" / p.name).read_bytes() == p.read_bytes() for p in ref)
        print(f"--normalize none: {same}/{len(ref)} WAV files byte-identical to the reference")
        ok = ok and same == len(ref) > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
