"""The evaluation runner: three modes as library functions that emit events and return results.

- :func:`evaluate_folders`: a folder of generated audio, optionally against a reference folder
  (paired by file name) and a captions CSV;
- :func:`evaluate_model`: generate with a model from a prompts file or SynthCaps at several step
  counts and gammas, evaluate each setting, and measure content preservation (1-step vs N-step
  output of the same prompt and seed, at gamma = 0 and gamma = 1);
- :func:`compare_models`: two models on the same prompts and seeds (e.g. a teacher at 40 steps
  and its student at 1 step).

Each returns the results dict that :func:`soundctm.eval.report.write_report` turns into
``results.json``, ``report.md`` and PNG figures (written when ``out`` is given). Embeddings are
cached under ``cache_dir`` by the SHA-256 of the audio content, the embedder name and its weight
checksum, as ``.npy`` files (``allow_pickle=False``), so re-runs skip the embedders.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from soundctm._version import __version__
from soundctm.errors import DataError, InvalidArgumentError
from soundctm.eval.evalset import EvalItem, EvalSet, load_folders
from soundctm.events import BatchFinished, Callback, GenerationStarted, Message, SolverStep, emit

RESULTS_VERSION = 1
DEFAULT_CACHE = Path("~/.cache/soundctm/embeddings")
#: Metrics tried when none are named: each runs only if the data and the embedder allow it.
DEFAULT_METRICS: tuple[str, ...] = ("fd", "kl", "is", "clap", "synthcaps-attributes")
WANTS = {
    "reference": "reference audio (pass --reference DIR, or evaluate a model on synthcaps)",
    "captions": "captions (pass --captions CSV, or .txt files beside the audio)",
    "attributes": "SynthCaps attributes (a synthcaps.jsonl manifest, or --prompts synthcaps)",
}


# ---------------------------------------------------------------------- events
@dataclass(frozen=True)
class EvalStage:
    """A stage of the run started (``total`` units of work, or None if unknown)."""

    text: str
    total: int | None = None


@dataclass(frozen=True)
class EvalTick:
    """``done`` of ``total`` units of the current stage are finished."""

    done: int
    total: int


# ---------------------------------------------------------------------- embedding cache
class EmbeddingCache:
    """Arrays on disk under ``root/<embedder>-<checksum[:16]>/<kind>/<key[:2]>/<key>.npy``.

    ``key`` is the SHA-256 of the audio (file bytes, or float32 samples for audio made in
    memory); nothing is pickled. ``root=None`` keeps nothing."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.hits = 0
        self.misses = 0

    def _path(self, namespace: str, kind: str, key: str) -> Path:
        assert self.root is not None
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in key)
        return self.root / namespace / kind / safe[:2] / f"{safe}.npy"

    def get(self, namespace: str, kind: str, key: str) -> np.ndarray | None:
        if self.root is None:
            self.misses += 1
            return None
        path = self._path(namespace, kind, key)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, namespace: str, kind: str, key: str, value: np.ndarray) -> None:
        if self.root is None:
            return
        path = self._path(namespace, kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(value, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except OSError:  # a cache that cannot be written only costs time
            return


def _namespace(embedder: Any) -> str:
    checksum = str(getattr(embedder, "checksum", "none"))
    return f"{embedder.name}-{checksum[:16]}-{int(embedder.sample_rate)}"


# ---------------------------------------------------------------------- the context
class EvalContext:
    """What metrics use during a run: embedders built once, embeddings through the cache."""

    def __init__(
        self,
        cache: EmbeddingCache,
        *,
        registry: Any | None = None,
        device: str = "cpu",
        callback: Callback | None = None,
        batch_size: int = 16,
    ) -> None:
        from soundctm.plugins.registry import get_registry

        self.cache = cache
        self.registry = registry or get_registry()
        self.device = device
        self.callback = callback
        self.batch_size = max(1, int(batch_size))
        self._embedders: dict[str, Any] = {}

    def embedder(self, name: str, **params: Any) -> Any:
        key = json.dumps([name, params], sort_keys=True, default=str)
        if key not in self._embedders:
            emb = self.registry.build("embedder", name, **params)
            if hasattr(emb, "to") and callable(emb.to):
                emb = emb.to(self.device)
            if hasattr(emb, "eval") and callable(emb.eval):
                emb.eval()
            self._embedders[key] = emb
        return self._embedders[key]

    def embedder_info(self) -> dict[str, dict[str, Any]]:
        """Name, checksum, rate and dimension of every embedder used so far."""
        return {
            e.name: {
                "checksum": str(getattr(e, "checksum", "none")),
                "sample_rate": int(e.sample_rate),
                "dim": int(e.dim),
            }
            for e in self._embedders.values()
        }

    def _per_item(self, embedder: Any, evalset: EvalSet, which: str, kind: str) -> list[np.ndarray]:
        """One array per item (``embed``: ``[dim]``, ``frames``: ``[windows, dim]``, ``logits``:
        ``[classes]``), from the cache or computed one clip at a time."""
        import torch

        from soundctm.eval.embedders import resample_for

        ns = _namespace(embedder)
        items = evalset.items
        keys: list[str] = []
        for it in items:
            if which == "reference" and it.reference is None:
                raise DataError(f"item {it.key!r} has no reference audio")
            digest = it.audio_sha256 if which == "generated" else it.reference_sha256
            keys.append(f"{digest}-{evalset.sample_rate}")
        out: list[np.ndarray | None] = [self.cache.get(ns, kind, k) for k in keys]
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            emit(self.callback, EvalStage(f"{kind} {embedder.name} ({which})", len(todo)))
        fn = embedder.embed_frames if kind == "frames" else getattr(embedder, kind)
        for done, i in enumerate(todo, start=1):
            it = items[i]
            audio = it.audio if which == "generated" else it.reference
            x = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None]
            x = resample_for(embedder, x, evalset.sample_rate)
            with torch.inference_mode():
                y = fn(x.to(self.device))
            arr = np.asarray(y[0].detach().float().cpu().numpy(), dtype=np.float32)
            if not np.all(np.isfinite(arr)):
                raise DataError(
                    f"embedder {embedder.name!r} gave non-finite values for {it.key!r} "
                    f"({which}); check that audio file"
                )
            self.cache.put(ns, kind, keys[i], arr)
            out[i] = arr
            emit(self.callback, EvalTick(done, len(todo)))
        return [o for o in out if o is not None]

    def embeddings(
        self, embedder: Any, evalset: EvalSet, which: str, kind: str = "embed"
    ) -> np.ndarray:
        rows = self._per_item(embedder, evalset, which, kind)
        if kind == "frames":
            return np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows], axis=0)
        return np.stack(rows)

    def logits(self, embedder: Any, evalset: EvalSet, which: str) -> np.ndarray:
        return np.stack(self._per_item(embedder, evalset, which, "logits"))

    def text_embeddings(self, embedder: Any, texts: list[str]) -> np.ndarray:
        import torch

        ns = _namespace(embedder)
        out = []
        for t in texts:
            key = hashlib.sha256(t.encode("utf-8")).hexdigest()
            got = self.cache.get(ns, "text", key)
            if got is None:
                with torch.inference_mode():
                    got = embedder.embed_text([t])[0].detach().float().cpu().numpy()
                self.cache.put(ns, "text", key, got)
            out.append(got)
        return np.stack(out)


