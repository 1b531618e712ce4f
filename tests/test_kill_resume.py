"""The kill-and-resume property (slow): SIGKILL a tiny training run at random moments, resume
each time, and end bit-identical to an uninterrupted run. The full check is
``python tests/benchmarks/kill_resume.py --kills 12``; this runs a short version of it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "kill_resume.py"


@pytest.mark.slow
def test_kills_and_resumes_end_bit_identical(tmp_path):
    spec = importlib.util.spec_from_file_location("kill_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    report = module.run(kills=3, steps=40, seed=1, work=tmp_path)
    assert report.kills == 3 and report.identical, report
