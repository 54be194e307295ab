"""Losses on the waveform: the masked noisy spectrum through an inverse STFT inside the graph.

With `--loss snr` or `--loss si-sdr` the U-Net still outputs a gain per time-frequency bin (the
"mask" target's [-1, 1] code, so the predictor runs it like any mask model), but training scores
what the predictor will make of it: the gain times the noisy complex spectrum, turned back into
samples by the same inverse STFT as `tfrecord_schema.spectrogram.istft`, against the clean window
turned back the same way. Both losses are per example and in dB, so a quiet window counts as much
as a loud one (a squared error in the spectrum is ruled by the loud ones), and they are what the
evaluation reports (SI-SDR) or its level-keeping twin:

    snr     -10 log10(|s|^2 / (|s - y|^2 + tau |s|^2)): keeps the level (no free scale factor).
    si-sdr  the same after s is scaled by the least-squares factor <y, s> / |s|^2 and both are
            made zero-mean (Le Roux et al., 2019); the output level is not trained.
    si-sdr+huber
            MIX_WEIGHT x the si-sdr loss plus the Huber loss (delta 1) on the magnitude-mask target,
            weighted per bin by the noisy magnitude (the recipe of the shipped model): the SI-SDR
            term alone raised SI-SDR and lowered PESQ and STOI (docs/results.md, fourth round).
            MIX_WEIGHT = 0.01 makes the two terms about the same size where training ends (a
            weighted Huber value near 0.12, an SI-SDR near 10 dB).

tau = 10^(-30/10) caps each example at 30 dB (Wisdom et al., 2020), so windows that are already
nearly clean do not pull the model towards ever smaller residuals at the expense of the rest.

The inverse STFT is written with `keras.ops` (matrix products with a fixed real inverse-DFT basis,
then a block overlap-add), so it runs on every Keras backend, under jit and mixed precision (the
loss is computed in float32).
"""

from __future__ import annotations

import numpy as np

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import _window_envelope, hann_window

WAVEFORM_LOSSES = ("snr", "si-sdr", "si-sdr+huber")
MIX_WEIGHT = 0.01
CAP_DB = 30.0
_TAU = 10.0 ** (-CAP_DB / 10.0)
_EPS = 1e-10


