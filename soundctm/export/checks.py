"""Parity checks of an exported graph against its torch module, and the error an export raises
(docs/onnx.md).

Every graph is run by onnxruntime on the export example and compared with torch: sample by
sample (relative to the output's scale), or for decoders that retrieve phase iteratively on the
spectrogram (:func:`waveform_spectral_convergence`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from soundctm.errors import SoundCTMError
from soundctm.export.graphs import graph_input_names

#: Largest |torch - onnxruntime| accepted on the export example, relative to max(1, |torch|)
#: (float16 networks: ``FP16_CHECK_TOLERANCE``).
CHECK_TOLERANCE = 1e-3
FP16_CHECK_TOLERANCE = 5e-2
#: Decoders that retrieve phase iteratively (``autoencoder.phase_retrieval``, e.g. Griffin-Lim)
#: are checked on the spectrogram: largest accepted spectral convergence
#: ``||S_ort| - |S_torch||_F / ||S_torch||_F`` between the two runtimes' outputs.
#: Measured: 0.012 for the default codec (n_fft 1024, hop 512, 32 iterations) on SynthCaps clips,
#: below its own Griffin-Lim error (about 0.07 against the target spectrogram).
SPECTRAL_CHECK_TOLERANCE = 5e-2
SPECTRAL_N_FFT = 1024


class ExportError(SoundCTMError):
    """A component cannot be exported (the message names it), or an export is unusable."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """One line of an exception: for torch.onnx's long reports, the exception summary and the
    line of model code that raised it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if "## Exception summary" in lines:
        rest = lines[lines.index("## Exception summary") + 1 :]
        line = rest[0] if rest else line
        where = next((ln for ln in rest if ln.startswith('File "')), None)
        if where is not None:
            line = f"{line} [{where}]"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def waveform_spectral_convergence(reference: Tensor, estimate: Tensor) -> float:
    """``||S(estimate)| - |S(reference)||_F / ||S(reference)||_F`` over STFT magnitudes of
    waveforms ``[B, n]`` (Sturmel & Daudet 2011, the Griffin-Lim literature's consistency
    measure): 0 when both have the same spectrogram, whatever their phases. (The `mel` codec's
    ``spectral_convergence`` compares given magnitudes per clip; this one takes waveforms.)"""
    n_fft = min(SPECTRAL_N_FFT, 1 << max(1, reference.shape[-1].bit_length() - 1))
    window = torch.hann_window(n_fft)

    def mag(x: Tensor) -> Tensor:
        x = x.reshape(-1, x.shape[-1]).double()
        return torch.stft(
            x, n_fft, max(1, n_fft // 4), window=window.double(), return_complex=True
        ).abs()

    ref, est = mag(reference), mag(estimate)
    return float(torch.linalg.norm(est - ref) / torch.linalg.norm(ref).clamp_min(1e-12))


def compare(
    component: str,
    name: str,
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    tolerance: float = CHECK_TOLERANCE,
    spectral: bool = False,
) -> float:
    """Max |onnxruntime - torch| of the graph at ``path`` on ``args`` (raises if too large).

    With ``spectral`` (phase-retrieval decoders) the outputs are compared by
    :func:`waveform_spectral_convergence` against ``SPECTRAL_CHECK_TOLERANCE`` instead:
    iterative phase retrieval lets rounding pick different, equally valid phases in the two
    runtimes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    params = graph_input_names(module)
    feeds = {k: v.detach().cpu().numpy() for k, v in zip(params, args, strict=True) if k in names}
    got = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad():
        ref = module(*args).detach().float().cpu()
    if got.shape != ref.shape:
        raise ExportError(
            f"cannot export the {component} {name!r}: the graph returns shape "
            f"{tuple(got.shape)}, torch {tuple(ref.shape)}"
        )
    if spectral and ref.numel():
        diff = waveform_spectral_convergence(ref, got)
        if not diff <= SPECTRAL_CHECK_TOLERANCE:
            raise ExportError(
                f"cannot export the {component} {name!r}: the spectrograms of its onnxruntime "
                f"and torch outputs differ by {diff:.3g} (spectral convergence, limit "
                f"{SPECTRAL_CHECK_TOLERANCE:g}) on the export example"
            )
        return diff
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    scale = max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
    if not diff <= tolerance * scale:
        raise ExportError(
            f"cannot export the {component} {name!r}: onnxruntime and torch disagree by "
            f"{diff:.3g} on the export example; the graph does not reproduce the module"
        )
    return diff


def host_check(autoencoder: object, latents: Tensor, settings: dict) -> float:
    """Spectral convergence between the torch decoder and the host Griffin-Lim
    (:mod:`soundctm.export.phase`) run on the torch magnitude, on the export example (raises
    above ``SPECTRAL_CHECK_TOLERANCE``)."""
    from soundctm.export.phase import GriffinLimSettings, griffin_lim

    with torch.no_grad():
        ref = autoencoder.decode(latents).float().cpu()  # type: ignore[attr-defined]
        magnitude = autoencoder.magnitude(latents).float().cpu().numpy()  # type: ignore[attr-defined]
    got = torch.from_numpy(griffin_lim(magnitude, GriffinLimSettings.from_spec(settings)))
    diff = waveform_spectral_convergence(ref.reshape(got.shape), got)
    if not diff <= SPECTRAL_CHECK_TOLERANCE:
        raise ExportError(
            f"the host Griffin-Lim and the torch decoder differ by {diff:.3g} (spectral "
            f"convergence, limit {SPECTRAL_CHECK_TOLERANCE:g}) on the export example"
        )
    return diff


__all__ = [
    "CHECK_TOLERANCE",
    "FP16_CHECK_TOLERANCE",
    "SPECTRAL_CHECK_TOLERANCE",
    "ExportError",
    "compare",
    "first_line",
    "host_check",
    "waveform_spectral_convergence",
]
