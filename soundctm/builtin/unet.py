"""The ``unet2d`` backbone: diffusers' ``UNet2DConditionModel`` as the raw network ``F``.

This is the network of TANGO and of the official SoundCTM-UNet (16 kHz, docs/official-models.md
section A). A latent ``[B, C, T, M]`` is an image whose height is time and whose width is mel
bins; the token states of the text encoder enter through cross-attention, with their mask.

Teacher (method.md §2): ``F(c_in x; c_noise(t), text)`` with ``c_noise(t) = ln(t) / 4`` as the
UNet's timestep.

Student (method.md §3): the same UNet plus one more timestep embedding for the target time
``s``. It is diffusers' ``class_embed_type="timestep"``: the class label ``c_noise(s)`` goes
through the same sinusoidal projection as the timestep and then through its own two-layer MLP
(the official ``s_time_embedding``). The guidance input ``omega`` is embedded without parameters,

``E(omega) = [sin(1000 omega f_j), cos(1000 omega f_j)]``, ``f_j = exp(-j ln(10000) / (h - 1))``,
``j = 0 .. h - 1``, ``h`` = half the time-embedding width,

and added to the time embedding; no activation follows the sum (the official configuration has
none). Any diffusers UNet configuration works; :data:`OFFICIAL_CONFIG` is the released one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import TimestepEmbedding
from torch import Tensor, nn

from soundctm.engine.conditioning import Conditioning
from soundctm.errors import InvalidArgumentError

#: The UNet of the official SoundCTM-UNet (its configs/diffusion_model_config.json). diffusers'
#: old naming: ``attention_head_dim`` holds NUMBERS OF HEADS here (head width 64).
OFFICIAL_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "out_channels": 8,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "use_linear_projection": True,
    "upcast_attention": True,
}

#: Configuration keys a card may not set: the student's s embedding is ours to configure, and a
#: conditioning projection of the timestep would take the place of the omega embedding.
RESERVED = ("class_embed_type", "num_class_embeds", "time_cond_proj_dim")


def guidance_embedding(omega: Tensor, width: int) -> Tensor:
    """``E(omega)`` of the module docstring: ``[B] -> [B, width]`` (sine half first), float32."""
    if width % 2:
        raise InvalidArgumentError(f"the omega embedding needs an even width, got {width}")
    half = width // 2
    j = torch.arange(half, dtype=torch.float32, device=omega.device)
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * j)
    args = (omega.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class OmegaTimestepEmbedding(TimestepEmbedding):
    """diffusers' ``TimestepEmbedding`` whose ``condition`` argument is added to its output,
    so the omega embedding ``E(omega)`` enters as the UNet's ``timestep_cond``; same parameters
    and names as the plain embedding (a student's time embedding is switched to this class)."""

    def forward(self, sample: Tensor, condition: Tensor | None = None) -> Tensor:  # type: ignore[override]
        out = super().forward(sample, None)
        return out if condition is None else out + condition.to(out.dtype)


def unet_config(config: dict[str, Any] | None, student: bool) -> dict[str, Any]:
    """The diffusers configuration: :data:`OFFICIAL_CONFIG` updated by ``config``; a student
    gets ``class_embed_type="timestep"`` (its s embedding)."""
    merged = {**OFFICIAL_CONFIG, **(config or {})}
    for key in RESERVED:
        if merged.get(key) is not None:
            raise InvalidArgumentError(f"the unet2d config may not set {key!r}; soundctm sets it")
        merged.pop(key, None)
    merged.pop("_class_name", None)
    merged.pop("_diffusers_version", None)
    merged.pop("sample_size", None)
    if student:
        merged["class_embed_type"] = "timestep"
    return merged


class UNet2DBackbone(nn.Module):
    """diffusers' ``UNet2DConditionModel`` as a soundctm backbone (see the module docstring).

    ``config`` overrides keys of :data:`OFFICIAL_CONFIG` (any diffusers UNet configuration);
    ``student`` adds the s embedding and the omega input. The weights are the UNet's under
    ``unet.``, with diffusers' names (the student's s embedding is ``unet.class_embedding.``).
    """

    def __init__(self, config: dict[str, Any] | None = None, student: bool = False) -> None:
        super().__init__()
        cfg = unet_config(config, student)
        try:
            self.unet = UNet2DConditionModel(**cfg)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"invalid unet2d config: {exc}") from exc
        self.student = bool(student)
        self.time_width = int(self.unet.time_embedding.linear_2.out_features)
        self.levels = len(cfg["block_out_channels"]) - 1  # downsamplings
        if self.student:
            if type(self.unet.time_embedding) is not TimestepEmbedding:
                raise InvalidArgumentError("the unet2d student needs a plain timestep embedding")
            self.unet.time_embedding.__class__ = OmegaTimestepEmbedding

    #: LoRA's default layers (``--lora-rank``): the transformer blocks' attention projections
    #: and feed-forward linears (the layers diffusers' own PEFT LoRA adapts).
    lora_targets = (
        "unet.*.transformer_blocks.*.attn1.to_[qkv]",
        "unet.*.transformer_blocks.*.attn1.to_out.0",
        "unet.*.transformer_blocks.*.attn2.to_[qkv]",
        "unet.*.transformer_blocks.*.attn2.to_out.0",
        "unet.*.transformer_blocks.*.ff.net.0.proj",
        "unet.*.transformer_blocks.*.ff.net.2",
    )

    @staticmethod
    def expand_params(params: dict[str, Any]) -> dict[str, Any]:
        """Cards hold the full configuration, so a card names every size it was built with."""
        return {**params, "config": unet_config(params.get("config"), False)}

    @property
    def last_layer(self) -> Tensor:
        """The output convolution's weight (the adaptive DSM weight, method.md §4.7)."""
        return self.unet.conv_out.weight

    def _check(self, x: Tensor) -> None:
        step = 2**self.levels
        if x.ndim != 4 or x.shape[-2] % step or x.shape[-1] % step:
            raise InvalidArgumentError(
                f"the unet2d backbone takes latents [B, C, T, M] with T and M multiples of {step}, "
                f"got {tuple(x.shape)}"
            )

    def forward(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
    ) -> Tensor:
        """``F``: the teacher ignores ``s_noise`` and ``omega``; a student needs ``s_noise``
        (``omega`` ``None`` means no guidance input, as ``E`` of 0 would still be a signal)."""
        self._check(x)
        extra: dict[str, Tensor] = {}
        if self.student:
            s = t_noise if s_noise is None else s_noise
            extra["class_labels"] = s
            if omega is not None:
                extra["timestep_cond"] = guidance_embedding(omega, self.time_width).to(x.dtype)
        return self.unet(
            x,
            t_noise,
            encoder_hidden_states=cond.tokens.to(x.dtype),
            encoder_attention_mask=cond.mask,
            return_dict=False,
            **extra,
        )[0]

    def features(
        self,
        x: Tensor,
        t_noise: Tensor,
        cond: Conditioning,
        s_noise: Tensor | None = None,
        omega: Tensor | None = None,
    ) -> list[Tensor]:
        """The 9 feature maps of the teacher-feature distance (method.md §4.5): the outputs of
        the down blocks, the middle block and the up blocks, channel-last ``[B, T, M, C]`` (the
        distance normalises over the last axis, i.e. over channels as the official)."""
        maps: list[Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            first = output[0] if isinstance(output, tuple) else output
            maps.append(first.movedim(1, -1))

        blocks = [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]
        hooks = [b.register_forward_hook(keep) for b in blocks if b is not None]
        try:
            self.forward(x, t_noise, s_noise, omega, cond)
        finally:
            for h in hooks:
                h.remove()
        return maps


__all__ = ["OFFICIAL_CONFIG", "UNet2DBackbone", "guidance_embedding", "unet_config"]
