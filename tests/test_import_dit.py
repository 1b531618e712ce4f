"""``soundctm import soundctm-dit`` on stand-ins of the official files written here in the official
formats (the full EMA state dict with ``dit.`` and ``text_encoder.model.`` prefixes, a LAION-CLAP
checkpoint with the ``module.`` prefix, a GaussianDAC ``weights.pth`` with metadata kwargs,
``z_stats.pth``, a summary, a RoBERTa tokenizer built with ``tokenizers``), in both layouts:
import -> sample -> refine, the CLAP embedding, jump G, 1-, 2- and 4-step samples and the
decoded waveform against an independent computation (the functional references of
test_dit_official, test_clap and test_gaussian_dac, and the CTM maths written out here), the
hub id with a variant, bad sources."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_clap import write_tokenizer
from test_dit_official import _randomise
from test_dit_official import reference as dit_reference
from test_gaussian_dac import KWARGS as DAC_KWARGS
from test_gaussian_dac import official_state, ref_decode, z_stats
from typer.testing import CliRunner

from soundctm.builtin.dit_official import OfficialDiT
from soundctm.builtin.official.soundctm_dit import hub_files, import_soundctm_dit
from soundctm.cli.app import build_app
from soundctm.engine import hub
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError, InvalidArgumentError

# RoBERTa-like text branch with 12 heads (the converter's default head count), 96 wide.
HIDDEN, LAYERS, POSITIONS, PROJ = 96, 2, 80, 32
# DiT: head_dim 32 (rotary on the whole head); v1 context 32 = 1 kv head for 3 query heads,
# v2 context 96 = 3 kv heads.
DIT = {"io_channels": 8, "embed_dim": 96, "depth": 2, "num_heads": 3, "global_cond_dim": 1536}
COND = {"v1": PROJ, "v2": HIDDEN}
PREFIX = {"v1": "ac_v1_iclr", "v2": "ac_v2"}
EMA_NAME = {"v1": "ac_v1_iclr_ema_0999_010446.pt", "v2": "ac_v2_ema_0999_030000.pt"}
SD, SMIN, SMAX = 0.5, 0.002, 80.0
#: With plain random weights the L2-normalised CLAP embedding (a single context token) barely
#: moves the DiT's output (~0.1 %): too little for a wrong unconditional half or text path to
#: fail a 1e-4 comparison. The stand-ins amplify both layers of ``to_cond_embed`` by this gain,
#: so that the prompt and "" give outputs several percent apart.
COND_GAIN = 4.0
SECONDS = 0.01  # 441 samples, 56 latent frames at hop 8
PROMPT = "a dog barks in the distance"


@dataclass(frozen=True)
class Sizes:
    """The sizes of a stand-in: the RoBERTa text branch, the CLAP projection (v1's context) and
    the DiT (its ``cond_token_dim`` is the variant's context: ``proj`` for v1, ``hidden`` for
    v2)."""

    hidden: int = HIDDEN
    layers: int = LAYERS
    positions: int = POSITIONS
    proj: int = PROJ
    dit: tuple[tuple[str, int], ...] = tuple(DIT.items())

    def dit_config(self, variant: str) -> dict:
        return {**dict(self.dit), "cond_token_dim": self.proj if variant == "v1" else self.hidden}


SIZES = Sizes()


def _roberta_config(vocab: int, sizes: Sizes = SIZES) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": sizes.hidden,
        "num_hidden_layers": sizes.layers,
        "num_attention_heads": 12,
        "intermediate_size": 2 * sizes.hidden,
        "max_position_embeddings": sizes.positions,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def _clap_state(vocab: int, seed: int, sizes: Sizes = SIZES, decoys: bool = True) -> dict:
    """A whole LAION-CLAP state dict (no ``module.``): random text branch, projection and, with
    ``decoys``, stand-ins of audio-branch keys (the converter must leave them)."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    config = RobertaConfig(**_roberta_config(vocab, sizes))
    branch = RobertaModel(config, add_pooling_layer=True)
    state = {}
    for k, v in branch.state_dict().items():
        if v.is_floating_point():
            noise = torch.randn_like(v)
            v = 1 + 0.1 * noise if k.endswith("LayerNorm.weight") else 0.2 * noise
        state[f"text_branch.{k}"] = v.clone()
    state["text_branch.embeddings.position_ids"] = torch.arange(sizes.positions)[None]
    proj, hidden = sizes.proj, sizes.hidden
    state.update(
        {
            "text_projection.0.weight": torch.randn(proj, hidden) * 0.3,
            "text_projection.0.bias": torch.randn(proj) * 0.1,
            "text_projection.2.weight": torch.randn(proj, proj) * 0.3,
            "text_projection.2.bias": torch.randn(proj) * 0.1,
        }
    )
    if decoys:
        state.update(
            {
                "audio_branch.conv.weight": torch.randn(4, 4),
                "audio_projection.0.weight": torch.randn(proj, 8),
                "logit_scale_a": torch.tensor(2.0),
            }
        )
    return state


def write_official(
    root: Path,
    variant: str,
    layout: str = "hub",
    dac_kwargs: dict | None = None,
    *,
    sizes: Sizes = SIZES,
    decoys: bool = True,
    summary: dict | None = None,
    cond_gain: float = COND_GAIN,
) -> dict:
    """A stand-in of the official files of ``variant`` in the hub or the demo layout.

    ``sizes`` and ``dac_kwargs`` size it; ``decoys`` adds stand-ins of CLAP audio-branch keys;
    ``summary`` adds fields to the summary line (the official code reads its training arguments
    from there); ``cond_gain`` multiplies both layers of the DiT's ``to_cond_embed``. The
    tokenizer folder ``roberta-base`` also gets the text branch's ``config.json``, as the hub
    folder of that name has."""
    from transformers import AutoTokenizer, RobertaConfig

    tok = write_tokenizer(root / "roberta-base")
    vocab = len(AutoTokenizer.from_pretrained(tok))
    RobertaConfig(**_roberta_config(vocab, sizes)).to_json_file(tok / "config.json")
    clap = _clap_state(vocab, seed=1, sizes=sizes, decoys=decoys)
    # The CLAP file differs from the EMA's text encoder: the converter must take the EMA's,
    # which is what the official demo runs (it loads the EMA file over the CLAP file).
    clap_file = {k: v + 0.05 if v.is_floating_point() else v for k, v in clap.items()}
    torch.manual_seed(2)
    cfg = sizes.dit_config(variant)
    net = OfficialDiT(**cfg, student=True)
    dit = _randomise(net, seed=3)
    for name, value in dit.items():  # keep the outputs of random weights moderate
        if name.endswith("weight") and value.ndim > 1:
            value.mul_(0.5)
        if name.startswith("to_cond_embed."):
            value.mul_(cond_gain)
    models = root / ("model_checkpoints/soundctm" if layout == "hub" else "ckpt/models")
    utils = root / ("utils_checkpoints" if layout == "hub" else "ckpt/utils")
    models.mkdir(parents=True)
    ema = {f"dit.{k}": v for k, v in dit.items()}
    ema.update({f"text_encoder.model.{k}": v for k, v in clap.items()})
    torch.save(ema, models / EMA_NAME[variant])
    line = {"sigma_data": SD, "sigma_min": SMIN, "sigma_max": SMAX, "target_sec": 10.031}
    line.update(summary or {})
    (models / f"{PREFIX[variant]}_summary.jsonl").write_text(json.dumps(line) + "\n")
    stats = z_stats()
    torch.save(stats, models / "z_stats.pth")
    clap_path = utils / (
        "clap/630k-audioset-best.pt" if layout == "hub" else "630k-audioset-best.pt"
    )
    clap_path.parent.mkdir(parents=True)
    torch.save(
        {
            "epoch": 45,
            "name": "630k",
            "state_dict": {f"module.{k}": v for k, v in clap_file.items()},
        },
        clap_path,
    )
    dac_dir = utils / ("vae/gaussiandac" if layout == "hub" else "gaussiandac")
    dac_dir.mkdir(parents=True)
    kwargs = dict(dac_kwargs or DAC_KWARGS)
    dac = official_state(kwargs)
    torch.save({"state_dict": dac, "metadata": {"kwargs": kwargs}}, dac_dir / "weights.pth")
    config = root / "configs" / "dit_config" / f"dit_{variant}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    official_json = {
        **cfg,
        "project_cond_tokens": False,
        "transformer_type": "continuous_transformer",
    }
    config.write_text(json.dumps(official_json), encoding="utf-8")
    return {"tok": tok, "clap": clap, "dit": dit, "cfg": cfg, "dac": dac, "stats": stats}


