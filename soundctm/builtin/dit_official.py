"""The official SoundCTM-DiT network (44.1 kHz, ``koichisaito/soundctm_dit``), weight for weight.

Our own :class:`soundctm.builtin.dit.DiT` departs from the released network on purpose (a
zero-initialised student gate, no residual 1x1 convolutions around the transformer, a final
LayerNorm), so the released weights need a network of their own. :class:`OfficialDiT` is that
network: its ``state_dict()`` names are exactly the ``dit.`` names of the released EMA file with
the prefix removed, so ``load_state_dict(strict=True)`` takes them as they are.

Forward (the raw network ``F``; EDM/CTM preconditioning lives in :mod:`soundctm.engine.ctm`,
sigma_data 0.5 for the official model), with ``c = c_noise = ln(sigma)/4``:

* ``x [B, C, T] -> x + preprocess_conv(x)`` (1x1 convolution, no bias), frames as tokens
  (``patch_size`` p > 1 groups p frames channel-major, as the official rearrange
  ``b (t p) c -> b t (c p)``), ``transformer.project_in`` (no bias);
* one global token PREPENDED to the sequence: ``emb(t) + emb(s) + E(omega)`` for a student,
  ``emb(t)`` for a teacher, where ``emb(c) = to_timestep_embed([cos(2 pi c W), sin(2 pi c W)])``
  (learned Fourier features ``W`` [F/2, 1], Linear-SiLU-Linear with bias) is the SAME module for
  t and s, and ``E`` is the parameter-free omega sinusoid of the UNet
  (:func:`soundctm.builtin.unet.guidance_embedding`, width ``embed_dim``);
* text tokens ``cond.tokens [B, L, cond_token_dim]`` (the official model: ONE CLAP token) through
  ``to_cond_embed`` (Linear-SiLU-Linear, no bias; width ``cond_token_dim`` since the official
  configs set ``project_cond_tokens`` false);
* ``depth`` blocks, each ``h += SelfAttn(LN(h))``, ``h += CrossAttn(LN(h), text)``,
  ``h += SwiGLU(LN(h))``; LayerNorm with a learned gain ``gamma`` and a zero bias BUFFER
  ``beta`` (eps 1e-5);
* self-attention: fused ``to_qkv`` (q, k, v in that order), heads of ``head_dim = embed_dim /
  num_heads``; rotary embedding (base 10000, half-split "rotate-half" pairs) on the FIRST
  ``max(head_dim // 2, 32)`` dims of every head of q and k, positions ``0 .. T`` over the whole
  sequence including the prepended token; the frequencies are the persistent buffer
  ``transformer.rotary_pos_emb.inv_freq``;
* cross-attention: ``to_q`` (embed -> embed) and ``to_kv`` (context -> 2 x context), so the keys
  and values have ``cond_dim / head_dim`` heads, each repeated ``num_heads / kv_heads`` times
  INTERLEAVED (``repeat_interleave``: kv head j serves query heads ``j r .. j r + r - 1``);
* SwiGLU: ``ff.ff.0.proj`` (embed -> 2 x 4 embed, with bias) split into ``value, gate``
  (that order), ``value * silu(gate)``, then ``ff.ff.2`` (4 embed -> embed, with bias);
* ``transformer.project_out`` (no bias), drop the prepended token, back to ``[B, C, T]``,
  ``out + postprocess_conv(out)``.

Facts settled in the official code (github koichi-saito-sony/soundctm_dit_iclr):
``sa_edm/stable_audio_tools/models/dit.py`` (the student ``CTMDiffusionTransformer``: the global
token sum, the residual convs, the commented-out global embedding),
``sa_edm/stable_audio_tools/models/dit_teacher.py`` (the teacher: ``emb(t)`` only, and an unused
``to_global_embed`` when ``global_cond_dim > 0``), ``sa_edm/stable_audio_tools/models/
transformer.py`` (rotary, LayerNorm buffers, attention, SwiGLU, block order),
``sa_edm/stable_audio_tools/models/blocks.py`` (Fourier features), ``sa_edm/models_edm.py``
(``c_noise = ln(sigma)/4`` for t and s, the omega embedding, one CLAP token with an all-True
mask), ``ctm/karras_diffusion.py`` (the adaptive weight's layer), ``configs/dit_config/
dit_v{1,2}.json``.

A head smaller than 32 has no official meaning (the rotary width ``max(head_dim // 2, 32)``
would exceed the head and the official code fails), so :class:`OfficialDiT` refuses it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.builtin.dit import check_conditioning
from soundctm.builtin.dit_official_blocks import (
    FF_MULT,
    FourierTimeFeatures,
    OfficialTransformer,
    rotary_dim,
)
from soundctm.builtin.unet import guidance_embedding
from soundctm.engine.components import (
    CountsParameters,
    ExpandsParams,
    HasLastLayer,
    HasMaxFrames,
    TeacherFeatures,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.errors import InvalidArgumentError

#: Width of the learned Fourier features of c_noise (hard-coded 256 in the official code).
TIMESTEP_FEATURES = 256
#: SwiGLU inner width as a multiple of embed_dim (the official FeedForward's ``mult``).

#: The official configurations (``configs/dit_config/dit_v1.json`` / ``dit_v2.json``).
OFFICIAL_DIT_PRESETS: dict[str, dict[str, Any]] = {
    # ICLR'25: CLAP text through its projection MLP, 512-d.
    "v1": {
        "io_channels": 64,
        "embed_dim": 1536,
        "depth": 24,
        "num_heads": 24,
        "cond_token_dim": 512,
        "global_cond_dim": 1536,
        "project_cond_tokens": False,
        "patch_size": 1,
    },
    # RoBERTa pooler output, no projection, 768-d.
    "v2": {
        "io_channels": 64,
        "embed_dim": 1536,
        "depth": 24,
        "num_heads": 24,
        "cond_token_dim": 768,
        "global_cond_dim": 1536,
        "project_cond_tokens": False,
        "patch_size": 1,
    },
}

#: Upper bounds checked before anything is built (an absurd card fails in microseconds).
OFFICIAL_DIT_LIMITS: dict[str, int] = {
    "io_channels": 1 << 16,
    "embed_dim": 1 << 16,
    "depth": 1024,
    "num_heads": 1 << 12,
    "cond_token_dim": 1 << 16,
    "global_cond_dim": 1 << 16,
    "patch_size": 1024,
    "timestep_features": 1 << 16,
}


def _check_config(
    *,
    io_channels: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    cond_token_dim: int,
    global_cond_dim: int,
    project_cond_tokens: bool,
    patch_size: int,
    timestep_features: int,
) -> None:
    """Refuse arguments that are out of bounds or that the official network cannot run."""
    sizes = {
        "io_channels": io_channels,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "cond_token_dim": cond_token_dim,
        "global_cond_dim": global_cond_dim,
        "patch_size": patch_size,
        "timestep_features": timestep_features,
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgumentError(f"official DiT {name} must be an integer, got {value!r}")
        if value > OFFICIAL_DIT_LIMITS[name]:
            raise InvalidArgumentError(
                f"official DiT {name} must be at most {OFFICIAL_DIT_LIMITS[name]:,}, got "
                f"{value:,}; the card or settings are wrong"
            )
    if min(io_channels, embed_dim, depth, num_heads, cond_token_dim, patch_size) < 1:
        raise InvalidArgumentError(
            "official DiT io_channels, embed_dim, depth, num_heads, cond_token_dim and "
            "patch_size must be positive"
        )
    if global_cond_dim < 0:
        raise InvalidArgumentError("official DiT global_cond_dim must be >= 0")
    if embed_dim % num_heads:
        raise InvalidArgumentError(
            f"official DiT embed_dim {embed_dim} must be divisible by num_heads {num_heads}"
        )
    if embed_dim % 2:
        raise InvalidArgumentError(f"official DiT embed_dim must be even, got {embed_dim}")
    if timestep_features < 2 or timestep_features % 2:
        raise InvalidArgumentError(
            f"official DiT timestep_features must be even and positive, got {timestep_features}"
        )
    head_dim = embed_dim // num_heads
    if rotary_dim(head_dim) > head_dim:
        raise InvalidArgumentError(
            f"official DiT head_dim {head_dim} (embed_dim / num_heads) must be at least 32: the "
            f"rotary embedding covers max(head_dim // 2, 32) = {rotary_dim(head_dim)} dims of "
            "each head"
        )
    context = embed_dim if project_cond_tokens else cond_token_dim
    if context % head_dim or num_heads % (context // head_dim):
        raise InvalidArgumentError(
            f"official DiT cross-attention context width {context} must be a multiple of "
            f"head_dim {head_dim} whose head count divides num_heads {num_heads}"
        )


class OfficialDiT(
    nn.Module, TeacherFeatures, HasLastLayer, HasMaxFrames, ExpandsParams, CountsParameters
):
    """The released SoundCTM-DiT network (module docstring), a teacher or a CTM student.

    ``forward(x [B, io_channels, T], t_noise [B], s_noise [B] | None, omega [B] | None, cond)
    -> [B, io_channels, T]`` with ``t_noise = ln(t)/4`` (the engine's ``c_noise``). A student
    given ``s_noise=None`` uses ``s = t``; ``omega=None`` leaves ``E(omega)`` out (the official
    student always receives both). A teacher ignores ``s_noise`` and ``omega``.

    Parameters (plain JSON, stored on the card; presets ``v1``/``v2`` via
    ``{"preset": "v1"}``): ``io_channels`` (latent channels, 64), ``embed_dim`` (1536),
    ``depth`` (24), ``num_heads`` (24; not readable from shapes), ``cond_token_dim`` (512 for v1,
    768 for v2), ``global_cond_dim`` (1536: only a teacher holds the official, unused
    ``to_global_embed`` of that width; 0 leaves it out), ``project_cond_tokens`` (false
    officially: the text keeps its width; true projects it to ``embed_dim``), ``patch_size``
    (1), ``timestep_features`` (256), ``student``, ``max_frames`` (``None``: no limit; the
    rotary embedding has none, the official model saw 432 frames).

    ``last_layer`` is ``postprocess_conv.weight``: the layer the official CTM training uses for
    the adaptive DSM weight (``ctm/karras_diffusion.py``), and the one next to the output.
    """

    #: LoRA's default layers (``--lora-rank``): the attention and SwiGLU feed-forward linears.
    lora_targets = (
        "transformer.layers.*.self_attn.to_qkv",
        "transformer.layers.*.self_attn.to_out",
        "transformer.layers.*.cross_attn.to_q",
        "transformer.layers.*.cross_attn.to_kv",
        "transformer.layers.*.cross_attn.to_out",
        "transformer.layers.*.ff.ff.0.proj",
        "transformer.layers.*.ff.ff.2",
    )

    @staticmethod
    def expand_params(params: dict[str, Any]) -> dict[str, Any]:
        """``{"preset": "v1", "student": true}`` becomes the preset's explicit arguments."""
        params = dict(params)
        preset = params.pop("preset", None)
        if preset is None:
            return params
        if preset not in OFFICIAL_DIT_PRESETS:
            raise InvalidArgumentError(
                f"unknown official DiT preset {preset!r}; choose one of "
                f"{', '.join(sorted(OFFICIAL_DIT_PRESETS))}"
            )
        return {**OFFICIAL_DIT_PRESETS[preset], **params}

    @staticmethod
    def parameter_count(params: dict[str, Any]) -> int:
        """The number of values in ``OfficialDiT(**params).state_dict()`` (buffers included),
        by formula, without building it. Raises ``TypeError`` for an unknown parameter and
        :class:`InvalidArgumentError` for a card the constructor refuses."""
        unknown = set(params) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"OfficialDiT got unexpected parameters {sorted(unknown)}")
        p = {**_DEFAULTS, **params}
        _check_config(**{k: p[k] for k in _CHECKED})
        d, c = int(p["embed_dim"]), int(p["io_channels"])
        cin = c * int(p["patch_size"])
        head_dim = d // int(p["num_heads"])
        ctx = d if p["project_cond_tokens"] else int(p["cond_token_dim"])
        tf = int(p["timestep_features"])
        inner = FF_MULT * d
        block = (
            3 * 2 * d  # three norms: gamma + beta
            + 4 * d * d  # self-attention qkv + out
            + 2 * d * d  # cross q + out
            + 2 * ctx * ctx  # cross kv
            + (d * 2 * inner + 2 * inner)  # ff.0.proj
            + (inner * d + d)  # ff.2
        )
        total = (
            tf // 2
            + (tf * d + d)
            + (d * d + d)  # to_timestep_embed
            + int(p["cond_token_dim"]) * ctx
            + ctx * ctx  # to_cond_embed
            + 2 * c * c  # pre/post convs
            + 2 * cin * d  # project_in/out
            + rotary_dim(head_dim) // 2  # inv_freq
            + int(p["depth"]) * block
        )
        if not p["student"] and int(p["global_cond_dim"]) > 0:
            g = int(p["global_cond_dim"])
            total += g * d + d * d  # to_global_embed (teacher only)
        return total

    def __init__(
        self,
        io_channels: int = 64,
        embed_dim: int = 1536,
        depth: int = 24,
        num_heads: int = 24,
        cond_token_dim: int = 512,
        global_cond_dim: int = 1536,
        project_cond_tokens: bool = False,
        patch_size: int = 1,
        timestep_features: int = TIMESTEP_FEATURES,
        student: bool = False,
        max_frames: int | None = None,
    ) -> None:
        super().__init__()
        _check_config(
            io_channels=io_channels,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            cond_token_dim=cond_token_dim,
            global_cond_dim=global_cond_dim,
            project_cond_tokens=project_cond_tokens,
            patch_size=patch_size,
            timestep_features=timestep_features,
        )
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise InvalidArgumentError(
                f"official DiT max_frames must be a positive integer or null, got {max_frames!r}"
            )
        self.config = {
            "io_channels": io_channels,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "cond_token_dim": cond_token_dim,
            "global_cond_dim": global_cond_dim,
            "project_cond_tokens": bool(project_cond_tokens),
            "patch_size": patch_size,
            "timestep_features": timestep_features,
            "student": bool(student),
            "max_frames": max_frames,
        }
        self.io_channels = io_channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.cond_token_dim = cond_token_dim
        self.patch_size = patch_size
        self.student = bool(student)
        self.max_frames = max_frames
        head_dim = embed_dim // num_heads
        context = embed_dim if project_cond_tokens else cond_token_dim

        self.timestep_features = FourierTimeFeatures(timestep_features)
        self.to_timestep_embed = nn.Sequential(
            nn.Linear(timestep_features, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.to_cond_embed = nn.Sequential(
            nn.Linear(cond_token_dim, context, bias=False),
            nn.SiLU(),
            nn.Linear(context, context, bias=False),
        )
        if not self.student and global_cond_dim > 0:
            # The official teacher builds it but never uses it (no global conditioning).
            self.to_global_embed = nn.Sequential(
                nn.Linear(global_cond_dim, embed_dim, bias=False),
                nn.SiLU(),
                nn.Linear(embed_dim, embed_dim, bias=False),
            )
        self.transformer = OfficialTransformer(
            io_channels * patch_size, embed_dim, depth, head_dim, context
        )
        self.preprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)
        nn.init.zeros_(self.preprocess_conv.weight)
        nn.init.zeros_(self.postprocess_conv.weight)

    @property
    def last_layer(self) -> Tensor:
        """``postprocess_conv.weight`` (the official adaptive-weight layer)."""
        return self.postprocess_conv.weight

    # ------------------------------------------------------------------ conditioning
    def time_embedding(self, c_noise: Tensor) -> Tensor:
        """``to_timestep_embed(FourierFeatures(c_noise))``: [B] -> [B, embed_dim]."""
        return self.to_timestep_embed(self.timestep_features(c_noise))

    def global_token(self, t_noise: Tensor, s_noise: Tensor | None, omega: Tensor | None) -> Tensor:
        """The prepended token [B, embed_dim]: ``emb(t)`` for a teacher,
        ``emb(t) + emb(s) + E(omega)`` for a student."""
        token = self.time_embedding(t_noise)
        if not self.student:
            return token
        token = token + self.time_embedding(t_noise if s_noise is None else s_noise)
        if omega is not None:
            token = token + guidance_embedding(omega, self.embed_dim).to(token.dtype)
        return token

    # ------------------------------------------------------------------ network
    def _check(self, x: Tensor, t_noise: Tensor, cond: Conditioning) -> None:
        if x.ndim != 3 or x.shape[1] != self.io_channels:
            raise InvalidArgumentError(
                f"official DiT expects latents [B, {self.io_channels}, T], got {tuple(x.shape)}"
            )
        frames = x.shape[2]
        if frames < 1 or frames % self.patch_size:
            raise InvalidArgumentError(
                f"official DiT needs a positive number of frames divisible by patch_size "
                f"{self.patch_size}, got {frames}"
            )
        if self.max_frames is not None and frames > self.max_frames:
            raise InvalidArgumentError(
                f"the latent has {frames} frames but this DiT accepts at most {self.max_frames}"
            )
        check_conditioning("official DiT", x, t_noise, cond, self.cond_token_dim, "cond_token_dim")

    def _trunk(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
        features: list[Tensor] | None = None,
    ) -> Tensor:
        """The sequence [B, 1 + T/p, embed_dim] after the last block."""
        self._check(x, t_noise, cond)
        x = x + self.preprocess_conv(x)
        b, c, t = x.shape
        p = self.patch_size
        # b c (t p) -> b t (c p): channel-major within a patch, as the official rearrange.
        tokens = x.reshape(b, c, t // p, p).permute(0, 2, 1, 3).reshape(b, t // p, c * p)
        tokens = self.transformer.project_in(tokens)
        token = self.global_token(t_noise, s_noise, omega).to(tokens.dtype)
        h = torch.cat([token[:, None, :], tokens], dim=1)
        cos, sin = self.transformer.rotary_pos_emb(h.shape[1])
        context = self.to_cond_embed(cond.tokens.to(h.dtype))
        mask = cond.mask.to(device=h.device, dtype=torch.bool)
        for block in self.transformer.layers:
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
        """The raw network output ``F`` [B, io_channels, T]."""
        h = self._trunk(x, t_noise, s_noise, omega, cond)
        out = self.transformer.project_out(h[:, 1:])  # [B, T/p, C p]
        b, n, _ = out.shape
        p = self.patch_size
        # b (c p) t -> b c (t p)
        out = out.reshape(b, n, self.io_channels, p).permute(0, 2, 1, 3)
        out = out.reshape(b, self.io_channels, n * p)
        return out + self.postprocess_conv(out)

    def features(
        self,
        x: Tensor,
        t_noise: Tensor,
        cond: Conditioning,
        s_noise: Tensor | None = None,
        omega: Tensor | None = None,
    ) -> list[Tensor]:
        """The hidden state after each block, channel-last ``[B, T/p, embed_dim]`` (prepended
        token removed), for the teacher-feature distance (method.md §4.5).

        These are the plain per-block states of the forward pass. The official
        ``layer_wise_feature`` differs: its loop never updates the hidden state, so EVERY block
        is applied to the block-0 input (block ``i``'s feature is ``block_i(h_0)``), it keeps
        the prepended token, and its loss (``ctm/karras_diffusion.py``, ``normalize_tensor``)
        divides each feature by its L2 norm over the token axis (dim 1 of ``[B, 1 + T, C]``)
        before the squared distance. We keep the plain states; a caller who wants the official
        distance normalises the same way.
        """
        feats: list[Tensor] = []
        self._trunk(x, t_noise, s_noise, omega, cond, features=feats)
        return feats


#: The constructor defaults (for :meth:`OfficialDiT.parameter_count`).
_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(OfficialDiT.__init__).parameters.items()
    if name != "self"
}
_CHECKED = (
    "io_channels",
    "embed_dim",
    "depth",
    "num_heads",
    "cond_token_dim",
    "global_cond_dim",
    "project_cond_tokens",
    "patch_size",
    "timestep_features",
)
