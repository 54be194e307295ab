"""Training the streaming family (`trainer.streaming_crn`): its STFT in the graph, its loss, its family entry.

    model = build_training_model(spectrogram, "small")   # store window spectra [B, frames, bins, 2] -> waveform
    model.compile(optimizer, loss=hybrid_loss(spectrogram), metrics=[si_sdr_metric(spectrogram)])

Either kind of store gives the training pipeline the noisy and clean spectra of each window at the
store's (or the source store's training) STFT. The training model turns the noisy window back into
samples (`InverseStft`, exact), takes its own 32 ms STFT (`Stft`, `StreamSettings`), runs the core
with zero states over every frame, and overlap-adds the enhanced frames (`OverlapAdd`) into the
enhanced window. The exported model is the core alone; the predictor does the STFT around it.
`trainer.families.StreamCrnFamily` is the family's entry.

The loss is the hybrid one of the published streaming models, per example:
    70 x MSE(|Y|^0.3, |S|^0.3) + 30 x MSE of the compressed complex spectra (Y |Y|^-0.7 against S |S|^-0.7)
    - SI-SDR(s, y) / 10 (in bels, capped at 30 dB as `trainer.waveform_loss`)
on the family's own STFT of the enhanced window y and of the clean window s.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.stream_stft import StreamSettings
from trainer.backend import dtype_policy
from trainer.streaming_crn import COMPRESSION, StreamingCrn
from trainer.waveform_loss import InverseStft, inverse_dft_basis, si_sdr_db

SPECTRUM_WEIGHT, COMPLEX_WEIGHT, SI_SDR_WEIGHT = 70.0, 30.0, 0.1


def frame_count(samples: int, hop: int) -> int:
    """Frames that cover `samples` samples and flush the last of them out of the overlap-add."""
    return -(-samples // hop) + 1


class Stft:
    """[B, samples] -> [B, frames, bins, 2] at `StreamSettings` (keras.ops; `frame_count` frames):
    the signal preceded by n_fft - hop zeros, frame t = samples [t hop, t hop + n_fft) of that, times
    the window, real DFT. The predictor's numpy STFT follows the same convention."""

    def __init__(self, settings: StreamSettings, samples: int) -> None:
        self.settings, self.samples = settings, int(samples)
        self.frames = frame_count(self.samples, settings.hop_length)
        n, k = np.arange(settings.n_fft)[:, None], np.arange(settings.bins)[None, :]
        angle = 2.0 * np.pi * n * k / settings.n_fft
        window = settings.window()[:, None]
        self.basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window], axis=1).astype(np.float32)

    def __call__(self, signal):
        s, hop = self.settings, self.settings.hop_length
        end = (self.frames + 1) * hop - (s.n_fft - hop) - self.samples
        x = ops.pad(ops.cast(signal, "float32"), [(0, 0), (s.n_fft - hop, end)])
        blocks = ops.reshape(x, (-1, self.frames + 1, hop))
        frames = ops.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=-1)  # [B, frames, n_fft]
        spectra = ops.matmul(frames, ops.convert_to_tensor(self.basis))
        return ops.stack([spectra[..., :s.bins], spectra[..., s.bins:]], axis=-1)


class OverlapAdd:
    """[B, frames, bins, 2] -> [B, samples]: inverse real DFT times the window, overlap-added at the
    hop; output sample i is overlap-add sample i + n_fft - hop (undoing `Stft`'s padding)."""

    def __init__(self, settings: StreamSettings, samples: int) -> None:
        self.settings, self.samples = settings, int(samples)
        cos, sin = inverse_dft_basis(settings.n_fft, settings.window())
        self.basis = np.concatenate([cos, sin], axis=0)  # [2 bins, n_fft]

    def __call__(self, spectra):
        s, hop = self.settings, self.settings.hop_length
        packed = ops.concatenate([spectra[..., 0], spectra[..., 1]], axis=-1)
        frames = ops.matmul(packed, ops.convert_to_tensor(self.basis))  # [B, frames, n_fft]
        head = ops.pad(frames[:, :, :hop], [(0, 0), (0, 1), (0, 0)])
        tail = ops.pad(frames[:, :, hop:], [(0, 0), (1, 0), (0, 0)])
        out = ops.reshape(head + tail, (ops.shape(frames)[0], -1))
        start = s.n_fft - hop
        return out[:, start: start + self.samples]


