"""Real-size SoundCTM-DiT on this machine, with random weights in the official formats.

Writes a stand-in of the hub folder ``koichisaito/soundctm_dit`` (variant v2) at the released
sizes: the DiT-1B student (``dit.``, preset v2) and a RoBERTa-base CLAP text branch
(``text_encoder.model.``) in one EMA file, a GaussianDAC ``weights.pth`` (encoder 64 wide,
rates 2-4-8-16, decoder 1536 wide, rates 16-8-4-2, 64 latents: hop 1024, the 432 frames of
10.031 s; the released kwargs are read from the real file, these are our assumption), z_stats,
a small tokenizer. Then it measures in subprocesses: ``soundctm import soundctm-dit`` (wall time,
peak memory), loading, a 1-step 10.031 s generation at batch 1 and at batch 4.

    python tests/benchmarks/official_dit_realsize.py WORKDIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DAC = {
    "encoder_dim": 64, "encoder_rates": [2, 4, 8, 16], "latent_dim": 64, "decoder_dim": 1536,
    "decoder_rates": [16, 8, 4, 2], "sample_rate": 44100, "double_z": True,
}  # fmt: skip


def write_standin(root: Path) -> None:
    import torch
    from test_clap import write_tokenizer
    from test_gaussian_dac import official_state, z_stats
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tok = write_tokenizer(root / "roberta-base")
    vocab = len(AutoTokenizer.from_pretrained(tok))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=vocab, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)  # fmt: skip
    branch = RobertaModel(config, add_pooling_layer=True)
    ema = {f"text_encoder.model.text_branch.{k}": v for k, v in branch.state_dict().items()}
    del branch
    from soundctm.builtin.dit_official import OFFICIAL_DIT_PRESETS, OfficialDiT

    dit = OfficialDiT(**OFFICIAL_DIT_PRESETS["v2"], student=True)
    ema.update({f"dit.{k}": v for k, v in dit.state_dict().items()})
    del dit
    models = root / "model_checkpoints" / "soundctm"
    models.mkdir(parents=True, exist_ok=True)
    torch.save(ema, models / "ac_v2_ema_0999_030000.pt")
    del ema
    summary = {"sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0}
    (models / "ac_v2_summary.jsonl").write_text(json.dumps(summary) + "\n", encoding="utf-8")
    torch.save(z_stats(64), models / "z_stats.pth")
    dac_dir = root / "utils_checkpoints" / "vae" / "gaussiandac"
    dac_dir.mkdir(parents=True, exist_ok=True)
    state = official_state(DAC)
    torch.save({"state_dict": state, "metadata": {"kwargs": DAC}}, dac_dir / "weights.pth")


GENERATE = """
import json, sys, time, torch
from soundctm.engine.pipeline import Pipeline
path, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter(); pipe = Pipeline.load(path); load = time.perf_counter() - t0
runs, net = [], []
for i in range(n):
    t0 = time.perf_counter()
    gen = pipe.generate(["a dog barks while rain falls"] * batch, seeds=list(range(batch)),
                        steps=1, seconds=10.031, batch_size=batch)
    runs.append(time.perf_counter() - t0)
x = torch.randn(batch, *pipe.latent_shape(10.031)) * 80
with torch.inference_mode():
    cond = pipe.text_encoder(["a dog barks"] * batch)
    t0 = time.perf_counter()
    z = pipe.ctm.jump(x, 80.0, 0.002, cond, 5.0)
    net = time.perf_counter() - t0
    t0 = time.perf_counter(); pipe.decode(z); dec = time.perf_counter() - t0
print(json.dumps({"load_s": round(load, 1), "generate_s": [round(r, 2) for r in runs],
                  "jump_s": round(net, 2), "decode_s": round(dec, 2),
                  "samples": gen.audio.shape, "threads": torch.get_num_threads()}, default=str))
"""


def main() -> None:
    from official_unet_realsize import timed  # wall time and peak memory of a child

    work = Path(sys.argv[1])
    src, out = work / "koichisaito-soundctm_dit", work / "imported"
    if not (src / "utils_checkpoints" / "vae" / "gaussiandac" / "weights.pth").is_file():
        t0 = time.perf_counter()
        write_standin(src)
        print(f"stand-in written in {time.perf_counter() - t0:.0f} s", flush=True)
    exe = str(Path(sys.executable).parent / "soundctm")
    if not (out / "model.json").is_file():
        res = timed([exe, "import", "soundctm-dit", str(src), "-o", str(out), "--variant", "v2"])
        print("import v2:", json.dumps(res), flush=True)
    for batch, n in ((1, 2), (4, 1)):
        res = timed([sys.executable, "-c", GENERATE, str(out), str(batch), str(n)])
        print(f"student, 1 step, 10.031 s, batch {batch}:", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
