"""Stand-ins of the released SoundCTM-DiT files (v1, v2) that the OFFICIAL code can load.

The same writer as tests/test_import_dit.py (``write_official``: the full EMA state dict with
``dit.`` and ``text_encoder.model.``, the LAION-CLAP checkpoint with ``module.`` and
``position_ids``, GaussianDAC ``weights.pth`` with its metadata kwargs and weight-norm keys,
``z_stats.pth``, the summary line, ``configs/dit_config/dit_v{1,2}.json``, a RoBERTa tokenizer),
at sizes the official code accepts:

- the CLAP text branch is 768 wide (the official CLAP hard-codes ``Linear(768, 512)`` for the v1
  projection and v2's context is the 768-d pooler output), one layer, 12 heads;
- the DiT's width is a multiple of its context (the official cross-attention repeats the
  ``context / head_dim`` key/value heads ``heads / kv_heads`` times): v1 1024 wide with 16 heads
  on its 512-d context (each key/value head twice, one block), v2 768 wide with 12 heads on its
  768-d one (two blocks); head_dim 64 with rotary on its first 32 dims, as released;
- a GaussianDAC with hop 256 (released: 1024) so that decoding stays cheap;
- no decoy audio-branch keys (the official code would try to load them), and a summary line
  with the training arguments the official inference reads;
- as every stand-in of test_import_dit, the context projection ``to_cond_embed`` amplified
  (``COND_GAIN``) so that the prompt matters: measured, nu 2 moves the 2-step latents by 1.5 %
  (v1) and 1.3 % (v2) from nu 1, so a wrong unconditional half cannot pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared writers

from test_gaussian_dac import KWARGS as DAC_KWARGS
from test_import_dit import Sizes, write_official

#: The DiT of each variant (``cond_token_dim`` comes from the variant: 512 / 768).
DIT = {
    "v1": {"io_channels": 8, "embed_dim": 1024, "depth": 1, "num_heads": 16},
    "v2": {"io_channels": 8, "embed_dim": 768, "depth": 2, "num_heads": 12},
}
#: hop 4 * 8 * 8 = 256, latent 8.
DAC = {**DAC_KWARGS, "encoder_rates": [4, 8, 8], "decoder_rates": [8, 8, 4]}
HOP = 256
#: The training arguments the official inference path reads from the summary line
#: (``create_model_and_diffusion``, ``SA_EDM``, ``KarrasDenoiser.denoise``), with the released
#: values.
SUMMARY = {
    "text_encoder_name": "clap",
    "diffusion_model_type": "dit",
    "ctm_unet_model_config": "",
    "freeze_text_encoder": True,
    "text_audio_pair_dataset": True,
    "schedule_sampler": "uniform",
    "diffusion_schedule_sampler": "halflognormal",
    "start_scales": 40,
    "rho": 7,
    "parametrization": "euler",
    "inner_parametrization": "edm",
    "sampling_rate": 44100,
    "amodel": "None",
    "P_mean": -1.2,
    "P_std": 1.2,
}


def sizes(variant: str) -> Sizes:
    dit = {**DIT[variant], "global_cond_dim": 1536}
    return Sizes(hidden=768, layers=1, positions=80, proj=512, dit=tuple(dit.items()))


def write_parity_standins(root: Path, variant: str) -> dict:
    """Write the stand-in of ``variant`` (hub layout) under ``root``; returns its parts."""
    return write_official(
        root, variant, "hub", DAC, sizes=sizes(variant), decoys=False, summary=SUMMARY
    )
