"""--device: auto picks the best device; an unavailable or unknown one is a one-line user error."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine.devices import available_devices, resolve_device
from soundctm.errors import InvalidArgumentError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert available_devices()[-1] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_names_the_devices_there_are():
    with pytest.raises(InvalidArgumentError, match="not available on this machine; available: cpu"):
        resolve_device("cuda")


def test_unknown_device_name():
    with pytest.raises(InvalidArgumentError, match="not a torch device name"):
        resolve_device("gpu7")


def test_sample_with_a_bad_device_exits_2_in_one_line(tmp_path):
    r = CliRunner().invoke(build_app(), ["sample", "a beep", "--device", "gpu7", "-o", tmp_path])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: device 'gpu7'")
    assert not list(tmp_path.iterdir())


def test_flags_show_no_bool_column():
    r = CliRunner().invoke(build_app(), ["plugins", "--help"], env={"COLUMNS": "160"})
    assert r.exit_code == 0
    assert "--json" in r.output and "<bool>" not in r.output


def _click_commands():
    import typer

    root = typer.main.get_command(build_app())
    ctx = root.make_context("soundctm", ["--help"], resilient_parsing=True)
    out = {}
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        subs = getattr(cmd, "commands", None)
        for sub, c in (subs or {name: cmd}).items():
            out[f"{name} {sub}" if subs else name] = c
    return out


def test_shared_options_read_the_same_everywhere():
    commands = _click_commands()
    helps: dict[str, set[str]] = {}
    sampling = [
        c for n, c in commands.items() if n in {"sample", "refine", "vary"} or n.startswith("eval")
    ]
    assert len(sampling) == 6
    for cmd in sampling:
        for p in cmd.params:
            if p.name in {"nu", "omega", "seed", "seconds", "device", "batch_size"}:
                helps.setdefault(p.name, set()).add(p.help)
    assert set(helps) == {"nu", "omega", "seed", "seconds", "device", "batch_size"}
    assert all(len(h) == 1 for h in helps.values()), helps
    run = {n: {p.name: p.help for p in commands[n].params} for n in ("train", "distill")}
    shared = {"steps", "batch_size", "seed", "grad_accum", "num_workers", "tracker", "resume"}
    for name in shared:
        assert run["train"][name] == run["distill"][name]


def test_eval_group_help_shows_no_bool_column():
    r = CliRunner().invoke(build_app(), ["eval", "--help"], env={"COLUMNS": "160"})
    assert r.exit_code == 0 and "folder" in r.output and "<bool>" not in r.output


def test_with_options_refuses_a_parameter_declared_twice():
    from soundctm.cli.options import Device, with_options

    def cmd(device: str = "cpu", **flags):
        return device, flags

    with pytest.raises(TypeError, match="device"):
        with_options(device=Device)(cmd)
    wrapped = with_options(seed=Device)(lambda x=1, **flags: (x, flags))
    assert wrapped(x=2, seed=3) == (2, {"seed": 3})