# ---------------------------------------------------------------------- choosing metrics
MetricSpec = tuple[str, dict[str, Any]]


def metric_specs(
    metrics: Sequence[str] | None,
    *,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
) -> tuple[list[MetricSpec], bool]:
    """The metrics of a run and whether they were chosen explicitly.

    A preset fixes its own metrics (``metrics`` must then be empty). Otherwise ``embedder`` is
    the embedder of ``fd`` and (without ``classifier``) the classifier of ``kl``/``is`` and the
    CLAP model of ``clap``."""
    if preset is not None:
        from soundctm.eval.presets import get_preset

        if metrics:
            raise InvalidArgumentError("--preset fixes the metrics; drop --metrics or --preset")
        p = get_preset(preset)
        specs = [(m, dict(params)) for m, params in p.metrics]
        if fad_inf:
            specs = [(m, {**pr, "fad_inf": True} if m == "fd" else pr) for m, pr in specs]
        return specs, True
    names = list(metrics) if metrics else list(DEFAULT_METRICS)
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"a metric is named twice in {','.join(names)}")
    specs: list[MetricSpec] = []
    for name in names:
        params: dict[str, Any] = {}
        if name == "fd":
            params = {"embedder": embedder, "fad_inf": fad_inf}
        elif name in ("kl", "is"):
            params = {"classifier": classifier or embedder}
        elif name == "clap":
            params = {"embedder": embedder}
        specs.append((name, params))
    return specs, bool(metrics)


