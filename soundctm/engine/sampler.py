"""Generation, written once for both runtimes (docs/method.md §5).

A :class:`Sampler` turns prompts and seeds into audio over the component protocols of
:mod:`soundctm.engine.components`: a network offering ``g(x, t, s)`` (the torch
:class:`~soundctm.engine.ctm.CTM` or an exported graph, both
:class:`~soundctm.engine.ctm.TrajectoryModel`, so the jump ``G`` and the denoiser are the same
code), a text encoder, a decoder with ``latent_shape`` and the registry's solvers. It checks the
prompts, seeds and batch size, resolves the :class:`~soundctm.engine.plan.SamplingPlan`, draws
each sample's noise from its own CPU generator, applies guidance
(:class:`~soundctm.engine.guidance.GuidedModel`), runs the solver, decodes and emits the
generation events.

The torch :class:`~soundctm.engine.pipeline.Pipeline` and the onnxruntime
:class:`~soundctm.export.runtime.OrtPipeline` each hold a sampler; :class:`SamplingAPI` gives
both the same public methods (``generate``, ``generate_batches``, ``refine``, ``resolve``, ...).
The two guidance knobs are named in :mod:`soundctm.engine.plan` (``guidance_scale``: nu for a
student, omega for a teacher; ``guidance_input``: omega fed to a student network).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Unpack

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.engine import schedule
from soundctm.engine.audio import crop_or_pad, resample_soxr, to_mono
from soundctm.engine.components import (
    Solver,
    TextEncoder,
    crops_to_clip,
    solver_grid,
    solver_options,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import TrajectoryModel
from soundctm.engine.guidance import GuidedModel
from soundctm.engine.noise import MAX_SEED, PerSampleNoise, make_generators, per_sample_randn
from soundctm.engine.plan import SampleParams, SamplingArguments, SamplingPlan, resolve_plan
from soundctm.engine.variation import (
    Inpainting,
    Source,
    check_strength,
    fit_frames,
    keep_mask,
    strength_sigma,
    time_axis,
)
from soundctm.errors import InvalidArgumentError
from soundctm.events import BatchFinished, Callback, GenerationStarted, Message, emit

if TYPE_CHECKING:
    from soundctm.engine.checkpoint import ModelCard
    from soundctm.plugins.registry import Registry

#: Samples generated at once unless the caller says otherwise.
DEFAULT_BATCH_SIZE = 8


class Decoder(Protocol):
    """What sampling needs of an autoencoder: the latent shape of a clip and ``decode``."""

    sample_rate: int

    def latent_shape(self, seconds: float) -> Sequence[int]: ...

    def decode(self, latents: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Generation:
    """Generated audio [N, samples] at ``sample_rate``, with the parameters of each row."""

    audio: Tensor
    sample_rate: int
    params: list[SampleParams]


def _check_inputs(
    prompts: Sequence[str], seeds: Sequence[int], batch_size: int
) -> tuple[list[str], list[int]]:
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
    return prompts, seeds


class Sampler:
    """Prompts and seeds to audio with one model's components (see the module docstring).

    ``device`` is where latents and conditioning live (the torch pipeline moves it; an
    exported model keeps host tensors on the CPU).
    """

    def __init__(
        self,
        card: ModelCard,
        network: TrajectoryModel,
        text_encoder: TextEncoder,
        autoencoder: Decoder,
        *,
        registry: Registry,
        device: torch.device | None = None,
    ) -> None:
        self.card = card
        self.network = network
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.registry = registry
        self.device = device if device is not None else torch.device("cpu")

    # ------------------------------------------------------------------ parts
    def solver(self, name: str) -> Solver:
        """The registered solver ``name``."""
        return self.registry.load("solver", name)

    def resolve(self, **arguments: Unpack[SamplingArguments]) -> SamplingPlan:
        """Defaults from the card, every parameter validated (:func:`resolve_plan`)."""
        return resolve_plan(self.card, self.solver, **arguments)

    def grid(self, solver_fn: Any, steps: int, sigma_max: float | None = None) -> Tensor:
        """The noise levels a solver with ``steps`` steps runs on (method.md §1), from the
        card's ``sigma_max`` or from a lower ``sigma_max`` (a variation, method.md §8)."""
        c = self.card
        make = schedule.ctm_grid if solver_grid(solver_fn) == "ctm" else schedule.edm_grid
        top = c.sigma_max if sigma_max is None else float(sigma_max)
        return make(steps, c.sigma_min, top, c.rho)

    def latent_shape(self, seconds: float) -> tuple[int, ...]:
        """The per-sample latent shape of a clip of ``seconds``."""
        return tuple(int(n) for n in self.autoencoder.latent_shape(seconds))

    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """Text conditioning for ``prompts`` on the sampler's device."""
        return self.text_encoder(list(prompts)).to(self.device)

    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (float32 for a graph or a module without
        parameters)."""
        if isinstance(self.network, nn.Module):
            return next((q.dtype for q in self.network.parameters()), torch.float32)
        return torch.float32

    def decode(self, latents: Tensor, seconds: float | None = None) -> Tensor:
        """Audio ``[B, n]`` (float32, CPU) of clean latents, cropped to ``seconds`` if given."""
        audio = self.autoencoder.decode(latents.float())
        audio = audio.reshape(audio.shape[0], -1).float().cpu()
        if seconds is not None:
            audio = audio[:, : clip_samples(seconds, self.card.sample_rate)]
        return audio

    # ------------------------------------------------------------------ variation
    def variation_source(
        self,
        audio: Tensor,
        sample_rate: int,
        count: int,
        strength: float,
        mask: Sequence[tuple[float, float]],
        arguments: SamplingArguments,
        callback: Callback | None = None,
    ) -> tuple[Source, SamplingArguments]:
        """The :class:`~soundctm.engine.variation.Source` of a variation of ``audio`` (method.md
        §8) for ``count`` samples, and the arguments with the clip length filled in (the
        input's duration, at most the model's ``max_seconds``, unless ``seconds`` is given)."""
        strength = check_strength(strength)
        encode = getattr(self.autoencoder, "encode", None)
        if not callable(encode):
            raise InvalidArgumentError(
                "this model's autoencoder cannot encode audio (an exported ONNX folder has no "
                "encoder graph); vary needs the checkpoint folder the export was made from"
            )
        if not isinstance(audio, Tensor) or audio.ndim not in (1, 2) or audio.shape[-1] == 0:
            raise InvalidArgumentError(
                "audio must be a tensor [samples] or [channels, samples] with some samples"
            )
        if int(sample_rate) <= 0:
            raise InvalidArgumentError(f"sample_rate must be positive, got {sample_rate}")
        if not bool(torch.isfinite(audio).all()):
            raise InvalidArgumentError("audio must be finite numbers (no NaN or infinity)")
        rate = self.card.sample_rate
        clip = resample_soxr(to_mono(audio.detach().float().cpu()), int(sample_rate), rate)
        if arguments.get("seconds") is None:
            seconds = min(clip.shape[-1] / rate, self.card.max_seconds)
            arguments = {**arguments, "seconds": seconds}
        plan = self.resolve(**arguments)
        if clip.shape[-1] > clip_samples(plan.seconds, rate):  # say so: nothing cut silently
            emit(
                callback,
                Message(
                    f"the input is {clip.shape[-1] / rate:.2f} s long; only its first "
                    f"{plan.seconds:g} s are varied ("
                    + (
                        f"this model makes at most {self.card.max_seconds:g} s)"
                        if plan.seconds >= self.card.max_seconds
                        else "the clip length asked for)"
                    ),
                    level="warning",
                ),
            )
        clip = crop_or_pad(clip, clip_samples(plan.seconds, rate))
        shape = self.latent_shape(plan.seconds)
        with torch.inference_mode():
            x0 = encode(clip[None].to(self.device)).float().cpu()
        axis = None
        if mask or tuple(x0.shape[1:]) != shape:
            axis = time_axis(self.latent_shape, plan.seconds)
            x0 = fit_frames(x0, shape[axis], axis)
        if tuple(x0.shape[1:]) != shape:
            raise InvalidArgumentError(
                f"the autoencoder encoded {plan.seconds:g} s to latents {list(x0.shape[1:])}, "
                f"but the model samples {list(shape)}"
            )
        keep = keep_mask(mask, plan.seconds, shape, axis) if mask and axis is not None else None
        c = self.card
        sigma = strength_sigma(strength, c.sigma_min, c.sigma_max, c.rho)
        return Source(x0.expand(count, *shape), sigma, keep), arguments

    # ------------------------------------------------------------------ generation
    def generate_batches(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        batch_size: int,
        callback: Callback | None,
        arguments: SamplingArguments,
        latents: Tensor | None = None,
        source: Source | None = None,
    ) -> Iterator[Generation]:
        """Check everything, then return the lazy iterator over the batches (``source``: a
        variation's input, :meth:`variation_source`)."""
        prompts, seeds = _check_inputs(prompts, seeds, batch_size)
        plan = self.resolve(**arguments)
        if latents is not None:
            want = (len(prompts), *self.latent_shape(plan.seconds))
            if tuple(latents.shape) != want:
                raise InvalidArgumentError(
                    f"latents must have the shape {list(want)} (one initial latent per prompt "
                    f"for {plan.seconds:g} s clips), got {list(latents.shape)}"
                )
            if not bool(torch.isfinite(latents).all()):
                raise InvalidArgumentError("latents must be finite numbers")
        return self._run(prompts, seeds, plan, batch_size, callback, latents, source)

    @torch.inference_mode()
    def _run(
        self,
        prompts: list[str],
        seeds: list[int],
        plan: SamplingPlan,
        batch_size: int,
        callback: Callback | None,
        latents: Tensor | None = None,
        source: Source | None = None,
    ) -> Iterator[Generation]:
        fn = self.solver(plan.solver)
        sigmas = self.grid(fn, plan.steps, None if source is None else source.sigma)
        options = {"gamma": plan.gamma} if "gamma" in solver_options(fn) else {}
        shape = self.latent_shape(plan.seconds)
        dtype = self.dtype()
        total = len(prompts)
        batches = -(-total // batch_size)
        emit(callback, GenerationStarted(total, batch_size, plan.steps, batches))
        for start in range(0, total, batch_size):
            batch_prompts = prompts[start : start + batch_size]
            batch_seeds = seeds[start : start + batch_size]
            generators = make_generators(batch_seeds)
            x0 = None
            if source is not None:  # x = x_0 + sigma(S) z (method.md §8)
                x0 = source.latents[start : start + batch_size].float().cpu()
                x = x0 + per_sample_randn(generators, shape) * float(sigmas[0])
            elif latents is None:  # x_T = sigma_max z, z from each sample's own generator
                x = per_sample_randn(generators, shape) * float(sigmas[0])
            else:
                x = latents[start : start + batch_size].float().cpu()
            x = x.to(device=self.device, dtype=dtype)
            cond = self.encode_text(batch_prompts).to(self.device, dtype)
            uncond = (
                self.encode_text([plan.uncond_prompt] * len(batch_prompts)).to(self.device, dtype)
                if plan.needs_uncond
                else None
            )
            model: Any = GuidedModel(
                self.network, cond, uncond, plan.guidance_scale, plan.guidance_input
            )
            if source is not None and source.keep is not None and x0 is not None:
                model = Inpainting(model, x0.to(device=self.device, dtype=dtype), source.keep)
            out = fn(
                model, x, sigmas, noise=PerSampleNoise(generators), callback=callback, **options
            )
            if isinstance(model, Inpainting):  # the kept frames end as the input (method.md §8)
                out = model.finish(out)
            audio = self.decode(out, plan.seconds if crops_to_clip(self.autoencoder) else None)
            emit(callback, BatchFinished(min(start + batch_size, total), total))
            yield Generation(
                audio,
                self.card.sample_rate,
                [plan.sample(p, s) for p, s in zip(batch_prompts, batch_seeds, strict=True)],
            )


def clip_samples(seconds: float, sample_rate: int) -> int:
    """The samples of a clip: a decoder that rounds its latent length up (a UNet's needs) makes
    more, which are cropped (docs/official-models.md, the vocoder crop)."""
    return round(seconds * sample_rate)


def concatenate(parts: Sequence[Generation], sample_rate: int) -> Generation:
    """One :class:`Generation` of all rows of ``parts``."""
    return Generation(
        torch.cat([g.audio for g in parts]), sample_rate, [q for g in parts for q in g.params]
    )


class SamplingAPI:
    """The public sampling methods of a pipeline, forwarded to the :class:`Sampler` it holds
    (``self.sampler``). Shared by the torch and the onnxruntime pipelines."""

    sampler: Sampler

    @property
    def card(self) -> ModelCard:
        return self.sampler.card

    @property
    def registry(self) -> Registry:
        return self.sampler.registry

    @property
    def text_encoder(self) -> Any:
        return self.sampler.text_encoder

    @property
    def autoencoder(self) -> Any:
        return self.sampler.autoencoder

    @property
    def device(self) -> torch.device:
        return self.sampler.device

    @device.setter
    def device(self, device: str | torch.device) -> None:
        self.sampler.device = torch.device(device)

    @property
    def is_student(self) -> bool:
        return self.sampler.network.is_student

    @property
    def sample_rate(self) -> int:
        """The rate of the generated audio (Hz)."""
        return int(self.card.sample_rate)

    def resolve(self, **arguments: Unpack[SamplingArguments]) -> SamplingPlan:
        """Fill defaults from the card and validate every sampling parameter: ``steps``,
        ``gamma``, ``nu``, ``omega``, ``seconds``, ``solver`` (see
        :mod:`soundctm.engine.plan`)."""
        return self.sampler.resolve(**arguments)

    def grid(self, solver_fn: Any, steps: int) -> Tensor:
        """The noise levels a solver with ``steps`` steps runs on."""
        return self.sampler.grid(solver_fn, steps)

    def latent_shape(self, seconds: float) -> tuple[int, ...]:
        """The per-sample latent shape of a clip of ``seconds``."""
        return self.sampler.latent_shape(seconds)

    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """Text conditioning for ``prompts`` on this pipeline's device."""
        return self.sampler.encode_text(prompts)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Callback | None = None,
        latents: Tensor | None = None,
        **arguments: Unpack[SamplingArguments],
    ) -> Generation:
        """Generate one clip per prompt; prompt i starts from the noise of ``seeds[i]``.

        The sampling arguments are ``steps``, ``gamma``, ``nu``, ``omega``, ``seconds`` and
        ``solver`` (``None`` or absent: the card's default; see :meth:`resolve`). Each sample
        draws all of its randomness from its own CPU generator, so a sample does not depend on
        the batch it was generated in. Returns all clips at once; see :meth:`generate_batches`
        to receive them batch by batch.

        ``latents`` replaces the initial latents ``x_T = sigma_max z`` with given ones
        ``[len(prompts), *latent_shape(seconds)]`` (already scaled by ``sigma_max``); the seeds
        still drive any noise the solver adds later (gamma > 0).
        """
        parts = list(
            self.generate_batches(
                prompts,
                seeds=seeds,
                batch_size=batch_size,
                callback=callback,
                latents=latents,
                **arguments,
            )
        )
        return concatenate(parts, self.sample_rate)

    def generate_batches(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Callback | None = None,
        latents: Tensor | None = None,
        **arguments: Unpack[SamplingArguments],
    ) -> Iterator[Generation]:
        """Like :meth:`generate`, but yields each batch as soon as it is done.

        All arguments are validated before any work starts; the first batch starts with a
        :class:`~soundctm.events.GenerationStarted` event that carries the resolved steps.
        """
        return self.sampler.generate_batches(
            prompts, seeds, batch_size, callback, arguments, latents
        )

    def decode(self, latents: Tensor, seconds: float | None = None) -> Tensor:
        """Decode clean latents ``[B, *latent_shape]`` to audio ``[B, n]`` (float32, CPU),
        cropped to a clip of ``seconds`` when given (a decoder may make a little more)."""
        return self.sampler.decode(latents, seconds)

    def refine(
        self,
        params: SampleParams,
        *,
        steps: int,
        gamma: float = 0.0,
        callback: Callback | None = None,
        negative_prompt: str | None = None,
    ) -> Generation:
        """Regenerate a sample from the same initial noise (its seed) with ``steps`` steps.

        With ``gamma = 0`` the content is kept and only cleaned up (method.md §5). The
        negative prompt is the sample's own (``params.negative_prompt``) unless
        ``negative_prompt`` is given.
        """
        arguments: SamplingArguments = {**params.arguments(), "steps": steps, "gamma": gamma}
        if negative_prompt is not None:
            arguments["negative_prompt"] = negative_prompt
        return self.generate(
            [params.prompt], seeds=[params.seed], batch_size=1, callback=callback, **arguments
        )

    def vary(
        self,
        audio: Tensor,
        sample_rate: int,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        strength: float,
        mask: Sequence[tuple[float, float]] = (),
        negative_prompt: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Callback | None = None,
        **arguments: Unpack[SamplingArguments],
    ) -> Generation:
        """Variations of ``audio`` (``[samples]`` or ``[channels, samples]`` at
        ``sample_rate``), one per prompt, prompt i with the noise of ``seeds[i]`` (method.md §8).

        The audio is mixed to mono, resampled to the model's rate (soxr), cut or padded to
        ``seconds`` (default: its own length, at most the model's ``max_seconds``) and encoded
        to ``x_0``; ``strength`` in [0, 1] picks the level ``sigma(S)`` on the model's Karras
        ramp (0: the input back, 1: a new sound); sampling starts from ``x_0 + sigma(S) z`` and
        runs ``steps`` steps of the solver (the model's default: 1 jump for a student) on a
        grid from ``sigma(S)`` to the end. ``mask``: spans ``(start, end)`` in seconds to
        regenerate while everything else is kept (inpainting). The other sampling arguments
        are those of :meth:`generate`.
        """
        return concatenate(
            list(
                self.vary_batches(
                    audio,
                    sample_rate,
                    prompts,
                    seeds=seeds,
                    strength=strength,
                    mask=mask,
                    negative_prompt=negative_prompt,
                    batch_size=batch_size,
                    callback=callback,
                    **arguments,
                )
            ),
            self.sample_rate,
        )

    def vary_batches(
        self,
        audio: Tensor,
        sample_rate: int,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        strength: float,
        mask: Sequence[tuple[float, float]] = (),
        negative_prompt: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Callback | None = None,
        **arguments: Unpack[SamplingArguments],
    ) -> Iterator[Generation]:
        """Like :meth:`vary`, but yields each batch as soon as it is done (all arguments are
        checked and the input encoded first)."""
        checked, _ = _check_inputs(prompts, seeds, batch_size)
        if negative_prompt is not None:
            arguments["negative_prompt"] = negative_prompt
        source, arguments = self.sampler.variation_source(
            audio, sample_rate, len(checked), strength, list(mask), arguments, callback
        )
        return self.sampler.generate_batches(
            prompts, seeds, batch_size, callback, arguments, source=source
        )

    def provenance(self) -> dict[str, Any]:
        """Where this model came from (for sidecars and reports)."""
        return {
            "kind": self.card.kind,
            "soundctm_version": __version__,
            **{k: v for k, v in self.card.provenance.items() if isinstance(v, str | int)},
        }


__all__ = ["DEFAULT_BATCH_SIZE", "Generation", "Sampler", "SamplingAPI", "concatenate"]
