"""SoundCTM distillation (method.md §3-5): a CTM student learns to jump along its teacher's
guided probability-flow ODE.

One iteration (method.md §4): draw k (once per batch), per-sample grid indices (t, u, s) and
omega; x_t = x_0 + t eps; the frozen teacher solves t -> u with k guided Heun steps (one 2B
forward per evaluation, no autograd); the EMA target network jumps u -> s; the student jumps
t -> s; a distance at s (or both transported to sigma_min) gives L_ctm; the student's denoiser
gives the DSM loss; ``L = L_ctm + lambda_dsm * a * L_dsm`` with the adaptive weight ``a``.
RAdam, gradient clip, EMA target update after each step. The student starts from the teacher.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.engine.checkpoint import ComponentCard, SamplingDefaults, card_sha256
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM, STUDENT, TEACHER, ctm_jump
from soundctm.engine.guidance import GuidedModel
from soundctm.engine.pipeline import Pipeline
from soundctm.engine.schedule import append_dims, c_in, c_noise, karras_sigmas
from soundctm.engine.weights import init_student_from_teacher
from soundctm.errors import CheckpointError, InvalidArgumentError, PluginError
from soundctm.events import Callback, CheckpointSaved, Message, emit
from soundctm.plugins.registry import Registry, get_registry
from soundctm.training.ctm_losses import (
    adaptive_weight,
    dsm_sigmas,
    feature_distance,
    l1_distance,
    l2_distance,
    pseudo_huber_distance,
    sample_grid_indices,
    sample_k,
    sample_omega,
    teacher_solve,
)
from soundctm.training.data import drop_captions
from soundctm.training.ema import ema_update
from soundctm.training.loop import (
    check_finite,
    make_accelerator,
    point_latest,
    prune,
    resolve_resume,
    rewind_jsonl,
    start_run,
    write_previews,
)
from soundctm.training.losses import edm_denoising_loss
from soundctm.training.rng import generator
from soundctm.training.state import load_state, save_state
from soundctm.training.teacher import build_dataset
from soundctm.training.trajectories import TrajectoryCache, build_trajectory_cache
from soundctm.training.trajectories import cache_matches as trajectory_cache_matches

DISTANCES = ("feature", "l2", "l1", "pseudo-huber")


@dataclass
class DistillSpec:
    """Everything that defines a distillation run (defaults as published for the DiT)."""

    out: Path
    teacher: Path
    dataset: ComponentCard
    text_encoder: ComponentCard | None = None  # must match the teacher's if given
    autoencoder: ComponentCard | None = None  # must match the teacher's if given
    steps: int = 1000
    batch_size: int = 16
    lr: float = 8e-5
    ema_decay: float = 0.999
    grid_n: int = 40
    k_distribution: str = "linear"
    w_min: float = 1.0
    w_max: float = 10.0
    omega: float = 5.0
    distance: str = "feature"
    compare_at: str = "s"
    lambda_dsm: float = 0.2
    adaptive_max: float = 1000.0
    caption_dropout: float = 0.1
    p_mean: float = -1.2
    p_std: float = 1.2
    grad_clip: float = 1000.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    save_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    keep_teacher: bool = False
    preview_prompts: list[str] = field(default_factory=list)
    preview_steps: list[int] = field(default_factory=lambda: [1, 4])
    tracker: str | None = None
    trajectory_cache: bool = False
    cache_size: int = 512
    cache_batch: int = 16

    def validate(self) -> None:
        """Refuse impossible settings with one clear line."""
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.ema_decay <= 1, "ema_decay must be in [0, 1]"),
            (self.grid_n >= 2, "grid_n must be >= 2"),
            (self.k_distribution in {"linear", "uniform"}, "k_distribution: linear or uniform"),
            (0 <= self.w_min <= self.w_max, "need 0 <= w_min <= w_max"),
            (self.distance in DISTANCES, f"distance must be one of {', '.join(DISTANCES)}"),
            (self.compare_at in {"s", "sigma_min"}, "compare_at must be s or sigma_min"),
            (self.lambda_dsm >= 0, "lambda_dsm must be >= 0"),
            (0 <= self.caption_dropout < 1, "caption_dropout must be in [0, 1)"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.save_every >= 1 and self.log_every >= 1, "save_every/log_every must be >= 1"),
            (
                self.mixed_precision in {"no", "bf16", "fp16"},
                "mixed_precision must be no, bf16 or fp16",
            ),
            (self.cache_size >= 1 and self.cache_batch >= 1, "cache_size/cache_batch must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"], data["teacher"] = str(self.out), str(self.teacher)
        return json.loads(json.dumps(data, default=str))


def load_teacher(path: Path, spec: DistillSpec, registry: Registry, device: Any) -> Pipeline:
    """Load and check the teacher checkpoint."""
    if not Path(path).exists():
        raise CheckpointError(
            f"teacher {str(path)!r} does not exist; pass --teacher with a checkpoint folder "
            "written by `soundctm train` (e.g. runs/NAME/latest)"
        )
    teacher = Pipeline.load(path, registry=registry, device=device)
    if teacher.card.kind != TEACHER:
        raise CheckpointError(
            f"{path} holds a {teacher.card.kind!r} model, not a teacher; distil from a checkpoint "
            "written by `soundctm train`"
        )
    for kind, wanted in (("text_encoder", spec.text_encoder), ("autoencoder", spec.autoencoder)):
        have = teacher.card.components[kind]
        if wanted is not None and (wanted.name, wanted.params) != (have.name, have.params):
            raise InvalidArgumentError(
                f"the student's {kind} {wanted.name!r} {wanted.params} differs from the "
                f"teacher's {have.name!r} {have.params}; a student must share its teacher's "
                f"{kind}: drop {kind} from the distill settings"
            )
    teacher.ctm.eval().requires_grad_(False)
    for comp in (teacher.text_encoder, teacher.autoencoder):
        if isinstance(comp, nn.Module):
            comp.requires_grad_(False)
    return teacher


def build_student(teacher: Pipeline, registry: Registry) -> tuple[nn.Module, list[str]]:
    """The student backbone (the teacher's architecture with ``student=True``), initialised from
    the teacher's weights by parameter name (method.md §3). Returns it and the fresh names."""
    comp = teacher.card.components["backbone"]
    params = {**comp.params, "student": True}
    try:
        student = registry.build("backbone", comp.name, **params)
    except PluginError as exc:
        raise PluginError(
            f"backbone {comp.name!r} has no student variant (it does not take student=True): {exc}"
        ) from exc
    fresh = init_student_from_teacher(student, teacher.ctm.backbone.state_dict())
    return student, fresh


def last_layer(backbone: nn.Module) -> Tensor:
    """The weight of the network's last layer (for the adaptive DSM weight): the backbone's
    ``last_layer`` attribute, else its last parameter with two or more dimensions."""
    layer = getattr(backbone, "last_layer", None)
    if isinstance(layer, Tensor):
        return layer
    matrices = [p for p in backbone.parameters() if p.ndim >= 2]
    if not matrices:
        raise PluginError("the backbone has no weight matrix to use as its last layer")
    return matrices[-1]


def teacher_features(teacher: CTM, x: Tensor, sigma: Tensor, cond: Conditioning) -> list[Tensor]:
    """The frozen teacher's feature maps of ``x`` at noise level ``sigma``: the input is scaled by
    ``c_in(sigma)`` and the teacher conditioned on ``c_noise(sigma)`` (method.md §4.5)."""
    scaled = append_dims(c_in(sigma, teacher.sigma_data), x.ndim) * x
    return teacher.backbone.features(scaled, c_noise(sigma), cond)


def distill(
    spec: DistillSpec,
    *,
    resume: Path | bool | None = None,
    callback: Callback | None = None,
    registry: Registry | None = None,
) -> Path:
    """Distil a SoundCTM student from ``spec.teacher``; returns the last checkpoint folder."""
    spec.validate()
    registry = registry or get_registry()
    registry.get("dataset", spec.dataset.name)
    accelerator = make_accelerator(
        mixed_precision=spec.mixed_precision,
        grad_accum=spec.grad_accum,
        tracker=spec.tracker,
        out=spec.out,
    )
    device, main = accelerator.device, accelerator.is_main_process
    out = Path(spec.out)
    state_path = resolve_resume(out, resume, main=main)

    teacher = load_teacher(Path(spec.teacher), spec, registry, device)
    tcard = teacher.card
    torch.manual_seed(spec.seed)
    student_backbone, fresh = build_student(teacher, registry)
    emit(
        callback,
        Message(
            f"student initialised from the teacher; new parameters: {', '.join(fresh) or 'none'}"
        ),
    )
    student = CTM(student_backbone, tcard.sigma_data, STUDENT).to(device).train()
    target = CTM(copy.deepcopy(student_backbone), tcard.sigma_data, STUDENT).to(device)
    target.eval().requires_grad_(False)
    optimizer = torch.optim.RAdam(student.parameters(), lr=spec.lr)

    start = 0
    if state_path is not None:
        meta, model_state, ema_state, optim_state = load_state(state_path)
        old = meta.get("spec", {})
        for key in ("teacher", "batch_size", "grad_accum", "seed", "grid_n"):
            if key in old and old[key] != spec.to_json()[key]:
                raise InvalidArgumentError(
                    f"cannot resume: {key} was {old[key]} in the saved run but is "
                    f"{spec.to_json()[key]} now; use the run's original settings"
                )
        student.backbone.load_state_dict(model_state)
        target.backbone.load_state_dict(ema_state)
        optimizer.load_state_dict(optim_state)
        start = int(meta["step"])
        emit(callback, Message(f"resuming from {state_path} at step {start}"))
        if main:
            rewind_jsonl(out / "metrics.jsonl", start)

    dataset = build_dataset(registry, spec.dataset, tcard.sample_rate, tcard.seconds)
    summary = getattr(dataset, "summary", None)
    if callable(summary):
        emit(callback, Message(str(summary())))

    grid = karras_sigmas(spec.grid_n, tcard.sigma_min, tcard.sigma_max, tcard.rho).float()
    sigma_min = float(grid[-1])
    distance = {
        "l2": l2_distance,
        "l1": l1_distance,
        "pseudo-huber": pseudo_huber_distance,
    }.get(spec.distance)
    if spec.distance == "feature" and not hasattr(teacher.ctm.backbone, "features"):
        raise PluginError(
            f"backbone {tcard.components['backbone'].name!r} has no features(); use "
            "distance = l2, l1 or pseudo-huber"
        )

    traj = None
    if spec.trajectory_cache:
        fp = {
            "teacher": card_sha256(Path(spec.teacher)),
            "grid_n": spec.grid_n,
            "size": spec.cache_size,
            "w": [spec.w_min, spec.w_max],
            "dropout": spec.caption_dropout,
            "seed": spec.seed,
            "dataset": spec.dataset.model_dump(),
        }
        cache_dir = out / "trajectory_cache"
        if main and not trajectory_cache_matches(cache_dir, fp):
            emit(
                callback,
                Message(
                    f"solving the teacher's ODE for {spec.cache_size} "
                    f"trajectories x {spec.grid_n} grid points into {cache_dir}"
                ),
            )
            n_caps = min(len(dataset), spec.cache_size)
            captions = [str(dataset[i]["caption"]) for i in range(n_caps)]
            t0 = time.perf_counter()
            build_trajectory_cache(
                teacher,
                captions,
                cache_dir,
                grid=grid,
                size=spec.cache_size,
                w_min=spec.w_min,
                w_max=spec.w_max,
                caption_dropout=spec.caption_dropout,
                seed=spec.seed,
                fingerprint=fp,
                batch_size=spec.cache_batch,
            )
            emit(callback, Message(f"trajectory cache built in {time.perf_counter() - t0:.1f} s"))
        accelerator.wait_for_everyone()
        traj = TrajectoryCache(cache_dir)

    model, optimizer = accelerator.prepare(student, optimizer)
    rank, accum = accelerator.process_index, spec.grad_accum
    n_params = sum(p.numel() for p in student.backbone.parameters())
    loader, window = start_run(
        accelerator,
        dataset,
        spec,
        name="soundctm-distill",
        start=start,
        parameters=n_params,
        callback=callback,
    )
    last_ckpt: Path | None = None
    grad_norm = torch.tensor(0.0)
    t_fetch = time.perf_counter()
    for micro, batch in enumerate(loader, start=start * accum):
        window.wait += time.perf_counter() - t_fetch
        step = micro // accum
        g = generator(spec.seed, "micro", micro, rank)
        k = sample_k(spec.grid_n, generator(spec.seed, "k", micro), spec.k_distribution)
        with torch.no_grad():
            x0 = teacher.autoencoder.encode(batch["audio"].to(device)).float()
        b = x0.shape[0]
        captions = drop_captions(batch["caption"], spec.caption_dropout, g)
        with torch.no_grad():
            cond_dsm = teacher.encode_text(captions).to(device)
        i_idx, s_idx = sample_grid_indices(b, spec.grid_n, k, g)
        t, u, s = grid[i_idx].to(device), grid[i_idx + k].to(device), grid[s_idx].to(device)
        omega_dsm = sample_omega(b, spec.w_min, spec.w_max, g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        sigma_d = dsm_sigmas(b, g, grid, spec.p_mean, spec.p_std).to(device)
        x_d = x0 + append_dims(sigma_d, x0.ndim) * torch.randn(x0.shape, generator=g).to(device)

        t_solve = time.perf_counter()
        if traj is None:  # on-line: x_t from data, the teacher solves t -> u
            cond, omega = cond_dsm, omega_dsm
            x_t = x0 + append_dims(t, x0.ndim) * eps
            # the teacher runs under the run's mixed precision too (bf16/fp16 where supported)
            with torch.inference_mode(), accelerator.autocast():
                uncond = teacher.encode_text([""] * b).to(device)
                guided_teacher = GuidedModel(teacher.ctm, cond, uncond, omega, None)
                x_u = teacher_solve(
                    guided_teacher.denoise, x_t, grid.to(device), i_idx.to(device), k
                )
        else:  # trajectory cache: x_t and x_u are looked up
            m = torch.randint(len(traj), (b,), generator=g)
            x_t = traj.points(m, i_idx).to(device)
            x_u = traj.points(m, i_idx + k).to(device)
            with torch.no_grad():
                cond = teacher.encode_text([traj.captions[int(q)] for q in m]).to(device)
            omega = traj.omegas[m].to(device)
        with torch.inference_mode():
            x_u = x_u.float()
            tgt = target.jump(x_u, u, s, cond, omega)
            if spec.compare_at == "sigma_min":
                tgt = target.jump(tgt, s, sigma_min, cond, omega)
        tgt = tgt.clone()  # leave inference mode
        solve_time = time.perf_counter() - t_solve

        with accelerator.accumulate(model):
            with accelerator.autocast():
                g_all = model(
                    torch.cat([x_t, x_d]),
                    torch.cat([t, sigma_d]),
                    torch.cat([s, sigma_d]),
                    cond.cat(cond_dsm),
                    torch.cat([omega, omega_dsm]),
                )
            g_est, denoised = g_all[:b].float(), g_all[b:].float()
            estimate = ctm_jump(x_t, g_est, t, s)
            at = s
            if spec.compare_at == "sigma_min":
                estimate = target.jump(estimate, s, sigma_min, cond, omega)
                at = torch.full_like(s, sigma_min)
            if distance is None:
                with torch.no_grad():
                    feats_target = teacher_features(teacher.ctm, tgt, at, cond)
                feats_est = teacher_features(teacher.ctm, estimate, at, cond)
                loss_ctm = feature_distance(feats_est, feats_target).mean()
            else:
                loss_ctm = distance(estimate, tgt).mean()
            loss_dsm = edm_denoising_loss(denoised, x0, sigma_d, tcard.sigma_data)
            if spec.lambda_dsm > 0:
                a = adaptive_weight(
                    loss_ctm,
                    loss_dsm,
                    last_layer(accelerator.unwrap_model(model).backbone),
                    spec.adaptive_max,
                )
            else:
                a = torch.zeros(())
            loss = loss_ctm + spec.lambda_dsm * a * loss_dsm
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        loss_value = float(accelerator.gather(loss.detach()[None]).mean())
        check_finite(loss_value, step + 1, last_ckpt)
        window.add(
            loss=loss_value,
            loss_ctm=float(loss_ctm.detach()),
            loss_dsm=float(loss_dsm.detach()),
            adaptive_weight=float(a),
            k=float(k),
            grad_norm=float(grad_norm),
        )
        window.time("teacher", solve_time)
        if not accelerator.sync_gradients:
            t_fetch = time.perf_counter()
            continue
        ema_update(target.backbone, accelerator.unwrap_model(model).backbone, spec.ema_decay)
        done = step + 1
        if done % spec.log_every == 0 or done == spec.steps:
            window.flush(done, optimizer.param_groups[0]["lr"], callback)
        if done % spec.save_every == 0 or done == spec.steps:
            accelerator.wait_for_everyone()
            if main:
                last_ckpt = _save(
                    spec,
                    teacher,
                    target,
                    accelerator.unwrap_model(model),
                    optimizer,
                    done,
                    callback,
                )
            accelerator.wait_for_everyone()
        t_fetch = time.perf_counter()

    if spec.tracker and main:
        accelerator.end_training()
    return last_ckpt or out / "checkpoints" / f"step-{spec.steps:07d}"


def student_card(spec: DistillSpec, teacher: Pipeline, step: int) -> Any:
    """The model card of the student: a CTM that names its teacher."""
    card = teacher.card.model_copy(deep=True)
    card.kind = STUDENT  # type: ignore[assignment]
    comp = card.components["backbone"]
    card.components["backbone"] = ComponentCard(
        name=comp.name, params={**comp.params, "student": True}
    )
    card.defaults = SamplingDefaults(solver="gamma", steps=1, gamma=0.0, nu=1.0, omega=spec.omega)
    teacher_path = Path(spec.teacher)
    card.provenance = {
        "distilled_with": f"soundctm {__version__} distill",
        "step": step,
        "teacher": str(teacher_path.resolve()),
        "teacher_card_sha256": card_sha256(teacher_path),
        "teacher_provenance": teacher.card.provenance,
        "dataset": spec.dataset.model_dump(),
        "weights": "ema target",
        "seed": spec.seed,
    }
    return card


def _save(
    spec: DistillSpec,
    teacher: Pipeline,
    target: CTM,
    student: CTM,
    optimizer: torch.optim.Optimizer,
    step: int,
    callback: Callback | None,
) -> Path:
    out = Path(spec.out)
    card = student_card(spec, teacher, step)
    snapshot = Pipeline(
        card, target.backbone, teacher.text_encoder, teacher.autoencoder, registry=teacher.registry
    )
    snapshot.device = teacher.device
    ckpt = snapshot.save(out / "checkpoints" / f"step-{step:07d}")
    if spec.keep_teacher:
        shutil.copytree(Path(spec.teacher), ckpt / "teacher", symlinks=False, dirs_exist_ok=True)
    save_state(
        out / "state" / f"step-{step:07d}",
        step=step,
        model=student.backbone.state_dict(),
        ema=target.backbone.state_dict(),
        optimizer=optimizer.state_dict(),
        extra={"spec": spec.to_json(), "soundctm_version": __version__},
    )
    if spec.preview_prompts:
        write_previews(
            snapshot,
            spec.preview_prompts,
            out / "previews" / f"step-{step:07d}",
            ckpt,
            settings=[{"steps": n} for n in spec.preview_steps],
        )
    prune(out, spec.keep_checkpoints)
    point_latest(out, ckpt)
    emit(callback, CheckpointSaved(step, str(ckpt)))
    return ckpt