def build_metrics(specs: Sequence[MetricSpec], registry: Any | None = None) -> list[Any]:
    """Instances of the metric plugins (one-line errors for unknown names or bad params)."""
    from soundctm.plugins.registry import get_registry

    registry = registry or get_registry()
    out = []
    for name, params in specs:
        metric = registry.build("metric", name, **params)
        if not callable(getattr(metric, "compute", None)):
            raise InvalidArgumentError(
                f"metric {name!r} is not a metric plugin (it has no compute method); "
                "update the plugin that provides it"
            )
        out.append(metric)
    return out


def prepare_metrics(
    specs: Sequence[MetricSpec],
    explicit: bool,
    available: set[str],
    context: EvalContext,
    *,
    preset: str | None = None,
    allow_none: bool = False,
) -> tuple[list[Any], dict[str, str]]:
    """Build the metrics and their embedders before any work (so a missing weight file stops
    the run at once). Returns the metrics to run and ``{name: reason}`` of skipped ones."""
    from soundctm.eval.embedders import has_logits, has_text

    if preset is not None:
        from soundctm.eval.presets import check_preset, get_preset

        check_preset(get_preset(preset), context.registry)
    chosen: list[Any] = []
    skipped: dict[str, str] = {}
    for name, params in specs:
        factory = context.registry.load("metric", name)
        missing = [r for r in getattr(factory, "requires", ()) if r not in available]
        if missing:
            if explicit:
                raise DataError(f"metric {name!r} needs {WANTS.get(missing[0], missing[0])}")
            skipped[name] = f"needs {missing[0]}"
            continue
        (metric,) = build_metrics([(name, params)], context.registry)
        embs = [context.embedder(e, **p) for e, p in metric.embedders()]
        if name in ("kl", "is") and not all(has_logits(e) for e in embs):
            if explicit:
                raise InvalidArgumentError(
                    f"metric {name!r} needs a classifier with label logits; "
                    f"{', '.join(e.name for e in embs)} has none (pass --classifier NAME)"
                )
            skipped[name] = f"{embs[0].name} is not a classifier"
            continue
        if name == "clap" and not all(has_text(e) for e in embs):
            if explicit:
                raise InvalidArgumentError(
                    f"metric 'clap' needs an embedder with a text tower; "
                    f"{', '.join(e.name for e in embs)} has none"
                )
            skipped[name] = f"{embs[0].name} has no text tower"
            continue
        chosen.append(metric)
    if not chosen and not allow_none:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "none selected"
        raise DataError(f"no metric can run on this input ({reasons})")
    return chosen, skipped


