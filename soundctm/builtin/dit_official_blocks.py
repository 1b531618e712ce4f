"""The layers of the official SoundCTM-DiT network (:mod:`soundctm.builtin.dit_official`):
gain-only LayerNorm, learned Fourier time features, rotary embedding on the first
``max(head_dim / 2, 32)`` dims of each head, self- and cross-attention (key/value heads repeated
interleaved), SwiGLU, the block and the transformer. Facts: docs/official-models.md, section B.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ROTARY_BASE = 10000.0
FF_MULT = 4


def rotary_dim(head_dim: int) -> int:
    """The number of rotated dims of each head: ``max(head_dim // 2, 32)`` (official)."""
    return max(head_dim // 2, 32)


# ---------------------------------------------------------------------------- maths


def rotate_half_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x [..., N, D]`` (half-split pairs, in
    float32); the rest pass unchanged. Pair ``i`` is dims ``(i, i + rot/2)``."""
    rot = cos.shape[-1]
    dtype = x.dtype
    head, tail = x[..., :rot].float(), x[..., rot:]
    first, second = head.chunk(2, dim=-1)
    turned = torch.cat([-second, first], dim=-1)
    head = head * cos + turned * sin
    return torch.cat([head.to(dtype), tail], dim=-1)


# ---------------------------------------------------------------------------- modules


class GainLayerNorm(nn.Module):
    """LayerNorm over the last axis with a learned gain ``gamma`` and a zero bias ``beta`` kept
    as a persistent buffer (so both appear in the state dict, as in the released file)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weight=self.gamma, bias=self.beta)


class FourierTimeFeatures(nn.Module):
    """Learned Fourier features ``[cos(2 pi c W), sin(2 pi c W)]`` of a scalar per sample:
    ``[B] -> [B, features]`` (``weight`` [features/2, 1])."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features // 2, 1))

    def forward(self, values: Tensor) -> Tensor:
        angles = 2 * math.pi * values[:, None].to(self.weight.dtype) @ self.weight.T
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RotaryFrequencies(nn.Module):
    """The rotary frequencies ``base^(-2i/dim)`` as the persistent buffer ``inv_freq``."""

    def __init__(self, dim: int, base: float = ROTARY_BASE) -> None:
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv)

    def forward(self, length: int) -> tuple[Tensor, Tensor]:
        """``cos`` and ``sin`` [length, dim] of positions ``0 .. length - 1`` (float32)."""
        positions = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.float()[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def _heads(x: Tensor, heads: int) -> Tensor:
    b, n, w = x.shape
    return x.view(b, n, heads, w // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class OfficialSelfAttention(nn.Module):
    """Fused-qkv self-attention with rotary embedding on the first dims of every head."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = (_heads(p, self.heads) for p in self.to_qkv(h).chunk(3, dim=-1))
        q, k = rotate_half_rotary(q, cos, sin), rotate_half_rotary(k, cos, sin)
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class OfficialCrossAttention(nn.Module):
    """Attention to the context with ``context_dim / head_dim`` key/value heads, each serving
    ``num_heads / kv_heads`` consecutive query heads (``repeat_interleave``).

    A sample whose context mask is all False attends uniformly to every context token (what
    the official masked softmax computes), never NaN."""

    def __init__(self, dim: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.kv_heads = context_dim // head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * context_dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, h: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        q = _heads(self.to_q(h), self.heads)
        k, v = (_heads(p, self.kv_heads) for p in self.to_kv(context).chunk(2, dim=-1))
        if self.kv_heads != self.heads:
            repeat = self.heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        attend = (mask | ~mask.any(dim=-1, keepdim=True))[:, None, None, :]
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=attend)))


class GatedProjection(nn.Module):
    """``value * silu(gate)`` with ``value, gate = proj(h).chunk(2)`` (value first)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, h: Tensor) -> Tensor:
        value, gate = self.proj(h).chunk(2, dim=-1)
        return value * F.silu(gate)


class OfficialFeedForward(nn.Module):
    """SwiGLU: ``ff = [GatedProjection, Identity, Linear]`` (the released ``ff.ff.{0,2}``)."""

    def __init__(self, dim: int, mult: int = FF_MULT) -> None:
        super().__init__()
        inner = dim * mult
        out = nn.Linear(inner, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.ff = nn.Sequential(GatedProjection(dim, inner), nn.Identity(), out)

    def forward(self, h: Tensor) -> Tensor:
        return self.ff(h)


class OfficialBlock(nn.Module):
    """Pre-LN rotary self-attention, LN cross-attention, LN SwiGLU; each residual."""

    def __init__(self, dim: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.pre_norm = GainLayerNorm(dim)
        self.self_attn = OfficialSelfAttention(dim, head_dim)
        self.cross_attend_norm = GainLayerNorm(dim)
        self.cross_attn = OfficialCrossAttention(dim, head_dim, context_dim)
        self.ff_norm = GainLayerNorm(dim)
        self.ff = OfficialFeedForward(dim)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        h = h + self.self_attn(self.pre_norm(h), cos, sin)
        h = h + self.cross_attn(self.cross_attend_norm(h), context, mask)
        return h + self.ff(self.ff_norm(h))


class OfficialTransformer(nn.Module):
    """``project_in``, the rotary frequencies, the blocks and ``project_out`` (the released
    ``transformer.*`` names)."""

    def __init__(self, dim_in: int, dim: int, depth: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.project_in = nn.Linear(dim_in, dim, bias=False)
        self.project_out = nn.Linear(dim, dim_in, bias=False)
        self.rotary_pos_emb = RotaryFrequencies(rotary_dim(head_dim))
        self.layers = nn.ModuleList(OfficialBlock(dim, head_dim, context_dim) for _ in range(depth))
