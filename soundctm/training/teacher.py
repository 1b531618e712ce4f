"""EDM teacher training (method.md §2) for any registered backbone, data set, autoencoder and
text encoder, on one CPU or many GPUs through HF accelerate.

One flat loop, nanoGPT style: deterministic data order and noise (a function of seed, step and
rank), gradient accumulation and mixed precision through accelerate, EMA weights, atomic
sample-able checkpoints plus a pickle-free resumable state, JSONL metrics, a NaN stop.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.engine.checkpoint import ComponentCard, SamplingDefaults
from soundctm.engine.pipeline import Pipeline, expand_component
from soundctm.errors import InvalidArgumentError
from soundctm.events import Callback, CheckpointSaved, Message, emit
from soundctm.plugins.registry import Registry, get_registry
from soundctm.training.data import (
    DataError,
    LatentCacheDataset,
    build_latent_cache,
    cache_matches,
    dataset_fingerprint,
    drop_captions,
    mix_batch,
)
from soundctm.training.ema import ema_update
from soundctm.training.loop import (
    TrainingDiverged,
    append_jsonl,
    check_finite,
    make_accelerator,
    point_latest,
    prune,
    resolve_resume,
    rewind_jsonl,
    start_run,
    write_previews,
)
from soundctm.training.losses import edm_denoising_loss, sample_edm_sigmas
from soundctm.training.rng import generator
from soundctm.training.state import load_state, save_state

__all__ = ["TeacherSpec", "TrainingDiverged", "train_teacher"]


@dataclass
class TeacherSpec:
    """Everything that defines a teacher training run (plain values; the CLI fills it)."""

    out: Path
    backbone: ComponentCard
    text_encoder: ComponentCard
    autoencoder: ComponentCard
    dataset: ComponentCard
    valid_dataset: ComponentCard | None = None
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay_steps: int = 0
    ema_decay: float = 0.999
    sigma_data: float = 0.5
    seconds: float = 3.0
    caption_dropout: float = 0.1
    p_mean: float = -1.2
    p_std: float = 1.2
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    save_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    mix_prob: float = 0.0
    latent_cache: bool = False
    heldout_clips: int = 32
    preview_prompts: list[str] = field(default_factory=list)
    preview_steps: int = 18
    omega: float = 3.0
    tracker: str | None = None

    def validate(self) -> None:
        """Refuse impossible settings with one clear line."""
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (
                0 <= self.decay_steps <= self.steps,
                "decay_steps must be in [0, steps] (the last decay_steps steps anneal lr to 0)",
            ),
            (0 <= self.ema_decay <= 1, "ema_decay must be in [0, 1]"),
            (self.seconds > 0, "seconds must be > 0"),
            (0 <= self.caption_dropout < 1, "caption_dropout must be in [0, 1)"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.save_every >= 1 and self.log_every >= 1, "save_every/log_every must be >= 1"),
            (
                self.mixed_precision in {"no", "bf16", "fp16"},
                "mixed_precision must be no, bf16 or fp16",
            ),
            (0 <= self.mix_prob <= 1, "mix_prob must be in [0, 1]"),
            (
                not (self.latent_cache and self.mix_prob > 0),
                "latent_cache and mix_prob cannot be combined (mixing works on audio)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        return json.loads(json.dumps(data, default=str))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up, ``min(decay, (1 + step) / (10 + step))``, so the average is not
    dominated by the random initialisation in short runs."""
    return min(decay, (1 + step) / (10 + step))


def lr_at(step: int, lr: float, warmup: int, steps: int = 0, decay: int = 0) -> float:
    """Warm-up, stable, decay: linear warm-up over ``warmup`` steps, constant, then linear decay
    to 0 over the last ``decay`` of ``steps`` steps (``lr * (steps - step) / decay``).

    The constant phase does not depend on ``steps``, so a run resumed with a larger total
    matches one started with it up to ``steps - decay``.
    """
    rate = lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
    if decay > 0 and step >= steps - decay:
        rate = min(rate, lr * max(0, steps - step) / decay)
    return rate


