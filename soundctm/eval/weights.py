"""Weight files of the evaluation embedders: where each comes from, its pinned SHA-256, and
one function that finds it (:func:`fetch_weights`).

Every published model an embedder loads is described by a :class:`WeightSpec` (the file name,
SHA-256, size, source, the environment variable that overrides it). :func:`fetch_weights` looks,
in this order, at

1. an explicit path (an embedder argument such as ``weights=``, or ``soundctm eval --weights
   NAME=PATH`` through :func:`weight_paths`);
2. the spec's environment variable (``SOUNDCTM_CLAP_WEIGHTS`` ...);
3. the cache, ``$SOUNDCTM_CACHE/weights`` (default ``~/.cache/soundctm/weights``);
4. a download from the spec's source (a Hugging Face repository file, or a release URL) into
   the cache: streamed to a temporary name, hashed on the way, renamed only when the SHA-256
   matches. ``SOUNDCTM_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids downloads.

SHA-256 rules: a downloaded or cached file must match the pinned hash (a mismatch is a one-line
:class:`WeightsFileError` naming the file, the expected and the actual hash). A file the user
names (path or environment variable) may differ: users hold other variants (a fine-tuned CLAP,
a re-saved file); it is used, a warning says so, and the report names its real hash. A spec's
``sha256`` may be the full 64 hex digits (pinned), a shorter hex prefix (torch.hub's convention:
``vggish-10086976.pth`` is pinned by the first 8 digits of its SHA-256), or ``""``. A spec with no
published SHA-256 may instead pin the file's Git object id (``git_blob``: the SHA-1 of ``"blob
<size>\0"`` + the bytes, which the source's Git repository publishes for every file it serves:
torchopenl3's weights); a spec with neither is unpinned, and the actual hash is reported with
every result.

Every file used is recorded as a :class:`WeightRecord` (file, SHA-256, how it was checked), which
embedders expose as ``weights`` and reports print.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from soundctm.errors import SoundCTMError, first_line
from soundctm.events import Callback, EvalStage, EvalTick, Message, emit


class WeightsNotFoundError(SoundCTMError):
    """An embedder's weight file is neither given, cached nor downloadable."""


class WeightsFileError(SoundCTMError):
    """An embedder's weight file exists but cannot be used: unreadable, not a plain tensor file
    (a pickle with code or objects is refused), a wrong SHA-256, or not the expected model."""


#: Environment variable of the cache root (weights go to ``$SOUNDCTM_CACHE/weights``).
CACHE_ENV = "SOUNDCTM_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/soundctm")
#: Set to 1 to forbid downloads (``HF_HUB_OFFLINE=1`` does the same).
OFFLINE_ENV = "SOUNDCTM_OFFLINE"
HF_PREFIX = "hf://"
Status = Literal["verified", "prefix-verified", "git-verified", "unpinned", "differs"]


@dataclass(frozen=True)
class WeightSpec:
    """A published weight file.

    ``name``: short identifier (``"laion-clap-630k-audioset-best"``); ``filename``: the
    published file name (also its name in the cache); ``sha256``: the full hex SHA-256, a hex
    prefix of it (at least 8 digits), or ``""`` when no published hash is known; ``size``: bytes
    when known exactly, else None; ``size_hint``: its size in words for messages (``"1.86 GB"``);
    ``source``: ``hf://OWNER/REPO@REVISION/PATH`` (a Hugging Face file; ``@REVISION`` optional) or
    an ``https://`` (or ``file://``) URL; ``env``: the environment variable naming a local copy;
    ``description``: what it is, for messages and docs; ``git_blob``: the 40-hex Git object id
    of the file in the source's Git repository, checked when ``sha256`` is empty (the SHA-256 is
    then reported, not compared).
    """

    name: str
    filename: str
    sha256: str
    size: int | None
    source: str
    env: str
    description: str
    size_hint: str = ""
    git_blob: str = ""

    @property
    def pinned(self) -> bool:
        """True when the spec carries a full SHA-256."""
        return len(self.sha256) == 64

    @property
    def url(self) -> str:
        """A URL that serves the file (Hugging Face ``resolve`` URL for ``hf://`` sources)."""
        if self.source.startswith(HF_PREFIX):
            repo, revision, path = parse_hf_source(self.source)
            return f"https://huggingface.co/{repo}/resolve/{revision}/{path}"
        return self.source

    @property
    def size_text(self) -> str:
        if self.size_hint:
            return self.size_hint
        if self.size is not None:
            return f"{self.size / 1e6:.0f} MB"
        return "size unknown"


