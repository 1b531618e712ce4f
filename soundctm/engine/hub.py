"""Models named by a Hugging Face hub id: ``hf:OWNER/REPO[@REVISION][#VARIANT]``.

``#VARIANT`` picks one model of a release that holds several
(``hf:koichisaito/soundctm_dit#ac_v1_iclr``): the importer names its variants in
``hub_variants`` (and may offer ``parse_variant`` to canonicalise a name) and takes the one
chosen as ``variant=``; without ``#`` it gets ``hub_default_variant``. ``hub_files`` may then
be a function of the variant, and the variant is part of the cache folder's name.

A repository is either a soundctm checkpoint (it has ``model.json``: loaded from the downloaded
snapshot as it is) or a release that a registered importer converts (its ``hub_repos`` name the
repository). A release is downloaded with ``huggingface_hub`` (which honours ``HF_HOME``,
``HF_HUB_OFFLINE`` and shows download progress), converted once into
``<cache>/<owner>--<repo>/<commit>-v<converter version>`` and loaded from there afterwards. The
cache is ``$SOUNDCTM_CACHE/hub`` (default ``~/.cache/soundctm/hub``).

Offline, a snapshot already in the Hugging Face cache is used; otherwise the error says what to
download and where to put it. No torch here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundctm.errors import CheckpointError, InvalidArgumentError

PREFIX = "hf:"
CACHE_ENV = "SOUNDCTM_CACHE"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class HubId:
    """``repo`` (``OWNER/NAME``) and the ``revision`` asked for (``None``: the default branch)."""

    repo: str
    revision: str | None = None
    variant: str | None = None

    def __str__(self) -> str:
        return (
            f"{PREFIX}{self.repo}"
            + (f"@{self.revision}" if self.revision else "")
            + (f"#{self.variant}" if self.variant else "")
        )


@dataclass(frozen=True)
class HubModel:
    """A hub model on this machine: the checkpoint ``path`` and the ``commit`` it came from."""

    hub_id: HubId
    commit: str
    path: Path

    def record(self) -> dict[str, Any]:
        """What a sidecar or card records of the model's origin."""
        out = {"repo": self.hub_id.repo, "revision": self.hub_id.revision, "commit": self.commit}
        if self.hub_id.variant:
            out["variant"] = self.hub_id.variant
        return out


def is_hub_id(model: str | os.PathLike[str] | None) -> bool:
    """Whether ``model`` names a hub model (``hf:...``)."""
    return model is not None and str(model).startswith(PREFIX)


def parse_hub_id(text: str) -> HubId:
    """``hf:OWNER/REPO[@REVISION][#VARIANT]`` -> :class:`HubId`; a one-line error for anything
    else."""
    body = str(text)[len(PREFIX) :] if str(text).startswith(PREFIX) else str(text)
    body, hash_sign, variant = body.partition("#")
    repo, _, revision = body.partition("@")
    if (
        not _REPO.match(repo)
        or (revision == "" and "@" in body)
        or (hash_sign and not _VARIANT.match(variant))
    ):
        raise InvalidArgumentError(
            f"{text!r} is not a hub model id; write hf:OWNER/REPO, hf:OWNER/REPO@REVISION or "
            "hf:OWNER/REPO#VARIANT, e.g. hf:Sony/soundctm or hf:koichisaito/soundctm_dit#ac_v2"
        )
    return HubId(repo, revision or None, variant or None)


