"""The spectrogram configuration: the one place where STFT numbers and feature scaling live.

Writer (Beam), reader (tf.data), trainer and predictor all take a `SpectrogramConfig`; no other
module hard-codes a sample rate, window length, FFT size or hop.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

_BASE_RATE = 8000
_BASE = {"window_samples": 8064, "n_fft": 255, "hop_length": 63}
DTYPES = ("float16", "float32")  # how spectrograms may be stored


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig:
    """STFT geometry, storage dtype and the fixed log-magnitude scaling used by the models.

    Attributes:
        sample_rate: Hz of all audio the dataset and the model see.
        window_samples: samples in one training window (8064 at 8 kHz, i.e. 1.008 s).
        n_fft: FFT length in samples; the periodic Hann window has the same length.
        hop_length: samples between STFT frames.
        dtype: how magnitudes and phases are stored in the records ("float16" or "float32").
        log_floor_db: magnitudes are clipped below this level (dB re 1.0) before taking logs.
        input_offset_db, input_scale_db: model input is (magnitude_db - offset) / scale.
        target_scale_db: the `noise` target is (noisy_db - clean_db) / target_scale_db, clipped to
            [-1, 1] (the range of the model's tanh output).
    """

    sample_rate: int = _BASE_RATE
    window_samples: int = _BASE["window_samples"]
    n_fft: int = _BASE["n_fft"]
    hop_length: int = _BASE["hop_length"]
    dtype: str = "float16"
    log_floor_db: float = -100.0
    input_offset_db: float = -30.0
    input_scale_db: float = 40.0
    target_scale_db: float = 60.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "window_samples", "n_fft", "hop_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SpectrogramConfig.{name} must be a positive integer. Received: {name}={value!r}")
        if self.n_fft > self.window_samples:
            raise ValueError(
                "SpectrogramConfig.n_fft must not exceed window_samples. "
                f"Received: n_fft={self.n_fft}, window_samples={self.window_samples}")
        if self.hop_length > self.n_fft:
            raise ValueError(
                "SpectrogramConfig.hop_length must not exceed n_fft (frames would skip samples). "
                f"Received: hop_length={self.hop_length}, n_fft={self.n_fft}")
        if self.dtype not in DTYPES:
            raise ValueError(f"SpectrogramConfig.dtype must be one of {DTYPES}. Received: dtype={self.dtype!r}")
        if self.input_scale_db <= 0 or self.target_scale_db <= 0:
            raise ValueError(
                "SpectrogramConfig.input_scale_db and target_scale_db must be positive. Received: "
                f"input_scale_db={self.input_scale_db}, target_scale_db={self.target_scale_db}")

    @classmethod
    def for_sample_rate(cls, sample_rate: int, **overrides: Any) -> "SpectrogramConfig":
        """The reference geometry scaled to `sample_rate` (a multiple of 8000 Hz).

        16 kHz gives windows of 16128 samples, n_fft 511 and hop 126: the same 1.008 s window and
        128 frames as at 8 kHz, with twice the frequency bins (256).
        """
        if not isinstance(sample_rate, int) or sample_rate <= 0 or sample_rate % _BASE_RATE:
            raise ValueError(
                "SpectrogramConfig.for_sample_rate derives the geometry for multiples of 8000 Hz only. "
                f"Received: sample_rate={sample_rate!r}. For another rate pass window_samples, n_fft "
                "and hop_length explicitly.")
        k = sample_rate // _BASE_RATE
        geometry = {
            "window_samples": _BASE["window_samples"] * k,
            "n_fft": (_BASE["n_fft"] + 1) * k - 1,
            "hop_length": _BASE["hop_length"] * k,
        }
        geometry.update(overrides)
        return cls(sample_rate=sample_rate, **geometry)

    @property
    def num_bins(self) -> int:
        """Frequency bins per frame (n_fft // 2 + 1)."""
        return self.n_fft // 2 + 1

    @property
    def num_frames(self) -> int:
        """STFT frames per window with centred frames (n_fft // 2 samples of zero padding each side)."""
        return 1 + (self.window_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        """(frames, bins) of one window's spectrogram: (128, 128) by default."""
        return (self.num_frames, self.num_bins)

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.dtype == "float16" else 4

    @property
    def quietest_loudness_dbfs(self) -> float:
        """The lowest mixture RMS level (dBFS) whose spectrogram the records can hold.

        A typical bin's STFT magnitude is the signal's RMS times the Hann window's RMS gain,
        sqrt(sum w**2) = sqrt(3 n_fft / 8) (+19.8 dB at n_fft 255). Below this level that magnitude
        falls under the larger of the storage dtype's smallest normal number (float16: 6.1e-5, -84 dB;
        below it precision is lost, then values flush to zero) and the log floor the model clips to
        (`log_floor_db`): the examples would hold nothing but zeros or the floor. float16 at 8 kHz:
        -104.1 dBFS; float32: -119.8 dBFS.
        """
        import numpy as np

        smallest_db = 20.0 * math.log10(float(np.finfo(self.dtype).tiny))
        window_gain_db = 10.0 * math.log10(3.0 * self.n_fft / 8.0)
        return max(smallest_db, self.log_floor_db) - window_gain_db

    def frames_for(self, num_samples: int) -> int:
        """STFT frames for a signal of `num_samples` samples."""
        return 1 + (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SpectrogramConfig":
        return from_known_keys(cls, values)


def from_known_keys(cls, values: Mapping[str, Any]):
    """`cls(**values)` for a config dataclass, refusing keys it does not define (a file written by a
    newer version of the toolkit, or a typo) with a message that names them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} keys {unknown}: written by a newer version of this toolkit, or "
                         f"a typo; upgrade it, or fix the keys. Known keys: {sorted(known)}")
    return cls(**dict(values))
