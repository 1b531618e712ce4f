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

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.config import DistillConfig
from soundctm.engine.checkpoint import ComponentCard, SamplingDefaults, card_sha256
from soundctm.engine.components import last_layer, teacher_features
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM, STUDENT, TEACHER, ctm_jump
from soundctm.engine.files import copy_dir, write_dir_atomic
from soundctm.engine.guidance import GuidedModel
from soundctm.engine.hub import is_hub_id
from soundctm.engine.hub import resolve as resolve_hub
from soundctm.engine.pipeline import Pipeline
from soundctm.engine.schedule import append_dims, c_in, c_noise, karras_sigmas
from soundctm.engine.weights import init_student_from_teacher
from soundctm.errors import CheckpointError, InvalidArgumentError, PluginError
from soundctm.events import Callback, Message, emit
from soundctm.plugins.registry import Registry, get_registry
from soundctm.training.ctm_losses import (
    adaptive_weight,
    ctm_target_time,
    dsm_sigmas,
    feature_distance,
    grid_times,
    l1_distance,
    l2_distance,
    pseudo_huber_distance,
    sample_grid_indices,
    sample_k,
    sample_omega,
    teacher_solve,
)
from soundctm.training.data import UNUSABLE_FILES, build_dataset, dataset_report, drop_captions
from soundctm.training.ema import ema_copy
from soundctm.training.finetune import (
    Parent,
    apply_freeze,
    component_mismatch,
    named_parameters,
    parameter_report,
    resolve_parent,
    start_lora,
    take_components,
    trainable_parameters,
)
from soundctm.training.fit import Run, StepOutput, fit, prepare_run
from soundctm.training.fit import resume as resume_state
from soundctm.training.losses import edm_denoising_loss
from soundctm.training.rng import generator, seeded_init
from soundctm.training.teacher import lr_at
from soundctm.training.trajectories import TrajectoryCache, build_trajectory_cache
from soundctm.training.trajectories import cache_matches as trajectory_cache_matches

DISTANCES = ("feature", "l2", "l1", "pseudo-huber")


def load_teacher(path: Path, spec: DistillConfig, registry: Registry, device: Any) -> Pipeline:
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


def student_parent(
    spec: DistillConfig,
    teacher: Pipeline,
    backbone: nn.Module,
    state_path: Path | None,
    registry: Registry,
    callback: Callback | None,
) -> tuple[dict[str, Any] | None, Parent | None]:
    """``init_from``: a student (``ctm``) checkpoint of the teacher's design whose backbone
    replaces the one copied from the teacher (a fresh run only: a resumed state wins). Its text
    encoder and autoencoder must be the teacher's. Returns what the card records of it and the
    parent."""
    if spec.init_from is None:
        return None, None
    parent = resolve_parent(spec.init_from, registry, callback)
    if parent.card.kind != STUDENT:
        raise InvalidArgumentError(
            f"--init-from {spec.init_from} holds a {parent.card.kind!r} model; distill starts "
            "from --teacher already, --init-from takes a student (ctm) checkpoint to continue"
        )
    tcard = teacher.card
    comp = tcard.components["backbone"]
    cards = {
        "backbone": ComponentCard(name=comp.name, params={**comp.params, "student": True}),
        "text_encoder": tcard.components["text_encoder"],
        "autoencoder": tcard.components["autoencoder"],
    }
    for kind in ("text_encoder", "autoencoder"):
        problem = component_mismatch(kind, parent.card.components[kind], cards[kind])
        if problem:
            raise InvalidArgumentError(
                f"--init-from {spec.init_from}: {problem} (the teacher's); a student must share "
                f"its teacher's {kind}"
            )
    if state_path is None:
        take_components(parent, ["backbone"], {"backbone": backbone}, cards)
        emit(callback, Message(f"student weights from {spec.init_from}"))
    return {**parent.record, "components": ["backbone"]}, parent


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


def adaptive_layer(backbone: nn.Module) -> Tensor:
    """The weight ``W`` of the adaptive DSM weight (method.md §4.7): the backbone's declared
    last layer (:func:`~soundctm.engine.components.last_layer`), else (none declared, or it is
    frozen: ``--freeze``, LoRA) its last trainable parameter with two or more dimensions."""
    layer = last_layer(backbone)
    if layer is not None and layer.requires_grad:
        return layer
    # frozen (--freeze, LoRA): the last trainable matrix, e.g. the last adapter's B
    matrices = [p for p in backbone.parameters() if p.ndim >= 2 and p.requires_grad]
    if not matrices:
        raise PluginError("the backbone has no weight matrix to use as its last layer")
    return matrices[-1]