@dataclass(frozen=True)
class WeightRecord:
    """A weight file a run used: its name, path, SHA-256 and how the file compared with the
    published hash (``verified``, ``prefix-verified``, ``git-verified``, ``unpinned``,
    ``differs``)."""

    name: str
    file: str
    path: str
    sha256: str
    status: Status

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "file": self.file,
            "path": self.path,
            "sha256": self.sha256,
            "status": self.status,
        }


def parse_hf_source(source: str) -> tuple[str, str, str]:
    """``hf://OWNER/REPO[@REVISION]/PATH`` to ``(repo_id, revision, path)`` (revision
    ``main`` when absent)."""
    rest = source.removeprefix(HF_PREFIX)
    parts = rest.split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"bad Hugging Face source {source!r}; expected hf://OWNER/REPO/PATH")
    owner, repo, path = parts
    repo, _, revision = repo.partition("@")
    return f"{owner}/{repo}", revision or "main", path


def cache_dir() -> Path:
    """Where downloaded weights live: ``$SOUNDCTM_CACHE/weights`` or
    ``~/.cache/soundctm/weights``."""
    root = os.environ.get(CACHE_ENV, "").strip()
    return (Path(root) if root else DEFAULT_CACHE_ROOT).expanduser() / "weights"


def offline() -> bool:
    """True when downloads are forbidden (``SOUNDCTM_OFFLINE`` or ``HF_HUB_OFFLINE`` set to a
    true value)."""
    for var in (OFFLINE_ENV, "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


# -- progress events ----------------------------------------------------------------------------

_CALLBACK: contextvars.ContextVar[Callback | None] = contextvars.ContextVar(
    "soundctm_weights_callback", default=None
)


@contextlib.contextmanager
def progress_to(callback: Callback | None) -> Iterator[None]:
    """Send the download and warning events of :func:`fetch_weights` calls made inside the block
    (embedders built by the registry take no callback) to ``callback``."""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


# -- paths given on the command line -----------------------------------------------------------

_GIVEN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "soundctm_weights_given", default=None
)


@contextlib.contextmanager
def weight_paths(paths: dict[str, str]) -> Iterator[None]:
    """Inside the block, :func:`fetch_weights` takes the file of every spec whose variable is a
    key of ``paths`` from there (``{"SOUNDCTM_CLAP_WEIGHTS": "/data/clap.pt"}``), before the
    environment: what ``soundctm eval --weights NAME=PATH`` sets."""
    token = _GIVEN.set({**(_GIVEN.get() or {}), **paths})
    try:
        yield
    finally:
        _GIVEN.reset(token)


# -- hashing ------------------------------------------------------------------------------------

_HASHES: dict[tuple[str, str, int, int], str] = {}


def _digest(path: Path, kind: str, start: Callable[[int], Any]) -> str:
    """The hex digest ``start(size)`` (a fresh hashlib object) makes of the bytes of ``path``,
    remembered for the process by (kind, path, size, mtime): a large file opened by several
    embedders or metrics is hashed once."""
    st = path.stat()
    key = (kind, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = start(st.st_size)
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of ``path`` (remembered for the process)."""
    return _digest(path, "sha256", lambda _size: hashlib.sha256())


def git_blob_of(path: Path) -> str:
    """The Git object id of ``path`` as a blob: SHA-1 of ``b"blob <size>\\0"`` followed by the
    bytes (what ``git hash-object`` prints), remembered like :func:`sha256_of`."""
    return _digest(
        path,
        "git-blob",
        lambda size: hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False),
    )


def hash_status(spec: WeightSpec, actual: str, path: Path | None = None) -> Status:
    """How the file (SHA-256 ``actual``, at ``path``) compares with the spec's published hash:
    its SHA-256 (full or prefix), else its Git object id (needs ``path``)."""
    expected = spec.sha256.lower()
    if not expected:
        if spec.git_blob and path is not None:
            return "git-verified" if git_blob_of(path) == spec.git_blob.lower() else "differs"
        return "unpinned"
    if spec.pinned:
        return "verified" if actual == expected else "differs"
    return "prefix-verified" if actual.startswith(expected) else "differs"


def _mismatch(spec: WeightSpec, path: Path | str, actual: str, what: str) -> WeightsFileError:
    if spec.sha256:
        expected = spec.sha256 + ("..." if not spec.pinned else "")
        found = f"SHA-256 {actual}, expected {expected}"
    else:
        found = f"Git object id {actual}, expected {spec.git_blob}"
    return WeightsFileError(
        f"{what} {path} has {found} ({spec.filename}); "
        f"delete it and run again to download it afresh, or set {spec.env} to a good copy"
    )


def record(spec: WeightSpec, path: Path) -> WeightRecord:
    """The :class:`WeightRecord` of ``path`` as the file of ``spec`` (hashes it)."""
    actual = sha256_of(path)
    status = hash_status(spec, actual, path)
    return WeightRecord(spec.name, spec.filename, str(path), actual, status)


class WeightFileUser:
    """Mixin of the embedders built from one published weight file: what they expose of it.

    ``weights_path`` (the file used), ``checksum`` (its SHA-256) and ``weights`` (its
    :class:`WeightRecord` first; an embedder may append the records of further files)."""

    weights_path: Path
    checksum: str
    weights: list[WeightRecord]

    def use_weight_file(self, spec: WeightSpec, path: Path | str) -> Path:
        """Record ``path`` as this embedder's file of ``spec``; returns it as a Path."""
        rec = record(spec, Path(path))
        self.weights_path = Path(path)
        self.checksum = rec.sha256
        self.weights = [rec]
        return self.weights_path


# -- finding and downloading --------------------------------------------------------------------


def _hint(spec: WeightSpec) -> str:
    return (
        f"download {spec.filename} ({spec.size_text}) from {spec.url} and set "
        f"{spec.env}=/path/to/{spec.filename} (or pass it with soundctm eval --weights NAME=PATH)"
    )


def _user_file(spec: WeightSpec, chosen: str, origin: str, callback: Callback | None) -> Path:
    p = Path(chosen).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"{spec.filename} not found at {p} ({origin}); {_hint(spec)}")
    rec = record(spec, p)
    if rec.status == "differs":
        emit(
            callback,
            Message(
                f"{p} ({origin}) is not the published {spec.filename}: SHA-256 {rec.sha256}, "
                f"published {spec.sha256 or 'Git object id ' + spec.git_blob}; using it anyway "
                "(the report names its hash)",
                level="warning",
            ),
        )
    return p


