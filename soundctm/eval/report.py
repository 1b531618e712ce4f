"""Reports of an evaluation run: ``results.json``, ``report.md`` and PNG figures.

Figures use matplotlib with the Agg backend (no display needed): ``spectrograms.png``, a grid of
log-mel spectrograms (a few prompts x settings, or generated vs reference), and, for a model
evaluated at several step counts, ``metrics_vs_steps.png`` (each metric against the step count,
one line per gamma, and content preservation at gamma 0 and gamma 1). Every file is written to
a temporary name and renamed. Every report states N and each embedder with its weight checksum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from soundctm.engine.files import atomic_path, ensure_writable_dir, write_text_atomic
from soundctm.eval.results import EvalResults, Examples, jsonable

RESULTS = "results.json"
MARKDOWN = "report.md"
SPECTROGRAMS = "spectrograms.png"
METRICS_VS_STEPS = "metrics_vs_steps.png"


def write_report(
    results: EvalResults, out: Path, *, examples: Examples | None = None
) -> dict[str, str]:
    """Write the JSON, the Markdown and the figures into ``out``; returns ``{kind: file name}``
    (also stored in the JSON under ``files``). Markdown and figures are rendered from the same
    dictionary as ``results.json`` (:meth:`EvalResults.to_json`)."""
    out = ensure_writable_dir(Path(out))
    data = results.to_json()
    files: dict[str, str] = {"json": RESULTS, "markdown": MARKDOWN}
    if examples is not None and examples.rows:
        spectrogram_grid(examples, out / SPECTROGRAMS)
        files["spectrograms"] = SPECTROGRAMS
    if (data.get("mode") == "model" and len({r["steps"] for r in data["runs"]}) > 1) or (
        data.get("content_preservation")
    ):
        metrics_vs_steps(data, out / METRICS_VS_STEPS)
        files["metrics_vs_steps"] = METRICS_VS_STEPS
    full = {**data, "files": files}
    write_text_atomic(out / RESULTS, json.dumps(jsonable(full), indent=2) + "\n")
    write_text_atomic(out / MARKDOWN, markdown(full))
    return files


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------- markdown
def headline(name: str, result: dict[str, Any]) -> str:
    """The headline number of a metric result, with its spread where there is one."""
    value = result.get("value")
    text = _fmt(value)
    if name == "is" and result.get("std") is not None:
        text += f" ± {_fmt(result['std'])}"
    if name == "fd" and result.get("fad_inf") is not None:
        text += f" (inf: {_fmt(result['fad_inf'])})"
    if name == "synthcaps-attributes" and result.get("chance_overall") is not None:
        text += f" (chance {_fmt(result['chance_overall'])})"
    return text


def _metric_title(name: str, results: dict[str, Any]) -> str:
    for run in results.get("runs", []):
        r = run["metrics"].get(name)
        if r:
            who = r.get("embedder") or r.get("classifier")
            return f"{name} ({who})" if who else name
    return name


#: What each weight-file hash status means, in the report.
STATUS_WORDS = {
    "verified": "the published file",
    "prefix-verified": "matches the published hash prefix",
    "git-verified": "the published file (by its Git object id)",
    "unpinned": "no published hash to compare with",
    "differs": "NOT the published file",
}


def markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: what was evaluated, N, embedders with checksums, the tables."""
    lines = [f"# soundctm eval: {results.get('mode')}", ""]
    lines.append(f"- N = {results.get('n')} clips per setting")
    lines.append(f"- sample rate: {results.get('sample_rate')} Hz")
    if results.get("preset"):
        lines.append(f"- preset: `{results['preset']}`")
    if results.get("prompts"):
        lines.append(f"- prompts: {results['prompts']}")
    for key, value in (results.get("inputs") or {}).items():
        lines.append(f"- {key}: `{value}`")
    for tag, info in (results.get("models") or {}).items():
        who = "model" if tag == "model" else f"model {tag}"
        lines.append(
            f"- {who}: `{info['path']}` ({info['kind']}, card sha256 `{info['card_sha256'][:16]}`)"
        )
    embedders = results.get("embedders") or {}
    if embedders:
        for name, info in embedders.items():
            lines.append(
                f"- embedder `{name}`: {info['sample_rate']} Hz, {info['dim']}-d, weights "
                f"checksum `{info['checksum']}`"
            )
            for w in info.get("weights") or ():
                lines.append(
                    f"  - weight file `{w['file']}`: sha256 `{w['sha256']}` "
                    f"({STATUS_WORDS.get(w['status'], w['status'])})"
                )
    else:
        lines.append("- embedders: none used")
    if "mel-stats" in embedders:
        lines.append(
            "- note: `mel-stats` is a weight-free statistics embedder, not VGGish; its "
            "distances are not comparable with published FAD values"
        )
    lines.append(f"- soundctm {results.get('soundctm_version')}, {results.get('created')}")
    lines.append("")

    names = list(results.get("metrics") or [])
    runs = results.get("runs") or []
    if runs and names:
        lines += ["## Metrics", ""]
        head = ["setting"]
        if results.get("mode") in ("model", "compare"):
            head += ["steps", "gamma"]
        head += [_metric_title(n, results) for n in names]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for run in runs:
            row = [run["label"]]
            if results.get("mode") in ("model", "compare"):
                row += [_fmt(run.get("steps")), _fmt(run.get("gamma"))]
            row += [headline(n, run["metrics"].get(n, {})) for n in names]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    attr_runs = [r for r in runs if "synthcaps-attributes" in r["metrics"]]
    if attr_runs:
        lines += _attribute_table(attr_runs)
    cp = results.get("content_preservation")
    if cp and cp.get("rows"):
        lines += [
            "## Content preservation",
            "",
            f"Similarity ({cp['similarity']}: Pearson correlation of log-mel spectrograms) of "
            "the N-step output to the 1-step output of the same prompt and seed. gamma = 0 "
            "should keep the content (near 1); gamma = 1 adds fresh noise at every step.",
            "",
            "| steps | gamma = 0 | gamma = 1 |",
            "|---|---|---|",
        ]
        by = {(r["steps"], r["gamma"]): r for r in cp["rows"]}
        for s in sorted({r["steps"] for r in cp["rows"]}):
            cells = []
            for g in (0.0, 1.0):
                r = by.get((s, g))
                cells.append(f"{_fmt(r['value'])} ± {_fmt(r['std'])}" if r else "n/a")
            lines.append(f"| {s} | {cells[0]} | {cells[1]} |")
        lines.append("")
    if results.get("b_vs_a"):
        r = results["b_vs_a"]
        lines += [
            "## B vs A",
            "",
            f"Spectrogram similarity of B's clip to A's clip of the same prompt and seed: "
            f"{_fmt(r['value'])} ± {_fmt(r['std'])} (N = {r['n']}).",
            "",
        ]
    if results.get("skipped"):
        lines += ["## Skipped metrics", ""]
        lines += [f"- {k}: {v}" for k, v in results["skipped"].items()]
        lines.append("")
    files = results.get("files") or {}
    figures = [v for k, v in files.items() if v.endswith(".png")]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _attribute_table(runs: list[dict[str, Any]]) -> list[str]:
    attrs: list[str] = []
    for run in runs:
        for a in run["metrics"]["synthcaps-attributes"].get("per_attribute", {}):
            if a not in attrs:
                attrs.append(a)
    chance = runs[0]["metrics"]["synthcaps-attributes"].get("chance", {})
    head = ["setting", "overall"] + [f"{a} (chance {_fmt(chance.get(a))})" for a in attrs]
    lines = ["## SynthCaps attribute accuracy", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for run in runs:
        r = run["metrics"]["synthcaps-attributes"]
        row = [run["label"], f"{_fmt(r['overall'])} (chance {_fmt(r['chance_overall'])})"]
        row += [_fmt(r["per_attribute"].get(a)) for a in attrs]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


# ---------------------------------------------------------------------- figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=90)
    plt.close(fig)


def spectrogram_grid(examples: Examples, path: Path) -> None:
    """Log-mel spectrograms: one row per prompt, one column per setting (or generated /
    reference)."""
    from soundctm.eval.plugins import log_mel_db

    plt = _pyplot()
    rows, columns = examples.rows, examples.columns
    rate = int(examples.sample_rate)
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(2.2 * len(columns) + 0.5, 1.8 * len(rows) + 0.6),
        squeeze=False,
    )
    for i, row in enumerate(rows):
        for j, audio in enumerate(row.audio):
            ax = axes[i][j]
            spec = log_mel_db(np.asarray(audio), rate)
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
            if j == 0:
                title = row.title
                ax.set_ylabel(title[:28] + ("…" if len(title) > 28 else ""), fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def metrics_vs_steps(results: dict[str, Any], path: Path) -> None:
    """Each metric against the step count (log scale), one line per gamma; and content
    preservation at gamma 0 and gamma 1 (the 1-step point is 1 by definition)."""
    plt = _pyplot()
    names = list(results.get("metrics") or [])
    cp = results.get("content_preservation")
    panels = names + (["content-preservation"] if cp and cp.get("rows") else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        if name == "content-preservation":
            for g in (0.0, 1.0):
                pts = sorted((r["steps"], r["value"]) for r in cp["rows"] if r["gamma"] == g)
                pts = [(1, 1.0), *pts]
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"gamma={g:g}")
            ax.set_title("content vs 1 step", fontsize=9)
            ax.set_ylim(top=1.05)
        else:
            for g in sorted({r["gamma"] for r in results["runs"]}):
                pts = sorted(
                    (r["steps"], r["metrics"][name]["value"])
                    for r in results["runs"]
                    if r["gamma"] == g and r["metrics"].get(name, {}).get("value") is not None
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=f"gamma={g:g}")
            ax.set_title(_metric_title(name, results), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps")
        ax.legend(fontsize=7)
    fig.suptitle(f"N = {results.get('n')}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


__all__ = ["markdown", "metrics_vs_steps", "spectrogram_grid", "write_report"]
