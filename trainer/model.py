"""The U-Net denoiser, built from `keras.layers` only (runs on the TensorFlow and JAX backends).

The reference architecture (vbelz/Speech-enhancement, 1.94 M parameters on 128 x 128 x 1):

    encoder  level 1..5: two 3x3 convs (16, 32, 64, 128, 256 filters) + LeakyReLU each,
             2x2 max-pooling between levels, dropout 0.5 after the two deepest levels
    decoder  per level: UpSampling2D(2) -> 2x2 conv (+ LeakyReLU) -> concatenate the skip ->
             two 3x3 convs + LeakyReLU
    head     3x3 conv with 2 filters + LeakyReLU, then a 1x1 conv to 1 channel with tanh

All kernels use He-normal initialisation. The input is the scaled log magnitude [frames, bins, 1]
(`trainer.targets.model_input`) and the output, in [-1, 1], is the target of `trainer.targets`.

For the complex mask ("cmask") the input also holds cos and sin of the noisy phase, and the output
has three channels. The absolute phase of a bin says little by itself (it turns by a fixed angle
per frame and bin for any steady sound), so a fixed first layer, `PhaseDeltas`, turns it into what
convolutions can use: per bin, the phase change from the previous frame less the change a steady
sinusoid at the bin's centre would make (the instantaneous-frequency deviation), and the phase
change from the bin below less that of a pulse at the frame's centre (the group-delay deviation),
each as cos and sin. A steady tone's deviation is the same whatever its starting phase, while its
absolute phase differs from frame to frame and from tone to tone.
The head always computes in float32, so a model trained under a mixed-precision policy still ends
in a float32 tanh.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from tfrecord_schema.config import SpectrogramConfig
from trainer.config import TrainConfig, check_unet_args
from trainer.targets import COMPLEX_TARGETS, input_channels, output_channels

_DEFAULT = TrainConfig()


def _check_args(config: SpectrogramConfig, base_filters: Any, depth: Any, dropout: Any,
                negative_slope: Any) -> None:
    if not isinstance(config, SpectrogramConfig):
        raise ValueError(f"config must be a SpectrogramConfig. Received: config={config!r}")
    check_unet_args(base_filters, depth, dropout, negative_slope)
    factor = 2 ** (depth - 1)
    frames, bins = config.shape
    if frames % factor or bins % factor:
        raise ValueError(
            f"build_unet(): a U-Net of depth {depth} halves the spectrogram {depth - 1} times, so "
            f"frames and bins must be multiples of {factor}. Received: shape={config.shape} "
            f"(frames, bins). Use a smaller depth or a config whose shape is divisible by {factor}.")


@keras.saving.register_keras_serializable(package="speech_enhance")
class PhaseDeltas(layers.Layer):
    """[B, frames, bins, 3] (scaled log magnitude, cos and sin of the phase) -> [B, frames, bins, 5]:
    the log magnitude, then cos and sin of the instantaneous-frequency deviation and of the
    group-delay deviation (the module's docstring). The first frame's and the lowest bin's
    deviations are 0 (cos 1, sin 0). No weights."""

    def __init__(self, n_fft: int, hop_length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_fft": self.n_fft, "hop_length": self.hop_length}

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 5)

    def call(self, x):
        x = ops.cast(x, "float32")
        bins = x.shape[2]
        c, s = x[..., 1], x[..., 2]
        # Along time: z_t conj(z_{t-1}), turned back by the advance 2 pi k hop / n_fft of bin k.
        advance = 2.0 * np.pi * np.arange(bins) * self.hop_length / self.n_fft
        dt = _turn(*_times_conjugate(c[:, 1:], s[:, 1:], c[:, :-1], s[:, :-1]), -advance)
        dt = [ops.pad(d, [(0, 0), (1, 0), (0, 0)], constant_values=v) for d, v in zip(dt, (1.0, 0.0))]
        # Along frequency: z_k conj(z_{k-1}), turned back by a centred pulse's step -2 pi (n_fft // 2) / n_fft.
        step = -2.0 * np.pi * (self.n_fft // 2) / self.n_fft
        df = _turn(*_times_conjugate(c[:, :, 1:], s[:, :, 1:], c[:, :, :-1], s[:, :, :-1]), -step)
        df = [ops.pad(d, [(0, 0), (0, 0), (1, 0)], constant_values=v) for d, v in zip(df, (1.0, 0.0))]
        return ops.stack([x[..., 0], *dt, *df], axis=-1)


def _times_conjugate(c1, s1, c2, s2):
    """(cos, sin) of the angle of e^{i a} e^{-i b} from (cos a, sin a) and (cos b, sin b)."""
    return c1 * c2 + s1 * s2, s1 * c2 - c1 * s2


def _turn(c, s, angle):
    """(cos, sin) of the angle turned by `angle` (a constant, broadcast over the last axis)."""
    cos, sin = ops.convert_to_tensor(np.cos(angle).astype(np.float32)), ops.convert_to_tensor(np.sin(angle).astype(np.float32))
    return c * cos - s * sin, c * sin + s * cos


def build_unet(config: SpectrogramConfig, base_filters: int = _DEFAULT.base_filters, depth: int = _DEFAULT.depth,
               dropout: float = _DEFAULT.dropout, negative_slope: float = _DEFAULT.negative_slope,
               name: str = "unet", target: str = "noise") -> keras.Model:
    """The reference U-Net for spectrograms of `config.shape`.

    Args:
        config: the dataset's spectrogram config; the input is [frames, bins, 1].
        base_filters: filters of the first level; level i has base_filters * 2**i.
        depth: number of levels (the input is max-pooled depth - 1 times).
        dropout: rate after the two deepest levels (0.5 in the reference).
        negative_slope: slope of LeakyReLU for x < 0 (0.3, Keras's default, as in the reference).
        name: the model's name.
        target: what it predicts (`trainer.targets`); "cmask" takes and gives three channels per bin.

    Returns an uncompiled functional `keras.Model` mapping [B, frames, bins, input_channels(target)]
    -> [B, frames, bins, output_channels(target)].
    """
    _check_args(config, base_filters, depth, dropout, negative_slope)
    init = "he_normal"

    def conv(x, filters, kernel, label):
        x = layers.Conv2D(filters, kernel, padding="same", kernel_initializer=init, name=f"{label}_conv")(x)
        return layers.LeakyReLU(negative_slope=negative_slope, name=f"{label}_act")(x)

    inputs = keras.Input(shape=(*config.shape, input_channels(target)),
                         name="noisy_log_magnitude" if input_channels(target) == 1 else "noisy_features")
    x = inputs
    if target in COMPLEX_TARGETS:
        x = PhaseDeltas(config.n_fft, config.hop_length, name="phase_deltas", dtype="float32")(x)
    skips = []
    for level in range(depth):
        filters = base_filters * 2**level
        x = conv(x, filters, 3, f"down{level + 1}a")
        x = conv(x, filters, 3, f"down{level + 1}b")
        if dropout and level >= depth - 2:
            x = layers.Dropout(dropout, name=f"down{level + 1}_dropout")(x)
        if level < depth - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"down{level + 1}_pool")(x)
    for level in reversed(range(depth - 1)):
        filters = base_filters * 2**level
        x = layers.UpSampling2D(2, name=f"up{level + 1}_upsample")(x)
        x = conv(x, filters, 2, f"up{level + 1}_proj")
        x = layers.Concatenate(axis=-1, name=f"up{level + 1}_concat")([skips[level], x])
        x = conv(x, filters, 3, f"up{level + 1}a")
        x = conv(x, filters, 3, f"up{level + 1}b")
    x = conv(x, 2 * output_channels(target), 3, "head")
    outputs = layers.Conv2D(output_channels(target), 1, activation="tanh", kernel_initializer=init, dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)