def build_dataset(registry: Registry, card: ComponentCard, sample_rate: int, seconds: float) -> Any:
    """Build a data set, passing the model's sample rate and clip length where it takes them."""
    factory = registry.load("dataset", card.name)
    params = dict(card.params)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    for key, value in (("sample_rate", sample_rate), ("seconds", seconds)):
        if key in accepted:
            if key in params and float(params[key]) != float(value):
                raise InvalidArgumentError(
                    f"dataset {card.name!r} has {key} = {params[key]} but the model uses "
                    f"{value}; drop {key} from the dataset parameters"
                )
            params[key] = value
    dataset = registry.build("dataset", card.name, **params)
    if len(dataset) == 0:
        raise DataError(f"dataset {card.name!r} {card.params} is empty; nothing to train on")
    rate = getattr(dataset, "sample_rate", sample_rate)
    if rate != sample_rate:
        raise DataError(
            f"dataset {card.name!r} yields {rate} Hz audio but the autoencoder "
            f"expects {sample_rate} Hz"
        )
    return dataset


def max_supported_seconds(backbone: nn.Module, autoencoder: Any, seconds: float) -> float:
    """The longest clip whose latent fits the backbone's ``max_frames`` (or ``seconds``)."""
    max_frames = getattr(backbone, "max_frames", None)
    if not max_frames:
        return seconds
    per_second = autoencoder.latent_shape(10.0)[-1] / 10.0
    best = math.floor(max_frames / per_second * 100) / 100
    while best > seconds and autoencoder.latent_shape(best)[-1] > max_frames:
        best = round(best - 0.01, 2)
    if autoencoder.latent_shape(seconds)[-1] > max_frames:
        raise InvalidArgumentError(
            f"{seconds} s clips need {autoencoder.latent_shape(seconds)[-1]} latent frames but "
            f"the backbone takes at most {max_frames}; shorten seconds or raise max_frames"
        )
    return max(best, seconds)