def run_metrics(
    evalset: EvalSet, metrics: Sequence[Any], context: EvalContext
) -> dict[str, dict[str, Any]]:
    """``{metric name: result}`` of every metric on ``evalset``."""
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        emit(context.callback, Message(f"{metric.name} on {evalset.label} (N={evalset.n})"))
        out[metric.name] = _jsonable(metric.compute(evalset, context))
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------- shared pieces
def _header(mode: str, context: EvalContext, **extra: Any) -> dict[str, Any]:
    return {
        "soundctm_eval": RESULTS_VERSION,
        "mode": mode,
        "soundctm_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def _finish(
    results: dict[str, Any],
    context: EvalContext,
    examples: dict[str, Any] | None,
    out: Path | None,
) -> dict[str, Any]:
    results["embedders"] = context.embedder_info()
    results["cache"] = {
        "dir": str(context.cache.root) if context.cache.root else None,
        "hits": context.cache.hits,
        "misses": context.cache.misses,
    }
    if out is not None:
        from soundctm.eval.report import write_report

        emit(context.callback, EvalStage("writing the report"))
        results["files"] = write_report(results, Path(out), examples=examples)
    return _jsonable(results)


def make_context(
    cache_dir: str | Path | None,
    *,
    use_cache: bool = True,
    registry: Any | None = None,
    device: str = "cpu",
    callback: Callback | None = None,
) -> EvalContext:
    root = (Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE) if use_cache else None
    return EvalContext(EmbeddingCache(root), registry=registry, device=device, callback=callback)


# ---------------------------------------------------------------------- mode a: folders
def evaluate_folders(
    generated: str | Path,
    *,
    reference: str | Path | None = None,
    captions: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
    sample_rate: int | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    callback: Callback | None = None,
    registry: Any | None = None,
) -> dict[str, Any]:
    """Evaluate a folder of generated audio (mode a); see :func:`load_folders` for pairing."""
    context = make_context(
        cache_dir, use_cache=use_cache, registry=registry, device=device, callback=callback
    )
    specs, explicit = metric_specs(
        metrics, preset=preset, embedder=embedder, classifier=classifier, fad_inf=fad_inf
    )
    emit(callback, EvalStage("reading audio"))
    evalset = load_folders(
        generated, reference=reference, captions=captions, sample_rate=sample_rate
    )
    chosen, skipped = prepare_metrics(specs, explicit, evalset.available(), context, preset=preset)
    values = run_metrics(evalset, chosen, context)
    results = _header(
        "folders",
        context,
        n=evalset.n,
        sample_rate=evalset.sample_rate,
        preset=preset,
        inputs=evalset.info,
        metrics=[m.name for m in chosen],
        skipped=skipped,
        runs=[{"label": evalset.label, "n": evalset.n, "metrics": values}],
    )
    examples = _examples_folders(evalset)
    return _finish(results, context, examples, Path(out) if out is not None else None)


def _examples_folders(evalset: EvalSet, rows: int = 4) -> dict[str, Any]:
    items = evalset.items[:rows]
    columns = ["generated"] + (["reference"] if evalset.has_reference else [])
    return {
        "sample_rate": evalset.sample_rate,
        "columns": columns,
        "rows": [
            {
                "title": it.caption or it.key,
                "audio": [it.audio] + ([it.reference] if evalset.has_reference else []),
            }
            for it in items
        ],
    }


# ---------------------------------------------------------------------- prompts
@dataclass
class PromptSet:
    """Prompts to generate from: keys, captions, and optionally references and attributes."""

    keys: list[str]
    captions: list[str]
    references: dict[str, np.ndarray] | None
    attributes: list[dict[str, str] | None]
    description: str


def synthcaps_prompts(
    n: int, sample_rate: int, seconds: float, *, split: str = "test", seed: int = 0
) -> PromptSet:
    """``n`` SynthCaps items: captions, attributes and the real clips as references (rendered at
    ``sample_rate`` and ``seconds`` clamped to SynthCaps' 1-10 s)."""
    from soundctm.builtin.synthcaps.dataset import item_id
    from soundctm.builtin.synthcaps.generator import generate

    ref_seconds = min(10.0, max(1.0, float(seconds)))
    keys, caps, attrs, refs = [], [], [], {}
    for i in range(n):
        item = generate(split, i, seed, int(sample_rate), ref_seconds)
        key = item_id(split, i, seed)
        keys.append(key)
        caps.append(item.caption)
        attrs.append(dict(item.attributes))
        refs[key] = np.asarray(item.audio, dtype=np.float32)
    return PromptSet(keys, caps, refs, attrs, f"synthcaps ({split} split, seed {seed}, N={n})")


