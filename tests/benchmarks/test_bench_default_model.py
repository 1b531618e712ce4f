"""Generation time of the shipped default model (CPU): one 3-second clip from the student at 1
and 16 steps, and from its teacher at 40 Heun steps with classifier-free guidance.

Run: python -m pytest tests/benchmarks/test_bench_default_model.py --benchmark-only
Each timed call includes text encoding (cached after the warm-up, as in a session), the network
evaluations and the Griffin-Lim decoder, i.e. what `soundctm sample` spends per clip after loading.
"""

from __future__ import annotations

import pytest

from soundctm.cli.models import default_model_path
from soundctm.engine.pipeline import Pipeline

PROMPT = "a high-pitched beep repeating three times"

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="no default model shipped")


@pytest.fixture(scope="module")
def student():
    return Pipeline.load(default_model_path())


@pytest.fixture(scope="module")
def teacher():
    return Pipeline.load(default_model_path() / "teacher")


def _rtf(benchmark, out) -> None:
    seconds = out.audio.shape[1] / out.sample_rate
    benchmark.extra_info["clip_seconds"] = seconds
    benchmark.extra_info["real_time_factor"] = round(benchmark.stats.stats.mean / seconds, 4)


@pytest.mark.parametrize("steps", [1, 16])
def test_student(benchmark, student, steps):
    student.generate([PROMPT], seeds=[0], steps=steps)
    out = benchmark.pedantic(
        student.generate, args=([PROMPT],), kwargs={"seeds": [1], "steps": steps}, rounds=5
    )
    _rtf(benchmark, out)
    assert out.audio.shape == (1, 48128)


def test_teacher_40_heun_steps(benchmark, teacher):
    teacher.generate([PROMPT], seeds=[0], steps=40)
    out = benchmark.pedantic(
        teacher.generate, args=([PROMPT],), kwargs={"seeds": [1], "steps": 40}, rounds=3
    )
    _rtf(benchmark, out)
    assert out.audio.shape == (1, 48128)