@torch.no_grad()
def heldout_loss(
    ctm_forward: Callable[..., Tensor],
    encode_audio: Callable[[Tensor], Tensor],
    encode_text: Callable[[list[str]], Any],
    dataset: Any,
    *,
    sigma_data: float,
    n: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """The EDM denoising loss on the first ``n`` clips of ``dataset`` at fixed noise levels and
    noise (log-spaced over the training distribution's +-2 std), comparable across checkpoints."""
    n = min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    audio = torch.stack([torch.as_tensor(it["audio"]).float() for it in items]).to(device)
    x0 = encode_audio(audio)
    g = generator(seed, "heldout")
    sigma = torch.exp(torch.linspace(-1.2 - 2.4, -1.2 + 2.4, n)).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    cond = encode_text([str(it["caption"]) for it in items]).to(device)
    denoised = ctm_forward(x0 + sigma.view(-1, *([1] * (x0.ndim - 1))) * noise, sigma, cond)
    return float(edm_denoising_loss(denoised, x0, sigma, sigma_data))


def _state_compatible(meta: dict[str, Any], spec: TeacherSpec) -> None:
    old = meta.get("spec", {})
    for key in (
        "backbone",
        "text_encoder",
        "autoencoder",
        "sigma_data",
        "seconds",
        "batch_size",
        "grad_accum",
        "seed",
    ):
        new = spec.to_json()[key]
        if key in old and old[key] != new:
            raise InvalidArgumentError(
                f"cannot resume: {key} was {old[key]} in the saved run but is {new} now; "
                "use the run's original settings or start a new --out"
            )


def train_teacher(
    spec: TeacherSpec,
    *,
    resume: Path | bool | None = None,
    callback: Callback | None = None,
    registry: Registry | None = None,
) -> Path:
    """Train an EDM teacher; returns the folder of the last sample-able checkpoint.

    ``resume``: a state folder, a run folder, or True for the newest state in ``spec.out``.
    """
    spec.validate()
    registry = registry or get_registry()
    for kind, card in (
        ("backbone", spec.backbone),
        ("text_encoder", spec.text_encoder),
        ("autoencoder", spec.autoencoder),
        ("dataset", spec.dataset),
        ("dataset", spec.valid_dataset),
    ):
        if card is not None:
            registry.get(kind, card.name)  # fail at once on an unknown name
    spec.backbone = expand_component(registry, "backbone", spec.backbone)
    spec.text_encoder = expand_component(registry, "text_encoder", spec.text_encoder)
    spec.autoencoder = expand_component(registry, "autoencoder", spec.autoencoder)
    accelerator = make_accelerator(
        mixed_precision=spec.mixed_precision,
        grad_accum=spec.grad_accum,
        tracker=spec.tracker,
        out=spec.out,
    )
    device = accelerator.device
    main = accelerator.is_main_process
    out = Path(spec.out)

    state_path = resolve_resume(out, resume, main=main)

    torch.manual_seed(spec.seed)  # initial weights
    probe_ae = registry.build("autoencoder", spec.autoencoder.name, **spec.autoencoder.params)
    probe_bb = registry.build("backbone", spec.backbone.name, **spec.backbone.params)
    max_seconds = max_supported_seconds(probe_bb, probe_ae, spec.seconds)
    del probe_ae, probe_bb
    torch.manual_seed(spec.seed)
    pipe = Pipeline.build(
        kind="teacher",
        backbone=spec.backbone,
        text_encoder=spec.text_encoder,
        autoencoder=spec.autoencoder,
        sigma_data=spec.sigma_data,
        seconds=spec.seconds,
        max_seconds=max_seconds,
        defaults=SamplingDefaults(solver="heun", steps=40, omega=spec.omega),
        registry=registry,
    )
    for comp in (pipe.text_encoder, pipe.autoencoder):
        if isinstance(comp, nn.Module):
            comp.to(device).requires_grad_(False)
    ctm = pipe.ctm.train()
    ema = copy.deepcopy(ctm.backbone).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(ctm.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)

    start = 0
    if state_path is not None:
        meta, model_state, ema_state, optim_state = load_state(state_path)
        _state_compatible(meta, spec)
        ctm.backbone.load_state_dict(model_state)
        ema.load_state_dict(ema_state)
        optimizer.load_state_dict(optim_state)
        start = int(meta["step"])
        emit(callback, Message(f"resuming from {state_path} at step {start}"))
        if main:
            rewind_jsonl(out / "metrics.jsonl", start)

    dataset = build_dataset(registry, spec.dataset, pipe.card.sample_rate, spec.seconds)
    for problem_line in _dataset_report(dataset):
        emit(callback, Message(problem_line))
    valid = (
        build_dataset(registry, spec.valid_dataset, pipe.card.sample_rate, spec.seconds)
        if spec.valid_dataset is not None
        else None
    )

    def encode_audio(audio: Tensor) -> Tensor:
        return pipe.autoencoder.encode(audio.to(device)).float()

    if spec.latent_cache:
        fp = {
            "dataset": spec.dataset.model_dump(),
            "autoencoder": spec.autoencoder.model_dump(),
            "seconds": spec.seconds,
            "id": dataset_fingerprint(spec.dataset.model_dump()),
        }
        cache_dir = out / "latent_cache"
        if main and not cache_matches(cache_dir, fp):
            emit(callback, Message(f"encoding {len(dataset)} clips into {cache_dir}"))
            build_latent_cache(
                dataset, encode_audio, cache_dir, fingerprint=fp, batch_size=spec.batch_size
            )
        accelerator.wait_for_everyone()
        dataset = LatentCacheDataset(cache_dir)

    model, optimizer = accelerator.prepare(ctm, optimizer)
    rank, accum = accelerator.process_index, spec.grad_accum
    n_params = sum(p.numel() for p in ctm.backbone.parameters())
    loader, window = start_run(
        accelerator,
        dataset,
        spec,
        name="soundctm-train",
        start=start,
        parameters=n_params,
        callback=callback,
    )
    last_ckpt: Path | None = None
    t_fetch = time.perf_counter()
    grad_norm = torch.tensor(0.0)
    for micro, batch in enumerate(loader, start=start * accum):
        window.wait += time.perf_counter() - t_fetch
        step = micro // accum
        g = generator(spec.seed, "micro", micro, rank)
        captions = batch["caption"]
        if "latents" in batch:
            x0 = batch["latents"].to(device)
        else:
            audio = batch["audio"]
            if spec.mix_prob > 0:
                audio, captions = mix_batch(audio, captions, spec.mix_prob, g)
            with torch.no_grad():
                x0 = encode_audio(audio)
        captions = drop_captions(captions, spec.caption_dropout, g)
        with torch.no_grad():
            cond = pipe.encode_text(captions).to(device)
        sigma = sample_edm_sigmas(x0.shape[0], g, spec.p_mean, spec.p_std).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        x_noisy = x0 + sigma.view(-1, *([1] * (x0.ndim - 1))) * noise

        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, spec.lr, spec.warmup_steps, spec.steps, spec.decay_steps)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                denoised = model(x_noisy, sigma, sigma, cond, None)
            loss = edm_denoising_loss(denoised, x0, sigma, spec.sigma_data)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        loss_value = float(accelerator.gather(loss.detach()[None]).mean())
        check_finite(loss_value, step + 1, last_ckpt)
        window.add(loss=loss_value, grad_norm=float(grad_norm))
        if not accelerator.sync_gradients:
            t_fetch = time.perf_counter()
            continue
        ema_update(
            ema, accelerator.unwrap_model(model).backbone, ema_decay_at(step, spec.ema_decay)
        )
        done = step + 1
        if done % spec.log_every == 0 or done == spec.steps:
            window.flush(done, optimizer.param_groups[0]["lr"], callback)
        if done % spec.save_every == 0 or done == spec.steps:
            accelerator.wait_for_everyone()
            if main:
                last_ckpt = _save(
                    spec,
                    pipe,
                    ema,
                    accelerator.unwrap_model(model),
                    optimizer,
                    done,
                    valid,
                    device,
                    callback,
                )
            accelerator.wait_for_everyone()
        t_fetch = time.perf_counter()

    if spec.tracker and main:
        accelerator.end_training()
    final = out / "checkpoints" / f"step-{spec.steps:07d}"
    return last_ckpt or final


