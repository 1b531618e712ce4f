"""``soundctm import soundctm-unet`` on a stand-in of the official folder, written here in the
official formats (torch.save dicts with the official prefixes, a Lightning-style stage 1,
summary.jsonl, a tiny T5 with its tokenizer): import -> sample -> refine, the converted jump G
against an independent computation with diffusers on the same weights, bad sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, UNet2DConditionModel
from test_audioldm import VOCODER, official_dict
from test_export import _tiny_t5
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig, T5EncoderModel
from typer.testing import CliRunner

from soundctm.builtin.official.soundctm_unet import import_soundctm_unet
from soundctm.builtin.unet import guidance_embedding, unet_config
from soundctm.cli.app import build_app
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError, InvalidArgumentError

UNET = {
    "block_out_channels": [8, 16, 16, 16],
    "attention_head_dim": [1, 2, 2, 2],
    "cross_attention_dim": 16,  # the tiny T5's width
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
VAE = {"block_out_channels": [32, 32, 64], "latent_channels": 8, "layers_per_block": 1}


def _random(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def write_official(root: Path) -> dict:
    """A stand-in of the hub folder Sony/soundctm with tiny random weights."""
    t5_dir = _tiny_t5(root / "flan-t5-tiny")
    t5 = T5EncoderModel.from_pretrained(t5_dir)
    text = {f"text_encoder.{k}": v for k, v in t5.state_dict().items()}
    assert "text_encoder.encoder.embed_tokens.weight" in text  # saved twice, as the official

    torch.manual_seed(0)
    teacher = _random(UNet2DConditionModel(**unet_config(UNET, False)), 1)
    student = _random(UNet2DConditionModel(**unet_config(UNET, True)), 2)
    ema = _random(UNet2DConditionModel(**unet_config(UNET, True)), 3)

    def official_names(state: dict) -> dict:
        return {k.replace("class_embedding.", "s_time_embedding."): v for k, v in state.items()}

    (root / "ckpt" / "teacher").mkdir(parents=True)
    torch.save(
        {**{f"unet.{k}": v for k, v in teacher.state_dict().items()}, **text},
        root / "ckpt" / "teacher" / "pytorch_model_2_sigma_025.bin",
    )
    step = root / "soundctm_ckpt" / "030000"
    step.mkdir(parents=True)
    online = {f"ctm_unet.{k}": v for k, v in official_names(student.state_dict()).items()}
    torch.save({**online, **text}, step / "pytorch_model.bin")
    torch.save(official_names(ema.state_dict()), step / "ema_0.999_030000.pt")
    summary = {
        "text_encoder_name": "flan-t5-tiny",
        "sigma_data": 0.25,
        "sigma_min": 0.002,
        "sigma_max": 80.0,
        "latent_channels": 8,
        "latent_t_size": 256,
        "latent_f_size": 16,
    }
    (step / "summary.jsonl").write_text(json.dumps(summary) + "\n{}\n", encoding="utf-8")
    (root / "configs").mkdir()
    (root / "configs" / "diffusion_model_config.json").write_text(
        json.dumps({"_class_name": "UNet2DConditionModel", **unet_config(UNET, False)}),
        encoding="utf-8",
    )
    levels = len(VAE["block_out_channels"])
    vae = _random(
        AutoencoderKL(
            in_channels=1,
            out_channels=1,
            norm_num_groups=32,
            **VAE,
            down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels,
        ),
        4,
        0.02,
    )
    config = SpeechT5HifiGanConfig(**VOCODER, sampling_rate=16000, normalize_before=False)
    vocoder = _random(SpeechT5HifiGan(config), 5, 0.02)
    torch.save(official_dict(vae, vocoder), root / "ckpt" / "audioldm-s-full.ckpt")
    return {
        "t5": t5,
        "teacher": teacher,
        "student": student,
        "ema": ema,
        "vae": vae,
        "vocoder": vocoder,
    }


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("Sony-soundctm")
    return root, write_official(root)


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
    root, _ = official
    out = tmp_path_factory.mktemp("imported") / "soundctm-unet"
    return import_soundctm_unet(root, out, teacher=True)


def test_card_records_sources_and_official_defaults(imported):
    card = json.loads((imported / "model.json").read_text())
    prov = card["provenance"]
    assert prov["imported_from"] == "soundctm-unet" and prov["weights"] == "ema"
    assert prov["converter_version"] >= 1
    assert set(prov["source_files"]) == {
        "ckpt/teacher/pytorch_model_2_sigma_025.bin",
        "ckpt/audioldm-s-full.ckpt",
        "soundctm_ckpt/030000/pytorch_model.bin",
        "soundctm_ckpt/030000/ema_0.999_030000.pt",
        "soundctm_ckpt/030000/summary.jsonl",
        "configs/diffusion_model_config.json",
    }
    assert card["defaults"]["omega"] == 3.5 and card["defaults"]["steps"] == 1
    assert card["sample_rate"] == 16000 and card["seconds"] == 10.0 and card["sigma_data"] == 0.25
    teacher = json.loads((imported / "teacher" / "model.json").read_text())
    assert teacher["kind"] == "teacher" and teacher["defaults"]["steps"] == 40


def _reference_jump(parts: dict, net: str, x, t: float, s: float, omega: float, tokens, mask):
    """G(x, t, s) computed directly: diffusers' UNet with the official student maths."""
    unet = parts[net]
    sd = 0.25
    tt, ss = torch.full((x.shape[0],), t), torch.full((x.shape[0],), s)
    extra = guidance_embedding(torch.full((x.shape[0],), omega), 32)
    hook = unet.time_embedding.register_forward_hook(lambda m, i, out: out + extra)
    try:
        c_in = 1 / (t**2 + sd**2) ** 0.5
        with torch.no_grad():
            f = unet(
                c_in * x,
                tt.log() / 4,
                encoder_hidden_states=tokens,
                class_labels=ss.log() / 4,
                encoder_attention_mask=mask,
            )[0]
    finally:
        hook.remove()
    c_skip = sd**2 / (t**2 + sd**2)
    c_out = t * sd / (t**2 + sd**2) ** 0.5
    g = c_skip * x + c_out * f
    return (s / t) * x + (1 - s / t) * g


