"""The hooks a soundctm plugin can implement.

A plugin is any object (usually a module) with functions marked ``@hookimpl``. Each hook receives
a ``register`` callback and calls it once per component it provides::

    from soundctm import hookimpl

    @hookimpl
    def register_backbones(register):
        register("my-unet", "my_package.unet:UNet", description="A 2D UNet over mel latents")

The target is a ``"module:attr"`` string, imported only when the component is first used (so
listing plugins and ``soundctm --help`` stay instant), or the object itself. Third-party packages
expose their plugin module through the entry-point group ``soundctm``::

    [project.entry-points.soundctm]
    my_plugin = "my_package.soundctm_plugin"

The built-in components are registered by :mod:`soundctm.builtin` through exactly these
hooks. This module imports nothing from soundctm.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

PROJECT = "soundctm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback every registration hook receives."""

    def __call__(self, name: str, target: str | Any, *, description: str = "") -> None:
        """Register component ``name`` implemented by ``target`` ("module:attr" or an object)."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register denoiser backbones.

    A backbone factory takes its card parameters as keyword arguments and returns an
    ``nn.Module`` with ``forward(x, t_noise, s_noise, omega, cond) -> tensor`` (the raw network
    F; EDM preconditioning lives in the engine). ``s_noise`` and ``omega`` are ``None`` for a
    teacher. Optional: ``features(x, t_noise, cond) -> list[tensor]`` for the teacher-feature
    distance.
    """


@hookspec
def register_text_encoders(register: Register) -> None:
    """Register text encoders: factories returning an object with ``dim`` and
    ``__call__(prompts) -> Conditioning``."""


@hookspec
def register_autoencoders(register: Register) -> None:
    """Register autoencoders (a VAE together with its vocoder is one autoencoder).

    A factory returns an object with ``sample_rate``, ``latent_shape(seconds)``,
    ``encode(audio) -> latents`` and ``decode(latents) -> audio``.
    """


@hookspec
def register_solvers(register: Register) -> None:
    """Register samplers: pure functions ``(model, x, sigmas, *, noise, callback, **options)``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register data sets of (audio, caption) pairs for training and evaluation."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics (factories of objects with ``name`` and ``compute``)."""


@hookspec
def register_embedders(register: Register) -> None:
    """Register audio embedders for evaluation (Frechet distances, classifiers, CLAP).

    A factory returns an object with ``name``, ``sample_rate``, ``dim``, ``checksum`` (of its
    weights, or "none") and ``embed(audio [B, n]) -> [B, dim]``; classifiers add
    ``logits(audio) -> [B, classes]``, text-audio models add ``embed_text(texts) -> [B, dim]``.
    """


@hookspec
def register_importers(register: Register) -> None:
    """Register importers of released models: ``importer(src, out, **options) -> Path`` converts
    a release folder into a soundctm checkpoint at ``out``.

    The function may carry ``hub_repos`` (Hugging Face repositories it converts, so that
    ``--model hf:OWNER/REPO`` works), ``hub_files`` (the file patterns to download; all if
    absent) and ``converter_version`` (an int that keys the converted-model cache).
    """


@hookspec
def register_commands(register: Register) -> None:
    """Register CLI commands: the target is a plain function that Typer turns into a command.

    Keep the module that defines it free of heavy imports (import torch inside the function),
    so that ``soundctm --help`` stays instant.
    """
