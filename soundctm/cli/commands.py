"""The built-in commands: name -> (lazy ``"module:attr"`` target, one-line description).

The app (:mod:`soundctm.cli.app`) adds these itself; the built-in plugin lists them in the
registry too (so ``soundctm plugins`` shows every command), and commands of other plugins
arrive through the ``register_commands`` hook. Pure data: importing this imports nothing.
"""

from __future__ import annotations

BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("soundctm.cli.sample:sample", "Generate sounds from text prompts"),
    "refine": ("soundctm.cli.refine:refine", "Re-run a sample with more steps, same content"),
    "vary": (
        "soundctm.cli.vary:vary",
        "Variations of an audio file (audio-to-audio), or regenerate spans of it (--mask)",
    ),
    "plugins": ("soundctm.cli.plugins:plugins", "List installed components by kind"),
    "train": ("soundctm.cli.train:train", "Train a diffusion teacher (EDM)"),
    "distill": ("soundctm.cli.distill:distill", "Distil a SoundCTM student from a teacher"),
    "export": (
        "soundctm.cli.export:export",
        "Export a model to ONNX graphs (and TensorRT engines) for low-latency inference",
    ),
    "pack": (
        "soundctm.cli.pack:pack",
        "Pack a checkpoint for distribution (half-precision weights, bundled teacher)",
    ),
    "import": (
        "soundctm.cli.importer:import_app",
        "Convert an official SoundCTM release into a soundctm checkpoint",
    ),
    "studio": (
        "soundctm.cli.studio:studio",
        "A local web page and JSON API: generate takes, refine one, vary (127.0.0.1:8765)",
    ),
    "eval": (
        "soundctm.cli.eval:eval_app",
        "Evaluate audio or models: FD/FAD, KL, IS, CLAP, SynthCaps attributes, content "
        "preservation",
    ),
}