def read_prompts(
    path: str | Path,
    *,
    n: int | None = None,
    reference: str | Path | None = None,
    sample_rate: int | None = None,
) -> PromptSet:
    """Prompts from a CSV (``caption`` column, optional ``file_name`` for pairing with
    ``reference``) or a text file (one prompt per line, ``#`` lines skipped)."""
    from soundctm.eval.evalset import audio_files, read_clip

    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {str(path)!r} does not exist; check --prompts")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts file {path} ({exc})") from exc
    keys: list[str] = []
    caps: list[str] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "caption" not in (reader.fieldnames or []):
            raise DataError(
                f"prompts file {path} has no 'caption' column; its header must be "
                "'file_name,caption' (or just 'caption')"
            )
        for line, row in enumerate(reader, start=2):
            cap = " ".join((row.get("caption") or "").split())
            if not cap:
                raise DataError(f"prompts file {path} line {line}: empty caption")
            name = (row.get("file_name") or "").strip()
            keys.append(Path(name).stem if name else f"prompt-{len(keys):05d}")
            caps.append(cap)
    else:
        for ln in text.splitlines():
            ln = ln.strip()
            if ln and not ln.startswith("#"):
                keys.append(f"prompt-{len(keys):05d}")
                caps.append(ln)
    if not caps:
        raise DataError(f"prompts file {path} has no prompts")
    if len(set(keys)) != len(keys):
        raise DataError(f"prompts file {path} names a file twice; file names must be unique")
    if n is not None:
        keys, caps = keys[:n], caps[:n]
    refs = None
    if reference is not None:
        files = audio_files(Path(reference), "reference")
        missing = [k for k in keys if k not in files]
        if missing:
            raise DataError(
                f"{len(missing)} prompt(s) have no same-named reference file in {reference} "
                f"(first: {missing[0]!r}); give the prompts CSV a file_name column that names them"
            )
        refs = {}
        for k in keys:
            audio, _ = read_clip(files[k], sample_rate)
            refs[k] = audio
    return PromptSet(keys, caps, refs, [None] * len(keys), _portable_path(path))


def _prompt_set(
    prompts: str | Path,
    n: int | None,
    reference: str | Path | None,
    sample_rate: int,
    seconds: float,
) -> PromptSet:
    if str(prompts) == "synthcaps":
        if reference is not None:
            raise InvalidArgumentError(
                "--prompts synthcaps brings its own reference clips; drop --reference"
            )
        return synthcaps_prompts(n or 16, sample_rate, seconds)
    return read_prompts(prompts, n=n, reference=reference, sample_rate=sample_rate)


# ---------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Setting:
    """One generation setting of a model."""

    steps: int
    gamma: float

    @property
    def label(self) -> str:
        return f"steps={self.steps} gamma={self.gamma:g}"


def _forward(callback: Callback | None, label: str) -> Callback | None:
    if callback is None:
        return None

    def relay(event: Any) -> None:
        if isinstance(event, GenerationStarted):
            callback(EvalStage(f"generating {label}", event.total))
        elif isinstance(event, BatchFinished):
            callback(EvalTick(event.done, event.total))
        elif not isinstance(event, SolverStep):
            callback(event)

    return relay


def _generate(
    pipe: Any,
    ps: PromptSet,
    seeds: list[int],
    params: dict[str, Any],
    label: str,
    batch_size: int,
    callback: Callback | None,
    audio_dir: Path | None,
) -> dict[str, np.ndarray]:
    gen = pipe.generate(
        ps.captions,
        seeds=seeds,
        batch_size=batch_size,
        callback=_forward(callback, label),
        **params,
    )
    out = {
        k: np.clip(a.numpy().astype(np.float32), -1.0, 1.0)
        for k, a in zip(ps.keys, gen.audio, strict=True)
    }
    if audio_dir is not None:
        import soundfile as sf

        from soundctm.engine.files import atomic_path, ensure_writable_dir

        folder = ensure_writable_dir(audio_dir / _slug(label))
        for k, a in out.items():
            with atomic_path(folder / f"{k}.wav") as tmp:
                sf.write(str(tmp), a, gen.sample_rate, subtype="PCM_16", format="WAV")
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace(" ", "_"))


