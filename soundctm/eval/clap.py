"""``clap``: LAION-CLAP (Wu et al. 2023) audio and text embeddings, loaded from the released
checkpoints ``630k-audioset-best.pt`` (HTSAT-tiny, non-fusion) and
``630k-audioset-fusion-best.pt`` (the fusion variant), for the CLAP score and for Frechet /
MMD distances on CLAP audio embeddings.

Network: transformers' ``ClapAudioModelWithProjection`` (the HTSAT Swin transformer with the
``audio_projection`` MLP) and our :class:`soundctm.builtin.clap.ClapTextEncoder` (RoBERTa +
``text_projection``, variant v1), both built from sizes read off the checkpoint and filled by
:func:`convert_laion_audio` / :func:`soundctm.builtin.clap.clap_text_state`. The laion file is
``{epoch, name, state_dict}`` with every key prefixed ``module.`` (a bare state dict works too),
read with ``torch.load(weights_only=True)``.

Front end (ours, matched to laion_clap 1.1.4 as stable-audio-metrics calls it; see
:meth:`LaionClapEmbedder.features` and docs/eval.md):

1. the clip at 48 kHz (soxr HQ, as ``librosa.load(sr=48000)``);
2. peak normalisation to -1 dBFS (``pyloudnorm.normalize.peak(x, -1.0)``, stable-audio-metrics);
3. the int16 round trip ``int16_to_float32(float32_to_int16(x))``: clip to [-1, 1], times 32767,
   truncated towards zero, divided by 32767;
4. 10 s (480000 samples): a shorter clip is repeated ``floor(480000 / n)`` times and zero-padded
   ("repeatpad"); a longer one is cropped (non-fusion, "rand_trunc": laion picks a random start,
   we take the start, so results are reproducible) or, for the fusion model, represented by its
   whole mel squeezed to 1001 frames plus three 1001-frame chunks from the front, middle and back
   thirds of the possible starts (laion picks each at random; we take the middle of each third);
5. log-mel, 1024-point FFT, 1024-sample periodic Hann window, hop 480, centred with reflection
   padding, power spectrum, 64 bands from 50 Hz to 14 kHz, ``10 log10(max(mel, 1e-10))``. The
   non-fusion model's own extractor (torchlibrosa) uses Slaney mel filters with Slaney area
   normalisation (librosa's default); the fusion model's data pipeline uses torchaudio's
   ``MelSpectrogram`` (HTK mel, no normalisation). Both are reproduced.

The embeddings are L2-normalised (``F.normalize``), as ``get_audio_embedding`` /
``get_text_embedding`` return them.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundctm.engine.dsp import mel_filterbank
from soundctm.errors import InvalidArgumentError
from soundctm.eval.embedders import load_weight_file, peak_normalise
from soundctm.eval.weights import (
    CLAP,
    CLAP_FUSION,
    WeightFileUser,
    WeightsFileError,
    fetch_weights,
)

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000
N_FFT = 1024
HOP = 480
N_MELS = 64
F_MIN, F_MAX = 50.0, 14000.0
AMIN = 1e-10
#: Frames of a 10 s clip (centred STFT): ``480000 // 480 + 1``.
CHUNK_FRAMES = CLIP_SAMPLES // HOP + 1
#: Peak level of stable-audio-metrics' ``pyln.normalize.peak(audio, -1.0)``.
PEAK_DB = -1.0
AUDIO_PREFIX = "audio_branch."
#: The RoBERTa tokenizer (a folder or hub id) when none is passed; default ``roberta-base``.
TOKENIZER_ENV = "SOUNDCTM_CLAP_TOKENIZER"


# -- the front end --------------------------------------------------------------------------------


def quantise_int16(x: Tensor) -> Tensor:
    """laion_clap's ``int16_to_float32(float32_to_int16(x))``: clip to [-1, 1], scale by 32767,
    truncate towards zero (numpy's ``astype(int16)``), divide by 32767."""
    return (x.clamp(-1.0, 1.0) * 32767.0).to(torch.int16).to(torch.float32) / 32767.0


def repeat_pad(x: Tensor, length: int = CLIP_SAMPLES) -> Tensor:
    """laion's "repeatpad": ``x`` ``[n]`` (``0 < n < length``) repeated ``floor(length / n)``
    times, then zero-padded to ``length``."""
    n = x.shape[-1]
    return F.pad(x.repeat(length // n), (0, length - (length // n) * n))


def htk_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> Tensor:
    """torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``: ``[n_mels, n_fft//2+1]``
    triangles with peak 1, edges evenly spaced on ``2595 log10(1 + f / 700)``."""
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    pts = torch.linspace(mel(f_min), mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (pts / 2595.0) - 1.0)
    diff = hz[1:] - hz[:-1]
    slopes = hz[None, :] - freqs[:, None]  # [F, n_mels + 2]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).T.to(torch.float32)


class ClapFrontEnd(nn.Module):
    """Waveform ``[B, n]`` at 48 kHz to log-mel frames ``[B, T, 64]`` (step 5 of the module
    docstring); ``htk=False``: the non-fusion model's filters (Slaney), ``htk=True``: the fusion
    pipeline's (HTK, unnormalised)."""

    def __init__(self, htk: bool = False) -> None:
        super().__init__()
        fb = (
            htk_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, F_MIN, F_MAX)
            if htk
            else mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, F_MIN, F_MAX)
        )
        self.register_buffer("filterbank", fb, persistent=False)
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64).float()
        self.register_buffer("window", window, persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        spec = torch.stft(
            audio.to(torch.float32),
            N_FFT,
            HOP,
            N_FFT,
            self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.pow(2) + spec.imag.pow(2)  # [B, F, T]
        mel = self.filterbank @ power  # [B, n_mels, T]
        return (10.0 * torch.log10(mel.clamp_min(AMIN))).transpose(1, 2)


def fusion_starts(total_frames: int, chunk: int = CHUNK_FRAMES) -> tuple[int, int, int]:
    """Start frames of the front, middle and back chunks of a long clip: laion splits the possible
    starts ``0 .. total - chunk`` into three with ``numpy.array_split`` (an empty third falls back
    to 0) and draws one from each at random; we take the middle element of each."""
    parts = np.array_split(np.arange(0, total_frames - chunk + 1), 3)
    return tuple(int(p[len(p) // 2]) if len(p) else 0 for p in parts)  # type: ignore[return-value]


# -- converting the laion checkpoint -------------------------------------------------------------


def strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys without DataParallel's ``module.`` prefix."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def audio_config(state: dict[str, Tensor], source: str) -> dict[str, Any]:
    """``ClapAudioConfig`` fields read off a laion state dict (``audio_branch.*`` and
    ``audio_projection.*``): stage widths, depths, heads, window, projection width, fusion."""
    a = AUDIO_PREFIX

    def need(key: str) -> Tensor:
        if key not in state:
            raise WeightsFileError(
                f"{source} has no {key}; it is not a LAION-CLAP HTSAT checkpoint such as "
                "630k-audioset-best.pt"
            )
        return state[key]

    proj = need(f"{a}patch_embed.proj.weight")
    depths: list[int] = []
    heads: list[int] = []
    window = 0
    layer = 0
    while f"{a}layers.{layer}.blocks.0.norm1.weight" in state:
        blocks = {
            int(m.group(1))
            for k in state
            if (m := re.match(rf"{re.escape(a)}layers\.{layer}\.blocks\.(\d+)\.", k))
        }
        depths.append(len(blocks))
        table = need(f"{a}layers.{layer}.blocks.0.attn.relative_position_bias_table")
        heads.append(int(table.shape[1]))
        window = (round(math.sqrt(table.shape[0])) + 1) // 2
        layer += 1
    if not depths:
        raise WeightsFileError(f"{source} has no {a}layers.*; it is not a LAION-CLAP checkpoint")
    fc1 = need(f"{a}layers.0.blocks.0.mlp.fc1.weight")
    return {
        "patch_embeds_hidden_size": int(proj.shape[0]),
        "patch_size": int(proj.shape[-1]),
        "patch_stride": [int(proj.shape[-1])] * 2,
        "depths": depths,
        "num_attention_heads": heads,
        "window_size": int(window),
        "hidden_size": int(need(f"{a}norm.weight").shape[0]),
        "num_mel_bins": int(need(f"{a}bn0.weight").shape[0]),
        "mlp_ratio": float(fc1.shape[0]) / float(fc1.shape[1]),
        "projection_dim": int(need("audio_projection.0.weight").shape[0]),
        "projection_hidden_act": "relu",
        "enable_fusion": f"{a}patch_embed.mel_conv2d.weight" in state,
        "fusion_type": "aff_2d",
        "spec_size": 256,
    }


#: laion names inside a Swin block -> transformers names (``attn.qkv`` is split separately).
_BLOCK_NAMES = (
    ("norm1.", "layernorm_before."),
    ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("attn.relative_position_index", "attention.self.relative_position_index"),
    ("attn.proj.", "attention.output.dense."),
    ("norm2.", "layernorm_after."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
)
#: laion entries the embedding does not use: the front end's own STFT / mel weights (ours are
#: computed), the shifted-window masks (rebuilt), the AudioSet classification head.
_AUDIO_UNUSED = re.compile(
    r"(spectrogram_extractor\.|logmel_extractor\.|.*\.attn_mask$|tscam_conv\.|head\.)"
)


def convert_laion_audio(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The audio tower of a laion state dict (no ``module.``) renamed for transformers'
    ``ClapAudioModelWithProjection``: ``audio_branch.`` -> ``audio_model.audio_encoder.``,
    ``bn0`` -> ``batch_norm``, per Swin block ``norm1/norm2`` -> ``layernorm_before/after``,
    ``attn.qkv`` split into ``attention.self.{query,key,value}``, ``attn.proj`` ->
    ``attention.output.dense``, ``mlp.fc1/fc2`` -> ``intermediate.dense``/``output.dense``;
    ``audio_projection.0/2`` -> ``audio_projection.linear1/linear2``. The unused entries
    (:data:`_AUDIO_UNUSED`) are dropped."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("audio_projection."):
            index, _, rest = key.removeprefix("audio_projection.").partition(".")
            linear = {"0": "linear1", "2": "linear2"}.get(index)
            if linear is not None:
                out[f"audio_projection.{linear}.{rest}"] = value
            continue
        if not key.startswith(AUDIO_PREFIX):
            continue
        name = key.removeprefix(AUDIO_PREFIX)
        if _AUDIO_UNUSED.match(name):
            continue
        if name.startswith("bn0."):
            name = "batch_norm." + name.removeprefix("bn0.")
        m = re.match(r"(layers\.\d+\.blocks\.\d+\.)(.*)", name)
        if m:
            prefix, inner = m.groups()
            if inner.startswith("attn.qkv."):
                kind = inner.removeprefix("attn.qkv.")
                for part, chunk in zip(
                    ("query", "key", "value"), value.chunk(3, dim=0), strict=True
                ):
                    out[f"audio_model.audio_encoder.{prefix}attention.self.{part}.{kind}"] = (
                        chunk.contiguous()
                    )
                continue
            for theirs, ours in _BLOCK_NAMES:
                if inner.startswith(theirs):
                    inner = ours + inner.removeprefix(theirs)
                    break
            name = prefix + inner
        out[f"audio_model.audio_encoder.{name}"] = value
    return out


def build_audio_model(config: dict[str, Any]) -> nn.Module:
    """transformers' ``ClapAudioModelWithProjection`` of ``config`` (random weights)."""
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection

    from soundctm.engine.hf import quiet_transformers

    with quiet_transformers():
        return ClapAudioModelWithProjection(ClapAudioConfig(**config))


def load_audio_model(state: dict[str, Tensor], source: str) -> tuple[nn.Module, dict[str, Any]]:
    """The audio tower of a laion state dict (no ``module.``), built and loaded strictly (every
    weight the module has must come from the file, with its shape; the relative-position index
    buffers are constants the module rebuilds and may be absent)."""
    config = audio_config(state, source)
    model = build_audio_model(config)
    converted = convert_laion_audio(state)
    own = model.state_dict()
    optional = {k for k in own if k.endswith(("relative_position_index", "num_batches_tracked"))}
    missing = sorted(set(own) - set(converted) - optional)
    extra = sorted(set(converted) - set(own))
    wrong = [k for k in own if k in converted and converted[k].shape != own[k].shape]
    if missing or extra or wrong:
        what = (
            f"lacks {missing[0]}"
            if missing
            else f"has an unexpected {extra[0]}"
            if extra
            else f"has {wrong[0]} of shape {tuple(converted[wrong[0]].shape)}, expected "
            f"{tuple(own[wrong[0]].shape)}"
        )
        raise WeightsFileError(
            f"{source}: its CLAP audio tower {what} (transformers names); it is not a "
            "LAION-CLAP HTSAT checkpoint such as 630k-audioset-best.pt"
        )
    merged = {**own, **{k: v.to(own[k].dtype) for k, v in converted.items()}}
    model.load_state_dict(merged, strict=True)
    return model.eval(), config


# -- the embedder ---------------------------------------------------------------------------------


class LaionClapEmbedder(nn.Module, WeightFileUser):
    """The ``clap`` embedder: LAION-CLAP audio (``embed``) and text (``embed_text``) towers in
    one 512-d space (see the module docstring for the front end).

    ``weights``: the checkpoint path; default ``SOUNDCTM_CLAP_WEIGHTS``, the cache, or a download
    of ``630k-audioset-best.pt`` (``fusion=True``: ``630k-audioset-fusion-best.pt``) through
    :func:`soundctm.eval.weights.fetch_weights`. Whether the model is the fusion one is read from
    the file; ``fusion`` set explicitly must agree. ``tokenizer``: the RoBERTa tokenizer (a
    folder or hub id; default ``SOUNDCTM_CLAP_TOKENIZER``, else ``roberta-base`` from the Hugging
    Face cache). ``peak_normalise``: scale each clip to
    -1 dBFS first (stable-audio-metrics does; audioldm_eval does not). Audio: ``[B, n]`` float32
    mono at 48 kHz.
    """

    name = "clap"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        fusion: bool | None = None,
        tokenizer: str | None = None,
        peak_normalise: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        from soundctm.builtin.clap import ClapTextEncoder, clap_text_state

        tokenizer = tokenizer or os.environ.get(TOKENIZER_ENV, "").strip() or "roberta-base"
        spec = CLAP_FUSION if fusion else CLAP
        path = fetch_weights(spec, weights)
        source = f"CLAP checkpoint {path}"
        state = strip_module(load_weight_file(path))
        self.audio, self.audio_config = load_audio_model(state, source)
        self.fusion = bool(self.audio_config["enable_fusion"])
        if fusion is not None and bool(fusion) != self.fusion:
            raise WeightsFileError(
                f"{source} is {'a fusion' if self.fusion else 'a non-fusion'} LAION-CLAP model, "
                f"but fusion={fusion} was asked for; pass the matching checkpoint "
                f"({CLAP_FUSION.filename if fusion else CLAP.filename})"
            )
        self.use_weight_file(CLAP_FUSION if self.fusion else CLAP, path)
        try:
            params, text_state, _ = clap_text_state(state, "v1", source=source)
        except Exception as exc:  # CheckpointError / InvalidArgumentError: one line, the file
            raise WeightsFileError(str(exc)) from exc
        self.text = ClapTextEncoder(
            variant="v1", config=params["config"], tokenizer=tokenizer, exact=True
        )
        self.text.load_state_dict(text_state)
        self.dim = int(self.audio_config["projection_dim"])
        if self.text.dim != self.dim:
            raise WeightsFileError(
                f"{source}: the text projection is {self.text.dim}-d but the audio projection "
                f"{self.dim}-d; the checkpoint is inconsistent"
            )
        self.front = ClapFrontEnd(htk=self.fusion)
        self.peak_normalise = bool(peak_normalise)
        self.variant = "" if self.peak_normalise else "no-peak"  # its own cache folder
        self.batch_size = max(1, int(batch_size))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval().to(device)

    def __repr__(self) -> str:
        kind = "fusion" if self.fusion else "non-fusion"
        return f"LaionClapEmbedder({str(self.weights_path)!r}, {kind}, {self.checksum[:12]}...)"

    # -- audio ------------------------------------------------------------------------------------
    def waveform(self, clip: Tensor) -> Tensor:
        """Steps 2-3 of the module docstring on one clip ``[n]``."""
        x = clip.to(torch.float32)
        if self.peak_normalise:
            x = peak_normalise(x, PEAK_DB)
        return quantise_int16(x)

    def features(self, clip: Tensor) -> tuple[Tensor, bool]:
        """One 48 kHz clip ``[n]`` to the model input ``[C, T, 64]`` (C = 1, or 4 for fusion)
        and whether it is "longer" than 10 s (fusion only)."""
        if clip.dim() != 1 or clip.shape[0] == 0:
            raise InvalidArgumentError(f"expected a non-empty clip [n], got {tuple(clip.shape)}")
        x = self.waveform(clip)
        n = x.shape[0]
        if n > CLIP_SAMPLES and self.fusion:
            mel = self.front(x[None])[0]  # [T, 64]
            total = mel.shape[0]
            if total == CHUNK_FRAMES:
                return mel.expand(4, -1, -1).contiguous(), False
            shrunk = F.interpolate(
                mel[None, None], size=(CHUNK_FRAMES, mel.shape[1]), mode="bilinear",
                align_corners=False, antialias=False,
            )[0, 0]  # fmt: skip
            chunks = [mel[s : s + CHUNK_FRAMES] for s in fusion_starts(total)]
            return torch.stack([shrunk, *chunks]), True
        if n > CLIP_SAMPLES:
            x = x[:CLIP_SAMPLES]
        elif n < CLIP_SAMPLES:
            x = repeat_pad(x)
        mel = self.front(x[None])[0]
        if self.fusion:
            return mel.expand(4, -1, -1).contiguous(), False
        return mel[None], False

    @torch.no_grad()
    def embed(self, audio: Tensor) -> Tensor:
        """Audio ``[B, n]`` at 48 kHz to L2-normalised CLAP audio embeddings ``[B, dim]``."""
        if audio.dim() != 2:
            raise InvalidArgumentError(f"expected audio [B, n], got shape {tuple(audio.shape)}")
        device = self.front.window.device
        out = []
        for start in range(0, audio.shape[0], self.batch_size):
            feats = [self.features(c.to(device)) for c in audio[start : start + self.batch_size]]
            x = torch.stack([f for f, _ in feats])
            longer = torch.tensor([[lg] for _, lg in feats], device=device)
            y = self.audio(input_features=x, is_longer=longer if self.fusion else None)
            out.append(F.normalize(y.audio_embeds.float(), dim=-1))
        return torch.cat(out)

    # -- text -------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        """Captions to L2-normalised CLAP text embeddings ``[B, dim]`` (RoBERTa, 77 tokens,
        ``text_projection``; laion's ``get_text_embedding``)."""
        return torch.cat(self.text.encode_prompts(list(texts))).float()

    def forward(self, audio: Tensor) -> Tensor:
        return self.embed(audio)


__all__ = [
    "CHUNK_FRAMES",
    "CLIP_SAMPLES",
    "ClapFrontEnd",
    "LaionClapEmbedder",
    "audio_config",
    "convert_laion_audio",
    "fusion_starts",
    "htk_mel_filterbank",
    "load_audio_model",
    "peak_normalise",
    "quantise_int16",
    "repeat_pad",
    "strip_module",
]
