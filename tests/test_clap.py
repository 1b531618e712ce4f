"""The ``clap`` text encoder and ``from_official_clap`` on tiny random stand-ins of LAION-CLAP's
``630k-audioset-best.pt`` (written here; no weights are downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from soundctm.builtin.clap import ClapTextEncoder, from_official_clap
from soundctm.errors import CheckpointError, InvalidArgumentError

CAPTIONS = [
    "a dog barks in the distance",
    "rain falls on a tin roof while thunder rumbles far away",
    "",
    "footsteps on gravel",
    "birds sing in the morning " * 20,  # longer than 77 tokens: truncated
]
HIDDEN, PROJ, HEADS, LAYERS, POSITIONS = 32, 16, 4, 2, 80
TOL = 1e-6
MEL = {"sample_rate": 8000, "n_fft": 64, "hop_length": 16, "n_mels": 8, "f_max": 4000.0}


class Opaque:
    """An object that ``torch.load(weights_only=True)`` refuses to unpickle."""


# ---------------------------------------------------------------------------- stand-ins
def write_tokenizer(path: Path) -> Path:
    """A tiny byte-level BPE RoBERTa tokenizer (<s>=0, <pad>=1, </s>=2), trained offline into
    ``path``: ``tokenizer.json`` and, as the hub's ``roberta-base`` has them, ``vocab.json`` and
    ``merges.txt`` (which the slow ``RobertaTokenizer`` of the official code reads)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    raw = ByteLevelBPETokenizer()
    raw.train_from_iterator(
        CAPTIONS * 3,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    model = json.loads(raw._tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    RobertaTokenizerFast(vocab=model["vocab"], merges=merges).save_pretrained(path)
    raw.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("roberta-tiny"))


def tiny_config(vocab: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 2 * HIDDEN,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


@pytest.fixture(scope="module")
def official(tmp_path_factory, tok_dir):
    """(with position_ids, without, the official state dict): a tiny random text branch, the
    2-layer projection and audio-branch decoys, saved as LAION-CLAP saves them."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    torch.manual_seed(0)
    branch = RobertaModel(RobertaConfig(**tiny_config(vocab)), add_pooling_layer=True)
    state = {f"text_branch.{k}": v.clone() for k, v in branch.state_dict().items()}
    # Not the init's small weights and zero biases: content-dependent outputs, every weight
    # matters.
    for k, v in state.items():
        if v.is_floating_point():
            noise = torch.randn_like(v)
            state[k] = 1 + 0.1 * noise if k.endswith("LayerNorm.weight") else 0.2 * noise
    state.update(
        {
            "text_projection.0.weight": torch.randn(PROJ, HIDDEN) * 0.3,
            "text_projection.0.bias": torch.randn(PROJ) * 0.1,
            "text_projection.2.weight": torch.randn(PROJ, PROJ) * 0.3,
            "text_projection.2.bias": torch.randn(PROJ) * 0.1,
            "audio_branch.conv.weight": torch.randn(4, 4),
            "audio_projection.0.weight": torch.randn(PROJ, 8),
            "text_transform.sequential.0.weight": torch.randn(PROJ, PROJ),
            "logit_scale_a": torch.tensor(2.0),
        }
    )
    root = tmp_path_factory.mktemp("clap")
    with_ids, without = root / "with-ids.pt", root / "without-ids.pt"
    positions = {"text_branch.embeddings.position_ids": torch.arange(POSITIONS)[None]}
    for path, extra in ((with_ids, positions), (without, {})):
        sd = {f"module.{k}": v for k, v in {**state, **extra}.items()}
        torch.save({"epoch": 1, "name": "x", "state_dict": sd}, path)
    return with_ids, without, state


def reference(state: dict, tok_dir: Path, variant: str, prompts: list[str]) -> torch.Tensor:
    """Independent: plain RobertaModel on the text_branch weights, the tokenizer padding to 77,
    a hand-written MLP for v1, L2 norm."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = RobertaModel(RobertaConfig(**tiny_config(len(tok))), add_pooling_layer=True).eval()
    branch = {k[len("text_branch.") :]: v for k, v in state.items() if k.startswith("text_branch.")}
    model.load_state_dict(branch, strict=True)
    rows = []
    with torch.no_grad():
        for p in prompts:
            enc = tok(p, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
            x = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            x = x.pooler_output
            if variant == "v1":
                x = F.relu(
                    x @ state["text_projection.0.weight"].T + state["text_projection.0.bias"]
                )
                x = x @ state["text_projection.2.weight"].T + state["text_projection.2.bias"]
            rows.append(x / x.norm(dim=-1, keepdim=True))
    return torch.cat(rows)


def encoder(path: Path, tok_dir: Path, variant: str, **kw) -> ClapTextEncoder:
    params, state, _ = from_official_clap(path, variant, num_attention_heads=HEADS)
    enc = ClapTextEncoder(**params, tokenizer=str(tok_dir), **kw)
    enc.load_state_dict(state, strict=True)
    return enc


# ---------------------------------------------------------------------------- parity
@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_matches_an_independent_computation(official, tok_dir, variant):
    with_ids, without, state = official
    ref = reference(state, tok_dir, variant, CAPTIONS)
    for path in (with_ids, without):
        enc = encoder(path, tok_dir, variant)
        cond = enc(CAPTIONS)
        dim = PROJ if variant == "v1" else HIDDEN
        assert enc.dim == dim
        assert cond.tokens.shape == (len(CAPTIONS), 1, dim) and cond.tokens.dtype == torch.float32
        assert cond.mask.shape == (len(CAPTIONS), 1) and bool(cond.mask.all())
        diff = (cond.tokens[:, 0] - ref).abs().max().item()
        print(f"clap {variant} {path.name}: max abs difference {diff:.2e}")
        assert diff < TOL, diff
        assert torch.allclose(cond.tokens.norm(dim=-1), torch.ones(len(CAPTIONS), 1))
    # The prompts differ, so do their tokens (the model is not degenerate).
    assert (ref[0] - ref[2]).abs().max() > 1e-2


def test_batched_mode_and_cache(official, tok_dir):
    enc = encoder(official[1], tok_dir, "v1", cache_size=0)
    fast = encoder(official[1], tok_dir, "v1", exact=False)
    exact = enc(CAPTIONS).tokens
    assert torch.equal(enc(["", CAPTIONS[0]]).tokens, exact[[2, 0]])
    assert (fast(CAPTIONS).tokens - exact).abs().max() < TOL
    assert torch.equal(fast(CAPTIONS).tokens, fast(CAPTIONS).tokens)  # cached


# ---------------------------------------------------------------------------- conversion
def test_converter_reads_sizes_and_skips_the_rest(official):
    with_ids, without, state = official
    params, sd, info = from_official_clap(with_ids, "v1", num_attention_heads=HEADS)
    cfg = params["config"]
    assert params["variant"] == "v1" and params["max_length"] == 77 and "tokenizer" not in params
    assert cfg["hidden_size"] == HIDDEN and cfg["num_hidden_layers"] == LAYERS
    assert cfg["max_position_embeddings"] == POSITIONS and cfg["projection_dim"] == PROJ
    assert cfg["projection_hidden_act"] == "relu" and cfg["layer_norm_eps"] == 1e-5
    assert info["had_position_ids"] and info["epoch"] == 1 and info["name"] == "x"
    assert {"audio_branch", "audio_projection", "logit_scale_a"} <= set(info["skipped"])
    assert not any("position_ids" in k for k in sd)
    assert sd["model.text_projection.linear2.bias"].equal(state["text_projection.2.bias"])
    params2, sd2, info2 = from_official_clap(without, "v2", num_attention_heads=HEADS)
    assert not info2["had_position_ids"] and "projection_dim" not in params2["config"]
    assert "text_projection" in info2["skipped"] and all(
        not k.startswith("model.text_") for k in sd2
    )
    json.dumps(params)  # card parameters are JSON


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_state_dict_round_trip(official, tok_dir, tmp_path, variant):
    from safetensors.torch import load_file, save_file

    enc = encoder(official[0], tok_dir, variant)
    params, _, _ = from_official_clap(official[0], variant, num_attention_heads=HEADS)
    save_file(enc.state_dict(), tmp_path / "text_encoder.safetensors")  # as checkpoints do
    again = ClapTextEncoder(**params, tokenizer=str(tok_dir))
    again.load_state_dict(load_file(tmp_path / "text_encoder.safetensors"), strict=True)
    assert torch.equal(again(CAPTIONS).tokens, enc(CAPTIONS).tokens)
    assert not any("position_ids" in k or "token_type_ids" in k for k in enc.state_dict())
    count = sum(t.numel() for t in enc.state_dict().values())
    assert ClapTextEncoder.parameter_count({**params, "tokenizer": "x"}) == count
    full = ClapTextEncoder.expand_params({"variant": variant, "config": params["config"]})
    assert full["config"] == {**full["config"], **params["config"]}


def test_pipeline_checkpoint_round_trip(official, tok_dir, tmp_path):
    """As a pipeline's text encoder: the weights go into the checkpoint (checked against the
    card's parameter count on load) and come back identical."""
    from soundctm.engine.pipeline import Pipeline

    params, state, _ = from_official_clap(official[0], "v1", num_attention_heads=HEADS)
    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind="ctm",
        backbone=("dit", {"preset": "tiny", "student": True, "text_dim": PROJ}),
        text_encoder=("clap", {**params, "tokenizer": str(tok_dir)}),
        autoencoder=("mel", MEL),
        sigma_data=0.5,
        seconds=0.1,
    )
    pipe.text_encoder.load_state_dict(state, strict=True)
    loaded = Pipeline.load(pipe.save(tmp_path / "ckpt"))
    assert loaded.card.components["text_encoder"].params["config"] == params["config"]
    assert torch.equal(loaded.encode_text(CAPTIONS).tokens, pipe.encode_text(CAPTIONS).tokens)


def test_registered_as_clap():
    from soundctm.builtin import TEXT_ENCODERS

    assert TEXT_ENCODERS["clap"][0] == "soundctm.builtin.clap:ClapTextEncoder"
    assert ClapTextEncoder.checkpoint_weights is True


def _one_line_error(path: Path, variant: str = "v1", **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        from_official_clap(path, variant, num_attention_heads=HEADS, **kw)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_sources_give_one_line_errors(official, tmp_path):
    with_ids, _, state = official

    def write(name: str, data: object) -> Path:
        torch.save(data, tmp_path / name)
        return tmp_path / name

    assert "does not exist" in _one_line_error(tmp_path / "missing.pt")
    audio_only = write("audio.pt", {"state_dict": {"module.audio_branch.x": torch.zeros(2)}})
    assert "text_branch" in _one_line_error(audio_only)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(with_ids.read_bytes()[: with_ids.stat().st_size // 2])
    assert "truncated" in _one_line_error(truncated)
    assert "--trust-pickle" in _one_line_error(write("pickle.pt", {"x": Opaque()}))
    no_proj = {f"module.{k}": v for k, v in state.items() if not k.startswith("text_projection")}
    no_proj_file = write("no-projection.pt", {"state_dict": no_proj})
    assert "text_projection.0.weight" in _one_line_error(no_proj_file, "v1")
    from_official_clap(no_proj_file, "v2", num_attention_heads=HEADS)  # v2 needs none
    key = "text_branch.encoder.layer.1.attention.output.dense.weight"
    holed = write(
        "holed.pt", {"state_dict": {f"module.{k}": v for k, v in state.items() if k != key}}
    )
    assert key in _one_line_error(holed, "v2")


def test_bad_arguments(official, tok_dir):
    with pytest.raises(InvalidArgumentError):
        ClapTextEncoder(variant="v3", tokenizer=str(tok_dir))
    with pytest.raises(InvalidArgumentError):
        from_official_clap(official[0], "v1", num_attention_heads=5)  # 32 % 5 != 0
    params, _, _ = from_official_clap(official[0], "v1", num_attention_heads=HEADS)
    with pytest.raises(InvalidArgumentError, match="positions"):
        ClapTextEncoder(**{**params, "max_length": 100}, tokenizer=str(tok_dir))


# ---------------------------------------------------------------------------- export
def test_onnx_graph_matches_the_encoder(official, tok_dir, tmp_path):
    from soundctm.export.onnx import text_encoder_graph

    enc = encoder(official[0], tok_dir, "v1")
    graph = text_encoder_graph(enc, "clap")
    for prompt in CAPTIONS:
        ids = torch.tensor([enc.token_ids(prompt)])
        with torch.no_grad():
            out = graph.module(ids, torch.ones_like(ids))
        assert torch.equal(out, enc([prompt]).tokens)


@pytest.mark.slow
def test_onnx_export_matches_torch(official, tok_dir, tmp_path):
    """The graph through torch.onnx and onnxruntime, on unpadded ids of several lengths."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from soundctm.export.onnx import _export_graph, text_encoder_graph

    enc = encoder(official[0], tok_dir, "v1")
    graph = text_encoder_graph(enc, "clap")
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=77)
    named = {"batch": batch, "length": length}
    dynamic = {k: {a: named[n] for a, n in axes.items()} for k, axes in graph.dynamic.items()}
    path = tmp_path / "text_encoder.onnx"
    diff = _export_graph(
        "text_encoder", "clap", graph.module, graph.example, dynamic, ("tokens",), path, 18
    )
    assert diff < 1e-5
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for prompt in CAPTIONS:
        ids = torch.tensor([enc.token_ids(prompt)])
        feeds = {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()}
        out = torch.from_numpy(session.run(None, feeds)[0])
        worst = max(worst, (out - enc([prompt]).tokens).abs().max().item())
    print(f"clap onnx: check {diff:.2e}, prompts {worst:.2e}")
    assert worst < 1e-5
