"""Hub ids (``hf:OWNER/REPO[@REV]``): parsing, snapshots that are checkpoints, releases that an
importer converts once into the cache, and one-line errors offline. Nothing is downloaded: a
stand-in for ``snapshot_download`` hands over local folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import build_toy
from typer.testing import CliRunner

from soundctm import hookimpl
from soundctm.engine import hub
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.plugins.registry import get_registry, register_plugin

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_parse_hub_ids():
    assert hub.parse_hub_id("hf:Sony/soundctm") == hub.HubId("Sony/soundctm", None)
    assert hub.parse_hub_id("hf:a-b/c.d@v1.0") == hub.HubId("a-b/c.d", "v1.0")
    assert str(hub.parse_hub_id("hf:a/b@main")) == "hf:a/b@main"
    for bad in ("hf:", "hf:nope", "hf:a/b/c", "hf:a/b@", "hf:/b"):
        with pytest.raises(InvalidArgumentError, match="not a hub model id"):
            hub.parse_hub_id(bad)
    assert hub.is_hub_id("hf:a/b") and not hub.is_hub_id("runs/x") and not hub.is_hub_id(None)


def _snapshot(tmp_path: Path, fill) -> tuple[Path, list]:
    snap = tmp_path / "hf" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    fill(snap)
    calls: list = []

    def download(repo, revision=None, allow_patterns=None):
        calls.append((repo, revision, allow_patterns))
        return str(snap)

    return snap, calls


def test_a_checkpoint_repository_loads_from_its_snapshot(tmp_path):
    from soundctm.engine.pipeline import Pipeline

    snap, calls = _snapshot(tmp_path, lambda d: build_toy().save(d / "x"))
    for p in (snap / "x").iterdir():
        shutil.move(str(p), snap)
    found = hub.resolve("hf:me/toy@v2", download=lambda *a, **k: calls.append(a) or str(snap))
    assert found.path == snap and found.commit == COMMIT
    assert found.record() == {"repo": "me/toy", "revision": "v2", "commit": COMMIT}
    pipe = Pipeline.load(snap)
    assert pipe.card.kind == "ctm"


class _Release:
    """A fake release importer plugin: converts a folder holding 'weights.txt'."""

    def __init__(self) -> None:
        self.runs = 0

        def convert(src, out, *, callback=None):
            assert (Path(src) / "weights.txt").is_file()
            self.runs += 1
            build_toy().save(Path(out))
            return Path(out)

        convert.hub_repos = ("Me/Release",)
        convert.hub_files = ("weights.txt",)
        convert.converter_version = 3
        self.convert = convert

    @hookimpl
    def register_importers(self, register):
        register("fake-release", self.convert, description="test importer")


def test_a_release_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    plugin = _Release()
    register_plugin(plugin, name="fake-release-plugin")
    snap, calls = _snapshot(tmp_path, lambda d: (d / "weights.txt").write_text("w"))
    first = hub.resolve("hf:me/release", download=_recorder(snap, calls))
    again = hub.resolve("hf:me/release", download=_recorder(snap, calls))
    assert plugin.runs == 1 and first.path == again.path
    assert first.path == tmp_path / "cache" / "hub" / "me--release" / f"{COMMIT}-v3"
    assert (first.path / "model.json").is_file()
    assert calls[0] == ("me/release", None, ["weights.txt"])
    assert "fake-release" in get_registry().names("importer")


def _recorder(snap: Path, calls: list):
    def download(repo, revision=None, allow_patterns=None):
        calls.append((repo, revision, allow_patterns))
        return str(snap)

    return download


def test_offline_or_unknown_is_one_line(tmp_path):
    def offline(repo, revision=None, allow_patterns=None):
        raise OSError("We have no connection or you passed local_files_only")

    with pytest.raises(CheckpointError, match=r"cannot fetch hf:Sony/soundctm@abc .*hf download "
                       r"Sony/soundctm --revision abc") as e:  # fmt: skip
        hub.resolve("hf:Sony/soundctm@abc", download=offline)
    assert "\n" not in str(e.value)
    snap, calls = _snapshot(tmp_path, lambda d: (d / "README.md").write_text("hi"))
    with pytest.raises(CheckpointError, match="neither a soundctm checkpoint"):
        hub.resolve("hf:someone/other", download=_recorder(snap, calls))


def test_cli_bad_hub_id_is_exit_2(tmp_path):
    from soundctm.cli.app import build_app

    r = CliRunner().invoke(build_app(), ["sample", "x", "--model", "hf:nope", "-o", tmp_path])
    assert r.exit_code == 2 and r.output.startswith("error: 'hf:nope' is not a hub model id")


def test_builtin_importer_declares_its_hub_repository():
    fn = get_registry().get("importer", "soundctm-unet").load()
    assert "Sony/soundctm" in fn.hub_repos and fn.converter_version >= 1
    assert not any("teacher" in p for p in fn.hub_files)  # the student does not need it
