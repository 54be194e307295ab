"""The streaming family ("stream-crn"): a causal convolutional recurrent network over subbands of
32 ms STFT frames, of the class of GTCRN, UL-UNAS and DPCRN, in Keras 3 (every backend).

    net = StreamingCrn(StreamSettings.for_sample_rate(16000), size="small")
    core = net.core_model()           # (spectra [B, T, bins, 2], *states) -> (enhanced spectra, *new states)
    enhanced, *states = core([spectra, *net.initial_states(batch=1)])

The core takes any number of frames T with the state the previous call left, so one call over a
whole utterance and many calls over its pieces (down to one frame) give the same output: every
convolution over time is causal and carries its last inputs as state, the recurrent layers over time
carry their hidden state, and everything else works within one frame.

Per frame (`tfrecord_schema.stream_stft.StreamSettings`: n_fft = 32 ms, hop = n_fft / 2, square-rooted periodic Hann window):
    features    power-law compressed spectrum |X|^0.3 (magnitude, real, imaginary): 3 channels
    bands       the lowest quarter of the bins kept, the rest pooled into ERB-spaced triangular bands
                (`band_matrices`): 257 bins -> 129 bands at 16 kHz, 129 -> 65 at 8 kHz
    encoder     two strided convolutions over bands (/4), then causal depthwise-separable convolutions
                over time with dilations 1, 2, 5 (3 frames each), residual
    middle      dual-path GRUs: one bidirectional over the bands of a frame, one forward over time
                per band (its state is carried), each followed by a projection, layer norm, residual
    decoder     the mirror image, with skip connections, up to a complex mask per band, spread back
                to the bins by the bands' transpose, multiplied with the noisy spectrum

Algorithmic latency: one frame, n_fft samples (32 ms). Training: `trainer.stream_family`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from tfrecord_schema.stream_stft import StreamSettings

COMPRESSION = 0.3  # power-law exponent of the magnitudes the network sees (and the loss compares)
DILATIONS = (1, 2, 5)
TIME_KERNEL = 3
# Channels, GRU units (the recurrent state per band) and dual-path blocks of each size.
SIZES: dict[str, dict[str, int]] = {
    # One wider dual-path block rather than two narrow ones: on one CPU core the recurrences over time
    # cost by the step, not by the width (ONNX: 0.016 x real time against 0.020 for 24/40 x 2 blocks).
    "small": {"channels": 32, "units": 48, "dual_path_blocks": 1},  # 52 K parameters at 16 kHz (GTCRN: 48 K)
    "large": {"channels": 56, "units": 128, "dual_path_blocks": 3},  # 479 K
}


def band_matrices(bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool [bins, bands], spread [bands, bins]): the lowest quarter of the bins as they are, the rest
    in triangular bands equally spaced on the ERB-rate scale; `pool` averages the bins of a band,
    `spread` gives each bin the weighted mean of the bands over it (each bin's weights sum to one)."""
    low = (bins - 1) // 4 + 1
    high = low - 1
    erb = lambda f: 21.4 * np.log10(1.0 + 0.00437 * f)  # noqa: E731  (ERB-rate of a bin index; the scale cancels)
    edges = np.linspace(erb(low - 1), erb(bins - 1), high + 1)  # the last band centred on the top bin
    edges = np.append(edges, 2 * edges[-1] - edges[-2])
    position = erb(np.arange(bins, dtype=np.float64))
    triangles = np.zeros((bins, high))
    for band in range(high):
        left, centre, right = edges[band], edges[band + 1], edges[band + 2]
        rising = (position - left) / (centre - left)
        falling = (right - position) / (right - centre)
        triangles[:, band] = np.clip(np.minimum(rising, falling), 0.0, None)
    triangles[:low] = 0.0
    pool = np.zeros((bins, low + high))
    pool[np.arange(low), np.arange(low)] = 1.0
    pool[:, low:] = triangles / np.maximum(triangles.sum(axis=0, keepdims=True), 1e-12)
    spread = np.zeros((low + high, bins))
    spread[np.arange(low), np.arange(low)] = 1.0
    spread[low:, low:] = (triangles / np.maximum(triangles.sum(axis=1, keepdims=True), 1e-12))[low:].T
    return pool.astype(np.float32), spread.astype(np.float32)


