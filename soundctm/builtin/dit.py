"""SoundCTM-DiT: a diffusion transformer over latent frames (method.md §3 and §6).

The raw network ``F`` of the EDM parameterisation; preconditioning lives in
:mod:`soundctm.engine.ctm`, which passes ``c_noise(t) = ln(t)/4`` (and ``c_noise(s)``).

Layout (after the official 44.1 kHz SoundCTM-DiT, itself a stable-audio-tools DiT):

* latent frames ``x [B, C, T]`` become ``ceil(T / p)`` tokens through a linear layer on groups of
  ``p = patch_size`` consecutive frames (DiT "patchify", Peebles & Xie 2023, §3.2; ``p = 1`` is one
  token a frame, as in the official model); the output projection maps each token back to ``p``
  frames, and a clip whose length is not a multiple of ``p`` is zero-padded and cropped;
* the noise level enters as ONE extra token prepended to the sequence (removed at the output):
  learned Fourier features of ``c_noise`` (random fixed frequencies) followed by an MLP;
* each block is pre-norm self-attention with rotary position embedding on a fraction of every
  head, cross-attention to the text tokens, and a SwiGLU MLP;
* the output projections of every attention/MLP and of the network are zero-initialised, so a
  fresh network outputs exactly 0 and every residual block starts as the identity.

Student conditioning. In the official DiT, ``t`` and ``s`` pass through the same Fourier + MLP
embedding and are summed, and ``w`` [omega] adds a parameter-free sinusoidal embedding of
``1000 w``. Here the student's time token is::

    token = emb(t) + gate * (emb(s) + sinusoid(1000 w))

with ``gate`` a learnable per-channel vector (``student_gate``) initialised to zero. The teacher's
token is ``emb(t)``. A student initialised from its teacher
(:func:`soundctm.engine.weights.init_student_from_teacher`) therefore equals the teacher
exactly (``g(x, t, t) = D(x, t)``) for every ``s`` and ``w``, and the gate's gradient
``dL/dtoken * (emb(s) + sinusoid(1000 w))`` is non-zero from the first step, so training
opens the ``s``/``w`` path; at ``gate = 1`` it is the official sum. No adaLN: the token is the
only conditioning path, as in the official model.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from soundctm.engine.components import (
    CountsParameters,
    ExpandsParams,
    HasLastLayer,
    HasMaxFrames,
    TeacherFeatures,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.errors import InvalidArgumentError

ROTARY_BASE = 10000.0
FOURIER_SEED = 20240601  # fixed, so the random Fourier frequencies do not depend on global RNG

DIT_PRESETS: dict[str, dict[str, Any]] = {
    # For tests: builds in milliseconds, < 100k parameters.
    "tiny": {
        "in_channels": 8,
        "width": 32,
        "depth": 2,
        "heads": 2,
        "text_dim": 16,
        "max_frames": 256,
        "rotary_fraction": 0.5,
        "mlp_ratio": 4.0,
        "time_features": 16,
    },
    # The default model trained on a CPU (about 6.5M parameters).
    "small": {
        "in_channels": 64,
        "width": 256,
        "depth": 6,
        "heads": 4,
        "text_dim": 384,
        "max_frames": 1024,
        "rotary_fraction": 0.5,
        "mlp_ratio": 4.0,
        "time_features": 256,
    },
    # The same network on pairs of frames: 47 tokens for 3 s instead of 94, about half the
    # compute a training step on a CPU (see ``patch_size``).
    "small-p2": {
        "in_channels": 64,
        "width": 256,
        "depth": 6,
        "heads": 4,
        "text_dim": 384,
        "max_frames": 1024,
        "rotary_fraction": 0.5,
        "mlp_ratio": 4.0,
        "time_features": 256,
        "patch_size": 2,
    },
    # The official 44.1 kHz SoundCTM-DiT-1B (method.md §6): 24 blocks, width 1536, 24 heads,
    # rotary on half of each head, 64 latent channels, one CLAP text token (512-dim). mlp_ratio 6
    # gives a SwiGLU hidden size of 2/3 * 6 * 1536 = 6144, the stable-audio-tools GLU size.
    "official-1b": {
        "in_channels": 64,
        "width": 1536,
        "depth": 24,
        "heads": 24,
        "text_dim": 512,
        "max_frames": 1024,
        "rotary_fraction": 0.5,
        "mlp_ratio": 6.0,
        "time_features": 256,
    },
}


def dit_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of the DiT preset ``name``, with ``overrides`` applied.

    ``DiT(**dit_config("small", in_channels=8, student=True))``.
    """
    if name not in DIT_PRESETS:
        raise InvalidArgumentError(
            f"unknown DiT preset {name!r}; choose one of {', '.join(sorted(DIT_PRESETS))}"
        )
    known = {*DIT_PRESETS[name], "student", "dropout", "patch_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidArgumentError(
            f"unknown DiT argument(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    return {**DIT_PRESETS[name], **overrides}


# ---------------------------------------------------------------------------- maths


def swiglu_hidden(width: int, mlp_ratio: float, multiple: int = 8) -> int:
    """SwiGLU hidden size as in LLaMA: ``2/3 * mlp_ratio * width`` rounded up to ``multiple``.

    Keeps the parameter count of a plain MLP with ratio ``mlp_ratio`` (Touvron et al. 2023, §2).
    """
    hidden = int(2 * mlp_ratio * width / 3)
    return multiple * math.ceil(hidden / multiple)


def fourier_features(values: Tensor, frequencies: Tensor) -> Tensor:
    """``[cos(2 pi f v), sin(2 pi f v)]`` for each frequency ``f``: [B] -> [B, 2 * len(f)].

    Random Fourier features (Tancik et al. 2020), the time input of the stable-audio-tools DiT.
    Computed in float32.
    """
    args = 2 * math.pi * values.float()[:, None] * frequencies.float()[None, :]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Parameter-free sinusoidal embedding [B] -> [B, dim] (Vaswani et al. 2017, §3.5).

    ``[cos(v * f_i), sin(v * f_i)]`` with ``f_i = max_period^(-i / (dim/2))``, the
    ``timestep_embedding`` of DDPM/guided-diffusion; an odd ``dim`` gets one zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    )
    args = values.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def rotary_angles(positions: Tensor, dim: int, base: float = ROTARY_BASE) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the rotary angles, each [N, dim], for integer ``positions`` [N].

    RoPE (Su et al. 2021, eq. 34): pair ``i`` of the rotated dims turns by ``p * base^(-2i/dim)``.
    Laid out for the rotate-half convention (the two halves of ``dim`` form the pairs).
    """
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions.float()[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` [..., N, D]; the rest pass unchanged.

    ``x_rot * cos + rotate_half(x_rot) * sin`` (RoPE, Su et al. 2021), so the dot product of a
    query at position m and a key at position n depends only on ``m - n``.
    """
    rot = cos.shape[-1]
    if rot == 0:
        return x
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    out = x_rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat([out, x_pass], dim=-1)


