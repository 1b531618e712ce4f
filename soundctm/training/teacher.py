"""EDM teacher training (method.md §2) for any registered backbone, data set, autoencoder and
text encoder, on one CPU or many GPUs through HF accelerate.

This module builds the run (components, data, optimiser, schedules) and holds its step function,
the denoising score matching loss; :func:`soundctm.training.fit.fit` is the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.config import TeacherConfig
from soundctm.engine.checkpoint import COMPONENT_KINDS, SamplingDefaults
from soundctm.engine.components import max_frames
from soundctm.engine.pipeline import Pipeline, expand_component
from soundctm.errors import InvalidArgumentError
from soundctm.events import Callback, Message, emit
from soundctm.plugins.registry import Registry, get_registry
from soundctm.training.data import (
    UNUSABLE_FILES,
    UNUSABLE_VALID_FILES,
    LatentCacheDataset,
    build_dataset,
    build_latent_cache,
    cache_matches,
    dataset_fingerprint,
    dataset_report,
    drop_captions,
    mix_batch,
)
from soundctm.training.ema import ema_copy
from soundctm.training.finetune import (
    apply_freeze,
    named_parameters,
    parameter_report,
    parent_components,
    resolve_parent,
    start_lora,
    take_components,
    trainable_parameters,
)
from soundctm.training.fit import Run, StepOutput, fit, prepare_run
from soundctm.training.fit import resume as resume_state
from soundctm.training.loop import (
    TrainingDiverged,
    append_jsonl,
)
from soundctm.training.losses import edm_denoising_loss, sample_edm_sigmas
from soundctm.training.rng import generator, seeded_init

__all__ = ["TeacherConfig", "TrainingDiverged", "build_dataset", "train_teacher"]


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


def max_supported_seconds(backbone: nn.Module, autoencoder: Any, seconds: float) -> float:
    """The longest clip whose latent fits the backbone's ``max_frames`` (or ``seconds``)."""
    limit = max_frames(backbone)
    if not limit:
        return seconds
    per_second = autoencoder.latent_shape(10.0)[-1] / 10.0
    best = math.floor(limit / per_second * 100) / 100
    while best > seconds and autoencoder.latent_shape(best)[-1] > limit:
        best = round(best - 0.01, 2)
    if autoencoder.latent_shape(seconds)[-1] > limit:
        raise InvalidArgumentError(
            f"{seconds} s clips need {autoencoder.latent_shape(seconds)[-1]} latent frames but "
            f"the backbone takes at most {limit}; shorten seconds or raise max_frames"
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


def build_teacher(spec: TeacherConfig, registry: Registry) -> Pipeline:
    """The fresh teacher pipeline of ``spec``, its weights drawn from ``spec.seed``.

    Initialisation runs inside :func:`~soundctm.training.rng.seeded_init` (a forked global RNG):
    component factories draw their initial weights from torch's global generator, which a library
    must not reseed for its caller."""
    with seeded_init(spec.seed):
        probe_ae = registry.build("autoencoder", spec.autoencoder.name, **spec.autoencoder.params)
        probe_bb = registry.build("backbone", spec.backbone.name, **spec.backbone.params)
        max_seconds = max_supported_seconds(probe_bb, probe_ae, spec.seconds)
        del probe_ae, probe_bb
    with seeded_init(spec.seed):
        return Pipeline.build(
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


def train_teacher(
    spec: TeacherConfig,
    *,
    resume: Path | bool | None = None,
    callback: Callback | None = None,
    registry: Registry | None = None,
) -> Path:
    """Train an EDM teacher; returns the folder of the last sample-able checkpoint.

    ``resume``: a state folder, a run folder, or True for the newest state in ``spec.out``.
    """
    return fit(teacher_run(spec, resume, callback, registry), callback)


def teacher_run(
    spec: TeacherConfig, resume: Path | bool | None, callback: Callback | None, registry: Any
) -> Run:
    """Build the teacher run of ``spec`` (see :func:`train_teacher`)."""
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
    parent, take = None, list(spec.init_components or COMPONENT_KINDS)
    if spec.init_from is not None:  # its card names the components the run does not
        parent = resolve_parent(spec.init_from, registry, callback)
        explicit = set(spec.model_fields_set)
        update: dict[str, Any] = dict(
            parent_components(
                parent, take, {k: getattr(spec, k) for k in COMPONENT_KINDS}, explicit
            )
        )
        if "backbone" in take and "sigma_data" not in explicit:
            update["sigma_data"] = parent.card.sigma_data
        spec = spec.model_copy(update=update)
    spec = spec.model_copy(
        update={
            kind: expand_component(registry, kind, getattr(spec, kind))
            for kind in ("backbone", "text_encoder", "autoencoder")
        }
    )
    accelerator, state_path = prepare_run(spec, resume, callback)
    device, main, out = accelerator.device, accelerator.is_main_process, Path(spec.out)

    pipe = build_teacher(spec, registry)
    components = {
        "backbone": pipe.ctm.backbone,
        "text_encoder": pipe.text_encoder,
        "autoencoder": pipe.autoencoder,
    }
    started_from: dict[str, Any] | None = None
    if parent is not None:
        if "backbone" in take and parent.card.sigma_data != spec.sigma_data:
            raise InvalidArgumentError(
                f"--init-from {spec.init_from}: its backbone was trained with sigma_data "
                f"{parent.card.sigma_data}, this run has {spec.sigma_data}; use the model's"
            )
        if state_path is None:
            take_components(parent, take, components, pipe.card.components)
        started_from = {**parent.record, "components": take}
    lora = None
    if spec.lora_rank and parent is not None:
        lora = start_lora(
            pipe.ctm.backbone,
            parent,
            spec.lora_rank,
            spec.lora_alpha,
            spec.lora_targets,
            spec.seed,
        )
    for comp in (pipe.text_encoder, pipe.autoencoder):
        if isinstance(comp, nn.Module):
            comp.to(device).requires_grad_(False)
    ctm = pipe.ctm.train()
    apply_freeze(named_parameters(components), spec.freeze)
    parameter_report(components, callback)
    ema = ema_copy(ctm.backbone)
    optimizer = torch.optim.AdamW(
        trainable_parameters(ctm), lr=spec.lr, weight_decay=spec.weight_decay
    )
    start = 0
    if state_path is not None:
        start = resume_state(
            state_path,
            spec,
            model=ctm.backbone,
            ema=ema,
            optimizer=optimizer,
            main=main,
            callback=callback,
        )

    rate, listed = pipe.card.sample_rate, out / UNUSABLE_FILES
    dataset = build_dataset(registry, spec.dataset, rate, spec.seconds, problems_file=listed)
    for line in dataset_report(dataset, listed):
        emit(callback, Message(line))
    valid = None
    if spec.valid_dataset is not None:
        listed = out / UNUSABLE_VALID_FILES
        valid = build_dataset(
            registry, spec.valid_dataset, rate, spec.seconds, problems_file=listed
        )
        for line in dataset_report(valid, listed):
            emit(callback, Message(f"valid_dataset: {line}"))

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

    rank = accelerator.process_index

    def step(model: nn.Module, batch: dict[str, Any], micro: int) -> StepOutput:
        """Denoising score matching (method.md §2): ``x = x0 + sigma eps``, ``ln sigma ~
        N(p_mean, p_std^2)``, the EDM-weighted error of ``D(x, sigma)``."""
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
        with accelerator.autocast():
            denoised = model(x_noisy, sigma, sigma, cond, None)
        return StepOutput(edm_denoising_loss(denoised, x0, sigma, spec.sigma_data))

    def snapshot(weights: nn.Module, at: int) -> Pipeline:
        card = pipe.card.model_copy(deep=True)
        card.provenance.update(
            {
                "trained_with": f"soundctm {__version__} train",
                "step": at,
                "dataset": spec.dataset.model_dump(),
                "seed": spec.seed,
                "weights": "ema",
                "ema_decay": spec.ema_decay,
            }
        )
        if started_from is not None:
            card.provenance["init_from"] = started_from
        card.lora = lora
        snap = Pipeline(card, weights, pipe.text_encoder, pipe.autoencoder, registry=pipe.registry)
        snap.device = device
        return snap

    def after_checkpoint(snap: Pipeline, ckpt: Path, at: int) -> float | None:
        if valid is None:
            return None
        held = heldout_loss(
            lambda x, s, c: snap.ctm(x, s, s, c, None),
            snap.autoencoder.encode,
            snap.encode_text,
            valid,
            sigma_data=spec.sigma_data,
            n=spec.heldout_clips,
            seed=spec.seed,
            device=device,
        )
        append_jsonl(out / "metrics.jsonl", {"step": at, "heldout_loss": held})
        return held

    return Run(
        config=spec,
        name="soundctm-train",
        accelerator=accelerator,
        model=ctm,
        ema=ema,
        optimizer=optimizer,
        dataset=dataset,
        step=step,
        snapshot=snapshot,
        ema_decay=lambda at: ema_decay_at(at, spec.ema_decay),
        previews=[{"steps": spec.preview_steps, "omega": spec.omega, "solver": "heun"}],
        after_checkpoint=after_checkpoint,
        lr=lambda at: lr_at(at, spec.lr, spec.warmup_steps, spec.steps, spec.decay_steps),
        start=start,
    )