def teacher_feature_maps(
    teacher: CTM, x: Tensor, sigma: Tensor, cond: Conditioning
) -> list[Tensor]:
    """The frozen teacher's feature maps of ``x`` at noise level ``sigma``: the input is scaled by
    ``c_in(sigma)`` and the teacher conditioned on ``c_noise(sigma)`` (method.md §4.5)."""
    scaled = append_dims(c_in(sigma, teacher.sigma_data), x.ndim) * x
    return teacher.backbone.features(scaled, c_noise(sigma), cond)


def distill(
    spec: DistillConfig,
    *,
    resume: Path | bool | None = None,
    callback: Callback | None = None,
    registry: Registry | None = None,
) -> Path:
    """Distil a SoundCTM student from ``spec.teacher``; returns the last checkpoint folder."""
    return fit(distill_run(spec, resume, callback, registry), callback)


def distill_run(
    spec: DistillConfig, resume: Path | bool | None, callback: Callback | None, registry: Any
) -> Run:
    """Build the distillation run of ``spec`` (see :func:`distill`)."""
    if spec.teacher is None:
        raise InvalidArgumentError("teacher is not set; give the teacher's checkpoint folder")
    registry = registry or get_registry()
    if is_hub_id(spec.teacher):  # hf:OWNER/REPO: the converted copy in the hub cache
        found = resolve_hub(str(spec.teacher), registry=registry, callback=callback)
        spec = spec.model_copy(update={"teacher": found.path})
    registry.get("dataset", spec.dataset.name)
    accelerator, state_path = prepare_run(spec, resume, callback)
    device, main = accelerator.device, accelerator.is_main_process

    teacher = load_teacher(Path(spec.teacher), spec, registry, device)
    tcard = teacher.card
    with seeded_init(spec.seed):  # fresh student parameters (see seeded_init)
        student_backbone, fresh = build_student(teacher, registry)
    emit(
        callback,
        Message(
            f"student initialised from the teacher; new parameters: {', '.join(fresh) or 'none'}"
        ),
    )
    started_from, parent = student_parent(
        spec, teacher, student_backbone, state_path, registry, callback
    )
    lora = None
    if spec.lora_rank and parent is not None:
        lora = start_lora(
            student_backbone,
            parent,
            spec.lora_rank,
            spec.lora_alpha,
            spec.lora_targets,
            spec.seed,
        )
    student = CTM(student_backbone, tcard.sigma_data, STUDENT).to(device).train()
    apply_freeze(named_parameters({"backbone": student_backbone}), spec.freeze)
    parameter_report(
        {
            "backbone": student_backbone,
            "text_encoder": teacher.text_encoder,
            "autoencoder": teacher.autoencoder,
        },
        callback,
    )
    target = CTM(ema_copy(student_backbone), tcard.sigma_data, STUDENT).to(device)
    target.eval().requires_grad_(False)
    optimizer = torch.optim.RAdam(trainable_parameters(student), lr=spec.lr)
    start = 0
    if state_path is not None:
        start = resume_state(
            state_path,
            spec,
            model=student.backbone,
            ema=target.backbone,
            optimizer=optimizer,
            main=main,
            callback=callback,
        )

    listed = Path(spec.out) / UNUSABLE_FILES
    dataset = build_dataset(
        registry, spec.dataset, tcard.sample_rate, tcard.seconds, problems_file=listed
    )
    for line in dataset_report(dataset, listed):
        emit(callback, Message(line))

    grid = karras_sigmas(spec.grid_n, tcard.sigma_min, tcard.sigma_max, tcard.rho).float()
    sigma_min = float(grid[-1])
    distance = {
        "l2": l2_distance,
        "l1": l1_distance,
        "pseudo-huber": pseudo_huber_distance,
    }.get(spec.distance)
    if spec.distance == "feature" and not teacher_features(teacher.ctm.backbone):
        raise PluginError(
            f"backbone {tcard.components['backbone'].name!r} has no features(); use "
            "distance = l2, l1 or pseudo-huber"
        )
    traj = trajectory_cache(spec, teacher, dataset, grid, accelerator, callback)
    rank = accelerator.process_index

    def step(model: nn.Module, batch: dict[str, Any], micro: int) -> StepOutput:
        """One CTM distillation iteration (method.md §4, see the module docstring)."""
        g = generator(spec.seed, "micro", micro, rank)
        k = sample_k(spec.grid_n, generator(spec.seed, "k", micro), spec.k_distribution)
        with torch.no_grad():
            x0 = teacher.autoencoder.encode(batch["audio"].to(device)).float()
        b = x0.shape[0]
        captions = drop_captions(batch["caption"], spec.caption_dropout, g)
        with torch.no_grad():
            cond_dsm = teacher.encode_text(captions).to(device)
        i_idx, s_idx = sample_grid_indices(b, spec.grid_n, k, g)
        t, u, s = grid_times(grid.to(device), i_idx, k, s_idx)
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
        at = ctm_target_time(s, sigma_min, spec.compare_at)
        with torch.inference_mode():
            x_u = x_u.float()
            tgt = target.jump(x_u, u, s, cond, omega)
            if spec.compare_at == "sigma_min":
                tgt = target.jump(tgt, s, sigma_min, cond, omega)
        tgt = tgt.clone()  # leave inference mode
        solve_time = time.perf_counter() - t_solve

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
        if spec.compare_at == "sigma_min":
            estimate = target.jump(estimate, s, sigma_min, cond, omega)
        if distance is None:
            with torch.no_grad():
                feats_target = teacher_feature_maps(teacher.ctm, tgt, at, cond)
            feats_est = teacher_feature_maps(teacher.ctm, estimate, at, cond)
            loss_ctm = feature_distance(feats_est, feats_target).mean()
        else:
            loss_ctm = distance(estimate, tgt).mean()
        loss_dsm = edm_denoising_loss(denoised, x0, sigma_d, tcard.sigma_data)
        if spec.lambda_dsm > 0:
            layer = adaptive_layer(accelerator.unwrap_model(model).backbone)
            a = adaptive_weight(loss_ctm, loss_dsm, layer, spec.adaptive_max)
        else:
            a = torch.zeros(())
        return StepOutput(
            loss_ctm + spec.lambda_dsm * a * loss_dsm,
            {
                "loss_ctm": float(loss_ctm.detach()),
                "loss_dsm": float(loss_dsm.detach()),
                "adaptive_weight": float(a),
                "k": float(k),
            },
            {"teacher": solve_time},
        )

    def snapshot(weights: nn.Module, at: int) -> Pipeline:
        card = student_card(spec, teacher, at)
        if started_from is not None:
            card.provenance["init_from"] = started_from
        card.lora = lora
        snap = Pipeline(
            card,
            weights,
            teacher.text_encoder,
            teacher.autoencoder,
            registry=teacher.registry,
        )
        snap.device = teacher.device
        return snap

    def after_checkpoint(snap: Pipeline, ckpt: Path, at: int) -> None:
        if spec.keep_teacher:  # atomic, like the checkpoint itself
            source = Path(str(spec.teacher))
            write_dir_atomic(ckpt / "teacher", lambda tmp: copy_dir(source, tmp))

    return Run(
        config=spec,
        name="soundctm-distill",
        accelerator=accelerator,
        model=student,
        ema=target.backbone,
        optimizer=optimizer,
        dataset=dataset,
        step=step,
        snapshot=snapshot,
        ema_decay=lambda at: spec.ema_decay,
        previews=[{"steps": n} for n in spec.preview_steps],
        after_checkpoint=after_checkpoint,
        lr=lambda at: lr_at(at, spec.lr, spec.warmup_steps),
        start=start,
    )