def fetch_weights(
    spec: WeightSpec,
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    callback: Callback | None = None,
    opener: Callable[[str], Any] | None = None,
) -> Path:
    """The local path of the weight file ``spec``: ``path`` > a path given with
    :func:`weight_paths` (``--weights``) > ``$spec.env`` > the cache > a download (see the module
    docstring). ``download=False`` stops before downloading.
    ``opener(url)`` stands in for :func:`urllib.request.urlopen` (a response with ``read(n)``
    and optionally ``headers``); tests pass ``file://`` sources or their own opener.

    Raises :class:`WeightsNotFoundError` (one line: the file, its size, where to get it, the
    variable to set) or :class:`WeightsFileError` (a cached or downloaded file with the wrong
    hash).
    """
    callback = callback if callback is not None else _CALLBACK.get()
    if path is not None and str(path):
        return _user_file(spec, str(path), "given path", callback)
    given = (_GIVEN.get() or {}).get(spec.env)
    if given:
        return _user_file(spec, given, "--weights", callback)
    env = os.environ.get(spec.env, "").strip()
    if env:
        return _user_file(spec, env, spec.env, callback)
    cached = cache_dir() / spec.filename
    if cached.is_file():
        rec = record(spec, cached)
        if rec.status == "differs":
            raise _mismatch(
                spec, cached, _published_form(spec, cached, rec.sha256), "cached weight file"
            )
        return cached
    if not download or offline():
        why = "downloads are off" if download else "download=False"
        raise WeightsNotFoundError(
            f"{spec.filename} is not in the cache {cache_dir()} and {why}; {_hint(spec)}"
        )
    return _download(spec, cached, callback, opener)


