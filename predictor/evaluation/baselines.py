"""Systems to compare the model against: classical denoisers, an oracle, and the reference's recipe.

All work on mono float32 signals at the config's sample rate, and all STFT work goes through the
shared `tfrecord_schema.spectrogram` functions with the model's `SpectrogramConfig`, so the
baselines see the same frames as the model.

- `spectral_subtraction`: power spectral subtraction with SNR-dependent over-subtraction and a
  spectral floor (Berouti, Schwartz & Makhoul, 1979).
- `wiener_filter`: Wiener gain with the decision-directed a-priori SNR (Ephraim & Malah, 1984;
  Scalart & Vieira Filho, 1996).
  Both take their noise power from `noise_power` (minimum statistics by default, see there).
- `spectral_gating`: `noisereduce.reduce_noise`, stationary or non-stationary.
- `oracle`: the clean magnitude with the noisy phase through the same STFT: the ceiling of any
  model that, like ours, only changes the magnitude.
- `ReferenceRecipe`: how the reference hobby project ran its U-Net, applied to one of our models.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import from_magnitude_phase, istft, magnitude_phase, stft
from trainer.targets import COMPLEX_TARGETS, check_target, enhance_magnitude

NOISE_ESTIMATES = ("minimum_statistics", "quietest")


# --- noise estimate --------------------------------------------------------------------------

def noise_power(power: np.ndarray, config: SpectrogramConfig, method: str = "minimum_statistics", *,
                window_seconds: float = 1.5, smoothing: float = 0.85, quietest_fraction: float = 0.1) -> np.ndarray:
    """Noise power per frame and bin, [frames, bins], from a noisy power spectrogram [frames, bins].

    minimum_statistics (default; after Martin, 2001, simplified for whole files): the power is
    smoothed over time (first-order recursion, `smoothing`), its minimum is taken over a centred
    window of `window_seconds`, and multiplied by a bias factor, because the minimum of a smoothed
    periodogram sits below its mean (the factor 1 + 0.2 ln(D) for D frames fits simulations of
    noise periodograms smoothed with 0.85 to within 4 % for 64 to 256 frames). Speech pauses of a few hundred
    milliseconds in every window are enough; the estimate follows slowly changing noise.
    quietest: the mean power of the `quietest_fraction` of frames with the least energy, the same
    for all frames; right for stationary noise, biased upward when speech never pauses.
    """
    if method not in NOISE_ESTIMATES:
        raise ValueError(f"method must be one of {NOISE_ESTIMATES}. Received: method={method!r}")
    frames = power.shape[0]
    if method == "quietest":
        energy = power.sum(axis=1)
        count = max(1, int(math.ceil(quietest_fraction * frames)))
        quiet = np.argsort(energy, kind="stable")[:count]
        return np.broadcast_to(power[quiet].mean(axis=0), power.shape).copy()
    from scipy.ndimage import minimum_filter1d
    from scipy.signal import lfilter

    smoothed = lfilter([1.0 - smoothing], [1.0, -smoothing], power, axis=0)
    # start the recursion at the first frame's power rather than at zero
    smoothed += (smoothing ** np.arange(1, frames + 1))[:, None] * power[:1]
    span = max(1, min(frames, int(round(window_seconds * config.sample_rate / config.hop_length))))
    minimum = minimum_filter1d(smoothed, span, axis=0, mode="nearest")
    return minimum * (1.0 + 0.2 * math.log(span))


# --- classical denoisers ---------------------------------------------------------------------

def spectral_subtraction(noisy: np.ndarray, config: SpectrogramConfig, *, noise_estimate: str = "minimum_statistics",
                         max_oversubtraction: float = 4.0, floor: float = 0.01) -> np.ndarray:
    """Power spectral subtraction (Berouti et al., 1979) of a mono signal; returns the same length.

    |S|^2 = max(|Y|^2 - a |N|^2, floor |N|^2) with the over-subtraction a = max_oversubtraction -
    0.15 * segment SNR (dB), clipped to [1, max_oversubtraction]; the noisy phase is kept.
    """
    x = np.asarray(noisy, np.float32)
    spec = stft(x, config)
    power = np.abs(spec).astype(np.float64) ** 2
    noise = noise_power(power, config, noise_estimate)
    segment_snr = 10.0 * np.log10(power.sum(axis=1) / np.maximum(noise.sum(axis=1), 1e-20) + 1e-12)
    over = np.clip(max_oversubtraction - 0.15 * segment_snr, 1.0, max_oversubtraction)[:, None]
    clean_power = np.maximum(power - over * noise, floor * noise)
    gain = np.sqrt(clean_power / np.maximum(power, 1e-20))
    return istft(spec * gain.astype(np.float32), config, x.shape[0])


def wiener_filter(noisy: np.ndarray, config: SpectrogramConfig, *, noise_estimate: str = "minimum_statistics",
                  smoothing: float = 0.98, min_gain_db: float = -25.0) -> np.ndarray:
    """Wiener filter with decision-directed a-priori SNR of a mono signal; returns the same length.

    xi_t = smoothing * |S_{t-1}|^2 / N_t + (1 - smoothing) * max(gamma_t - 1, 0), with the
    a-posteriori SNR gamma = |Y|^2 / N; gain G = xi / (1 + xi), at least `min_gain_db`.
    """
    x = np.asarray(noisy, np.float32)
    spec = stft(x, config)
    power = np.abs(spec).astype(np.float64) ** 2
    noise = np.maximum(noise_power(power, config, noise_estimate), 1e-20)
    gamma = power / noise
    min_gain = 10.0 ** (min_gain_db / 20.0)
    gains = np.empty_like(power)
    previous = np.zeros(power.shape[1])  # |S_{t-1}|^2 estimate
    for t in range(power.shape[0]):
        xi = smoothing * previous / noise[t] + (1.0 - smoothing) * np.maximum(gamma[t] - 1.0, 0.0)
        gain = np.maximum(xi / (1.0 + xi), min_gain)
        gains[t] = gain
        previous = gain**2 * power[t]
    return istft(spec * gains.astype(np.float32), config, x.shape[0])


def spectral_gating(noisy: np.ndarray, sample_rate: int, *, stationary: bool = False, **kwargs: Any) -> np.ndarray:
    """`noisereduce.reduce_noise` (spectral gating) with its defaults; returns the same length."""
    import noisereduce

    x = np.asarray(noisy, np.float32)
    y = noisereduce.reduce_noise(y=x, sr=sample_rate, stationary=stationary, **kwargs)
    y = np.asarray(y, np.float32)
    if y.shape[0] < x.shape[0]:
        y = np.pad(y, (0, x.shape[0] - y.shape[0]))
    return y[: x.shape[0]]


def oracle(noisy: np.ndarray, clean: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    """The clean magnitude with the noisy phase, through the shared STFT (same length as noisy)."""
    noisy_mag, noisy_phase = magnitude_phase(np.asarray(noisy, np.float32), config)
    clean_mag, _ = magnitude_phase(np.asarray(clean, np.float32), config)
    return from_magnitude_phase(clean_mag, noisy_phase, config, np.asarray(noisy).shape[0])


# --- the reference's recipe ------------------------------------------------------------------

REFERENCE_TOP_DB = 80.0  # librosa.amplitude_to_db's default top_db
REFERENCE_AMIN = 1e-5  # librosa.amplitude_to_db's default amin
REFERENCE_OUTPUT_GAIN = 10.0
TAILS = ("drop", "pad")


class ReferenceRecipe:
    """The reference hobby project's prediction recipe, run with one of our models.

    What the reference did, step by step, and what is kept here:
    1. Cut the audio into non-overlapping windows of `window_samples`; the tail that does not fill
       a window is dropped (`tail="drop"`, the reference) or zero-padded to a window (`tail="pad"`).
       A dropped tail comes out as silence here, so outputs keep the input's length; a file shorter
       than one window comes out silent (the reference skipped it).
    2. Per window, the STFT magnitude in dB relative to the window's own peak bin
       (`librosa.amplitude_to_db(ref=np.max)`: amin 1e-5, values below peak - 80 dB clipped).
       This per-window peak normalisation is the step that loses the signal level.
    3. Scale those dB values into the model's input range and run the model. The reference used its
       own constants ((dB + 46) / 50) for its own weights; here the model's `input_offset_db` and
       `input_scale_db` are used, since those are what our weights were trained with.
    4. Apply the prediction to the peak-normalised magnitude (for the `noise` target:
       dB - target_scale_db * prediction, the reference's "subtract the noise model";
       `trainer.targets.enhance_magnitude`), turn dB back into amplitude with ref=1.0 (so the
       output stays peak-normalised), and invert each window with the noisy phase.
    5. Concatenate the windows and multiply by 10, the reference's fixed output gain.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], config: SpectrogramConfig, target: str,
                 *, tail: str = "drop", batch_size: int = 32) -> None:
        if check_target(target) in COMPLEX_TARGETS:
            raise ValueError(f"the reference recipe runs magnitude models; target {target!r} needs the phase")
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}. Received: tail={tail!r}")
        self.predict, self.config, self.target, self.tail, self.batch_size = predict, config, target, tail, batch_size

    def _windows(self, x: np.ndarray) -> np.ndarray:
        n = self.config.window_samples
        count = x.shape[0] // n if self.tail == "drop" else -(-x.shape[0] // n)
        padded = np.zeros(count * n, np.float32)
        padded[: min(x.shape[0], count * n)] = x[: count * n]
        return padded.reshape(count, n)

    def enhance_many(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Enhances mono signals; windows of all signals share model batches."""
        config = self.config
        windows = [self._windows(np.asarray(x, np.float32)) for x in signals]
        counts = [w.shape[0] for w in windows]
        if not sum(counts):  # every signal shorter than a window: all dropped
            return [np.zeros(len(x), np.float32) for x in signals]
        stacked = np.concatenate(windows)
        magnitude, phase = magnitude_phase(stacked, config)
        peak = np.maximum(magnitude.max(axis=(1, 2), keepdims=True), REFERENCE_AMIN)
        db = 20.0 * np.log10(np.maximum(magnitude, REFERENCE_AMIN) / peak)
        db = np.maximum(db, -REFERENCE_TOP_DB)
        features = ((db - config.input_offset_db) / config.input_scale_db).astype(np.float32)
        prediction = np.zeros_like(features)
        for start in range(0, features.shape[0], self.batch_size):
            chunk = features[start: start + self.batch_size, ..., None]
            prediction[start: start + self.batch_size] = self.predict(chunk)[..., 0]
        normalised = (10.0 ** (db / 20.0)).astype(np.float32)
        enhanced = enhance_magnitude(normalised, prediction, self.target, config)
        audio = from_magnitude_phase(enhanced, phase, config, config.window_samples) * REFERENCE_OUTPUT_GAIN
        outputs, start = [], 0
        for x, count in zip(signals, counts):
            y = audio[start: start + count].reshape(-1)
            start += count
            out = np.zeros(len(x), np.float32)
            out[: min(len(x), y.shape[0])] = y[: len(x)]
            outputs.append(out)
        return outputs

    def enhance(self, signal: np.ndarray) -> np.ndarray:
        return self.enhance_many([signal])[0]