@keras.saving.register_keras_serializable(package="speech_enhance")
class WindowToWaveform(layers.Layer):
    """Store window spectra [B, frames, bins, 2] (the store's STFT) -> the family's spectra of its samples."""

    def __init__(self, store_spectrogram: dict, sample_rate: int, **kwargs):
        super().__init__(**kwargs)
        self.store_spectrogram, self.sample_rate = dict(store_spectrogram), int(sample_rate)
        config = SpectrogramConfig.from_dict(self.store_spectrogram)
        self.istft = InverseStft(config)
        self.stft = Stft(StreamSettings.for_sample_rate(self.sample_rate), config.window_samples)

    def call(self, window):
        window = ops.cast(window, "float32")
        return self.stft(self.istft(window[..., 0], window[..., 1]))

    def get_config(self):
        return {**super().get_config(), "store_spectrogram": self.store_spectrogram, "sample_rate": self.sample_rate}


@keras.saving.register_keras_serializable(package="speech_enhance")
class ZeroStates(layers.Layer):
    """Zero states [B, *shape] for each of `shapes`, the batch taken from the input."""

    def __init__(self, shapes, **kwargs):
        super().__init__(**kwargs)
        self.shapes = [tuple(int(n) for n in shape) for shape in shapes]

    def call(self, x):
        batch = ops.shape(x)[0]
        return [ops.zeros((batch, *shape), dtype=x.dtype) for shape in self.shapes]

    def get_config(self):
        return {**super().get_config(), "shapes": [list(s) for s in self.shapes]}


@keras.saving.register_keras_serializable(package="speech_enhance")
class ToWaveform(layers.Layer):
    """The family's enhanced spectra -> the enhanced window [B, samples] (`OverlapAdd`)."""

    def __init__(self, sample_rate: int, samples: int, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate, self.samples = int(sample_rate), int(samples)
        self.overlap_add = OverlapAdd(StreamSettings.for_sample_rate(self.sample_rate), self.samples)

    def call(self, spectra):
        return self.overlap_add(ops.cast(spectra, "float32"))

    def get_config(self):
        return {**super().get_config(), "sample_rate": self.sample_rate, "samples": self.samples}


def build_training_model(spectrogram: SpectrogramConfig, size: str) -> keras.Model:
    """Store window spectra [B, frames, bins, 2] (noisy) -> the enhanced window [B, window_samples],
    float32 whatever the policy (the family is small; its GRUs run cuDNN only in float32)."""
    with dtype_policy("float32"):
        net = StreamingCrn(StreamSettings.for_sample_rate(spectrogram.sample_rate), size)
        core = net.core_model()
        noisy = keras.Input((*spectrogram.shape, 2), name="noisy")
        spectra = WindowToWaveform(spectrogram.to_dict(), spectrogram.sample_rate, name="stft")(noisy)
        states = ZeroStates(net.state_shapes(), name="zero_states")(spectra)
        enhanced = core([spectra, *states])[0]
        waveform = ToWaveform(spectrogram.sample_rate, spectrogram.window_samples, name="waveform")(enhanced)
        return keras.Model(noisy, waveform, name=f"train_{core.name}")


def _compressed(spectra):
    """(|X|^c, X |X|^(c-1) as [..., 2]) of [..., 2] spectra."""
    magnitude = ops.sqrt(ops.sum(ops.square(spectra), axis=-1, keepdims=True) + 1e-12)
    compressed = ops.power(magnitude, COMPRESSION)
    return compressed[..., 0], spectra * (compressed / magnitude)


def hybrid_loss(spectrogram: SpectrogramConfig):
    """The loss `fn(y_true, y_pred) -> [B]` (module docstring): y_true the packed noisy and clean
    store spectra [B, frames, bins, 4], y_pred the enhanced window [B, samples]."""
    istft = InverseStft(spectrogram)
    stft = Stft(StreamSettings.for_sample_rate(spectrogram.sample_rate), spectrogram.window_samples)

    def stream_crn_hybrid(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        clean = istft(y_true[..., 2], y_true[..., 3])
        enhanced = ops.cast(y_pred, "float32")
        (clean_magnitude, clean_complex), (magnitude, complex_) = _compressed(stft(clean)), _compressed(stft(enhanced))
        spectrum = ops.mean(ops.square(magnitude - clean_magnitude), axis=(1, 2))
        complex_error = ops.mean(ops.square(complex_ - clean_complex), axis=(1, 2, 3))
        return (SPECTRUM_WEIGHT * spectrum + COMPLEX_WEIGHT * complex_error
                - SI_SDR_WEIGHT * si_sdr_db(clean, enhanced))

    return stream_crn_hybrid


def si_sdr_metric(spectrogram: SpectrogramConfig):
    """The capped SI-SDR (dB) of the enhanced window, logged as si_sdr."""
    istft = InverseStft(spectrogram)

    def si_sdr(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        return si_sdr_db(istft(y_true[..., 2], y_true[..., 3]), ops.cast(y_pred, "float32"))

    return si_sdr