def trajectory_cache(
    spec: DistillConfig,
    teacher: Pipeline,
    dataset: Any,
    grid: Tensor,
    accelerator: Any,
    callback: Callback | None,
) -> TrajectoryCache | None:
    """The run's trajectory cache (built on the main process if missing or stale), or ``None``
    for on-line distillation."""
    if not spec.trajectory_cache:
        return None
    fp = {
        "teacher": card_sha256(Path(str(spec.teacher))),
        "grid_n": spec.grid_n,
        "size": spec.cache_size,
        "w": [spec.w_min, spec.w_max],
        "dropout": spec.caption_dropout,
        "seed": spec.seed,
        "dataset": spec.dataset.model_dump(),
    }
    cache_dir = Path(spec.out) / "trajectory_cache"
    if accelerator.is_main_process and not trajectory_cache_matches(cache_dir, fp):
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
    return TrajectoryCache(cache_dir)


def student_card(spec: DistillConfig, teacher: Pipeline, step: int) -> Any:
    """The model card of the student: a CTM that names its teacher."""
    card = teacher.card.model_copy(deep=True)
    card.kind = STUDENT  # type: ignore[assignment]
    comp = card.components["backbone"]
    card.components["backbone"] = ComponentCard(
        name=comp.name, params={**comp.params, "student": True}
    )
    card.defaults = SamplingDefaults(solver="gamma", steps=1, gamma=0.0, nu=1.0, omega=spec.omega)
    teacher_path = Path(str(spec.teacher))
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