def test_converted_jump_equals_diffusers_on_the_official_weights(official, imported):
    _, parts = official
    pipe = Pipeline.load(imported)
    prompts = ["a dog barks", ""]
    cond = pipe.text_encoder(prompts)
    with torch.no_grad():
        ids = pipe.text_encoder.tokenizer(prompts, padding=True, return_tensors="pt")
        tokens = parts["t5"](**ids).last_hidden_state
    mask = ids["attention_mask"].bool()
    width = cond.tokens.shape[1]
    assert torch.equal(cond.mask, mask[:, :width])
    assert float((cond.tokens - tokens[:, :width] * mask[:, :width, None]).abs().max()) < 1e-5
    x = torch.randn(2, 8, 32, 16, generator=torch.Generator().manual_seed(9))
    for t, s in [(80.0, 0.002), (2.0, 0.5)]:
        with torch.no_grad():
            got = pipe.ctm.jump(x, t, s, cond, 3.5)
        ref = _reference_jump(parts, "ema", x, t, s, 3.5, tokens, mask)
        assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_one_and_two_step_samples_decode_as_the_official(official, imported):
    _, parts = official
    pipe = Pipeline.load(imported)
    gen = pipe.generate(["a dog barks"], seeds=[4], steps=1, seconds=1.0)
    assert gen.audio.shape == (1, 16000) and gen.sample_rate == 16000
    x_t = 80.0 * torch.randn(
        (1, *pipe.latent_shape(1.0)), generator=torch.Generator().manual_seed(4)
    )
    assert pipe.latent_shape(1.0) == (8, 32, 16)  # 25 latent frames rounded up to 32 for the UNet
    with torch.no_grad():
        cond = pipe.text_encoder(["a dog barks"])
        z = pipe.ctm.jump(x_t, 80.0, 0.002, cond, 3.5)
        mel = parts["vae"].decode(z / 0.7).sample
        audio = parts["vocoder"](mel.squeeze(1))
    ref = audio.reshape(1, -1)[:, :16000]
    assert float((gen.audio - ref).abs().max()) <= 1e-4 * max(float(ref.abs().max()), 1e-3)
    two = pipe.generate(["a dog barks"], seeds=[4], steps=2, seconds=1.0)
    assert float((two.audio - gen.audio).abs().max()) > 0


