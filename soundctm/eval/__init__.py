"""Evaluation: distribution metrics over audio embeddings and classifier outputs.

- :mod:`soundctm.eval.metrics`: pure numpy maths. Frechet distance (FAD/FD) with
  ``eps * I`` regularisation and an imaginary-part check, FAD-infinity (extrapolation in ``1/N``),
  paired KL divergence of classifier label distributions, Inception Score, CLAP score.
- :mod:`soundctm.eval.embedders`: the embedder contract (``name``, ``sample_rate``, ``dim``,
  ``checksum``, ``embed``; optional ``embed_frames``, ``logits``, ``embed_text``), the weight-file
  helpers every embedder that needs weights uses, and ``mel-stats``, a deterministic, weight-free
  feature set for offline use and tests (it is NOT VGGish; its distances are not FAD numbers).
- :mod:`soundctm.eval.vggish`: VGGish (the network behind the 16 kHz FAD of the SoundCTM and
  AudioLDM papers) in pure torch, loading the user's own torchvggish weight file; nothing is ever
  downloaded.
"""