def _download(
    spec: WeightSpec, final: Path, callback: Callback | None, opener: Callable[[str], Any] | None
) -> Path:
    """Stream ``spec.url`` into a temporary file beside ``final``, check size and SHA-256,
    rename; one-line errors otherwise (the temporary file is removed)."""
    url = spec.url
    open_url = opener or (lambda u: urllib.request.urlopen(u, timeout=60))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except OSError as exc:
        raise WeightsNotFoundError(
            f"cannot write to the weights cache {final.parent} ({first_line(exc)}); set "
            f"{CACHE_ENV} to a writable folder, or {_hint(spec)}"
        ) from exc
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            response = open_url(url)
            with contextlib.closing(response) if hasattr(response, "close") else _null(response):
                total = _length(response) or spec.size
                emit(callback, EvalStage(f"downloading {spec.filename} ({spec.size_text})", total))
                step = max(1 << 20, (total or 0) // 100)
                shown = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if total and done - shown >= step:
                        shown = done
                        emit(callback, EvalTick(min(done, total), total))
        if total:
            emit(callback, EvalTick(total, total))
        actual = digest.hexdigest()
        if spec.size is not None and done != spec.size:
            raise WeightsFileError(
                f"download of {spec.filename} from {url} gave {done} bytes, expected "
                f"{spec.size}; run again, or {_hint(spec)}"
            )
        if hash_status(spec, actual, tmp) == "differs":
            raise _mismatch(
                spec, url, _published_form(spec, tmp, actual), "the file downloaded from"
            )
        os.replace(tmp, final)
    except (urllib.error.URLError, OSError, ValueError, TimeoutError) as exc:
        raise WeightsNotFoundError(
            f"cannot download {spec.filename} ({spec.size_text}) from {url} ({first_line(exc)}); "
            f"{_hint(spec)}"
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    st = final.stat()
    _HASHES[("sha256", str(final.resolve()), st.st_size, st.st_mtime_ns)] = actual
    return final


def _published_form(spec: WeightSpec, path: Path, sha256: str) -> str:
    """The file's hash in the form the spec pins (its SHA-256, or its Git object id)."""
    return sha256 if spec.sha256 or not spec.git_blob else git_blob_of(path)


@contextlib.contextmanager
def _null(x: Any) -> Iterator[Any]:
    yield x


def _length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    try:
        n = int(headers.get("Content-Length")) if headers is not None else 0
    except (TypeError, ValueError):
        return None
    return n or None


# -- the published files ------------------------------------------------------------------------

#: torchvggish's port of AudioSet VGGish (the 16 kHz FAD of AudioLDM / SoundCTM). torch.hub
#: names files ``NAME-<first 8 hex digits of the SHA-256>.pth``; the pin is the full hash, which
#: starts with those digits.
VGGISH = WeightSpec(
    name="vggish",
    filename="vggish-10086976.pth",
    # torch.hub names the file by the first 8 digits of its SHA-256; the full hash is the one
    # independent projects pin for this release asset (it starts with those 8 digits).
    sha256="10086976245803799d9194e9a73d9b6c1549c71d1b80106f5cade5608a561f4b",
    size=None,
    size_hint="about 290 MB",
    source="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    env="SOUNDCTM_VGGISH_WEIGHTS",
    description="torchvggish VGGish weights (harritaylor/torchvggish release v0.1)",
)
#: AudioSet's PCA whitening parameters of VGGish (only for ``postprocess=True``).
VGGISH_PCA = WeightSpec(
    name="vggish-pca",
    filename="vggish_pca_params-970ea276.pth",
    sha256="970ea276",
    size=None,
    size_hint="about 70 kB",
    source=(
        "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
        "vggish_pca_params-970ea276.pth"
    ),
    env="SOUNDCTM_VGGISH_PCA",
    description="VGGish PCA parameters (harritaylor/torchvggish release v0.1)",
)
#: LAION-CLAP HTSAT-tiny + RoBERTa, trained on LAION-Audio-630K and AudioSet, non-fusion: the
#: checkpoint of the CLAP score in stable-audio-metrics and the SoundCTM-DiT paper. The SHA-256 is
#: the Git LFS object id shown by Hugging Face for lukewys/laion_clap.
CLAP = WeightSpec(
    name="laion-clap-630k-audioset-best",
    filename="630k-audioset-best.pt",
    sha256="8053c9775516af2f4902e1e8281e356cc1bf7a85e8b761908170767b77c3f037",
    size=None,
    size_hint="1.86 GB",
    source="hf://lukewys/laion_clap/630k-audioset-best.pt",
    env="SOUNDCTM_CLAP_WEIGHTS",
    description="LAION-CLAP 630k-audioset-best.pt (HTSAT-tiny, non-fusion; hf lukewys/laion_clap)",
)
#: The fusion variant (variable-length audio through the fusion branch). The hash is the LFS id
#: Hugging Face shows for this file name (nvidia/audio-flamingo-demo's copy) and for the same
#: upload in lukewys/laion_clap's history (audioset_fusion_epoch_20_esc_86.8_map_36.22.pt).
CLAP_FUSION = WeightSpec(
    name="laion-clap-630k-audioset-fusion-best",
    filename="630k-audioset-fusion-best.pt",
    sha256="fb171dd9b608aebdac3d89286cd7615c5100af4cc7dc37797c7fb8d3cc15e3a5",
    size=None,
    size_hint="1.86 GB",
    source="hf://lukewys/laion_clap/630k-audioset-fusion-best.pt",
    env="SOUNDCTM_CLAP_WEIGHTS",
    description=(
        "LAION-CLAP 630k-audioset-fusion-best.pt (HTSAT-tiny, fusion; hf lukewys/laion_clap)"
    ),
)

__all__ = [
    "CACHE_ENV",
    "CLAP",
    "CLAP_FUSION",
    "OFFLINE_ENV",
    "VGGISH",
    "VGGISH_PCA",
    "WeightRecord",
    "WeightSpec",
    "WeightsFileError",
    "WeightsNotFoundError",
    "cache_dir",
    "fetch_weights",
    "git_blob_of",
    "hash_status",
    "offline",
    "parse_hf_source",
    "progress_to",
    "record",
    "sha256_of",
    "weight_paths",
]
