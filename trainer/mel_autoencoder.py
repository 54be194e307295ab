"""The mel-spectrogram CNN autoencoder (a popular tutorial design), made a denoiser of this toolkit.

The network, kept as published (74,497 parameters whatever the input size):

    Conv2D 32 (3x3, relu) -> MaxPool 2 -> Conv2D 64 (3x3, relu) -> MaxPool 2
    -> Conv2DTranspose 64 (3x3, stride 2, relu) -> Conv2DTranspose 32 (3x3, stride 2, relu)
    -> Conv2D 1 (3x3, sigmoid)

trained noisy mel -> clean mel with binary cross-entropy, mels scaled to 0..1. The tutorial runs it
on 128 mel bands x 16 frames; here it runs on whole windows of the dataset (128 frames x
`mel_bands`): it is fully convolutional, so only the context the 3x3 kernels see matters. 64 mel
bands by default: with n_fft 255 at 8 kHz the linear bins are 31 Hz apart; 128 mel bands are 18 Hz
apart at the bottom, so the lowest bands each hold a single bin that their neighbours share (the
mel axis would only repeat the linear one there), and more than 150 leave bands with no bin at all;
64 bands hold at least two bins each.

Features: the mel power spectrogram (the toolkit's magnitudes squared through a Slaney mel
filterbank, `mel_filterbank`), in dB, scaled from [lo_db, hi_db] to [0, 1] and clipped, the range
fixed by the spectrogram config (no per-window normalisation: the level survives). The training
pipeline computes them in TensorFlow (`tf_scaled_mel`), the exported model in Keras ops
(`ScaledMel`); a test checks that the two agree.

The exported model maps the predictor's input (scaled log magnitude [B, T, F, 1]) to a mask: the
clean mel estimate over the noisy mel is a gain per mel band (at most 1), spread back to the linear
bins through the filterbank (each bin takes the weighted mean of the gains of the bands covering it,
`MelToLinearMask`), and the noisy phase is reused, as for every family.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from tfrecord_schema.config import SpectrogramConfig

PARAMETERS = 74_497  # the published count; a test checks it


def mel_filterbank(sample_rate: int, n_fft: int, mel_bands: int) -> np.ndarray:
    """Slaney-style mel filterbank [mel_bands, n_fft // 2 + 1] from 0 Hz to Nyquist, area-normalised
    (librosa.filters.mel's default; a test compares the two)."""
    if not isinstance(mel_bands, int) or mel_bands < 1:
        raise ValueError(f"mel_bands must be a positive integer. Received: mel_bands={mel_bands!r}")
    f_sp, min_log_hz, min_log_mel, log_step = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / log_step, f / f_sp)

    def mel_to_hz(m):
        m = np.asarray(m, np.float64)
        return np.where(m >= min_log_mel, min_log_hz * np.exp(log_step * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)  # the STFT's bin centres (odd n_fft too)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), mel_bands + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:mel_bands + 2] - mel_f[:mel_bands]))[:, None]
    empty = np.flatnonzero(weights.max(axis=1) == 0)
    if empty.size:
        raise ValueError(f"mel_bands={mel_bands} is too many for {n_fft // 2 + 1} bins at {sample_rate} Hz: "
                         f"{empty.size} mel filters cover no bin. Use fewer mel bands.")
    return weights.astype(np.float32)


def mel_to_linear_weights(filterbank: np.ndarray) -> np.ndarray:
    """[mel_bands, bins]: each column sums to 1, so a linear bin's gain is the filter-weighted mean of
    the gains of the mel bands covering it; a bin no filter covers (0 Hz) takes its nearest band's."""
    weights = filterbank.astype(np.float64).copy()
    for b in np.flatnonzero(weights.sum(axis=0) == 0):
        centres = (filterbank * np.arange(filterbank.shape[1])).sum(axis=1) / filterbank.sum(axis=1)
        weights[np.argmin(np.abs(centres - b)), b] = 1.0
    return (weights / weights.sum(axis=0, keepdims=True)).astype(np.float32)


def scale_range_db(config: SpectrogramConfig) -> tuple[float, float]:
    """(lo_db, hi_db) of the mel features: the U-Net's input range widened by half on both sides
    (-90 to +30 dB by default, which holds speech at -35 to -15 dBFS and its noise floor)."""
    return (config.input_offset_db - 1.5 * config.input_scale_db, config.input_offset_db + 1.5 * config.input_scale_db)


def tf_scaled_mel(magnitude, config: SpectrogramConfig, mel_bands: int):
    """TensorFlow: magnitudes [B, T, F] -> scaled mel features [B, T, mel_bands] in [0, 1]."""
    import tensorflow as tf

    fb = tf.constant(mel_filterbank(config.sample_rate, config.n_fft, mel_bands).T)  # [F, M]
    power = tf.square(tf.cast(magnitude, tf.float32))
    mel = tf.tensordot(power, fb, axes=[[2], [0]])
    floor = 10.0 ** (config.log_floor_db / 10.0)
    db = (10.0 / np.log(10.0)) * tf.math.log(tf.maximum(mel, floor))
    lo, hi = scale_range_db(config)
    return tf.clip_by_value((db - lo) / (hi - lo), 0.0, 1.0)


class _MelLayer(layers.Layer):
    def __init__(self, sample_rate: int, n_fft: int, mel_bands: int, log_floor_db: float, input_offset_db: float,
                 input_scale_db: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sample_rate, self.n_fft, self.mel_bands = int(sample_rate), int(n_fft), int(mel_bands)
        self.log_floor_db = float(log_floor_db)
        self.input_offset_db, self.input_scale_db = float(input_offset_db), float(input_scale_db)
        self.filterbank = mel_filterbank(self.sample_rate, self.n_fft, self.mel_bands)
        self.lo_db = self.input_offset_db - 1.5 * self.input_scale_db
        self.hi_db = self.input_offset_db + 1.5 * self.input_scale_db

    @classmethod
    def for_config(cls, config: SpectrogramConfig, mel_bands: int, **kwargs: Any) -> "_MelLayer":
        return cls(config.sample_rate, config.n_fft, mel_bands, config.log_floor_db, config.input_offset_db,
                   config.input_scale_db, **kwargs)

    def mel_db(self, x):
        """Model input (scaled log magnitude [B, T, F, 1]) -> mel power in dB [B, T, M]."""
        db = ops.cast(ops.squeeze(x, -1), "float32") * self.input_scale_db + self.input_offset_db
        power = ops.exp(db * (math.log(10.0) / 10.0))
        mel = ops.einsum("btf,mf->btm", power, ops.convert_to_tensor(self.filterbank))
        floor = 10.0 ** (self.log_floor_db / 10.0)
        return (10.0 / math.log(10.0)) * ops.log(ops.maximum(mel, floor))

    def get_config(self):
        return {**super().get_config(), "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "mel_bands": self.mel_bands, "log_floor_db": self.log_floor_db,
                "input_offset_db": self.input_offset_db, "input_scale_db": self.input_scale_db}


@keras.saving.register_keras_serializable(package="speech_enhance")
class ScaledMel(_MelLayer):
    """Model input [B, T, F, 1] -> scaled mel features [B, T, M, 1] in [0, 1] (as `tf_scaled_mel`)."""

    def call(self, x):
        scaled = (self.mel_db(x) - self.lo_db) / (self.hi_db - self.lo_db)
        return ops.clip(scaled, 0.0, 1.0)[..., None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.mel_bands, 1)


@keras.saving.register_keras_serializable(package="speech_enhance")
class MelToLinearMask(_MelLayer):
    """(model input [B, T, F, 1], clean mel estimate [B, T, M, 1] in [0, 1]) -> mask [B, T, F, 1] in [0, 1].

    The gain of a mel band is the estimated clean mel magnitude over the noisy one, at most 1; the
    linear bins take the filter-weighted mean of the gains of the bands covering them."""

    def call(self, inputs):
        x, estimate = inputs
        noisy_db = self.mel_db(x)
        clean_db = ops.cast(estimate[..., 0], "float32") * (self.hi_db - self.lo_db) + self.lo_db
        gain = ops.clip(ops.exp((clean_db - noisy_db) * (math.log(10.0) / 20.0)), 0.0, 1.0)
        spread = ops.convert_to_tensor(mel_to_linear_weights(self.filterbank))
        return ops.einsum("btm,mf->btf", gain, spread)[..., None]

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])


def build_autoencoder(frames: int, mel_bands: int, name: str = "mel_autoencoder") -> keras.Model:
    """The published autoencoder: scaled noisy mel [B, frames, mel_bands, 1] -> clean mel estimate in [0, 1]."""
    if frames % 4 or mel_bands % 4:
        raise ValueError(f"The autoencoder pools twice by 2: frames and mel_bands must be multiples of 4. "
                         f"Received: frames={frames}, mel_bands={mel_bands}")
    inputs = keras.Input(shape=(frames, mel_bands, 1), name="noisy_mel")
    x = layers.Conv2D(32, 3, activation="relu", padding="same", name="encode1")(inputs)
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", padding="same", name="encode2")(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = layers.Conv2DTranspose(64, 3, strides=2, activation="relu", padding="same", name="decode1")(x)
    x = layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same", name="decode2")(x)
    outputs = layers.Conv2D(1, 3, activation="sigmoid", padding="same", dtype="float32", name="clean_mel")(x)
    return keras.Model(inputs, outputs, name=name)


def inference_model(autoencoder: keras.Model, config: SpectrogramConfig, mel_bands: int) -> keras.Model:
    """The exported model: [B, T, F, 1] scaled log magnitude -> mask in [-1, 1] (the "mask" target)."""
    inputs = keras.Input(shape=(*config.shape, 1), name="noisy_log_magnitude")
    mel = ScaledMel.for_config(config, mel_bands, name="scaled_mel", dtype="float32")(inputs)
    estimate = autoencoder(mel)
    mask = MelToLinearMask.for_config(config, mel_bands, name="mel_to_linear_mask", dtype="float32")([inputs, estimate])
    output = layers.Rescaling(2.0, offset=-1.0, name="mask_head", dtype="float32")(mask)
    return keras.Model(inputs, output, name="mel_autoencoder_denoiser")