@keras.saving.register_keras_serializable(package="speech_enhance")
class Constant(layers.Layer):
    """A fixed matrix applied over the second-to-last axis of [B, T, rows, C] (no weights to train)."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, np.float32)

    def call(self, x):
        return ops.einsum("btfc,fg->btgc", x, ops.convert_to_tensor(self.matrix, dtype=x.dtype))

    def compute_output_shape(self, shape):
        return (*shape[:2], self.matrix.shape[1], shape[3])

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist()}


@keras.saving.register_keras_serializable(package="speech_enhance")
class Features(layers.Layer):
    """[B, T, bins, 2] spectra -> [B, T, bins, 3]: |X|^c, and the real and imaginary parts at that magnitude."""

    def call(self, x):
        magnitude = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + 1e-12)
        compressed = ops.power(magnitude, COMPRESSION)
        return ops.concatenate([compressed, x * (compressed / magnitude)], axis=-1)

    def compute_output_shape(self, shape):
        return (*shape[:-1], 3)


@keras.saving.register_keras_serializable(package="speech_enhance")
class ApplyMask(layers.Layer):
    """The complex mask [B, T, bins, 2] times the noisy spectrum [B, T, bins, 2]."""

    def call(self, mask, spectrum):
        mr, mi, xr, xi = mask[..., 0], mask[..., 1], spectrum[..., 0], spectrum[..., 1]
        return ops.stack([mr * xr - mi * xi, mr * xi + mi * xr], axis=-1)


@keras.saving.register_keras_serializable(package="speech_enhance")
class CausalPad(layers.Layer):
    """concat(state, x) over time, and the new state: its last `frames` frames."""

    def __init__(self, frames, **kwargs):
        super().__init__(**kwargs)
        self.frames = int(frames)

    def call(self, x, state):
        joined = ops.concatenate([ops.cast(state, x.dtype), x], axis=1)
        return joined, joined[:, -self.frames:]

    def compute_output_shape(self, x_shape, state_shape):
        return (x_shape[0], None, *x_shape[2:]), (x_shape[0], self.frames, *x_shape[2:])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="speech_enhance")
class BandsToBatch(layers.Layer):
    """[B, T, F, C] -> [B * F, T, C] (each band's sequence over time), or back with `inverse`."""

    def __init__(self, inverse=False, **kwargs):
        super().__init__(**kwargs)
        self.inverse = bool(inverse)

    def call(self, x, like=None):
        if self.inverse:  # x [B * F, T, C], like [B, T, F, C]
            shape = ops.shape(like)
            x = ops.reshape(x, (shape[0], shape[2], shape[1], x.shape[-1]))
            return ops.transpose(x, (0, 2, 1, 3))
        shape = ops.shape(x)
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (shape[0] * shape[2], shape[1], x.shape[-1]))

    def compute_output_shape(self, x_shape, like_shape=None):
        if self.inverse:
            return (*like_shape[:3], x_shape[-1])
        return (None, x_shape[1], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "inverse": self.inverse}


@keras.saving.register_keras_serializable(package="speech_enhance")
class FramesToBatch(layers.Layer):
    """[B, T, F, C] -> [B * T, F, C] (each frame's bands), or back with `inverse`."""

    def __init__(self, inverse=False, **kwargs):
        super().__init__(**kwargs)
        self.inverse = bool(inverse)

    def call(self, x, like=None):
        if self.inverse:
            shape = ops.shape(like)
            return ops.reshape(x, (shape[0], shape[1], shape[2], x.shape[-1]))
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0] * shape[1], shape[2], x.shape[-1]))

    def compute_output_shape(self, x_shape, like_shape=None):
        if self.inverse:
            return (*like_shape[:3], x_shape[-1])
        return (None, x_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "inverse": self.inverse}