@pytest.fixture(scope="module", params=["v1", "v2"])
def official(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"soundctm_dit-{request.param}")
    return request.param, root, write_official(root, request.param)


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
    variant, root, _ = official
    out = tmp_path_factory.mktemp("imported") / f"soundctm-dit-{variant}"
    return import_soundctm_dit(root, out, variant=variant)


# ---------------------------------------------------------------------------- reference
def ref_clap(parts: dict, variant: str, prompts: list[str]) -> torch.Tensor:
    """RobertaModel on the EMA's text branch, padding to 77, the v1 MLP by hand, L2 norm."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tok = AutoTokenizer.from_pretrained(parts["tok"])
    state = parts["clap"]
    model = RobertaModel(RobertaConfig(**_roberta_config(len(tok))), add_pooling_layer=True)
    branch = {k[len("text_branch.") :]: v for k, v in state.items() if k.startswith("text_branch.")}
    model.load_state_dict(branch, strict=False)
    rows = []
    with torch.no_grad():
        for p in prompts:
            enc = tok(p, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
            x = model.eval()(**{k: enc[k] for k in ("input_ids", "attention_mask")}).pooler_output
            if variant == "v1":
                x = F.relu(
                    x @ state["text_projection.0.weight"].T + state["text_projection.0.bias"]
                )
                x = x @ state["text_projection.2.weight"].T + state["text_projection.2.bias"]
            rows.append(x / x.norm(dim=-1, keepdim=True))
    return torch.cat(rows)[:, None]


def ref_jump(parts: dict, x, t: float, s: float, omega: float, tokens) -> torch.Tensor:
    """G(x, t, s) = s/t x + (1 - s/t) D(x, t, s): EDM scalings with sigma_data 0.5,
    c_noise = ln(sigma)/4 for t and s, the official network (test_dit_official.reference)."""
    b = x.shape[0]
    c_in = 1 / math.sqrt(t**2 + SD**2)
    f, _ = dit_reference(
        parts["dit"],
        parts["cfg"],
        c_in * x,
        torch.full((b,), math.log(t) / 4),
        torch.full((b,), math.log(s) / 4),
        torch.full((b,), float(omega)),
        Conditioning(tokens, torch.ones(b, tokens.shape[1], dtype=torch.bool)),
        True,
    )
    d = SD**2 / (t**2 + SD**2) * x + t * SD / math.sqrt(t**2 + SD**2) * f
    return (s / t) * x + (1 - s / t) * d


def karras(n: int) -> list[float]:
    lo, hi = SMIN ** (1 / 7), SMAX ** (1 / 7)
    return [(hi + i / n * (lo - hi)) ** 7 for i in range(n + 1)]


def ref_sample(
    parts: dict, variant: str, prompt: str, seed: int, steps: int, frames: int, nu: float = 1.0
):
    """x_T = 80 z (the seed's own CPU generator), gamma-0 chain of jumps, decode. With nu != 1
    each jump is G(x | "") + nu (G(x | prompt) - G(x | "")), omega 5 on both halves (the official
    deterministic sampler)."""
    z = torch.randn((1, 8, frames), generator=torch.Generator().manual_seed(seed))
    sig = karras(steps)
    x = sig[0] * z
    tokens = ref_clap(parts, variant, [prompt])
    empty = ref_clap(parts, variant, [""])
    for a, b in itertools.pairwise(sig):
        cond = ref_jump(parts, x, a, b, 5.0, tokens)
        x = cond if nu == 1.0 else (u := ref_jump(parts, x, a, b, 5.0, empty)) + nu * (cond - u)
    mean, std = parts["stats"]["z_mean"][None, :, None], parts["stats"]["z_std"][None, :, None]
    return ref_decode(parts["dac"], DAC_KWARGS, 2 * std * x + mean)[:, 0]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6)


# ---------------------------------------------------------------------------- tests
def test_card_records_sources_variant_and_official_defaults(official, imported):
    variant, _, _ = official
    card = json.loads((imported / "model.json").read_text())
    prov = card["provenance"]
    assert prov["imported_from"] == "soundctm-dit" and prov["variant"] == variant
    assert prov["release"] == PREFIX[variant] and prov["converter_version"] >= 1
    ema = f"model_checkpoints/soundctm/{EMA_NAME[variant]}"
    assert prov["text_encoder_from"] == ema
    assert set(prov["source_files"]) == {
        ema,
        f"model_checkpoints/soundctm/{PREFIX[variant]}_summary.jsonl",
        "model_checkpoints/soundctm/z_stats.pth",
        "utils_checkpoints/vae/gaussiandac/weights.pth",
        f"configs/dit_config/dit_{variant}.json",
    }  # not the CLAP file: the EMA file's text encoder is the one converted
    assert all(len(h) == 64 for h in prov["source_files"].values())
    d = card["defaults"]
    assert (d["omega"], d["nu"], d["steps"], d["gamma"]) == (5.0, 1.0, 1, 0.0)
    assert card["sample_rate"] == 44100 and card["seconds"] == 10.031
    assert card["sigma_data"] == 0.5
    comps = card["components"]
    assert comps["backbone"]["name"] == "dit-official" and comps["backbone"]["params"]["student"]
    assert comps["text_encoder"]["params"]["variant"] == variant
    assert comps["autoencoder"]["name"] == "gaussian-dac"


def test_clap_embedding_and_jump_equal_the_independent_computation(official, imported):
    variant, _, parts = official
    pipe = Pipeline.load(imported)
    prompts = [PROMPT, ""]
    cond = pipe.text_encoder(prompts)
    ref = ref_clap(parts, variant, prompts)
    assert cond.tokens.shape == (2, 1, COND[variant]) and bool(cond.mask.all())
    assert rel(cond.tokens, ref) < 1e-5
    x = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(9))
    for t, s in [(80.0, 0.002), (2.0, 0.5), (0.3, 0.3)]:
        with torch.no_grad():
            got = pipe.ctm.jump(x, t, s, cond, 5.0)
        assert rel(got, ref_jump(parts, x, t, s, 5.0, ref)) <= 1e-4


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_samples_decode_as_the_official(official, imported, steps):
    variant, _, parts = official
    pipe = Pipeline.load(imported)
    gen = pipe.generate([PROMPT], seeds=[4], steps=steps, seconds=SECONDS)
    n = round(SECONDS * 44100)
    assert gen.audio.shape == (1, n) and gen.sample_rate == 44100
    frames = pipe.latent_shape(SECONDS)[-1]
    assert frames == math.ceil(n / 8)
    ref = ref_sample(parts, variant, PROMPT, 4, steps, frames)[:, :n]
    assert rel(gen.audio, ref) <= 1e-4
    assert float(gen.audio.abs().max()) > 1e-3  # not a silent pass


def test_guided_samples_take_the_empty_prompt_with_omega_on_both_halves(official, imported):
    """nu != 1: the unconditional half is CLAP's embedding of "" (not zeros) and gets omega too,
    as in the official deterministic sampler (checked against the official code itself by
    tests/parity)."""
    variant, _, parts = official
    pipe = Pipeline.load(imported)
    gen = pipe.generate([PROMPT], seeds=[4], steps=2, nu=2.0, seconds=SECONDS)
    n, frames = round(SECONDS * 44100), pipe.latent_shape(SECONDS)[-1]
    ref = ref_sample(parts, variant, PROMPT, 4, 2, frames, nu=2.0)[:, :n]
    assert rel(gen.audio, ref) <= 1e-4
    unguided = ref_sample(parts, variant, PROMPT, 4, 2, frames)[:, :n]
    assert rel(unguided, ref) > 1e-3  # the guidance matters: a wrong half would fail above


def test_the_official_clip_length_is_the_official_crop(imported):
    pipe = Pipeline.load(imported)
    assert pipe.latent_shape(10.031) == (8, 55296)  # 442,367 samples / hop 8, rounded up
    from soundctm.engine.sampler import clip_samples

    assert clip_samples(10.031, 44100) == int(10.031 * 44100) == 442367


def test_loading_is_lazy_and_half_precision_works(imported):
    from soundctm.engine.checkpoint import read_card, read_weights
    from soundctm.engine.weights import build_with_state
    from soundctm.plugins.registry import get_registry

    card = read_card(imported)
    comp = card.components["backbone"]
    state = read_weights(imported, card, "backbone")
    module, lazy = build_with_state(
        lambda: get_registry().build("backbone", comp.name, **comp.params), state, "x"
    )
    assert lazy and not any(p.is_meta for p in module.parameters())
    key = "transformer.layers.0.ff.ff.2.weight"
    assert module.state_dict()[key].data_ptr() == state[key].data_ptr()  # assigned, not copied
    bf16 = Pipeline.load(imported, dtype="bfloat16")
    assert next(bf16.ctm.backbone.parameters()).dtype == torch.bfloat16
    full = Pipeline.load(imported).generate([PROMPT], seeds=[1], seconds=SECONDS).audio
    half = bf16.generate([PROMPT], seeds=[1], seconds=SECONDS).audio
    assert half.dtype == torch.float32 and rel(half, full) < 0.1  # bf16: ~3 significant digits
    with pytest.raises(InvalidArgumentError, match="dtype must be one of"):
        Pipeline.load(imported, dtype="int8")


def test_cli_import_sample_refine_demo_layout(tmp_path):
    src = tmp_path / "demo"
    src.mkdir()
    write_official(src, "v1", layout="demo")
    out = tmp_path / "m"
    r = CliRunner().invoke(
        build_app(), ["import", "soundctm-dit", str(src), "--variant", "ac_v1_iclr", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    card = json.loads((out / "model.json").read_text())
    assert card["provenance"]["variant"] == "v1"
    assert "ckpt/models/ac_v1_iclr_summary.jsonl" in card["provenance"]["source_files"]
    r = CliRunner().invoke(
        build_app(),
        ["sample", PROMPT, "-m", str(out), "--seconds", str(SECONDS), "--seed", "1",
         "-o", str(tmp_path / "s")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    wav = next((tmp_path / "s").glob("*.wav"))
    r = CliRunner().invoke(
        build_app(), ["refine", str(wav), "--steps", "4", "-o", str(tmp_path / "r")]
    )
    assert r.exit_code == 0, r.output
    refined = list((tmp_path / "r").glob("*.wav"))
    assert len(refined) == 1
    import soundfile as sf

    a, rate = sf.read(wav)
    b, _ = sf.read(refined[0])
    assert rate == 44100 and a.shape == b.shape == (round(SECONDS * 44100),)
    assert float(abs(a - b).max()) > 0


def test_without_the_ema_text_encoder_the_clap_file_is_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    parts = write_official(src, "v2")
    ema_path = src / "model_checkpoints/soundctm" / EMA_NAME["v2"]
    state = torch.load(ema_path, weights_only=True)
    torch.save({k: v for k, v in state.items() if k.startswith("dit.")}, ema_path)
    out = import_soundctm_dit(src, tmp_path / "out", variant="v2")
    prov = json.loads((out / "model.json").read_text())["provenance"]
    assert prov["text_encoder_from"] == "utils_checkpoints/clap/630k-audioset-best.pt"
    assert "utils_checkpoints/clap/630k-audioset-best.pt" in prov["source_files"]
    shifted = {k: v + 0.05 if v.is_floating_point() else v for k, v in parts["clap"].items()}
    got = Pipeline.load(out).text_encoder([PROMPT]).tokens
    assert rel(got, ref_clap({**parts, "clap": shifted}, "v2", [PROMPT])) < 1e-5


def test_hub_id_with_a_variant_converts_once_per_variant(official, tmp_path, monkeypatch):
    variant, root, _ = official
    monkeypatch.setenv("SOUNDCTM_CACHE", str(tmp_path / "cache"))
    calls: list = []
    snap = tmp_path / "snapshots" / ("c" * 40)
    shutil.copytree(root, snap)

    def download(repo, revision=None, allow_patterns=None):
        calls.append((repo, revision, tuple(allow_patterns or ())))
        return str(snap)

    name = PREFIX[variant]
    found = hub.resolve(f"hf:koichisaito/soundctm_dit#{name}", download=download)
    assert found.path.name == f"{'c' * 40}-v1-{variant}"
    assert found.record()["variant"] == name
    assert calls[0][0] == "koichisaito/soundctm_dit" and calls[0][2] == hub_files(variant)
    assert not any("clap" in p for p in calls[0][2])  # the 1.9 GB CLAP file is not fetched
    card = json.loads((found.path / "model.json").read_text())
    assert card["provenance"]["variant"] == variant
    again = hub.resolve(f"hf:koichisaito/soundctm_dit#{variant}", download=download)
    assert again.path == found.path  # v1 == ac_v1_iclr: converted once
    if variant == "v2":  # no #: the official demo's default, ac_v2
        assert hub.resolve("hf:koichisaito/soundctm_dit", download=download).path == found.path
    with pytest.raises(InvalidArgumentError, match="unknown SoundCTM-DiT variant"):
        hub.resolve("hf:koichisaito/soundctm_dit#v3", download=download)
    with pytest.raises(InvalidArgumentError, match="has no variants"):
        hub.resolve("hf:Sony/soundctm#v1", download=download)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no-ema", "has no ac_v2_ema_"),
        ("no-dac", "gaussiandac/weights.pth"),
        ("no-z-stats", "z_stats.pth"),
        ("no-layout", "neither model_checkpoints/soundctm/"),
        ("wrong-prefix", "no weights under 'dit.'"),
        ("truncated", "truncated"),
        ("needs-code", "--trust-pickle"),
        ("wrong-variant", "--variant"),
        ("bad-config", "not valid JSON"),
    ],
)
def test_bad_sources_are_one_line_and_write_nothing(tmp_path, damage, message):
    src = tmp_path / "src"
    src.mkdir()
    write_official(src, "v2")
    models = src / "model_checkpoints" / "soundctm"
    ema = models / EMA_NAME["v2"]
    variant = "v2"
    if damage == "no-ema":
        ema.unlink()
    elif damage == "no-dac":
        shutil.rmtree(src / "utils_checkpoints" / "vae")
    elif damage == "no-z-stats":
        (models / "z_stats.pth").unlink()
    elif damage == "no-layout":
        shutil.rmtree(src / "model_checkpoints")
    elif damage == "wrong-prefix":
        state = torch.load(ema, weights_only=True)
        torch.save({k.replace("dit.", "model.", 1): v for k, v in state.items()}, ema)
    elif damage == "truncated":
        ema.write_bytes(ema.read_bytes()[: ema.stat().st_size // 2])
    elif damage == "needs-code":
        torch.save({"x": Path("not a tensor")}, ema)
    elif damage == "wrong-variant":  # v2 files under the v1 name: 768-d vs 512-d text
        ema.rename(models / EMA_NAME["v1"])
        (src / "configs/dit_config/dit_v2.json").rename(src / "configs/dit_config/dit_v1.json")
        variant = "v1"
    elif damage == "bad-config":
        (src / "configs/dit_config/dit_v2.json").write_text("{oops", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises((CheckpointError, InvalidArgumentError), match=message) as e:
        import_soundctm_dit(src, out, variant=variant)
    assert "\n" not in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_cli_errors_exit_2_in_one_line(tmp_path):
    r = CliRunner().invoke(
        build_app(), ["import", "soundctm-dit", str(tmp_path), "--variant", "v9", "-o", "x"]
    )
    assert r.exit_code == 2 and "unknown SoundCTM-DiT variant 'v9'" in r.output
    r = CliRunner().invoke(build_app(), ["import", "soundctm-dit", str(tmp_path), "-o", "x"])
    assert r.exit_code == 2 and "neither model_checkpoints/soundctm/" in r.output
    assert "Traceback" not in r.output


def test_eval_model_runs_on_the_imported_model(imported, tmp_path):
    out = tmp_path / "report"
    r = CliRunner().invoke(
        build_app(),
        ["eval", "model", "--model", str(imported), "-n", "2", "--steps", "1", "--seconds",
         "0.05", "--no-content", "--no-cache", "-o", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 2 and res["runs"][0]["metrics"]["fd"]["value"] > 0


#: A narrow GaussianDAC with the released hop of 1024 (10.031 s = 432 frames). (The export check
#: runs the graphs on 64 frames, so hop 8, 55,296 frames at 10.031 s, exports too: 64 s, 1 GiB.)
DAC_HOP_1024 = {**DAC_KWARGS, "encoder_rates": [8, 8, 16], "decoder_rates": [16, 8, 8]}


@pytest.mark.slow
def test_exported_onnx_matches_torch(tmp_path):
    """DiT student, CLAP text graph and GaussianDAC decoder as ONNX graphs: the onnxruntime
    pipeline gives the torch pipeline's audio."""
    pytest.importorskip("onnxruntime")
    from soundctm.export.onnx import export_onnx
    from soundctm.export.runtime import OrtPipeline

    src = tmp_path / "src"
    src.mkdir()
    write_official(src, "v2", dac_kwargs=DAC_HOP_1024)
    imported = import_soundctm_dit(src, tmp_path / "imported", variant="v2")
    exported = export_onnx(imported, tmp_path / "exported")
    ort = OrtPipeline.load(exported, providers=["cpu"])
    ref_pipe = Pipeline.load(imported)
    for steps, gamma in [(1, 0.0), (2, 0.5)]:
        kw = {"seeds": [1], "steps": steps, "gamma": gamma, "seconds": 0.5}
        ref = ref_pipe.generate([PROMPT], **kw).audio
        got = ort.generate([PROMPT], **kw).audio
        assert got.shape == ref.shape == (1, round(0.5 * 44100))
        assert rel(got, ref) <= 1e-4
