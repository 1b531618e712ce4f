"""Tiny random LAION-CLAP checkpoints in the released format, written by tests (never downloaded).

The key names follow laion_clap's own modules (``clap_module/htsat.py``: ``HTSAT_Swin_
Transformer`` with ``spectrogram_extractor``/``logmel_extractor`` (torchlibrosa), ``bn0``,
``patch_embed.{proj,norm,mel_conv2d,fusion_model}``, ``layers.i.blocks.j.{norm1, attn.{qkv, proj,
relative_position_bias_table, relative_position_index}, norm2, mlp.fc1, mlp.fc2, attn_mask}``,
``layers.i.downsample.{reduction,norm}``, ``norm``, ``tscam_conv``, ``head``;
``clap_module/model.py``: ``audio_branch``, ``text_branch`` (a transformers ``RobertaModel``),
``audio_projection`` / ``text_projection`` = Sequential(Linear, ReLU, Linear),
``audio_transform`` / ``text_transform`` (``MLPLayers``), ``logit_scale_a/t``), saved as
``{epoch, name, state_dict}`` with every key prefixed ``module.``, like
``630k-audioset-best.pt``. They are written from that description, not from soundctm's converter,
so loading them tests the converter.
"""

from __future__ import annotations

from pathlib import Path

import torch

EMBED = 8  # HTSAT-tiny: 96
DEPTHS = (2, 1, 1, 1)  # HTSAT-tiny: (2, 2, 6, 2); 2 blocks in stage 0 gives a shifted block
HEADS = (1, 1, 2, 2)  # HTSAT-tiny: (4, 8, 16, 32)
WINDOW = 8
JOINT = 16  # HTSAT-tiny: 512
TEXT_HIDDEN = 48  # RoBERTa-base: 768; 12 heads as RoBERTa-base (heads are not in the file)


def _relative_index(w: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def _bn(prefix: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g),
        f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
        f"{prefix}.running_mean": 0.5 * torch.randn(n, generator=g),
        f"{prefix}.running_var": 1 + torch.rand(n, generator=g),
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def _lin(prefix: str, out: int, inp: int, g: torch.Generator, bias: bool = True):
    d = {f"{prefix}.weight": torch.randn(out, inp, generator=g) / inp**0.5}
    if bias:
        d[f"{prefix}.bias"] = 0.1 * torch.randn(out, generator=g)
    return d


def _ln(prefix: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g),
        f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
    }


