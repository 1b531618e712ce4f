"""A broken installed plugin must not break the tool (issue 14, item 1).

Each test makes a fake installed distribution in ``tmp_path`` (a ``*.dist-info`` folder with an
``entry_points.txt`` in the ``soundctm`` group, beside its module), exactly as
``tests/fixtures/toy_site`` does for the working toy plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.errors import PluginError, UnknownComponentError
from soundctm.plugins import registry as reg

HOOK_RAISES = """
from soundctm import hookimpl

@hookimpl
def register_backbones(register):
    register("broken-conv", "somewhere:Thing")
    raise ValueError("hook exploded")
"""

MISSPELT = """
from soundctm import hookimpl

@hookimpl
def register_backbone(register):
    register("broken-conv", "somewhere:Thing")
"""

#: mode -> (plugin module source, the exception type the failure must name)
MODES: dict[str, tuple[str, str]] = {
    "syntax": ("def register_backbones(register:\n    pass\n", "SyntaxError"),
    "runtime": ("raise RuntimeError('plugin exploded at import')\n", "RuntimeError"),
    "zerodiv": ("x = 1 / 0\n", "ZeroDivisionError"),
    "import": ("import soundctm_no_such_dependency\n", "ModuleNotFoundError"),
    "hook": (HOOK_RAISES, "ValueError"),
    "misspelt": (MISSPELT, "PluginValidationError"),
}


def make_dist(site: Path, dist: str, files: dict[str, str], entry: str) -> Path:
    """A fake installed distribution ``dist`` 0.1.0 in ``site`` with entry point ``entry``."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[soundctm]\n{entry}\n")
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return site


def broken_site(tmp_path: Path, mode: str) -> tuple[Path, str, str]:
    """A site folder holding plugin ``broken_<mode>``; returns (site, distribution, module)."""
    module = f"soundctm_broken_{mode}"
    dist = f"soundctm-broken-{mode}"
    source, _ = MODES[mode]
    site = make_dist(
        tmp_path / "site",
        dist,
        {f"{module}/__init__.py": "", f"{module}/plugin.py": source},
        f"broken_{mode} = {module}.plugin",
    )
    return site, dist, module


