"""Weight files of the evaluation embedders: path > variable > cache > download, SHA-256 checks,
one-line errors. Nothing is downloaded from the network: sources are local file:// URLs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import replace

import pytest

from soundctm.eval.weights import (
    CLAP,
    VGGISH,
    WeightsFileError,
    WeightsNotFoundError,
    WeightSpec,
    cache_dir,
    fetch_weights,
    git_blob_of,
    parse_hf_source,
    record,
)
from soundctm.events import EvalStage, EvalTick, Message

PAYLOAD = b"published weights " * 5000  # 90 kB: several 1 MiB-less blocks, one read


def spec_for(tmp_path, payload: bytes = PAYLOAD, **over) -> WeightSpec:
    src = tmp_path / "release" / "model-1234.pt"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    base = WeightSpec(
        name="toy",
        filename="model-1234.pt",
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        source=src.as_uri(),
        env="SOUNDCTM_TOY_WEIGHTS",
        description="a toy weight file",
        size_hint="90 kB",
    )
    return replace(base, **over)


def test_hf_sources_and_urls():
    assert parse_hf_source("hf://lukewys/laion_clap/630k-audioset-best.pt") == (
        "lukewys/laion_clap",
        "main",
        "630k-audioset-best.pt",
    )
    assert parse_hf_source("hf://a/b@v1.0/dir/f.pt") == ("a/b", "v1.0", "dir/f.pt")
    assert (
        CLAP.url == "https://huggingface.co/lukewys/laion_clap/resolve/main/630k-audioset-best.pt"
    )
    assert CLAP.pinned and VGGISH.pinned
    assert VGGISH.sha256.startswith("10086976")  # torch.hub's name carries the first 8 digits
    with pytest.raises(ValueError):
        parse_hf_source("hf://only-owner")


def test_download_into_the_cache_then_reuse(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDCTM_OFFLINE")
    spec = spec_for(tmp_path)
    events: list = []
    path = fetch_weights(spec, callback=events.append)
    assert path == cache_dir() / "model-1234.pt" and path.read_bytes() == PAYLOAD
    assert isinstance(events[0], EvalStage) and "model-1234.pt" in events[0].text
    assert isinstance(events[-1], EvalTick) and events[-1].done == events[-1].total == len(PAYLOAD)
    assert [p.name for p in path.parent.iterdir()] == ["model-1234.pt"]  # no temporary left
    # the source disappears: the cache answers, without a download
    (tmp_path / "release" / "model-1234.pt").unlink()
    events.clear()
    assert fetch_weights(spec, callback=events.append) == path and events == []
    assert record(spec, path).status == "verified"


def test_download_with_the_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDCTM_OFFLINE")
    spec = spec_for(tmp_path, sha256="ab" * 32)
    with pytest.raises(WeightsFileError) as info:
        fetch_weights(spec)
    msg = str(info.value)
    assert "\n" not in msg and "ab" * 32 in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert "model-1234.pt" in msg
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_download_failure_and_offline_say_what_to_do(tmp_path, monkeypatch):
    spec = spec_for(tmp_path)
    with pytest.raises(WeightsNotFoundError) as info:  # SOUNDCTM_OFFLINE=1 in every test
        fetch_weights(spec)
    msg = str(info.value)
    for part in (
        "model-1234.pt",
        "90 kB",
        spec.source,
        "SOUNDCTM_TOY_WEIGHTS",
        "downloads are off",
    ):
        assert part in msg
    assert "\n" not in msg
    monkeypatch.delenv("SOUNDCTM_OFFLINE")
    gone = replace(spec, source=(tmp_path / "nowhere.pt").as_uri())
    with pytest.raises(WeightsNotFoundError, match=r"cannot download model-1234\.pt \(90 kB\)"):
        fetch_weights(gone)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []
    with pytest.raises(WeightsNotFoundError, match="download=False"):
        fetch_weights(spec, download=False)


def test_a_truncated_download_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDCTM_OFFLINE")
    spec = spec_for(tmp_path, size=len(PAYLOAD) + 1, sha256="")
    with pytest.raises(WeightsFileError, match=f"gave {len(PAYLOAD)} bytes"):
        fetch_weights(spec)


def test_explicit_files_win_and_may_differ_with_a_warning(tmp_path, monkeypatch):
    spec = spec_for(tmp_path)
    mine = tmp_path / "finetuned.pt"
    mine.write_bytes(b"another variant")
    events: list = []
    assert fetch_weights(spec, mine, callback=events.append) == mine
    (warning,) = [e for e in events if isinstance(e, Message)]
    assert warning.level == "warning" and hashlib.sha256(b"another variant").hexdigest() in (
        warning.text
    )
    assert record(spec, mine).status == "differs"
    # the variable comes next; a path still wins over it
    good = tmp_path / "good.pt"
    good.write_bytes(PAYLOAD)
    monkeypatch.setenv("SOUNDCTM_TOY_WEIGHTS", str(good))
    events.clear()
    assert fetch_weights(spec, callback=events.append) == good and events == []
    assert fetch_weights(spec, mine) == mine
    monkeypatch.setenv("SOUNDCTM_TOY_WEIGHTS", str(tmp_path / "missing.pt"))
    with pytest.raises(WeightsNotFoundError) as info:
        fetch_weights(spec)
    assert "missing.pt" in str(info.value) and "SOUNDCTM_TOY_WEIGHTS" in str(info.value)


def test_a_corrupt_cached_file_is_an_error_and_prefix_pins(tmp_path):
    spec = spec_for(tmp_path)
    cache_dir().mkdir(parents=True)
    (cache_dir() / spec.filename).write_bytes(b"half a file")
    with pytest.raises(WeightsFileError, match=r"cached weight file .* has SHA-256"):
        fetch_weights(spec)
    # a hash prefix (torch.hub's file-name convention) pins too; "" is unpinned
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    (cache_dir() / spec.filename).write_bytes(PAYLOAD)
    assert record(replace(spec, sha256=digest[:8]), cache_dir() / spec.filename).status == (
        "prefix-verified"
    )
    assert record(replace(spec, sha256="0" * 8), cache_dir() / spec.filename).status == "differs"
    assert record(replace(spec, sha256=""), cache_dir() / spec.filename).status == "unpinned"


def test_paths_given_with_the_flag_come_before_the_variable(tmp_path, monkeypatch):
    from soundctm.eval.weights import weight_paths

    spec = spec_for(tmp_path)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(PAYLOAD)
    b.write_bytes(PAYLOAD)
    monkeypatch.setenv(spec.env, str(a))
    with weight_paths({spec.env: str(b)}):
        assert fetch_weights(spec) == b
        assert fetch_weights(spec, a) == a  # an argument still wins
    assert fetch_weights(spec) == a


def _git_hash_object(path) -> str:
    """The id git itself gives the file (the independent reference for git_blob_of)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "hash-object", "--no-filters", str(path)], capture_output=True)
    return out.stdout.decode().strip()


def test_git_object_id_pins_a_file_without_a_published_sha256(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDCTM_OFFLINE")
    src = tmp_path / "release" / "model-1234.pt"
    spec = spec_for(tmp_path)
    blob = _git_hash_object(src)
    assert git_blob_of(src) == blob and len(blob) == 40
    pinned = replace(spec, sha256="", git_blob=blob)
    path = fetch_weights(pinned)  # downloaded, checked by the Git id, kept
    rec = record(pinned, path)
    assert rec.status == "git-verified" and rec.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    # a different file under the same name: refused in the cache, with the ids in one line
    path.write_bytes(PAYLOAD + b"!")
    with pytest.raises(WeightsFileError) as info:
        fetch_weights(pinned)
    msg = str(info.value)
    assert "\n" not in msg and blob in msg and git_blob_of(path) in msg and "Git object id" in msg
    # and refused on download, leaving nothing behind
    path.unlink()
    with pytest.raises(WeightsFileError):
        fetch_weights(replace(pinned, git_blob="0" * 40))
    assert list(cache_dir().iterdir()) == []
