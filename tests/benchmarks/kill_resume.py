"""Kill-and-resume property: a training run killed with SIGKILL at random moments and resumed
each time ends with weights bit-identical to an uninterrupted run, and a metrics log that has
each step exactly once.

Run it from the repository root (it takes a minute or two on a 2-core CPU)::

    python tests/benchmarks/kill_resume.py --kills 12

Each attempt is ``python -m soundctm train`` (with ``--resume`` once a state exists) on the toy
plugin of ``tests/fixtures/toy_site``: a tiny teacher with a held-out set and a preview, saving a
checkpoint, a state and a preview every 2 steps, so many kills land inside a write. After each
kill the script records what the kill left (temporary folders, a half-written metrics line).
The exit status is 0 when the final state, checkpoint and metrics match the uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TOY_SITE = ROOT / "tests" / "fixtures" / "toy_site"
TIMING_KEYS = {"samples_per_s", "data_wait"}

CONFIG = """
[train]
out = "{out}"
steps = {steps}
batch_size = 4
lr = 0.003
save_every = 2
log_every = 1
keep_checkpoints = 2
seconds = 0.25
seed = 5
heldout_clips = 4
preview_prompts = ["a high tone"]
preview_steps = 2
backbone = {{ name = "toy-conv", params = {{ hidden = 16 }} }}
text_encoder = {{ name = "toy-hash", params = {{ dim = 16 }} }}
autoencoder = {{ name = "toy-frames", params = {{ sample_rate = 8000 }} }}
dataset = {{ name = "toy-tones", params = {{ size = 32 }} }}
valid_dataset = {{ name = "toy-tones", params = {{ size = 8, seed = 9 }} }}
"""


@dataclass
class Report:
    """What happened: kills, attempts that finished on their own, what the kills left."""

    kills: int = 0
    finished_early: int = 0
    kills_leaving_temporaries: int = 0  # killed inside a write (seen by what it left)
    kills_leaving_half_lines: int = 0
    resumed_steps: list[int] = field(default_factory=list)
    identical: bool = False
    problems: list[str] = field(default_factory=list)


def env() -> dict[str, str]:
    paths = [str(TOY_SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, paths)),
        "OMP_NUM_THREADS": "1",
        "SOUNDCTM_DEBUG": "1",
    }


def write_config(folder: Path, out: Path, steps: int) -> Path:
    cfg = folder / f"{out.name}.toml"
    cfg.write_text(CONFIG.format(out=out, steps=steps), encoding="utf-8")
    return cfg


def latest_step(out: Path) -> int | None:
    from soundctm.training.state import latest_state

    state = latest_state(out)
    return int(state.name.split("-")[1]) if state is not None else None


class Attempt:
    """One ``soundctm train`` process; ``training`` is set once it prints that it trains (its
    stderr is drained by a thread)."""

    def __init__(self, cfg: Path, out: Path) -> None:
        cmd = [sys.executable, "-m", "soundctm", "train", "--config", str(cfg)]
        if latest_step(out) is not None:
            cmd.append("--resume")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.training = threading.Event()
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("training "):
                self.training.set()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join()

    def finish(self, timeout: float = 600) -> float:
        """Wait for a successful exit; returns the seconds from the start of training."""
        self.proc.wait(timeout=timeout)
        self.reader.join()
        if self.proc.returncode != 0:
            tail = "".join(self.lines)[-3000:]
            raise SystemExit(f"a training attempt failed (exit {self.proc.returncode}):\n{tail}")
        return time.perf_counter() - self.started


#: What atomic writes leave when killed: ``.NAME.XXXXXXXX.tmp``, ``.NAME.old-PID``, ``*.tmp``.
TEMPORARY = re.compile(r"^\..+\.(?:[A-Za-z0-9_]{8}\.tmp|old-\d+)$|\.tmp$")


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if TEMPORARY.search(p.name)]


def wait_for_write(out: Path, attempt: Attempt, extra: float, timeout: float = 60) -> float:
    """Poll (every 0.5 ms) until a checkpoint or state folder is being written (its temporary
    folder exists), then wait ``extra`` seconds more; returns the seconds waited."""
    t0 = time.perf_counter()
    folders = [out / "checkpoints", out / "state"]
    while time.perf_counter() - t0 < timeout and attempt.proc.poll() is None:
        for folder in folders:
            with contextlib.suppress(FileNotFoundError):
                if any(e.name.startswith(".step-") for e in os.scandir(folder)):
                    time.sleep(extra)
                    return time.perf_counter() - t0
        time.sleep(0.0005)
    return time.perf_counter() - t0


def half_line(out: Path) -> bool:
    log = out / "metrics.jsonl"
    return log.is_file() and log.stat().st_size > 0 and not log.read_bytes().endswith(b"\n")


def records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


def compare(ref: Path, out: Path, steps: int, report: Report) -> None:
    tag = f"step-{steps:07d}"
    for rel in (f"state/{tag}/state.safetensors", f"checkpoints/{tag}/backbone.safetensors"):
        a, b = load_file(str(ref / rel)), load_file(str(out / rel))
        if a.keys() != b.keys():
            report.problems.append(f"{rel}: different tensors")
            continue
        for key in a:
            if a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key]):
                report.problems.append(f"{rel}: {key} differs")
    if records(ref) != records(out):
        report.problems.append("metrics.jsonl differs from the uninterrupted run's")
    loss_steps = [r["step"] for r in records(out) if "loss" in r]
    if loss_steps != list(range(1, steps + 1)):
        report.problems.append(f"metrics.jsonl logs steps {loss_steps}, not 1..{steps} once each")
    left = leftovers(out)
    if left:
        report.problems.append(f"left behind: {[str(p.relative_to(out)) for p in left]}")
    if not (out / "previews" / tag).is_dir():
        report.problems.append(f"no previews/{tag}")
    report.identical = not report.problems


def run(kills: int, steps: int, seed: int, work: Path) -> Report:
    rng = random.Random(seed)
    report = Report()

    # the uninterrupted run: its start-up time and its time per step
    ref = work / "reference"
    attempt = Attempt(write_config(work, ref, steps), ref)
    attempt.training.wait(timeout=300)
    startup = time.perf_counter() - attempt.started
    per_step = max(attempt.finish() - startup, 0.1) / steps
    print(f"uninterrupted: start-up {startup:.1f} s, then {per_step * 1000:.0f} ms/step")

    out = work / "killed"
    cfg = write_config(work, out, steps)
    while report.kills < kills:
        done = latest_step(out) or 0
        if done >= steps:
            break
        report.resumed_steps.append(done)
        remaining = steps - done
        share = max(3.0, 1.5 * remaining / (kills - report.kills))
        attempt = Attempt(cfg, out)
        draw = rng.random()
        if draw < 0.2:  # now and then during start-up (imports, data, resume)
            phase, delay = "start-up", rng.uniform(0.1, startup)
            time.sleep(delay)
        elif draw < 0.45:  # inside a checkpoint or state write, the moment one is seen
            attempt.training.wait(timeout=300)
            phase, delay = "a write", wait_for_write(out, attempt, rng.uniform(0.0, 0.01))
        else:  # mostly at a random moment while it trains and writes
            phase, delay = "training", rng.uniform(0.0, share * per_step)
            attempt.training.wait(timeout=300)
            time.sleep(delay)
        if attempt.proc.poll() is None:
            attempt.kill()
            report.kills += 1
            report.kills_leaving_temporaries += bool(leftovers(out))
            report.kills_leaving_half_lines += half_line(out)
            print(f"kill {report.kills:2d}: {delay:4.2f} s into {phase} (resumed at step {done})")
            continue
        attempt.finish()
        report.finished_early += 1
    if (latest_step(out) or 0) < steps:
        report.resumed_steps.append(latest_step(out) or 0)
        Attempt(cfg, out).finish()
    compare(ref, out, steps, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs to deliver")
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(TOY_SITE)]
    with tempfile.TemporaryDirectory(prefix="soundctm-kill-resume-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(args.kills, args.steps, args.seed, work)
    print(json.dumps(report.__dict__, indent=1))
    verdict = "bit-identical" if report.identical else "DIFFERENT"
    print(f"{report.kills} kills, final weights and metrics {verdict} to the uninterrupted run")
    return 0 if report.identical and report.kills >= args.kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