def _dataset_report(dataset: Any) -> list[str]:
    summary = getattr(dataset, "summary", None)
    lines = []
    for problem in getattr(dataset, "problems", []) or []:
        lines.append(
            f"skipped {getattr(problem, 'path', problem)}: {getattr(problem, 'reason', '')}"
        )
    if callable(summary):
        lines.append(str(summary()))
    return lines


def _save(
    spec: TeacherSpec,
    pipe: Pipeline,
    ema: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    valid: Any,
    device: torch.device,
    callback: Callback | None,
) -> Path:
    out = Path(spec.out)
    card = pipe.card.model_copy(deep=True)
    card.provenance.update(
        {
            "trained_with": f"soundctm {__version__} train",
            "step": step,
            "dataset": spec.dataset.model_dump(),
            "seed": spec.seed,
            "weights": "ema",
            "ema_decay": spec.ema_decay,
        }
    )
    snapshot = Pipeline(card, ema, pipe.text_encoder, pipe.autoencoder, registry=pipe.registry)
    snapshot.device = device
    ckpt = snapshot.save(out / "checkpoints" / f"step-{step:07d}")
    save_state(
        out / "state" / f"step-{step:07d}",
        step=step,
        model=model.backbone.state_dict(),
        ema=ema.state_dict(),
        optimizer=optimizer.state_dict(),
        extra={"spec": spec.to_json(), "soundctm_version": __version__},
    )
    heldout = None
    if valid is not None:
        heldout = heldout_loss(
            lambda x, s, c: snapshot.ctm(x, s, s, c, None),
            snapshot.autoencoder.encode,
            snapshot.encode_text,
            valid,
            sigma_data=spec.sigma_data,
            n=spec.heldout_clips,
            seed=spec.seed,
            device=device,
        )
        append_jsonl(out / "metrics.jsonl", {"step": step, "heldout_loss": heldout})
    if spec.preview_prompts:
        write_previews(
            snapshot,
            spec.preview_prompts,
            out / "previews" / f"step-{step:07d}",
            ckpt,
            settings=[{"steps": spec.preview_steps, "omega": spec.omega, "solver": "heun"}],
        )
    prune(out, spec.keep_checkpoints)
    point_latest(out, ckpt)
    emit(callback, CheckpointSaved(step, str(ckpt), heldout))
    return ckpt
