"""The tiny exportable model of the ONNX tests: a random T5 encoder with a small Unigram
tokenizer, a tiny DiT student and a small mel codec (exported once per session in conftest.py's
``tiny_export``, shared by tests/test_export.py and tests/test_js.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from soundctm.engine.pipeline import Pipeline

PROMPTS = ["a dog barks in the distance", "rain on a tin roof"]
MEL = {
    "sample_rate": 8000,
    "n_fft": 64,
    "hop_length": 16,
    "n_mels": 8,
    "f_max": 4000.0,
    "griffin_lim_iters": 4,
}


def tiny_t5(path: Path, corpus: list[str] | None = None) -> Path:
    """A tiny random T5 encoder and a small Unigram tokenizer (trained on ``corpus``, by default
    the export prompts; ``</s>`` appended), saved offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=64, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    if corpus is None:
        corpus = [*PROMPTS, "footsteps on gravel", "birds sing"]
    raw.train_from_iterator(corpus * 3, trainer=trainer)
    eos = raw.token_to_id("</s>")
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=raw, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    config = T5Config(
        vocab_size=raw.get_vocab_size(),
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=eos,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    tokenizer.save_pretrained(path)
    T5EncoderModel(config).save_pretrained(path)
    return path


def build_tiny(
    t5: Path, kind: str = "ctm", seconds: float = 0.1, max_seconds: float = 0.2, **dit: object
) -> Pipeline:
    """dit (tiny) + t5 (tiny, random) + mel (small STFT, 4 Griffin-Lim iterations); every DiT
    weight random (the zero-initialised output layers too, so the network is not trivial)."""
    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind=kind,
        backbone=("dit", {"preset": "tiny", "student": kind == "ctm", "text_dim": 16, **dit}),
        text_encoder=("t5", {"path": str(t5), "max_length": 32}),
        autoencoder=("mel", MEL),
        sigma_data=0.5,
        seconds=seconds,
        max_seconds=max_seconds,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.ctm.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.05))
    return pipe


#: the name the importer tests use
_tiny_t5 = tiny_t5