@keras.saving.register_keras_serializable(package="speech_enhance")
class StateToBatch(layers.Layer):
    """A GRU state [B, F, units] <-> [B * F, units]."""

    def __init__(self, inverse=False, bands=0, **kwargs):
        super().__init__(**kwargs)
        self.inverse, self.bands = bool(inverse), int(bands)

    def call(self, x):
        if self.inverse:
            return ops.reshape(x, (-1, self.bands, x.shape[-1]))
        return ops.reshape(x, (-1, x.shape[-1]))

    def compute_output_shape(self, shape):
        return (None, self.bands, shape[-1]) if self.inverse else (None, shape[-1])

    def get_config(self):
        return {**super().get_config(), "inverse": self.inverse, "bands": self.bands}


class StreamingCrn:
    """Builds the core model of one size for one `StreamSettings` (see the module docstring)."""

    def __init__(self, settings: StreamSettings, size: str = "small") -> None:
        if size not in SIZES:
            raise ValueError(f"size must be one of {tuple(SIZES)}. Received: size={size!r}")
        self.settings, self.size = settings, size
        self.channels, self.units, self.blocks = (SIZES[size][k] for k in ("channels", "units", "dual_path_blocks"))
        self.pool, self.spread = band_matrices(settings.bins)
        self.bands = self.pool.shape[1]
        self.inner_bands = math.ceil(math.ceil(self.bands / 2) / 2)  # after two stride-2 convolutions ("same")

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-example shapes of the states, in the core model's order: the convolution caches of the
        encoder then the decoder ([frames, bands, channels]), then the GRU states ([bands, units])."""
        conv = [((TIME_KERNEL - 1) * d, self.inner_bands, self.channels) for d in DILATIONS]
        return conv + conv[::-1] + [(self.inner_bands, self.units)] * self.blocks

    def describe(self, model: keras.Model) -> dict[str, Any]:
        """model.json's "streaming" entry: the STFT, the latency, the size and the states to carry."""
        frames_per_second = self.settings.sample_rate / self.settings.hop_length
        return {**self.settings.to_dict(), "size": self.size, "parameters": int(model.count_params()),
                "macs_per_second": int(round(self.macs_per_frame() * frames_per_second)),
                "state_shapes": [list(shape) for shape in self.state_shapes()]}

    def macs_per_frame(self) -> int:
        """Multiply-accumulates of one frame through the core (convolutions, GRUs, projections and the
        band matrices; activations and norms not counted)."""
        c, u, bins, bands, inner = self.channels, self.units, self.settings.bins, self.bands, self.inner_bands
        middle = math.ceil(bands / 2)
        band_matrices = bins * bands * 3 + bands * bins * 2
        encoder = middle * c * 5 * 3 + inner * c * 5 * c
        temporal = 2 * len(DILATIONS) * inner * (2 * c * c + c * TIME_KERNEL * 3)
        gru = lambda inputs, units: 3 * (inputs * units + units * units)  # noqa: E731
        # intra: both directions over the bands of the frame; inter: one step per band; two projections
        dual_path = self.blocks * inner * (2 * gru(c, u // 2) + gru(c, u) + (u // 2 * 2) * c + u * c)
        decoder = inner * c * 5 * c + middle * c * 5 * 2
        return band_matrices + encoder + temporal + dual_path + decoder

    def initial_states(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros((batch, *shape), np.float32) for shape in self.state_shapes()]

    def _temporal_block(self, x, state, dilation: int, name: str):
        """Pointwise, causal depthwise 3 x 3 (time dilated), pointwise; residual. Returns (y, new state)."""
        c = self.channels
        h = layers.Conv2D(c, 1, name=f"{name}_in")(x)
        h = layers.BatchNormalization(name=f"{name}_in_bn")(h)
        h = layers.PReLU(shared_axes=(1, 2), name=f"{name}_in_act")(h)
        h, new_state = CausalPad((TIME_KERNEL - 1) * dilation, name=f"{name}_cache")(h, state)
        h = layers.ZeroPadding2D(((0, 0), (1, 1)), name=f"{name}_fpad")(h)
        h = layers.DepthwiseConv2D((TIME_KERNEL, 3), dilation_rate=(dilation, 1), name=f"{name}_dw")(h)
        h = layers.BatchNormalization(name=f"{name}_dw_bn")(h)
        h = layers.PReLU(shared_axes=(1, 2), name=f"{name}_dw_act")(h)
        h = layers.Conv2D(c, 1, name=f"{name}_out")(h)
        h = layers.BatchNormalization(name=f"{name}_out_bn")(h)
        return layers.Add(name=f"{name}_res")([x, h]), new_state

    def _dual_path(self, x, state, index: int):
        name, c = f"dp{index}", self.channels
        frames = FramesToBatch(name=f"{name}_frames")(x)
        h = layers.Bidirectional(layers.GRU(self.units // 2, return_sequences=True), name=f"{name}_intra")(frames)
        h = layers.Dense(c, name=f"{name}_intra_proj")(h)
        h = FramesToBatch(inverse=True, name=f"{name}_frames_back")(h, x)
        x = layers.Add(name=f"{name}_intra_res")([x, layers.LayerNormalization(name=f"{name}_intra_ln")(h)])
        sequences = BandsToBatch(name=f"{name}_bands")(x)
        gru = layers.GRU(self.units, return_sequences=True, return_state=True, name=f"{name}_inter")
        h, new_state = gru(sequences, initial_state=StateToBatch(name=f"{name}_state_in")(state))
        h = layers.Dense(c, name=f"{name}_inter_proj")(h)
        h = BandsToBatch(inverse=True, name=f"{name}_bands_back")(h, x)
        x = layers.Add(name=f"{name}_inter_res")([x, layers.LayerNormalization(name=f"{name}_inter_ln")(h)])
        return x, StateToBatch(inverse=True, bands=self.inner_bands, name=f"{name}_state_out")(new_state)

    def core_model(self) -> keras.Model:
        s, c = self.settings, self.channels
        spectra = keras.Input((None, s.bins, 2), name="spectra")
        states = [keras.Input(shape, name=f"state_{i}") for i, shape in enumerate(self.state_shapes())]
        new_states = []
        x = Constant(self.pool, name="pool_bands")(Features(name="features")(spectra))
        skips = []
        for i in range(2):
            x = layers.Conv2D(c, (1, 5), strides=(1, 2), padding="same", name=f"enc{i}")(x)
            x = layers.BatchNormalization(name=f"enc{i}_bn")(x)
            x = layers.PReLU(shared_axes=(1, 2), name=f"enc{i}_act")(x)
            skips.append(x)
        for i, d in enumerate(DILATIONS):
            x, new = self._temporal_block(x, states[i], d, f"enc_t{i}")
            skips.append(x)
            new_states.append(new)
        gru_states = []
        for i in range(self.blocks):
            x, new = self._dual_path(x, states[2 * len(DILATIONS) + i], i)
            gru_states.append(new)
        for i, d in enumerate(reversed(DILATIONS)):
            x = layers.Add(name=f"dec_t{i}_skip")([x, skips.pop()])
            x, new = self._temporal_block(x, states[len(DILATIONS) + i], d, f"dec_t{i}")
            new_states.append(new)
        for i, width in enumerate((-(-self.bands // 2), self.bands)):
            x = layers.Add(name=f"dec{i}_skip")([x, skips.pop()])
            last = i == 1
            x = layers.Conv2DTranspose(2 if last else c, (1, 5), strides=(1, 2), padding="same", name=f"dec{i}")(x)
            x = layers.Cropping2D(((0, 0), (0, x.shape[2] - width)), name=f"dec{i}_crop")(x)
            if not last:
                x = layers.BatchNormalization(name=f"dec{i}_bn")(x)
                x = layers.PReLU(shared_axes=(1, 2), name=f"dec{i}_act")(x)
        mask = Constant(self.spread, name="spread_bands")(x)
        enhanced = ApplyMask(name="enhanced")(mask, spectra)
        return keras.Model([spectra, *states], [enhanced, *new_states, *gru_states],
                           name=f"stream_crn_{self.size}")