def cache_root() -> Path:
    """Where converted hub models are kept."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "soundctm") / "hub"


def find_importer(repo: str, registry: Any) -> tuple[str, Callable[..., Path]] | None:
    """The registered importer whose ``hub_repos`` include ``repo`` (case-insensitive)."""
    for entry in registry.entries("importer"):
        fn = entry.load()
        if repo.lower() in {r.lower() for r in getattr(fn, "hub_repos", ())}:
            return entry.name, fn
    return None


def resolve(
    model: str,
    *,
    registry: Any | None = None,
    download: Callable[..., str] | None = None,
    callback: Callable[[object], None] | None = None,
) -> HubModel:
    """The local checkpoint of the hub model ``model`` (downloaded and converted if needed).

    ``download`` stands in for ``huggingface_hub.snapshot_download`` (tests pass a local copy).
    """
    from soundctm.events import Message, emit

    hub_id = parse_hub_id(model)
    if registry is None:
        from soundctm.plugins.registry import get_registry

        registry = get_registry()
    found = find_importer(hub_id.repo, registry)
    variant = _variant(hub_id, found)
    patterns = _patterns(found[1], variant) if found else []
    emit(callback, Message(f"fetching {hub_id} from the Hugging Face hub"))
    snapshot = Path(_download(hub_id, patterns or None, download))
    commit = snapshot.name
    if found is None:
        if hub_id.variant:
            raise InvalidArgumentError(
                f"{hub_id}: #{hub_id.variant} picks a variant of a release an importer "
                "converts; a soundctm checkpoint repository has none (drop the #...)"
            )
        if not (snapshot / "model.json").is_file():
            raise CheckpointError(
                f"{hub_id} is neither a soundctm checkpoint (no model.json) nor a release a "
                "registered importer knows; see `soundctm plugins --kind importer`"
            )
        return HubModel(hub_id, commit, snapshot)
    name, importer = found
    version = int(getattr(importer, "converter_version", 1))
    leaf = f"{commit}-v{version}" + (f"-{variant}" if variant else "")
    target = cache_root() / hub_id.repo.replace("/", "--") / leaf
    if not (target / "model.json").is_file():
        emit(callback, Message(f"converting {hub_id} with the {name!r} importer into {target}"))
        options = {"variant": variant} if variant else {}
        importer(snapshot, target, callback=callback, **options)
    return HubModel(hub_id, commit, target)


def _variant(hub_id: HubId, found: tuple[str, Callable[..., Path]] | None) -> str | None:
    """The importer's canonical name of the variant asked for (``None``: no variants)."""
    if found is None:
        return None
    name, importer = found
    variants = tuple(getattr(importer, "hub_variants", ()))
    if not variants:
        if hub_id.variant:
            raise InvalidArgumentError(
                f"{hub_id}: the {name!r} importer converts one model and has no variants; "
                "drop the #..."
            )
        return None
    if hub_id.variant is None:
        default = getattr(importer, "hub_default_variant", None)
        return str(default) if default else None
    parse = getattr(importer, "parse_variant", None)
    if callable(parse):  # the importer's own one-line error for an unknown name
        return str(parse(hub_id.variant))
    if hub_id.variant not in variants:
        raise InvalidArgumentError(
            f"{hub_id}: unknown variant {hub_id.variant!r}; choose one of {', '.join(variants)}"
        )
    return hub_id.variant


def _patterns(importer: Callable[..., Path], variant: str | None) -> list[str]:
    files = getattr(importer, "hub_files", ())
    return list(files(variant) if callable(files) else files)


def _download(
    hub_id: HubId, patterns: list[str] | None, download: Callable[..., str] | None
) -> str:
    if download is None:
        from huggingface_hub import snapshot_download

        download = snapshot_download
    try:
        return download(hub_id.repo, revision=hub_id.revision, allow_patterns=patterns)
    except Exception as exc:  # huggingface_hub raises many types: offline, 404, auth, network
        include = "".join(f" --include '{p}'" for p in patterns or [])
        revision = f" --revision {hub_id.revision}" if hub_id.revision else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"cannot fetch {hub_id} ({type(exc).__name__}: {first}); on a machine with network "
            f"run `hf download {hub_id.repo}{revision}{include}` to fill the Hugging Face cache "
            "(HF_HOME; then copy it here), or download the files into a folder and convert it "
            "with `soundctm import`"
        ) from exc


__all__ = ["HubId", "HubModel", "cache_root", "is_hub_id", "parse_hub_id", "resolve"]
