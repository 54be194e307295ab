"""Blending one voice window with one noise window at a known, auditable level.

The noise level is the noise-to-voice RMS ratio after both are brought to a reference loudness:
the voice is measured by its active speech level (RMS over its active 20 ms frames, a simplified
ITU-T P.56), the noise by its plain RMS. A level of 0.2-0.8 is thus an active-speech SNR of about
14 to 2 dB (SNR = -20 log10(level)). After blending, the pair is scaled to a random loudness and,
if the mixture would clip, scaled down further; the factor is recorded as the gain. The recorded
`snr_db` is what was realised over the written window: 10 log10(sum clean^2 / sum noise^2).

`mix_at_snr` is the other way to mix, used by `predictor.evaluation`: the noise scaled to an exact
SNR (by plain energy), no loudness target. Both share the peak limit (`PEAK_LIMIT`,
`peak_limited_gain`). Their arithmetic differs on purpose (active level vs energy; one gain for
the mixture vs one per part) and each is kept as it was, so datasets and evaluation items
written before stay reproducible to the bit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FRAME_SECONDS = 0.02
ACTIVE_RANGE_DB = 30.0  # frames within this of the loud (95th percentile) frames count as active
SILENCE_DBFS = -60.0  # a voice window whose active level is below this is silent
MIN_ACTIVE_FRACTION = 0.2  # ...or whose active frames are fewer than this share
PEAK_LIMIT = 0.99  # largest absolute sample of any mixture made here (full scale is 1.0)


def rms(x: np.ndarray) -> float:
    # np.add.reduce / size is np.mean's own arithmetic, without its per-call overhead (the same bits).
    return float(np.sqrt(np.add.reduce(np.square(x, dtype=np.float64), axis=None) / x.size))


def percentile95(values: np.ndarray) -> float:
    """`np.percentile(values, 95)` (linear interpolation) of a 1-D float64 array, bit for bit, at a
    fraction of its cost: the same order statistics and numpy's own interpolation arithmetic."""
    n = values.shape[0]
    virtual = (n - 1) * 0.95
    below = int(np.floor(virtual))
    above = min(below + 1, n - 1)
    ordered = np.partition(values, (below, above)) if n > 1 else values
    a, b = ordered[below], ordered[above]
    t = virtual - below
    step = b - a
    return float(b - step * (1 - t)) if t >= 0.5 else float(a + step * t)


def energy(x: np.ndarray) -> float:
    """Sum of squares, in float64."""
    return float(np.dot(x.astype(np.float64), x.astype(np.float64)))


def peak_limited_gain(signal: np.ndarray, gain: float = 1.0) -> float:
    """`gain`, lowered just enough that max|signal| * gain does not exceed PEAK_LIMIT."""
    peak = float(np.max(np.abs(signal))) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return gain


def active_level(x: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(active speech level as linear RMS, fraction of 20 ms frames that are active)."""
    frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
    n = (x.shape[-1] // frame) * frame
    if n == 0:
        return rms(x), 1.0
    energy = np.add.reduce(np.square(x[:n].reshape(-1, frame), dtype=np.float64), axis=1) / frame
    loud = percentile95(energy)
    if loud <= 0:
        return 0.0, 0.0
    active = energy >= loud * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)
    count = int(np.count_nonzero(active))
    return float(np.sqrt(np.add.reduce(energy[active]) / count)), count / active.size


def is_silent(level: float, active_fraction: float) -> bool:
    return level <= 10.0 ** (SILENCE_DBFS / 20.0) or active_fraction < MIN_ACTIVE_FRACTION


@dataclasses.dataclass
class Blend:
    mixture: np.ndarray
    clean: np.ndarray
    noise: np.ndarray
    gain: float
    snr_db: float


def blend(voice: np.ndarray, noise: np.ndarray, level: float, loudness_dbfs: float, voice_level: float,
          target: np.ndarray | None = None) -> Blend:
    """Mixes `voice` with `noise` at noise-to-voice ratio `level`, then scales to `loudness_dbfs`.

    `voice_level` is the voice's active speech level (linear). The mixture never clips: if its peak
    would exceed PEAK_LIMIT after loudness scaling, the gain is reduced to meet it. `target`, when
    given (the early-reflection part of a reverberant `voice`), is the clean output instead of
    `voice`, scaled by the same gain; `snr_db` is then the target's energy over the noise's.
    """
    noise_rms = rms(noise)
    if noise_rms <= 0 or voice_level <= 0:
        raise ValueError("blend() needs a non-silent voice and noise window")
    scaled_noise = noise * np.float32(level * voice_level / noise_rms)
    mixture = voice + scaled_noise
    g = np.float32(peak_limited_gain(mixture, 10.0 ** (loudness_dbfs / 20.0) / max(rms(mixture), 1e-12)))
    clean, noise_out = voice * g, scaled_noise * g
    mixture = clean + noise_out
    if target is not None:
        clean = target * g
    snr = 10.0 * np.log10(np.sum(np.square(clean, dtype=np.float64)) / np.sum(np.square(noise_out, dtype=np.float64)))
    return Blend(mixture=mixture, clean=clean, noise=noise_out, gain=float(g), snr_db=float(snr))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(clean, mixture), float32 [samples]: `noise` scaled so that 10 log10(sum clean^2 / sum noise^2)
    is exactly `snr_db` (dB), added to `clean`; if the mixture would exceed PEAK_LIMIT, both are
    scaled down together (the SNR is kept). `clean` and `noise` are float32 of equal length; the
    noise must not be silent.
    """
    noise = noise * np.float32(math.sqrt(energy(clean) / (energy(noise) * 10.0 ** (snr_db / 10.0))))
    mixture = clean + noise
    gain = peak_limited_gain(mixture)
    if gain < 1.0:
        g = np.float32(gain)
        clean, mixture = clean * g, mixture * g
    return clean, mixture
