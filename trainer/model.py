"""The U-Net denoiser, built from `keras.layers` only (runs on the TensorFlow and JAX backends).

The reference architecture (vbelz/Speech-enhancement, 1.94 M parameters on 128 x 128 x 1):

    encoder  level 1..5: two 3x3 convs (16, 32, 64, 128, 256 filters) + LeakyReLU each,
             2x2 max-pooling between levels, dropout 0.5 after the two deepest levels
    decoder  per level: UpSampling2D(2) -> 2x2 conv (+ LeakyReLU) -> concatenate the skip ->
             two 3x3 convs + LeakyReLU
    head     3x3 conv with 2 filters + LeakyReLU, then a 1x1 conv to 1 channel with tanh

All kernels use He-normal initialisation. The input is the scaled log magnitude [frames, bins, 1]
(`trainer.targets.model_input`) and the output, in [-1, 1], is the target of `trainer.targets`.
The head always computes in float32, so a model trained under a mixed-precision policy still ends
in a float32 tanh.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from tfrecord_schema.config import SpectrogramConfig
from trainer.config import TrainConfig, check_unet_args

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


def build_unet(config: SpectrogramConfig, base_filters: int = _DEFAULT.base_filters, depth: int = _DEFAULT.depth,
               dropout: float = _DEFAULT.dropout, negative_slope: float = _DEFAULT.negative_slope,
               name: str = "unet") -> keras.Model:
    """The reference U-Net for spectrograms of `config.shape`.

    Args:
        config: the dataset's spectrogram config; the input is [frames, bins, 1].
        base_filters: filters of the first level; level i has base_filters * 2**i.
        depth: number of levels (the input is max-pooled depth - 1 times).
        dropout: rate after the two deepest levels (0.5 in the reference).
        negative_slope: slope of LeakyReLU for x < 0 (0.3, Keras's default, as in the reference).
        name: the model's name.

    Returns an uncompiled functional `keras.Model` mapping [B, frames, bins, 1] -> [B, frames, bins, 1].
    """
    _check_args(config, base_filters, depth, dropout, negative_slope)
    init = "he_normal"

    def conv(x, filters, kernel, label):
        x = layers.Conv2D(filters, kernel, padding="same", kernel_initializer=init, name=f"{label}_conv")(x)
        return layers.LeakyReLU(negative_slope=negative_slope, name=f"{label}_act")(x)

    inputs = keras.Input(shape=(*config.shape, 1), name="noisy_log_magnitude")
    x = inputs
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
    x = conv(x, 2, 3, "head")
    outputs = layers.Conv2D(1, 1, activation="tanh", kernel_initializer=init, dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)