def htsat_state(
    g: torch.Generator,
    fusion: bool = False,
    embed: int = EMBED,
    depths: tuple[int, ...] = DEPTHS,
    heads: tuple[int, ...] = HEADS,
) -> dict[str, torch.Tensor]:
    """``audio_branch.*`` of an HTSAT (laion names); tiny by default, HTSAT-tiny with
    ``embed=96, depths=(2, 2, 6, 2), heads=(4, 8, 16, 32)``."""
    EMBED, DEPTHS, HEADS = embed, depths, heads
    s: dict[str, torch.Tensor] = {}
    a = "audio_branch."
    # torchlibrosa's frozen STFT / mel parameters travel in the checkpoint (sizes of the real one)
    s[f"{a}spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024, generator=g)
    s[f"{a}spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024, generator=g)
    s[f"{a}logmel_extractor.melW"] = torch.rand(513, 64, generator=g)
    s.update(_bn(f"{a}bn0", 64, g))
    s[f"{a}patch_embed.proj.weight"] = torch.randn(EMBED, 1, 4, 4, generator=g) / 4
    s[f"{a}patch_embed.proj.bias"] = 0.1 * torch.randn(EMBED, generator=g)
    s.update(_ln(f"{a}patch_embed.norm", EMBED, g))
    if fusion:
        s[f"{a}patch_embed.mel_conv2d.weight"] = torch.randn(EMBED, 1, 4, 12, generator=g) / 7
        s[f"{a}patch_embed.mel_conv2d.bias"] = 0.1 * torch.randn(EMBED, generator=g)
        inter = EMBED // 4  # AFF(channels, r=4)
        f = f"{a}patch_embed.fusion_model"
        for branch, (c1, b1, c2, b2) in (("local_att", (0, 1, 3, 4)), ("global_att", (1, 2, 4, 5))):
            s[f"{f}.{branch}.{c1}.weight"] = torch.randn(inter, EMBED, 1, 1, generator=g) / 3
            s[f"{f}.{branch}.{c1}.bias"] = 0.1 * torch.randn(inter, generator=g)
            s.update(_bn(f"{f}.{branch}.{b1}", inter, g))
            s[f"{f}.{branch}.{c2}.weight"] = torch.randn(EMBED, inter, 1, 1, generator=g) / 2
            s[f"{f}.{branch}.{c2}.bias"] = 0.1 * torch.randn(EMBED, generator=g)
            s.update(_bn(f"{f}.{branch}.{b2}", EMBED, g))
    resolution = 64
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS, strict=True)):
        dim = EMBED * 2**i
        w = min(WINDOW, resolution)
        for j in range(depth):
            b = f"{a}layers.{i}.blocks.{j}"
            s.update(_ln(f"{b}.norm1", dim, g))
            s[f"{b}.attn.relative_position_bias_table"] = 0.2 * torch.randn(
                (2 * w - 1) ** 2, heads, generator=g
            )
            s[f"{b}.attn.relative_position_index"] = _relative_index(w)
            s.update(_lin(f"{b}.attn.qkv", 3 * dim, dim, g))
            s.update(_lin(f"{b}.attn.proj", dim, dim, g))
            s.update(_ln(f"{b}.norm2", dim, g))
            s.update(_lin(f"{b}.mlp.fc1", 4 * dim, dim, g))
            s.update(_lin(f"{b}.mlp.fc2", dim, 4 * dim, g))
            if j % 2 == 1 and resolution > WINDOW:  # shifted windows carry their mask
                n = (resolution // w) ** 2
                s[f"{b}.attn_mask"] = torch.zeros(n, w * w, w * w)
        if i < len(DEPTHS) - 1:
            s[f"{a}layers.{i}.downsample.reduction.weight"] = (
                torch.randn(2 * dim, 4 * dim, generator=g) / (4 * dim) ** 0.5
            )
            s.update(_ln(f"{a}layers.{i}.downsample.norm", 4 * dim, g))
            resolution //= 2
    final = EMBED * 2 ** (len(DEPTHS) - 1)
    s.update(_ln(f"{a}norm", final, g))
    s[f"{a}tscam_conv.weight"] = torch.randn(527, final, 2, 3, generator=g) * 0.01
    s[f"{a}tscam_conv.bias"] = torch.zeros(527)
    s.update(_lin(f"{a}head", 527, 527, g))
    return s


def text_state(vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """``text_branch.*``: a tiny transformers ``RobertaModel`` (what laion's text branch is)."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    cfg = RobertaConfig(
        vocab_size=vocab,
        hidden_size=TEXT_HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=64,
        max_position_embeddings=80,
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
    )
    model = RobertaModel(cfg, add_pooling_layer=True)
    state = {f"text_branch.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state.setdefault("text_branch.embeddings.position_ids", torch.arange(80)[None])
    return state


def laion_state(
    vocab: int,
    *,
    fusion: bool = False,
    seed: int = 0,
    position_ids: bool = True,
    embed: int = EMBED,
    depths: tuple[int, ...] = DEPTHS,
    heads: tuple[int, ...] = HEADS,
    joint: int = JOINT,
) -> dict[str, torch.Tensor]:
    """The whole state dict (without ``module.``); the audio sizes as :func:`htsat_state`,
    ``joint`` the shared embedding width (512 in the release)."""
    JOINT = joint
    g = torch.Generator().manual_seed(seed)
    final = embed * 2 ** (len(depths) - 1)
    s = htsat_state(g, fusion, embed, depths, heads)
    s.update(text_state(vocab, g))
    if not position_ids:
        s.pop("text_branch.embeddings.position_ids", None)
    s.pop("text_branch.embeddings.token_type_ids", None)
    s.update(_lin("audio_projection.0", JOINT, final, g))
    s.update(_lin("audio_projection.2", JOINT, JOINT, g))
    s.update(_lin("text_projection.0", JOINT, TEXT_HIDDEN, g))
    s.update(_lin("text_projection.2", JOINT, JOINT, g))
    for tower in ("audio_transform", "text_transform"):
        s.update(_lin(f"{tower}.sequential.0", JOINT, JOINT, g))
        s.update(_lin(f"{tower}.sequential.3", JOINT, JOINT, g))
    s["logit_scale_a"] = torch.tensor(2.65)
    s["logit_scale_t"] = torch.tensor(2.65)
    return s


def save_laion(state: dict[str, torch.Tensor], path: Path) -> Path:
    """``torch.save({epoch, name, state_dict})`` with ``module.`` prefixes, as laion does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "epoch": 45,
            "name": "stand-in",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
        },
        path,
    )
    return path
