from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from soundctm import hookimpl
from soundctm.cli.app import build_app
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import PluginError, UnknownComponentError
from soundctm.plugins import registry as reg


def test_outside_plugin_is_found_through_its_entry_point():
    r = reg.get_registry()
    for kind, name in [
        ("backbone", "toy-conv"),
        ("text_encoder", "toy-hash"),
        ("autoencoder", "toy-frames"),
        ("solver", "toy-jump1"),
    ]:
        entry = r.get(kind, name)
        assert entry.plugin == "toy" and entry.version == "0.3.0"
    # built-ins come through the very same hooks
    assert {"gamma", "heun", "euler", "dpmpp-2m"} <= set(r.names("solver"))
    assert r.get("solver", "gamma").plugin == "soundctm"
    assert {"sample", "refine", "plugins"} <= set(r.names("command"))


def test_outside_plugin_components_build_and_sample(tmp_path):
    pipe = Pipeline.build(
        kind="ctm",
        backbone=("toy-conv", {"student": True}),
        text_encoder=("toy-hash", {}),
        autoencoder=("toy-frames", {}),
        sigma_data=0.5,
        seconds=0.25,
    )
    out = pipe.generate(["a whistle"], seeds=[5], solver="toy-jump1")
    ref = pipe.generate(["a whistle"], seeds=[5], solver="gamma", steps=1)
    assert torch.allclose(out.audio, ref.audio)  # the plugin's solver = one jump
    loaded = Pipeline.load(pipe.save(tmp_path / "m"))
    assert torch.equal(loaded.generate(["a whistle"], seeds=[5]).audio, ref.audio)


def test_registration_is_lazy():
    code = (
        "import sys; from soundctm.plugins.registry import get_registry; r = get_registry(); "
        "assert 'toy-conv' in r.names('backbone'); "
        "print('soundctm_toy.components' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_autoload_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg.reset_registry()
    r = reg.get_registry()
    assert r.names("backbone") == ["dit", "dit-official", "unet2d"]  # built-ins only, no toy-conv
    assert "gamma" in r.names("solver")
    with pytest.raises(UnknownComponentError, match="no installed plugin provides the backbone"):
        r.get("backbone", "toy-conv")


class Extra:
    """A plugin object registered at run time."""

    __version__ = "9.9"

    @hookimpl
    def register_backbones(self, register):
        register("extra-conv", "soundctm_toy.components:ToyBackbone", description="same, renamed")

    @hookimpl
    def register_commands(self, register):
        def hello(name: str = "world") -> None:
            """Say hello (a command from a plugin)."""
            print(f"hello {name}")

        register("hello", hello)


def test_plugin_objects_add_components_and_commands():
    reg.register_plugin(Extra(), name="extra")
    r = reg.get_registry()
    entry = r.get("backbone", "extra-conv")
    assert entry.plugin == "extra" and entry.version == "9.9"
    result = CliRunner().invoke(build_app(), ["hello", "--name", "plugins"])
    assert result.exit_code == 0 and "hello plugins" in result.output


class Duplicate:
    @hookimpl
    def register_backbones(self, register):
        register("toy-conv", "soundctm_toy.components:ToyBackbone")


def test_duplicate_names_are_errors():
    with pytest.raises(PluginError, match=r"registered twice, by plugin 'toy' and by plugin 'dup'"):
        reg.register_plugin(Duplicate(), name="dup")
    assert reg.get_registry().get("backbone", "toy-conv").plugin == "toy"  # rolled back


class Misspelt:
    @hookimpl
    def register_backbone(self, register):  # missing "s"
        register("x", "y:z")


def test_misspelt_hooks_are_errors():
    with pytest.raises(PluginError, match=r"plugin 'typo' is invalid.*register_backbone"):
        reg.register_plugin(Misspelt(), name="typo")


class BadTarget:
    @hookimpl
    def register_autoencoders(self, register):
        register("ghost", "no_such_module.anywhere:Thing")
        register("malformed", "no colon here")


def test_bad_targets_fail_clearly_when_used():
    reg.register_plugin(BadTarget(), name="bad")
    r = reg.get_registry()
    with pytest.raises(PluginError, match="cannot be imported"):
        r.load("autoencoder", "ghost")
    with pytest.raises(PluginError, match="module:attr"):
        r.load("autoencoder", "malformed")


def test_unknown_component_suggests_a_close_name():
    with pytest.raises(UnknownComponentError, match="did you mean 'toy-conv'"):
        reg.get_registry().get("backbone", "toy-cnv")


def test_plugins_command_lists_every_component():
    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("backbone", "toy-conv")]["plugin"] == "toy"
    assert by_name[("backbone", "toy-conv")]["version"] == "0.3.0"
    assert by_name[("solver", "heun")]["plugin"] == "soundctm"
    assert by_name[("command", "sample")]["description"]
    table = CliRunner().invoke(build_app(), ["plugins"])
    assert table.exit_code == 0 and "toy-frames" in table.stdout and "autoencoder" in table.stdout
    bad = CliRunner().invoke(build_app(), ["plugins", "--kind", "nope"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: unknown kind")


def test_registering_the_same_plugin_twice_is_a_clear_error():
    plugin = Extra()
    reg.register_plugin(plugin, name="once")
    with pytest.raises(PluginError, match="already registered"):
        reg.register_plugin(plugin, name="twice")
