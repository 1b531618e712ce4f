"""The README's two commands are the ones CI runs and the ones that work."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/ruff check . '
    "&& .venv/bin/python -m pytest"
)
MAIN_COMMAND_START = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/soundctm sample"
)


def code_lines(text: str) -> list[str]:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines()]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in code_lines(readme)
    assert TEST_COMMAND in ci.splitlines()


def test_readme_has_the_main_job_command():
    lines = code_lines((ROOT / "README.md").read_text())
    assert any(line.startswith(MAIN_COMMAND_START) for line in lines)
