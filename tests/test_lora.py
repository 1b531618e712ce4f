"""LoRA (``--lora-rank``): adapters on the built-in backbones, adapter-only checkpoints loaded on
top of their parent, parent tensors untouched, merging (``pack --merge-lora``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.config import DistillConfig, TeacherConfig
from soundctm.engine.checkpoint import ComponentCard, card_sha256
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.lora import add_lora, merged_state, target_layers
from soundctm.engine.pipeline import Pipeline, expand_component
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.plugins.registry import get_registry
from soundctm.training.distill import distill
from soundctm.training.teacher import train_teacher

DIT = ComponentCard(name="dit", params={"preset": "tiny", "text_dim": 16})
TEXT = ComponentCard(name="toy-hash", params={"dim": 16})
AE = ComponentCard(name="toy-frames", params={"sample_rate": 8000})
DATA = ComponentCard(name="toy-tones", params={"size": 16})


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Non-zero weights everywhere (the DiT zero-initialises its outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind="teacher", backbone=DIT, text_encoder=TEXT, autoencoder=AE, sigma_data=0.5,
        seconds=0.25,
    )  # fmt: skip
    _perturb(pipe.ctm.backbone, 1)
    return pipe.save(tmp_path_factory.mktemp("parent") / "teacher")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, parent) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    spec = TeacherConfig(
        out=out, backbone=DIT, text_encoder=TEXT, autoencoder=AE, dataset=DATA,
        init_from=str(parent), lora_rank=2, lora_alpha=4.0, steps=3, batch_size=4, lr=1e-2,
        save_every=3, log_every=3, seconds=0.25, ema_decay=0.5,
    )  # fmt: skip
    return train_teacher(spec)


def _audio(model: Path | str) -> torch.Tensor:
    pipe = Pipeline.load(model)
    return pipe.generate(["a low tone", "a high tone"], seeds=[3, 4], steps=2).audio


def test_lora_training_changes_only_the_adapter(parent, lora_run):
    stored = load_file(str(lora_run / "backbone.safetensors"))
    assert stored and all(".lora_A." in k or ".lora_B." in k for k in stored)
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in stored.items())  # it trained
    card = json.loads((lora_run / "model.json").read_text())
    lora = card["lora"]
    assert lora["parent"] == str(parent.resolve()) and lora["rank"] == 2 and lora["alpha"] == 4
    assert lora["parent_card_sha256"] == card_sha256(parent)
    assert card["components"]["text_encoder"]["file"] is None
    assert "blocks.0.self_attn.qkv" in lora["layers"] and "proj_out" not in lora["layers"]
    # the raw weights after training: the parent's tensors, bit-identical
    before = load_file(str(parent / "backbone.safetensors"))
    state_dir = lora_run.parent.parent / "state" / lora_run.name
    after = load_file(str(state_dir / "state.safetensors"))
    base = {
        k[len("model.") :].replace(".base_layer.", "."): v
        for k, v in after.items()
        if k.startswith("model.") and ".lora_" not in k
    }
    assert base.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(base[key], value), key
    # the EMA shares the frozen base with the model, so the state saves only its adapters
    # (and buffers)
    ema_keys = [k for k in after if k.startswith("ema.")]
    assert any(".lora_" in k for k in ema_keys)
    assert all(".lora_" in k or not k.endswith((".weight", ".bias")) for k in ema_keys)
    # loading the adapter on its parent changes the sound
    assert not torch.allclose(_audio(lora_run), _audio(parent))


def test_merged_equals_unmerged_and_a_changed_parent_is_refused(tmp_path, parent, lora_run):
    merged = tmp_path / "merged"
    r = CliRunner().invoke(
        build_app(),
        ["pack", str(lora_run), "--merge-lora", "--dtype", "float32", "--out", str(merged)],
    )
    assert r.exit_code == 0, r.output
    card = json.loads((merged / "model.json").read_text())
    assert "lora" not in card and card["provenance"]["merged_lora"]["rank"] == 2
    assert ".lora_" not in " ".join(load_file(str(merged / "backbone.safetensors")))
    a, b = _audio(lora_run), _audio(merged)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-4  # float32 rounding only
    r = CliRunner().invoke(
        build_app(), ["pack", str(merged), "--merge-lora", "-o", str(tmp_path / "x")]
    )
    assert r.exit_code == 2 and "not a LoRA checkpoint" in r.stderr
    # a parent whose card changed: one line, nothing loaded
    moved = tmp_path / "lora-copy"
    moved.mkdir()
    for f in lora_run.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    other = tmp_path / "other-parent"
    other.mkdir()
    for f in parent.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    parent_card = json.loads((other / "model.json").read_text())
    parent_card["provenance"]["edited"] = True
    (other / "model.json").write_text(json.dumps(parent_card))
    card = json.loads((moved / "model.json").read_text())
    card["lora"]["parent"] = str(other)
    (moved / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"whose model\.json has changed"):
        Pipeline.load(moved)
    card["lora"]["parent"] = str(tmp_path / "gone")
    (moved / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="which is not there"):
        Pipeline.load(moved)


def _cond(batch: int, dim: int) -> Conditioning:
    g = torch.Generator().manual_seed(5)
    return Conditioning(
        torch.randn(batch, 4, dim, generator=g), torch.ones(batch, 4, dtype=torch.bool)
    )


UNET = {
    "block_out_channels": [8, 16, 16, 16],
    "attention_head_dim": [1, 2, 2, 2],
    "cross_attention_dim": 12,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
BACKBONES = {
    "dit": ({"preset": "tiny", "text_dim": 16, "student": True}, (2, 8, 12), 16, 14),
    "dit-official": (
        {"io_channels": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "cond_token_dim": 32,
         "global_cond_dim": 0, "student": True},
        (2, 8, 12), 32, 14,
    ),
    "unet2d": ({"config": UNET, "student": True}, (2, 8, 16, 8), 12, 12),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_lora_on_each_builtin_backbone(name):
    params, shape, dim, n_layers_min = BACKBONES[name]
    params = expand_component(
        get_registry(), "backbone", ComponentCard(name=name, params=params)
    ).params
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", name, **params)
    _perturb(backbone, 2)
    backbone.eval()
    x = torch.randn(shape)
    t, s, w = torch.tensor([0.1, -0.3]), torch.tensor([-0.5, -0.9]), torch.tensor([2.0, 5.0])
    cond = _cond(2, dim)
    with torch.no_grad():
        plain = backbone(x, t, s, w, cond)
    layers = target_layers(backbone)
    assert len(layers) >= n_layers_min
    assert all(isinstance(backbone.get_submodule(n), torch.nn.Linear) for n in layers)
    add_lora(backbone, layers, rank=2, alpha=2.0)
    with torch.no_grad():
        start = backbone(x, t, s, w, cond)  # B = 0: unchanged (up to diffusers' fused paths)
        assert torch.allclose(start, plain, atol=1e-6, rtol=1e-5)
        for n, p in backbone.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    with torch.no_grad():
        adapted = backbone(x, t, s, w, cond)
        assert not torch.allclose(adapted, plain)
        fresh = get_registry().build("backbone", name, **params)
        fresh.load_state_dict(merged_state(backbone))
        assert torch.allclose(fresh.eval()(x, t, s, w, cond), adapted, atol=1e-5, rtol=1e-4)


def test_lora_settings_are_checked(tmp_path, parent):
    with pytest.raises(InvalidArgumentError, match="lora_rank needs init_from"):
        TeacherConfig(out=tmp_path, lora_rank=2)
    with pytest.raises(InvalidArgumentError, match="need lora_rank"):
        TeacherConfig(out=tmp_path, init_from=str(parent), lora_alpha=3.0)
    with pytest.raises(InvalidArgumentError, match="whole model of init_from"):
        TeacherConfig(
            out=tmp_path, init_from=str(parent), lora_rank=2, init_components=["backbone"]
        )
    spec = TeacherConfig(
        out=tmp_path / "r", backbone=DIT, text_encoder=TEXT, autoencoder=AE, dataset=DATA,
        init_from=str(parent), lora_rank=2, lora_targets=["nothing.*"], steps=1, seconds=0.25,
    )  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="match no linear layer"):
        train_teacher(spec)


@pytest.mark.slow  # two DiT distillations with the feature distance
def test_distill_with_lora_on_a_student(tmp_path, parent):
    common = dict(teacher=parent, dataset=DATA, batch_size=2, lr=1e-2, w_min=1.0, w_max=3.0,
                  grid_n=6, save_every=1, log_every=1)  # fmt: skip
    first = distill(DistillConfig(out=tmp_path / "s1", steps=1, **common))
    spec = DistillConfig(
        out=tmp_path / "s2", steps=2, init_from=str(first), lora_rank=1, save_every=2, **{
            k: v for k, v in common.items() if k != "save_every"
        },
    )  # fmt: skip
    final = distill(spec)
    card = json.loads((final / "model.json").read_text())
    assert card["kind"] == "ctm" and card["lora"]["parent_card_sha256"] == card_sha256(first)
    stored = load_file(str(final / "backbone.safetensors"))
    assert all(".lora_" in k for k in stored)
    logged = [json.loads(x) for x in (spec.out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["adaptive_weight"] > 0 for m in logged if "adaptive_weight" in m)
    gen = Pipeline.load(final).generate(["a low tone"], seeds=[1])
    assert torch.isfinite(gen.audio).all()
