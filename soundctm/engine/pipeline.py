"""The text-to-sound pipeline: the components a checkpoint names, composed.

Sampling parameters are arguments of each call, never stored state.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.engine import schedule
from soundctm.engine.checkpoint import (
    COMPONENT_KINDS,
    ComponentCard,
    ModelCard,
    SamplingDefaults,
    read_card,
    read_weights,
    save_checkpoint,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM, STUDENT, TEACHER
from soundctm.engine.guidance import GuidedModel
from soundctm.engine.noise import MAX_SEED, PerSampleNoise, make_generators, per_sample_randn
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.events import BatchFinished, Callback, GenerationStarted, emit
from soundctm.plugins.registry import Registry, get_registry


@dataclass(frozen=True)
class SampleParams:
    """Everything needed to regenerate one sample (written to its sidecar)."""

    prompt: str
    seed: int
    steps: int
    gamma: float
    nu: float
    omega: float
    seconds: float
    solver: str


@dataclass(frozen=True)
class Generation:
    """Generated audio [N, samples] at ``sample_rate``, with the parameters of each row."""

    audio: Tensor
    sample_rate: int
    params: list[SampleParams]


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value}")
    return value


def solver_options(fn: Any) -> set[str]:
    """The keyword options a solver accepts beyond the shared signature."""
    shared = {"model", "x", "sigmas", "noise", "callback"}
    return {p for p in inspect.signature(fn).parameters if p not in shared}


class Pipeline:
    """A CTM (or teacher) model with its text encoder and autoencoder."""

    def __init__(
        self,
        card: ModelCard,
        backbone: nn.Module,
        text_encoder: Any,
        autoencoder: Any,
        *,
        path: Path | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.card = card
        self.ctm = CTM(backbone, card.sigma_data, card.kind).eval()
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.path = Path(path) if path is not None else None
        self.registry = registry or get_registry()
        self.device = torch.device("cpu")
        ae_rate = getattr(autoencoder, "sample_rate", None)
        if ae_rate != card.sample_rate:
            raise CheckpointError(
                f"the card says {card.sample_rate} Hz but autoencoder "
                f"{card.components['autoencoder'].name!r} produces {ae_rate} Hz; fix model.json"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        *,
        kind: str,
        backbone: ComponentCard | tuple[str, dict[str, Any]],
        text_encoder: ComponentCard | tuple[str, dict[str, Any]],
        autoencoder: ComponentCard | tuple[str, dict[str, Any]],
        sigma_data: float,
        seconds: float,
        max_seconds: float | None = None,
        defaults: SamplingDefaults | None = None,
        provenance: dict[str, Any] | None = None,
        registry: Registry | None = None,
    ) -> Pipeline:
        """Build freshly initialised components by plugin name and parameters."""
        registry = registry or get_registry()
        comps = {
            k: expand_component(
                registry,
                k,
                c if isinstance(c, ComponentCard) else ComponentCard(name=c[0], params=dict(c[1])),
            )
            for k, c in zip(COMPONENT_KINDS, (backbone, text_encoder, autoencoder), strict=True)
        }
        built = {k: registry.build(k, c.name, **c.params) for k, c in comps.items()}
        if defaults is None:
            defaults = SamplingDefaults(
                solver="gamma" if kind == STUDENT else "heun", steps=1 if kind == STUDENT else 40
            )
        card = ModelCard(
            kind=kind,  # type: ignore[arg-type]
            sigma_data=sigma_data,
            sample_rate=int(built["autoencoder"].sample_rate),
            seconds=seconds,
            max_seconds=max_seconds if max_seconds is not None else seconds,
            components=comps,
            defaults=defaults,
            provenance=dict(provenance or {}),
        )
        return cls(
            card, built["backbone"], built["text_encoder"], built["autoencoder"], registry=registry
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        verify: bool = True,
        registry: Registry | None = None,
    ) -> Pipeline:
        """Rebuild a pipeline from a checkpoint directory; the card is all it needs."""
        path = Path(path)
        card = read_card(path)
        registry = registry or get_registry()
        built = {}
        for kind in COMPONENT_KINDS:
            comp = card.components[kind]
            obj = registry.build(kind, comp.name, **comp.params)
            state = read_weights(path, card, kind, verify=verify)
            if state:
                if not isinstance(obj, nn.Module):
                    raise CheckpointError(
                        f"{path} has weights for {kind} {comp.name!r}, which is not a torch module"
                    )
                try:
                    obj.load_state_dict(state, strict=True)
                except RuntimeError as exc:
                    first = str(exc).strip().splitlines()[0]
                    raise CheckpointError(
                        f"weights of {kind} {comp.name!r} in {path} do not fit its parameters "
                        f"({first}); the card and the weights disagree"
                    ) from exc
            built[kind] = obj
        pipe = cls(
            card,
            built["backbone"],
            built["text_encoder"],
            built["autoencoder"],
            path=path,
            registry=registry,
        )
        return pipe.to(device)

    def save(self, path: str | Path, *, provenance: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint directory atomically (a crash leaves no half checkpoint)."""
        card = self.card.model_copy(deep=True)
        card.provenance.update(provenance or {})
        weights = {
            "backbone": self.ctm.backbone.state_dict(),
            "text_encoder": _checkpoint_state(self.text_encoder),
            "autoencoder": _checkpoint_state(self.autoencoder),
        }
        out = save_checkpoint(Path(path), card, weights)
        self.path = out
        return out

    def to(self, device: str | torch.device) -> Pipeline:
        """Move every torch component to ``device``."""
        device = torch.device(device)
        for comp in (self.ctm, self.text_encoder, self.autoencoder):
            if isinstance(comp, nn.Module):
                comp.to(device)
        self.device = device
        return self

    @property
    def is_student(self) -> bool:
        return self.card.kind == STUDENT

    # ------------------------------------------------------------------ sampling
    def resolve(
        self,
        *,
        steps: int | None = None,
        gamma: float | None = None,
        nu: float | None = None,
        omega: float | None = None,
        seconds: float | None = None,
        solver: str | None = None,
    ) -> dict[str, Any]:
        """Fill defaults from the card and validate every sampling parameter."""
        d = self.card.defaults
        solver = solver or (
            d.solver if self.is_student else (d.solver if d.solver != "gamma" else "heun")
        )
        steps = d.steps if steps is None else steps
        gamma = d.gamma if gamma is None else _finite("gamma", gamma)
        nu = d.nu if nu is None else _finite("nu", nu)
        omega = d.omega if omega is None else _finite("omega", omega)
        seconds = self.card.seconds if seconds is None else _finite("seconds", seconds)
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise InvalidArgumentError(f"steps must be a whole number >= 1, got {steps}")
        if not 0.0 <= gamma <= 1.0:
            raise InvalidArgumentError(
                f"gamma must be between 0 and 1, got {gamma} "
                "(0 = deterministic, keeps content across step counts; 1 = CM multistep)"
            )
        if nu < 0:
            raise InvalidArgumentError(f"nu must be >= 0, got {nu} (1 = no extra guidance)")
        if omega < 0:
            raise InvalidArgumentError(f"omega must be >= 0, got {omega}")
        if not 0 < seconds <= self.card.max_seconds:
            raise InvalidArgumentError(
                f"seconds must be in (0, {self.card.max_seconds:g}] for this model, got {seconds:g}"
            )
        fn = self.registry.load("solver", solver)
        requires = getattr(fn, "requires", "denoise")
        if requires == "jump" and not self.is_student:
            raise InvalidArgumentError(
                f"solver {solver!r} needs a CTM student, but this model is a teacher; "
                "use --solver heun, euler or dpmpp-2m"
            )
        if gamma != 0.0 and "gamma" not in solver_options(fn):
            raise InvalidArgumentError(
                f"--gamma applies to the gamma solver only, not {solver!r}; drop --gamma"
            )
        if not self.is_student and nu != 1.0:
            raise InvalidArgumentError(
                "nu applies to CTM students; for a teacher, --omega is the CFG scale"
            )
        return {
            "steps": int(steps),
            "gamma": gamma,
            "nu": nu,
            "omega": omega,
            "seconds": float(seconds),
            "solver": solver,
        }

    def grid(self, solver_fn: Any, steps: int) -> Tensor:
        """The noise levels a solver with ``steps`` steps runs on."""
        c = self.card
        make = (
            schedule.ctm_grid if getattr(solver_fn, "grid", "edm") == "ctm" else schedule.edm_grid
        )
        return make(steps, c.sigma_min, c.sigma_max, c.rho)

    def latent_shape(self, seconds: float) -> tuple[int, ...]:
        """The per-sample latent shape of a clip of ``seconds``."""
        return tuple(int(n) for n in self.autoencoder.latent_shape(seconds))

    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """Text conditioning for ``prompts`` on this pipeline's device."""
        return self.text_encoder(list(prompts)).to(self.device)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        steps: int | None = None,
        gamma: float | None = None,
        nu: float | None = None,
        omega: float | None = None,
        seconds: float | None = None,
        solver: str | None = None,
        batch_size: int = 8,
        callback: Callback | None = None,
    ) -> Generation:
        """Generate one clip per prompt; prompt i starts from the noise of ``seeds[i]``.

        Each sample draws all of its randomness from its own CPU generator, so a sample does not
        depend on the batch it was generated in. Returns all clips at once; see
        :meth:`generate_batches` to receive them batch by batch.
        """
        parts = list(
            self.generate_batches(
                prompts,
                seeds=seeds,
                steps=steps,
                gamma=gamma,
                nu=nu,
                omega=omega,
                seconds=seconds,
                solver=solver,
                batch_size=batch_size,
                callback=callback,
            )
        )
        return Generation(
            torch.cat([g.audio for g in parts]),
            self.card.sample_rate,
            [q for g in parts for q in g.params],
        )

    def generate_batches(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        steps: int | None = None,
        gamma: float | None = None,
        nu: float | None = None,
        omega: float | None = None,
        seconds: float | None = None,
        solver: str | None = None,
        batch_size: int = 8,
        callback: Callback | None = None,
    ) -> Iterator[Generation]:
        """Like :meth:`generate`, but yields each batch as soon as it is done.

        All arguments are validated before any work starts.
        """
        prompts, seeds, p = self._validate(
            prompts,
            seeds,
            batch_size,
            steps=steps,
            gamma=gamma,
            nu=nu,
            omega=omega,
            seconds=seconds,
            solver=solver,
        )
        return self._run_batches(prompts, seeds, p, batch_size, callback)

    def _validate(
        self, prompts: Sequence[str], seeds: Sequence[int], batch_size: int, **kwargs: Any
    ) -> tuple[list[str], list[int], dict[str, Any]]:
        prompts = list(prompts)
        seeds = [int(s) for s in seeds]
        if not prompts:
            raise InvalidArgumentError("no prompts given; pass at least one prompt")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidArgumentError(
                    f"prompt {i + 1} is empty; every prompt needs some text describing the sound"
                )
        if len(seeds) != len(prompts):
            raise InvalidArgumentError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        for s in seeds:
            if not 0 <= s <= MAX_SEED:
                raise InvalidArgumentError(f"seed {s} is outside [0, 2**63 - 1]")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch size must be >= 1, got {batch_size}")
        return prompts, seeds, self.resolve(**kwargs)

    @torch.inference_mode()
    def _run_batches(
        self,
        prompts: list[str],
        seeds: list[int],
        p: dict[str, Any],
        batch_size: int,
        callback: Callback | None,
    ) -> Iterator[Generation]:
        fn = self.registry.load("solver", p["solver"])
        sigmas = self.grid(fn, p["steps"])
        options = {"gamma": p["gamma"]} if "gamma" in solver_options(fn) else {}
        shape = self.latent_shape(p["seconds"])
        scale = p["nu"] if self.is_student else p["omega"]
        dtype = next((q.dtype for q in self.ctm.parameters()), torch.float32)

        emit(callback, GenerationStarted(len(prompts), batch_size, p["steps"]))
        for start in range(0, len(prompts), batch_size):
            batch_prompts = prompts[start : start + batch_size]
            batch_seeds = seeds[start : start + batch_size]
            generators = make_generators(batch_seeds)
            x = per_sample_randn(generators, shape) * float(sigmas[0])
            x = x.to(device=self.device, dtype=dtype)
            cond = self.encode_text(batch_prompts).to(self.device, dtype)
            uncond = (
                self.encode_text([""] * len(batch_prompts)).to(self.device, dtype)
                if scale != 1.0
                else None
            )
            model = GuidedModel(
                self.ctm, cond, uncond, scale, p["omega"] if self.is_student else None
            )
            latents = fn(
                model, x, sigmas, noise=PerSampleNoise(generators), callback=callback, **options
            )
            audio = self.autoencoder.decode(latents.float())
            audio = audio.reshape(audio.shape[0], -1).float().cpu()
            emit(callback, BatchFinished(min(start + batch_size, len(prompts)), len(prompts)))
            yield Generation(
                audio,
                self.card.sample_rate,
                [
                    SampleParams(prompt=pr, seed=sd, **p)
                    for pr, sd in zip(batch_prompts, batch_seeds, strict=True)
                ],
            )

    def refine(
        self,
        params: SampleParams,
        *,
        steps: int,
        gamma: float = 0.0,
        callback: Callback | None = None,
    ) -> Generation:
        """Regenerate a sample from the same initial noise (its seed) with ``steps`` steps.

        With ``gamma = 0`` the content is kept and only cleaned up (method.md §5).
        """
        return self.generate(
            [params.prompt],
            seeds=[params.seed],
            steps=steps,
            gamma=gamma,
            nu=params.nu,
            omega=params.omega,
            seconds=params.seconds,
            solver=params.solver,
            callback=callback,
            batch_size=1,
        )

    def provenance(self) -> dict[str, Any]:
        """Where this model came from (for sidecars and reports)."""
        return {
            "kind": self.card.kind,
            "soundctm_version": __version__,
            **{k: v for k, v in self.card.provenance.items() if isinstance(v, str | int)},
        }


def expand_component(registry: Registry, kind: str, card: ComponentCard) -> ComponentCard:
    """The card with explicit parameters: a factory may offer ``expand_params(params)`` to turn
    shorthands (such as a size preset) into its full keyword arguments."""
    factory = registry.load(kind, card.name)
    expand = getattr(factory, "expand_params", None)
    if expand is None:
        return card
    return ComponentCard(name=card.name, params=dict(expand(dict(card.params))))


def _checkpoint_state(component: Any) -> dict[str, Tensor]:
    """The weights a component stores in a checkpoint (none if it loads them from elsewhere)."""
    if not isinstance(component, nn.Module) or not getattr(component, "checkpoint_weights", True):
        return {}
    return component.state_dict()


def load_pipeline(path: str | Path, *, device: str | torch.device = "cpu") -> Pipeline:
    """Load a checkpoint directory (see :meth:`Pipeline.load`)."""
    return Pipeline.load(path, device=device)


__all__ = ["STUDENT", "TEACHER", "Generation", "Pipeline", "SampleParams", "load_pipeline"]