def cli(site: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m soundctm ARGS`` with ``site`` on the path (like a pip-installed plugin)."""
    full = dict(os.environ, **(env or {}))
    full["PYTHONPATH"] = os.pathsep.join([str(site), full.get("PYTHONPATH", "")])
    full["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "soundctm", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_broken_plugin_is_recorded_not_raised(tmp_path, monkeypatch, mode):
    site, dist, module = broken_site(tmp_path, mode)
    monkeypatch.syspath_prepend(str(site))
    reg.reset_registry()
    r = reg.get_registry()  # must not raise
    assert r.get("backbone", "toy-conv").plugin == "toy"  # the working plugins still load
    assert "dit" in r.names("backbone")
    [failure] = r.failures
    assert failure.plugin == f"broken_{mode}"
    assert failure.distribution == dist and failure.version == "0.1.0"
    assert failure.entry_point == f"broken_{mode} = {module}.plugin"
    assert failure.error_type == MODES[mode][1]
    assert failure.message and "\n" not in failure.describe()
    assert "broken-conv" not in r.names("backbone")  # nothing of a broken plugin is registered
    # a lookup of a component that plugin would have provided names it and the cause
    with pytest.raises(UnknownComponentError) as info:
        r.get("backbone", "broken-conv")
    message = str(info.value)
    assert "no installed plugin provides the backbone 'broken-conv'" in message
    assert dist in message and f"{module}.plugin" in message and MODES[mode][1] in message


@pytest.mark.parametrize("mode", ["syntax", "zerodiv", "hook"])
def test_cli_works_beside_a_broken_plugin(tmp_path, mode):
    site, dist, module = broken_site(tmp_path, mode)
    kind = MODES[mode][1]
    for args in (["--help"], ["--version"], ["plugins"]):
        out = cli(site, *args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stdout + out.stderr
        warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, out.stderr
        assert dist in warnings[0] and f"{module}.plugin" in warnings[0] and kind in warnings[0]
    assert "soundctm 0.1.0" in cli(site, "--version").stdout
    listing = cli(site, "plugins").stdout
    assert "toy-conv" in listing
    [line] = [x for x in listing.splitlines() if dist in x]
    assert f"{module}.plugin" in line and kind in line
    rows = json.loads(cli(site, "plugins", "--json").stdout)
    [row] = [r for r in rows if r.get("distribution") == dist]
    assert row["entry_point"] == f"broken_{mode} = {module}.plugin" and kind in row["error"]
    # --debug shows where it broke
    assert "Traceback" in cli(site, "--debug", "--version").stderr


def test_sample_with_a_component_of_a_broken_plugin_is_one_line(tmp_path, monkeypatch, student_dir):
    site, dist, _ = broken_site(tmp_path, "runtime")
    card = json.loads((student_dir / "model.json").read_text())
    card["components"]["backbone"]["name"] = "broken-conv"
    (student_dir / "model.json").write_text(json.dumps(card))
    monkeypatch.syspath_prepend(str(site))
    reg.reset_registry()
    r = CliRunner().invoke(
        build_app(), ["sample", "a beep", "--model", str(student_dir), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "broken-conv" in err and dist in err and "RuntimeError" in err
    assert "plugin exploded at import" in err


LAZY_PLUGIN = """
from soundctm import hookimpl

@hookimpl
def register_backbones(register):
    register("lazy-bad", "soundctm_lazybad.components:Net")
"""


def test_component_module_that_raises_at_import_is_a_plugin_error(tmp_path, monkeypatch):
    site = make_dist(
        tmp_path / "site",
        "soundctm-lazybad",
        {
            "soundctm_lazybad/__init__.py": "",
            "soundctm_lazybad/plugin.py": LAZY_PLUGIN,
            "soundctm_lazybad/components.py": "x = 1 / 0\n",
        },
        "lazybad = soundctm_lazybad.plugin",
    )
    monkeypatch.syspath_prepend(str(site))
    reg.reset_registry()
    with pytest.raises(PluginError) as info:
        reg.get_registry().load("backbone", "lazy-bad")
    message = str(info.value)
    assert "soundctm-lazybad" in message and "ZeroDivisionError" in message
    assert "lazybad" in message


COMMAND_PLUGIN = """
from soundctm import hookimpl

@hookimpl
def register_commands(register):
    register("boom", "soundctm_badcmd.cmd:boom")
    register("notfn", "soundctm_badcmd.ok:NOT_A_FUNCTION")
    register("badsig", "soundctm_badcmd.ok:bad_signature")
    register("fine", "soundctm_badcmd.ok:fine")
"""

COMMAND_OK = """
from typing import Annotated

import typer

NOT_A_FUNCTION = 3


def bad_signature(x: Annotated[int, typer.Option(), typer.Option()] = 1) -> None:
    \"\"\"Typer refuses two options for one parameter.\"\"\"


def fine() -> None:
    \"\"\"A command that works.\"\"\"
    print("fine!")
"""


def test_broken_plugin_commands_do_not_break_the_cli(tmp_path):
    site = make_dist(
        tmp_path / "site",
        "soundctm-badcmd",
        {
            "soundctm_badcmd/__init__.py": "",
            "soundctm_badcmd/plugin.py": COMMAND_PLUGIN,
            "soundctm_badcmd/cmd.py": "raise RuntimeError('command module exploded')\n",
            "soundctm_badcmd/ok.py": COMMAND_OK,
        },
        "badcmd = soundctm_badcmd.plugin",
    )
    out = cli(site, "--help")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, out.stderr
    assert all("soundctm-badcmd" in w for w in warnings)
    assert any("'boom'" in w and "RuntimeError" in w for w in warnings)
    assert any("'notfn'" in w for w in warnings) and any("'badsig'" in w for w in warnings)
    fine = cli(site, "fine")
    assert fine.returncode == 0 and "fine!" in fine.stdout
    boom = cli(site, "boom", "--anything")
    assert boom.returncode == 2, (boom.stdout, boom.stderr)
    errors = [line for line in boom.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in boom.stderr
    assert "'boom'" in errors[0] and "soundctm-badcmd" in errors[0] and "RuntimeError" in errors[0]
    listing = cli(site, "plugins")
    assert listing.returncode == 0
    assert len([x for x in listing.stdout.splitlines() if "soundctm-badcmd" in x]) == 3


FACTORY_PLUGIN = """
from soundctm import hookimpl

@hookimpl
def register_backbones(register):
    register("explodes", "soundctm_badfactory.components:Explodes")
"""

FACTORY_COMPONENTS = """
class Explodes:
    def __init__(self, **params):
        raise RuntimeError("factory exploded")
"""


def test_a_plugin_factory_that_raises_is_a_one_line_plugin_error(
    tmp_path, monkeypatch, student_dir
):
    site = make_dist(
        tmp_path / "site",
        "soundctm-badfactory",
        {
            "soundctm_badfactory/__init__.py": "",
            "soundctm_badfactory/plugin.py": FACTORY_PLUGIN,
            "soundctm_badfactory/components.py": FACTORY_COMPONENTS,
        },
        "badfactory = soundctm_badfactory.plugin",
    )
    monkeypatch.syspath_prepend(str(site))
    reg.reset_registry()
    with pytest.raises(PluginError) as info:
        reg.get_registry().build("backbone", "explodes")
    message = str(info.value)
    assert "soundctm-badfactory" in message and "RuntimeError: factory exploded" in message
    card = json.loads((student_dir / "model.json").read_text())
    card["components"]["backbone"]["name"] = "explodes"
    (student_dir / "model.json").write_text(json.dumps(card))
    r = CliRunner().invoke(
        build_app(), ["sample", "a beep", "--model", str(student_dir), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "soundctm-badfactory" in err and "factory exploded" in err