def inverse_dft_basis(n_fft: int, window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real matrices [bins, n_fft] with frames = re @ C + im @ S equal to irfft(re + i im, n_fft),
    the synthesis `window` (default: the periodic Hann window) already applied (the imaginary parts
    of the DC and Nyquist bins are ignored, as irfft does)."""
    bins = n_fft // 2 + 1
    k = np.arange(bins)[:, None]
    n = np.arange(n_fft)[None, :]
    weight = np.full((bins, 1), 2.0)
    weight[0] = 1.0
    if n_fft % 2 == 0:
        weight[-1] = 1.0
    angle = 2.0 * np.pi * k * n / n_fft
    window = np.asarray(hann_window(n_fft) if window is None else window, np.float64)[None, :]
    cos = weight * np.cos(angle) / n_fft * window
    sin = -weight * np.sin(angle) / n_fft * window
    return cos.astype(np.float32), sin.astype(np.float32)


class InverseStft:
    """`tfrecord_schema.spectrogram.istft` for one window's spectrogram, in `keras.ops`.

        waveform = InverseStft(config)(real, imag)   # [B, frames, bins] each -> [B, window_samples]
    """

    def __init__(self, config: SpectrogramConfig) -> None:
        if not isinstance(config, SpectrogramConfig):
            raise ValueError(f"config must be a SpectrogramConfig. Received: config={config!r}")
        self.config = config
        n_fft, hop, frames = config.n_fft, config.hop_length, config.num_frames
        self.blocks = -(-n_fft // hop)  # hop-sized blocks each frame spans
        self.cos, self.sin = inverse_dft_basis(n_fft)
        pad = n_fft // 2
        envelope = _window_envelope(n_fft, hop, frames)[pad: pad + config.window_samples]  # the writer's istft's
        self.inverse_envelope = np.where(envelope > 1e-8, 1.0 / np.maximum(envelope, 1e-8), 0.0).astype(np.float32)

    def __call__(self, real, imag):
        from keras import ops

        config, blocks = self.config, self.blocks
        n_fft, hop, frames = config.n_fft, config.hop_length, config.num_frames
        # Constants as backend tensors (a torch tensor times a numpy array is refused under autograd).
        cos, sin, inverse_envelope = (ops.convert_to_tensor(a) for a in (self.cos, self.sin, self.inverse_envelope))
        x = ops.matmul(real, cos) + ops.matmul(imag, sin)  # [B, frames, n_fft]
        x = ops.pad(x, [(0, 0), (0, 0), (0, blocks * hop - n_fft)])
        x = ops.reshape(x, (-1, frames, blocks, hop))
        out = 0.0
        for j in range(blocks):  # block j of frame f lands on block f + j of the output
            out = out + ops.pad(x[:, :, j, :], [(0, 0), (j, blocks - 1 - j), (0, 0)])
        out = ops.reshape(out, (-1, (frames + blocks - 1) * hop))
        pad = n_fft // 2
        return out[:, pad: pad + config.window_samples] * inverse_envelope


def check_waveform_loss(kind: str) -> str:
    if kind not in WAVEFORM_LOSSES:
        raise ValueError(f"a waveform loss must be one of {WAVEFORM_LOSSES}. Received: {kind!r}")
    return kind


def _ratio_db(reference, estimate):
    """Per example: 10 log10(|reference|^2 / (|reference - estimate|^2 + tau |reference|^2)), [B]."""
    from keras import ops

    signal = ops.sum(ops.square(reference), axis=-1)
    residual = ops.sum(ops.square(reference - estimate), axis=-1)
    return (10.0 / np.log(10.0)) * (ops.log(signal + _EPS) - ops.log(residual + _TAU * signal + _EPS))


def snr_db(reference, estimate):
    """Capped SNR of `estimate` [B, samples] against `reference`, per example (dB)."""
    return _ratio_db(reference, estimate)


def si_sdr_db(reference, estimate):
    """Capped SI-SDR (zero-mean signals, least-squares scaled reference), per example (dB)."""
    from keras import ops

    reference = reference - ops.mean(reference, axis=-1, keepdims=True)
    estimate = estimate - ops.mean(estimate, axis=-1, keepdims=True)
    scale = ops.sum(estimate * reference, axis=-1, keepdims=True) / (
        ops.sum(ops.square(reference), axis=-1, keepdims=True) + _EPS)
    return _ratio_db(scale * reference, estimate)


def _waveforms(istft: InverseStft, y_true, y_pred):
    """(clean, enhanced) waveforms [B, samples] from the packed spectra and the model's output: a
    gain (one channel), or a gain and a turn of the noisy phase ("cmask", three channels:
    `trainer.targets.enhance_spectrum`)."""
    from keras import ops

    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    gain = (y_pred[..., 0] + 1.0) * 0.5
    real, imag = gain * y_true[..., 0], gain * y_true[..., 1]
    if y_pred.shape[-1] == 3:
        c, s = 1.0 + y_pred[..., 1], y_pred[..., 2]
        size = ops.sqrt(ops.square(c) + ops.square(s))
        c, s = c / size, s / size
        real, imag = real * c - imag * s, real * s + imag * c
    enhanced = istft(real, imag)
    clean = istft(y_true[..., 2], y_true[..., 3])
    return clean, enhanced


def _weighted_mask_huber(y_true, y_pred):
    """Per example: the Huber loss (delta 1) of the output against the magnitude-mask target
    (`trainer.targets`, "mask"), weighted per bin by the noisy magnitude over its mean, [B]."""
    from keras import ops

    y_true = ops.cast(y_true, "float32")
    noisy = ops.sqrt(ops.square(y_true[..., 0]) + ops.square(y_true[..., 1]))
    clean = ops.sqrt(ops.square(y_true[..., 2]) + ops.square(y_true[..., 3]))
    target = 2.0 * ops.clip(clean / (noisy + 1e-12), 0.0, 1.0) - 1.0
    weight = noisy / (ops.mean(noisy, axis=(1, 2), keepdims=True) + 1e-12)
    error = ops.abs(ops.cast(y_pred, "float32")[..., 0] - target)
    huber = ops.where(error <= 1.0, 0.5 * ops.square(error), error - 0.5)
    return ops.mean(weight * huber, axis=(1, 2))


def waveform_loss(kind: str, config: SpectrogramConfig):
    """The Keras loss `fn(y_true, y_pred) -> [B]` for `kind` (`WAVEFORM_LOSSES`).

    y_true: [B, frames, bins, 4], the noisy and the clean spectrum as real and imaginary parts
    (`tf_packed_spectra`); y_pred: the U-Net's output [B, frames, bins, 1] in [-1, 1] (three
    channels for the complex mask, "cmask"; the Huber part of "si-sdr+huber" sees channel 0).
    """
    measure = snr_db if check_waveform_loss(kind) == "snr" else si_sdr_db
    istft = InverseStft(config)

    def loss(y_true, y_pred):
        value = -measure(*_waveforms(istft, y_true, y_pred))
        if kind == "si-sdr+huber":
            return MIX_WEIGHT * value + _weighted_mask_huber(y_true, y_pred)
        return value

    loss.__name__ = "negative_" + kind.replace("-", "_").replace("+", "_plus_")
    return loss


def waveform_metric(kind: str, config: SpectrogramConfig):
    """A Keras metric function: the capped `kind` ("snr" or "si-sdr") of the enhanced window in dB,
    logged as `kind` (e.g. val_si_sdr in history.csv)."""
    if check_waveform_loss(kind) not in ("snr", "si-sdr"):
        raise ValueError(f"a waveform metric is 'snr' or 'si-sdr'. Received: {kind!r}")
    measure = snr_db if kind == "snr" else si_sdr_db
    istft = InverseStft(config)

    def metric(y_true, y_pred):
        return measure(*_waveforms(istft, y_true, y_pred))

    metric.__name__ = kind.replace("-", "_")
    return metric


def packed_spectra(noisy_magnitude, noisy_phase, clean_magnitude, clean_phase) -> np.ndarray:
    """numpy twin of `tf_packed_spectra` (the PyTorch and grain readers): [..., frames, bins, 4] float32."""
    parts = []
    for magnitude, phase in ((noisy_magnitude, noisy_phase), (clean_magnitude, clean_phase)):
        magnitude, phase = np.asarray(magnitude, np.float32), np.asarray(phase, np.float32)
        parts += [magnitude * np.cos(phase), magnitude * np.sin(phase)]
    return np.stack(parts, axis=-1)


def tf_packed_spectra(noisy_magnitude, noisy_phase, clean_magnitude, clean_phase):
    """[B, frames, bins, 4] float32: noisy real, noisy imaginary, clean real, clean imaginary (tf.data)."""
    import tensorflow as tf

    def parts(magnitude, phase):
        magnitude, phase = tf.cast(magnitude, tf.float32), tf.cast(phase, tf.float32)
        return magnitude * tf.cos(phase), magnitude * tf.sin(phase)

    return tf.stack([*parts(noisy_magnitude, noisy_phase), *parts(clean_magnitude, clean_phase)], axis=-1)
