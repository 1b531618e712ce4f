"""Markdown tables of the model card from the `soundctm eval` reports in this folder.

Run from the repository root: ``python docs/default-model/tables.py [FOLDER]`` (reads
FOLDER/eval-teacher/results.json and FOLDER/eval-student/results.json; FOLDER defaults to
docs/default-model, the shipped model's; docs/default-model/v3 holds the previous one's), so the
numbers in MODEL_CARD.md come from the reports rather than being typed in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ATTRS = ("texture", "pitch", "count", "tempo", "loudness", "envelope", "direction")


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "results.json").read_text())


def accuracy_table(teacher: dict, student: dict) -> str:
    """Overall and per-attribute accuracy with the Frechet distance, one row per setting."""
    acc = teacher["runs"][0]["metrics"]["synthcaps-attributes"]
    head = "| model, sampler | attribute accuracy | " + " | ".join(ATTRS) + " | Frechet distance |"
    rows = [head, "|" + "---|" * (len(ATTRS) + 3)]
    chance = [f"{acc['chance'][a]:.3g}" for a in ATTRS]
    rows.append(f"| chance | {acc['chance_overall']:.3f} | " + " | ".join(chance) + " | |")
    omega = teacher["runs"][0].get("omega")
    labelled = [(f"teacher, {r['steps']} Heun steps, CFG {omega}", r) for r in teacher["runs"]]
    for run in student["runs"]:
        steps = run["steps"]
        name = f"student, {steps} steps (gamma 0)" if steps > 1 else "student, 1 step"
        labelled.append((name, run))
    for name, run in labelled:
        m = run["metrics"]["synthcaps-attributes"]
        per = " | ".join(f"{m['per_attribute'][a]:.3f}" for a in ATTRS)
        bold = "**" if run["steps"] in (1, 40) else ""
        fd = run["metrics"]["fd"]["value"]
        rows.append(f"| {name} | {bold}{m['overall']:.3f}{bold} | {per} | {fd:.1f} |")
    checks = ", ".join(f"{a} {acc['checks'][a]}" for a in ATTRS)
    return "\n".join(rows) + f"\n\nChecks per attribute: {checks}."


def content_table(student: dict) -> str:
    """Content preservation N -> 1 step at gamma 0 and gamma 1."""
    rows = {(r["steps"], r["gamma"]): r for r in student["content_preservation"]["rows"]}
    out = ["| steps | gamma = 0 | gamma = 1 |", "|---|---|---|"]
    for steps in sorted({k[0] for k in rows}):
        a, b = rows[(steps, 0.0)], rows[(steps, 1.0)]
        cells = [f"{r['value']:.3f} ± {r['std']:.3f}" for r in (a, b)]
        out.append(f"| {steps} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    t, s = _load(folder, "eval-teacher"), _load(folder, "eval-student")
    print(accuracy_table(t, s))
    print()
    print(content_table(s))
