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