def _evalset(
    ps: PromptSet,
    audio: dict[str, np.ndarray],
    sample_rate: int,
    label: str,
    references: dict[str, np.ndarray] | None,
) -> EvalSet:
    items = [
        EvalItem(
            key=k,
            audio=audio[k],
            caption=cap,
            reference=None if references is None else references[k],
            attributes=attrs,
        )
        for k, cap, attrs in zip(ps.keys, ps.captions, ps.attributes, strict=True)
    ]
    return EvalSet(items, sample_rate, label)


def _load_pipeline(path: str | Path, device: str, registry: Any | None) -> Any:
    from soundctm.engine.pipeline import Pipeline

    return Pipeline.load(Path(path), device=device, registry=registry)


def _portable_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it, else absolute.

    Reports are often committed next to the code (docs/default-model/): a path relative to the
    repository travels, an absolute one names the machine that wrote it.
    """
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _model_info(pipe: Any, path: str | Path) -> dict[str, Any]:
    from soundctm.engine.checkpoint import card_sha256

    return {
        "path": _portable_path(Path(path)),
        "kind": pipe.card.kind,
        "card_sha256": card_sha256(Path(path)),
        "sample_rate": int(pipe.card.sample_rate),
    }


def _check_steps(steps: Sequence[int], gammas: Sequence[float]) -> None:
    if not steps:
        raise InvalidArgumentError("--steps needs at least one step count, e.g. 1,2,4,16")
    for s in steps:
        if int(s) != s or s < 1:
            raise InvalidArgumentError(f"step counts must be whole numbers >= 1, got {s}")
    for g in gammas:
        if not 0.0 <= g <= 1.0:
            raise InvalidArgumentError(f"gamma must be between 0 and 1, got {g}")


# ---------------------------------------------------------------------- mode b: a model
def evaluate_model(
    model: str | Path,
    *,
    prompts: str | Path = "synthcaps",
    n: int | None = None,
    steps: Sequence[int] = (1, 2, 4, 16),
    gammas: Sequence[float] = (0.0,),
    nu: float | None = None,
    omega: float | None = None,
    seed: int = 0,
    seconds: float | None = None,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
    content: bool = True,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
    callback: Callback | None = None,
    registry: Any | None = None,
) -> dict[str, Any]:
    """Generate with ``model`` at every (step count, gamma) and evaluate each setting (mode b).

    Prompt ``i`` uses seed ``seed + i`` in every setting, so settings differ only in sampling.
    With ``content=True`` and a CTM student, every step count above 1 is also generated at
    gamma = 0 and gamma = 1 and compared with the 1-step output (content preservation)."""
    steps = [int(s) for s in steps]
    gammas = [float(g) for g in gammas]
    _check_steps(steps, gammas)
    if n is not None and n < 1:
        raise InvalidArgumentError(f"-n must be at least 1, got {n}")
    context = make_context(
        cache_dir, use_cache=use_cache, registry=registry, device=device, callback=callback
    )
    specs, explicit = metric_specs(
        metrics, preset=preset, embedder=embedder, classifier=classifier, fad_inf=fad_inf
    )
    emit(callback, EvalStage("loading the model"))
    pipe = _load_pipeline(model, device, registry)
    base = pipe.resolve(nu=nu, omega=omega, seconds=seconds).arguments()
    if not pipe.is_student or base["solver"] != "gamma":
        if any(g != 0.0 for g in gammas):
            raise InvalidArgumentError(
                "gamma applies to CTM students with the gamma solver; drop --gamma"
            )
        gammas = [0.0]
    rate = int(pipe.card.sample_rate)
    ps = _prompt_set(prompts, n, reference, rate, base["seconds"])
    available = {"captions"} | ({"reference"} if ps.references is not None else set())
    if all(a for a in ps.attributes):
        available.add("attributes")
    content_runs = content and pipe.is_student and base["solver"] == "gamma"
    chosen, skipped = prepare_metrics(
        specs, explicit, available, context, preset=preset, allow_none=content_runs
    )
    seeds = [seed + i for i in range(len(ps.keys))]

    main = [Setting(s, g if s > 1 else 0.0) for s in steps for g in gammas]
    main = list(dict.fromkeys(main))
    cp_steps = sorted({s for s in steps if s > 1}) if content and pipe.is_student else []
    if content and pipe.is_student and base["solver"] == "gamma" and not cp_steps:
        cp_steps = [4]
    cp = [Setting(s, g) for s in cp_steps for g in (0.0, 1.0)] if base["solver"] == "gamma" else []
    one = Setting(1, 0.0)
    todo = list(dict.fromkeys(main + ([one] if cp else []) + cp))
    audio_dir = Path(out) / "audio" if out is not None else None
    generated: dict[Setting, dict[str, np.ndarray]] = {}
    for st in todo:
        params = {**base, "steps": st.steps, "gamma": st.gamma}
        generated[st] = _generate(
            pipe, ps, seeds, params, st.label, batch_size, callback, audio_dir
        )

    runs = []
    for st in main:
        es = _evalset(ps, generated[st], rate, st.label, ps.references)
        runs.append(
            {
                "label": st.label,
                "model": "model",
                "steps": st.steps,
                "gamma": st.gamma,
                "nu": base["nu"],
                "omega": base["omega"],
                "solver": base["solver"],
                "n": es.n,
                "metrics": run_metrics(es, chosen, context),
            }
        )
    content_rows = []
    if cp:
        from soundctm.eval.plugins import ContentPreservation

        metric = ContentPreservation()
        for st in cp:
            es = _evalset(ps, generated[st], rate, st.label, generated[one])
            emit(callback, Message(f"content preservation: {st.label} vs 1 step"))
            r = _jsonable(metric.compute(es, context))
            content_rows.append({"steps": st.steps, "gamma": st.gamma, **r})
    results = _header(
        "model",
        context,
        n=len(ps.keys),
        sample_rate=rate,
        seed=seed,
        seconds=base["seconds"],
        preset=preset,
        prompts=ps.description,
        models={"model": _model_info(pipe, model)},
        metrics=[m.name for m in chosen],
        skipped=skipped,
        runs=runs,
        content_preservation={
            "similarity": "spectrogram",
            "reference_steps": 1,
            "rows": content_rows,
        }
        if content_rows
        else None,
    )
    examples = _examples_settings(ps, generated, todo, rate)
    return _finish(results, context, examples, Path(out) if out is not None else None)


def _examples_settings(
    ps: PromptSet,
    generated: dict[Setting, dict[str, np.ndarray]],
    settings: list[Setting],
    sample_rate: int,
    rows: int = 4,
    columns: int = 8,
) -> dict[str, Any]:
    order = sorted(settings, key=lambda s: (s.steps > 1, s.gamma, s.steps))[:columns]
    return {
        "sample_rate": sample_rate,
        "columns": [s.label for s in order],
        "rows": [
            {"title": cap, "audio": [generated[s][k] for s in order]}
            for k, cap in list(zip(ps.keys, ps.captions, strict=True))[:rows]
        ],
    }


# ---------------------------------------------------------------------- mode c: two models
def compare_models(
    model_a: str | Path,
    model_b: str | Path,
    *,
    prompts: str | Path = "synthcaps",
    n: int | None = None,
    steps_a: int | None = None,
    steps_b: int | None = None,
    gamma: float | None = None,
    nu: float | None = None,
    omega: float | None = None,
    seed: int = 0,
    seconds: float | None = None,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
    callback: Callback | None = None,
    registry: Any | None = None,
) -> dict[str, Any]:
    """Two models on the same prompts and seeds (mode c), each at its own step count (default:
    its card's); also how similar B's output is to A's, clip by clip."""
    if n is not None and n < 1:
        raise InvalidArgumentError(f"-n must be at least 1, got {n}")
    context = make_context(
        cache_dir, use_cache=use_cache, registry=registry, device=device, callback=callback
    )
    specs, explicit = metric_specs(
        metrics, preset=preset, embedder=embedder, classifier=classifier, fad_inf=fad_inf
    )
    emit(callback, EvalStage("loading the models"))
    pipes = [_load_pipeline(m, device, registry) for m in (model_a, model_b)]
    rates = [int(p.card.sample_rate) for p in pipes]
    if rates[0] != rates[1]:
        raise DataError(
            f"the two models generate at different sample rates ({rates[0]} and {rates[1]} Hz); "
            "compare models of one sample rate, or evaluate each on its own"
        )
    params = []
    for pipe, st in zip(pipes, (steps_a, steps_b), strict=True):
        student = pipe.is_student
        params.append(
            pipe.resolve(
                steps=st,
                gamma=gamma if student else None,
                nu=nu if student else None,
                omega=omega,
                seconds=seconds,
            ).arguments()
        )
    secs = min(p["seconds"] for p in params)
    params = [{**p, "seconds": secs} for p in params]
    ps = _prompt_set(prompts, n, reference, rates[0], secs)
    available = {"captions"} | ({"reference"} if ps.references is not None else set())
    if all(a for a in ps.attributes):
        available.add("attributes")
    chosen, skipped = prepare_metrics(specs, explicit, available, context, preset=preset)
    seeds = [seed + i for i in range(len(ps.keys))]
    audio_dir = Path(out) / "audio" if out is not None else None
    labels = [
        f"{tag}: {p.card.kind} steps={pr['steps']}"
        for tag, p, pr in zip(("A", "B"), pipes, params, strict=True)
    ]
    outs = [
        _generate(pipe, ps, seeds, pr, lab, batch_size, callback, audio_dir)
        for pipe, pr, lab in zip(pipes, params, labels, strict=True)
    ]
    runs = []
    for tag, lab, pr, audio in zip(("A", "B"), labels, params, outs, strict=True):
        es = _evalset(ps, audio, rates[0], lab, ps.references)
        runs.append(
            {
                "label": lab,
                "model": tag,
                **{k: pr[k] for k in ("steps", "gamma", "nu", "omega", "solver")},
                "n": es.n,
                "metrics": run_metrics(es, chosen, context),
            }
        )
    from soundctm.eval.plugins import ContentPreservation

    paired = ContentPreservation().compute(
        _evalset(ps, outs[1], rates[0], "B vs A", outs[0]), context
    )
    results = _header(
        "compare",
        context,
        n=len(ps.keys),
        sample_rate=rates[0],
        seed=seed,
        seconds=secs,
        preset=preset,
        prompts=ps.description,
        models={"A": _model_info(pipes[0], model_a), "B": _model_info(pipes[1], model_b)},
        metrics=[m.name for m in chosen],
        skipped=skipped,
        runs=runs,
        b_vs_a=_jsonable(paired),
    )
    examples = {
        "sample_rate": rates[0],
        "columns": labels,
        "rows": [
            {"title": cap, "audio": [outs[0][k], outs[1][k]]}
            for k, cap in list(zip(ps.keys, ps.captions, strict=True))[:4]
        ],
    }
    return _finish(results, context, examples, Path(out) if out is not None else None)


__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_METRICS",
    "EmbeddingCache",
    "EvalContext",
    "EvalStage",
    "EvalTick",
    "PromptSet",
    "compare_models",
    "evaluate_folders",
    "evaluate_model",
    "metric_specs",
    "read_prompts",
    "run_metrics",
    "synthcaps_prompts",
]
