"""scripts/gpu-check.sh degrades clearly without a GPU (its full run needs one; --cpu-dry-run
exercises every step on the CPU but takes minutes, so it is run by hand, not here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu-check.sh"


def run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--work", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=SCRIPT.parent.parent,
    )


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi is present here")
    r = run(tmp_path=tmp_path)
    assert r.returncode == 2
    assert "no NVIDIA GPU" in r.stderr and "--cpu-dry-run" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


def test_unknown_argument_is_one_line(tmp_path):
    r = run("--bogus", tmp_path=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unknown argument --bogus (see --help)"