def test_cli_import_sample_refine(official, tmp_path):
    root, _ = official
    out = tmp_path / "m"
    r = CliRunner().invoke(
        build_app(), ["import", "soundctm-unet", str(root), "-o", str(out), "--weights", "online"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "model.json").read_text())["provenance"]["weights"] == "online"
    r = CliRunner().invoke(
        build_app(),
        [
            "sample",
            "a dog barks",
            "-m",
            str(out),
            "--seconds",
            "0.5",
            "--seed",
            "1",
            "-o",
            str(tmp_path / "s"),
        ],
    )
    assert r.exit_code == 0, r.output
    wav = next((tmp_path / "s").glob("*.wav"))
    r = CliRunner().invoke(
        build_app(), ["refine", str(wav), "--steps", "2", "-o", str(tmp_path / "r")]
    )
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "r").glob("*.wav"))) == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no-stage1", "has no ckpt/audioldm-s-full.ckpt"),
        ("wrong-prefix", "no weights under 'ctm_unet.'"),
        ("truncated", "truncated"),
        ("needs-code", "--trust-pickle"),
        ("no-summary", "summary.jsonl"),
    ],
)
def test_bad_sources_are_one_line_and_write_nothing(official, tmp_path, damage, message):
    root, _ = official
    src = tmp_path / "src"
    shutil.copytree(root, src)
    step = src / "soundctm_ckpt" / "030000"
    if damage == "no-stage1":
        (src / "ckpt" / "audioldm-s-full.ckpt").unlink()
    elif damage == "wrong-prefix":
        state = torch.load(step / "pytorch_model.bin", weights_only=True)
        torch.save(
            {k.replace("ctm_unet.", "unet."): v for k, v in state.items()},
            step / "pytorch_model.bin",
        )
    elif damage == "truncated":
        data = (step / "ema_0.999_030000.pt").read_bytes()
        (step / "ema_0.999_030000.pt").write_bytes(data[: len(data) // 2])
    elif damage == "needs-code":
        torch.save({"x": Path("not a tensor")}, step / "ema_0.999_030000.pt")
    elif damage == "no-summary":
        (step / "summary.jsonl").unlink()
    out = tmp_path / "out"
    with pytest.raises((CheckpointError, InvalidArgumentError), match=message) as e:
        import_soundctm_unet(src, out, weights="online" if damage == "wrong-prefix" else "ema")
    assert "\n" not in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_an_existing_output_folder_is_refused(official, tmp_path):
    root, _ = official
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="not empty"):
        import_soundctm_unet(root, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_explicit_initial_latents_and_public_decode(imported):
    pipe = Pipeline.load(imported)
    shape = pipe.latent_shape(0.5)
    x_t = 80.0 * torch.randn((2, *shape), generator=torch.Generator().manual_seed(11))
    seeded = pipe.generate(["a dog barks", "rain"], seeds=[11, 12], steps=1, seconds=0.5)
    given = pipe.generate(["a dog barks", "rain"], seeds=[0, 0], steps=1, seconds=0.5,
                          latents=x_t)  # fmt: skip
    assert torch.equal(given.audio[0], seeded.audio[0])  # same x_T as seed 11's
    assert not torch.equal(given.audio[1], seeded.audio[1])
    with torch.no_grad():
        z = pipe.ctm.jump(x_t[:1], 80.0, 0.002, pipe.text_encoder(["a dog barks"]), 3.5)
    assert torch.allclose(pipe.decode(z, seconds=0.5), seeded.audio[:1], atol=1e-6)
    assert pipe.decode(z).shape[1] >= 8000
    with pytest.raises(InvalidArgumentError, match="latents must have the shape"):
        pipe.generate(["x"], seeds=[0], seconds=0.5, latents=x_t)


@pytest.mark.slow
def test_exported_onnx_matches_torch(imported, tmp_path):
    """UNet student, FLAN-T5 encoder and VAE decoder + HiFi-GAN as ONNX graphs (no Griffin-Lim):
    the onnxruntime pipeline gives the torch pipeline's audio (about 75 s here)."""
    from soundctm.export.onnx import export_onnx
    from soundctm.export.runtime import OrtPipeline

    exported = export_onnx(imported, tmp_path / "exported")
    ort = OrtPipeline.load(exported, providers=["cpu"])
    ref_pipe = Pipeline.load(imported)
    for steps, gamma in [(1, 0.0), (2, 0.5)]:
        kw = {"seeds": [1], "steps": steps, "gamma": gamma, "seconds": 10.0}
        ref = ref_pipe.generate(["a dog barks"], **kw).audio
        got = ort.generate(["a dog barks"], **kw).audio
        assert got.shape == ref.shape == (1, 160000)
        assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_eval_model_runs_on_the_imported_model(imported, tmp_path):
    out = tmp_path / "report"
    r = CliRunner().invoke(
        build_app(),
        ["eval", "model", "--model", str(imported), "-n", "2", "--steps", "1", "--seconds", "0.5",
         "--no-content", "--no-cache", "-o", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 2 and res["runs"][0]["metrics"]["fd"]["value"] > 0