def patchify(x: Tensor, patch: int) -> Tensor:
    """Latent frames [B, C, T] -> tokens [B, ceil(T / p), p * C] of ``p`` consecutive frames.

    The last token is zero-padded when ``p`` does not divide ``T`` (DiT patchify, Peebles & Xie
    2023, §3.2, on a 1-D frame axis). Inverse: :func:`unpatchify`.
    """
    frames = x.transpose(1, 2)  # [B, T, C]
    if patch == 1:
        return frames
    b, t, c = frames.shape
    frames = F.pad(frames, (0, 0, 0, (-t) % patch))
    return frames.reshape(b, -1, patch * c)


def unpatchify(tokens: Tensor, patch: int, frames: int) -> Tensor:
    """Tokens [B, N, p * C] -> latent frames [B, C, frames] (drops the padding of
    :func:`patchify`)."""
    if patch == 1:
        return tokens.transpose(1, 2)
    b, n, pc = tokens.shape
    out = tokens.reshape(b, n * patch, pc // patch)[:, :frames]
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------- modules


def _zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, w = x.shape
    return x.view(b, n, heads, w // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary position embedding on part of each head."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = _zero_init(nn.Linear(width, width, bias=False))

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = (_split_heads(p, self.heads) for p in self.qkv(h).chunk(3, dim=-1))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(_merge_heads(o))


class CrossAttention(nn.Module):
    """Multi-head attention from the frames to the text tokens, with a key padding mask.

    A row whose mask is all False (no text at all) gets a zero update, never NaN.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = _zero_init(nn.Linear(width, width, bias=False))

    def forward(self, h: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        q = _split_heads(self.q(h), self.heads)
        k, v = (_split_heads(p, self.heads) for p in self.kv(context).chunk(2, dim=-1))
        has_text = mask.any(dim=-1)  # [B]
        attend = (mask | ~has_text[:, None])[:, None, None, :]  # empty rows attend anywhere...
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )
        o = o * has_text[:, None, None, None].to(o.dtype)  # ...and their result is dropped
        return self.out(_merge_heads(o))


class SwiGLU(nn.Module):
    """``W_out (silu(W_a h) * W_b h)`` (Shazeer 2020, "GLU variants improve transformers")."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Linear(width, 2 * hidden, bias=False)
        self.drop = nn.Dropout(dropout)
        self.out = _zero_init(nn.Linear(hidden, width, bias=False))

    def forward(self, h: Tensor) -> Tensor:
        a, b = self.inp(h).chunk(2, dim=-1)
        return self.out(self.drop(F.silu(a) * b))


class DiTBlock(nn.Module):
    """Pre-norm self-attention (rotary), cross-attention to text, SwiGLU MLP; all residual."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = SelfAttention(width, heads, dropout)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, heads, dropout)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = SwiGLU(width, hidden, dropout)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        h = h + self.self_attn(self.norm_self(h), cos, sin)
        h = h + self.cross_attn(self.norm_cross(h), context, mask)
        return h + self.mlp(self.norm_mlp(h))


#: Upper bounds a card must respect, checked before anything is built: far above any real
#: model (the official 1B model has width 1536 and depth 24), low enough that an absurd card
#: fails in microseconds instead of allocating terabytes or building for minutes.
DIT_LIMITS: dict[str, int | float] = {
    "in_channels": 1 << 20,
    "width": 1 << 20,
    "depth": 1024,
    "heads": 1 << 16,
    "text_dim": 1 << 20,
    "max_frames": 1 << 24,
    "time_features": 1 << 20,
    "patch_size": 1024,
    "mlp_ratio": 64.0,
}


def _number(value: float) -> str:
    """``1,048,576`` for an integer, ``64`` or ``1e+12`` for a float."""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def check_conditioning(
    name: str, x: Tensor, t_noise: Tensor, cond: Conditioning, text_dim: int, field: str
) -> None:
    """One noise level per sample and text tokens ``[B, L, text_dim]``, or a one-line error
    that names the backbone (``name``) and its width parameter (``field``)."""
    if t_noise.shape != (x.shape[0],):
        raise InvalidArgumentError(
            f"{name} expects one noise level per sample [{x.shape[0]}], got {tuple(t_noise.shape)}"
        )
    if cond.tokens.shape[0] != x.shape[0] or cond.tokens.shape[2] != text_dim:
        raise InvalidArgumentError(
            f"{name} expects text tokens [{x.shape[0]}, L, {text_dim}], got "
            f"{tuple(cond.tokens.shape)}; check that {field} matches the text encoder"
        )


def _check_config(
    *,
    in_channels: int,
    width: int,
    depth: int,
    heads: int,
    text_dim: int,
    max_frames: int,
    rotary_fraction: float,
    mlp_ratio: float,
    time_features: int,
    patch_size: int,
) -> None:
    """Refuse DiT arguments that are inconsistent or out of bounds (:data:`DIT_LIMITS`)."""
    sizes = {
        "in_channels": in_channels,
        "width": width,
        "depth": depth,
        "heads": heads,
        "text_dim": text_dim,
        "max_frames": max_frames,
        "time_features": time_features,
        "patch_size": patch_size,
        "mlp_ratio": mlp_ratio,
    }
    for name, value in sizes.items():
        if value > DIT_LIMITS[name]:
            raise InvalidArgumentError(
                f"DiT {name} must be at most {_number(DIT_LIMITS[name])}, got "
                f"{_number(value)}; the card or settings are wrong"
            )
    if min(in_channels, depth, text_dim, max_frames, patch_size) < 1:
        raise InvalidArgumentError(
            "DiT in_channels, depth, text_dim, max_frames and patch_size must be positive"
        )
    if heads < 1 or width < 1 or width % heads:
        raise InvalidArgumentError(f"DiT width {width} must be divisible by heads {heads}")
    if time_features % 2 or time_features < 2:
        raise InvalidArgumentError(f"DiT time_features must be even, got {time_features}")
    if not 0.0 <= rotary_fraction <= 1.0:
        raise InvalidArgumentError(f"DiT rotary_fraction must be in [0, 1], got {rotary_fraction}")
    if not mlp_ratio > 0:
        raise InvalidArgumentError(f"DiT mlp_ratio must be positive, got {mlp_ratio}")


class DiT(nn.Module, TeacherFeatures, HasLastLayer, HasMaxFrames, ExpandsParams, CountsParameters):
    """The SoundCTM diffusion transformer (raw network ``F``; method.md §3, §6).

    ``forward(x [B, C, T], t_noise [B], s_noise [B] | None, omega [B] | None, cond)
    -> [B, C, T]``. ``t_noise``/``s_noise`` are ``c_noise`` values (``ln(sigma)/4``); ``omega`` is
    the guidance scale ``w``. A teacher (``student=False``) ignores ``s_noise`` and ``omega``. A
    student given ``s_noise=None`` uses ``s = t`` (the denoiser ``g(x, t, t)``); ``omega=None``
    leaves out the guidance embedding.

    Every constructor argument is plain JSON (the checkpoint card stores them); presets:
    :func:`dit_config`. The time token of a student is
    ``emb(t) + student_gate * (emb(s) + sinusoid(1000 omega))`` with ``student_gate`` a
    zero-initialised per-channel vector, so a student initialised from its teacher reproduces it
    exactly (see the module docstring). ``patch_size = p`` makes each token ``p`` consecutive
    frames (:func:`patchify`); ``features`` then have ``ceil(T / p)`` positions.
    """

    #: LoRA's default layers (``--lora-rank``): the attention and feed-forward linears.
    lora_targets = (
        "blocks.*.self_attn.qkv",
        "blocks.*.self_attn.out",
        "blocks.*.cross_attn.q",
        "blocks.*.cross_attn.kv",
        "blocks.*.cross_attn.out",
        "blocks.*.mlp.inp",
        "blocks.*.mlp.out",
    )

    @staticmethod
    def expand_params(params: dict[str, Any]) -> dict[str, Any]:
        """Card parameters from user parameters: ``{"preset": "small", "student": true}``
        becomes the preset's explicit arguments, so checkpoints never depend on preset tables."""
        params = dict(params)
        preset = params.pop("preset", None)
        return dit_config(preset, **params) if preset is not None else params

    @staticmethod
    def parameter_count(params: dict[str, Any]) -> int:
        """The number of values in the state dict of ``DiT(**params)``, computed without
        building it (so a checkpoint's card can be checked against its weights file first).

        Raises the constructor's :class:`InvalidArgumentError` for a card out of bounds, and
        ``TypeError`` for a parameter the constructor does not take.
        """
        unknown = set(params) - set(_DIT_DEFAULTS)
        if unknown:
            raise TypeError(f"DiT got unexpected parameters {sorted(unknown)}")
        p = {**_DIT_DEFAULTS, **params}
        _check_config(**{k: v for k, v in p.items() if k not in {"student", "dropout"}})
        w, tf, td = int(p["width"]), int(p["time_features"]), int(p["text_dim"])
        c = int(p["in_channels"]) * int(p["patch_size"])
        hidden = swiglu_hidden(w, float(p["mlp_ratio"]))
        block = 3 * 2 * w + 8 * w * w + 3 * w * hidden  # 3 LayerNorms, 2 attentions, SwiGLU
        return (
            tf // 2  # time_frequencies
            + (tf * w + w)
            + (w * w + w)  # time_mlp
            + (w if p["student"] else 0)  # student_gate
            + (td * w + w)
            + (w * w + w)  # text_in
            + (c * w + w)  # proj_in
            + int(p["depth"]) * block
            + 2 * w  # norm_out
            + (w * c + c)  # proj_out
        )

    def __init__(
        self,
        in_channels: int = 64,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        text_dim: int = 384,
        student: bool = False,
        max_frames: int = 1024,
        rotary_fraction: float = 0.5,
        mlp_ratio: float = 4.0,
        time_features: int = 256,
        dropout: float = 0.0,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        _check_config(
            in_channels=in_channels,
            width=width,
            depth=depth,
            heads=heads,
            text_dim=text_dim,
            max_frames=max_frames,
            rotary_fraction=rotary_fraction,
            mlp_ratio=mlp_ratio,
            time_features=time_features,
            patch_size=patch_size,
        )
        self.config = {
            "in_channels": in_channels,
            "width": width,
            "depth": depth,
            "heads": heads,
            "text_dim": text_dim,
            "student": bool(student),
            "max_frames": max_frames,
            "rotary_fraction": rotary_fraction,
            "mlp_ratio": mlp_ratio,
            "time_features": time_features,
            "dropout": dropout,
        }
        if patch_size != 1:  # cards of unpatched models stay as they were
            self.config["patch_size"] = patch_size
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        self.text_dim = text_dim
        self.student = bool(student)
        self.max_frames = max_frames
        self.patch_size = patch_size
        head_dim = width // heads
        self.rotary_dim = 2 * int(head_dim * rotary_fraction / 2)

        generator = torch.Generator().manual_seed(FOURIER_SEED)
        freqs = torch.randn(time_features // 2, generator=generator, device="cpu")
        self.register_buffer("time_frequencies", freqs)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_features, width), nn.SiLU(), nn.Linear(width, width)
        )
        if self.student:
            self.student_gate = nn.Parameter(torch.zeros(width))
        self.text_in = nn.Sequential(nn.Linear(text_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.proj_in = nn.Linear(in_channels * patch_size, width)
        hidden = swiglu_hidden(width, mlp_ratio)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, hidden, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = _zero_init(nn.Linear(width, in_channels * patch_size))

    @property
    def last_layer(self) -> Tensor:
        """The weight of the output projection (the ``W`` of the adaptive DSM weight, §4.7)."""
        return self.proj_out.weight

    # ------------------------------------------------------------------ conditioning
    def time_embedding(self, c_noise: Tensor) -> Tensor:
        """Fourier features of ``c_noise`` followed by the MLP: [B] -> [B, width]."""
        feats = fourier_features(c_noise, self.time_frequencies)
        return self.time_mlp(feats.to(self.proj_in.weight.dtype))

    def time_token(self, t_noise: Tensor, s_noise: Tensor | None, omega: Tensor | None) -> Tensor:
        """The conditioning token [B, width]: ``emb(t)`` for a teacher; a student adds
        ``student_gate * (emb(s) + sinusoid(1000 omega))`` (official DiT: the same embedding for
        t and s, summed; omega as a parameter-free sinusoid of ``1000 w``)."""
        token = self.time_embedding(t_noise)
        if not self.student:
            return token
        extra = self.time_embedding(t_noise if s_noise is None else s_noise)
        if omega is not None:
            extra = extra + sinusoidal_embedding(1000 * omega, self.width).to(extra.dtype)
        return token + self.student_gate * extra

    # ------------------------------------------------------------------ network
    def _check(self, x: Tensor, t_noise: Tensor, cond: Conditioning) -> None:
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise InvalidArgumentError(
                f"DiT expects latents [B, {self.in_channels}, T], got {tuple(x.shape)}; "
                "check that the backbone's in_channels match the autoencoder"
            )
        frames = x.shape[2]
        if frames > self.max_frames:
            raise InvalidArgumentError(
                f"the latent has {frames} frames but this DiT supports at most "
                f"{self.max_frames}; generate a shorter clip or build it with a larger max_frames"
            )
        if frames < 1:
            raise InvalidArgumentError("DiT needs at least one latent frame")
        check_conditioning("DiT", x, t_noise, cond, self.text_dim, "text_dim")

    def _run(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
        features: list[Tensor] | None = None,
    ) -> Tensor:
        """The trunk: token sequence [B, 1 + T, width] after the last block."""
        self._check(x, t_noise, cond)
        frames = self.proj_in(patchify(x, self.patch_size))  # [B, ceil(T / p), width]
        token = self.time_token(t_noise, s_noise, omega).to(frames.dtype)
        h = torch.cat([token[:, None, :], frames], dim=1)
        positions = torch.arange(h.shape[1], device=h.device)
        cos, sin = rotary_angles(positions, self.rotary_dim)
        context = self.text_in(cond.tokens.to(h.dtype))
        mask = cond.mask.to(device=h.device, dtype=torch.bool)
        for block in self.blocks:
            h = block(h, cos, sin, context, mask)
            if features is not None:
                features.append(h[:, 1:])
        return h

    def forward(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
    ) -> Tensor:
        """The raw network output ``F`` [B, C, T] (the engine applies EDM preconditioning)."""
        h = self._run(x, t_noise, s_noise, omega, cond)
        return unpatchify(self.proj_out(self.norm_out(h[:, 1:])), self.patch_size, x.shape[2])

    def features(
        self,
        x: Tensor,
        t_noise: Tensor,
        cond: Conditioning,
        s_noise: Tensor | None = None,
        omega: Tensor | None = None,
    ) -> list[Tensor]:
        """Hidden states after each block, [B, ceil(T / p), width] each (time token removed): the
        feature maps of the teacher-feature distance (method.md §4.5)."""
        feats: list[Tensor] = []
        self._run(x, t_noise, s_noise, omega, cond, features=feats)
        return feats


#: The constructor defaults of :class:`DiT` (for :meth:`DiT.parameter_count`).
_DIT_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(DiT.__init__).parameters.items()
    if name != "self"
}
