"""The streaming family's STFT (`trainer.streaming_crn`, `predictor.streaming`): frames of n_fft samples
(32 ms) every hop = n_fft / 2 samples, the square root of the periodic Hann window for analysis and
synthesis, and model.json's "streaming" entry that records them.

Numpy only: the trainer's graph STFT and the predictor's file processes (which import no Keras) take
the same `StreamSettings`.

    settings = StreamSettings.for_sample_rate(16000)   # n_fft 512, hop 256, 257 bins, 32 ms latency
    settings.window()                                  # float64 [n_fft]
    StreamSettings.from_dict(settings.to_dict()) == settings
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

WINDOW = "sqrt-hann-periodic"  # the window's name in model.json
HOP_SECONDS = 0.016  # the hop: the whole number of samples nearest 16 ms; n_fft is twice it


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """The STFT the streaming family runs on: `sample_rate` Hz, frames of `n_fft` samples every
    `hop_length` = n_fft / 2 samples."""

    sample_rate: int
    n_fft: int
    hop_length: int

    def __post_init__(self) -> None:
        if self.hop_length < 1 or self.n_fft != 2 * self.hop_length:
            raise ValueError(f"the streaming family's hop is half its n_fft. Received: n_fft={self.n_fft}, "
                             f"hop_length={self.hop_length}")

    @classmethod
    def for_sample_rate(cls, sample_rate: int) -> "StreamSettings":
        """The family's STFT at `sample_rate` Hz (an integer >= 4000)."""
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate < 4000:
            raise ValueError(f"sample_rate must be an integer >= 4000 Hz. Received: sample_rate={sample_rate!r}")
        hop_length = max(1, round(HOP_SECONDS * sample_rate))
        return cls(sample_rate, 2 * hop_length, hop_length)

    @property
    def bins(self) -> int:
        """Frequency bins of a frame: n_fft / 2 + 1."""
        return self.n_fft // 2 + 1

    @property
    def latency_ms(self) -> float:
        """Input-to-output delay in ms: one frame, n_fft samples (n_fft - hop of the STFT and the hop
        buffered before a frame is complete)."""
        return 1000.0 * self.n_fft / self.sample_rate

    def window(self) -> np.ndarray:
        """float64 [n_fft]: the square root of the periodic Hann window, sqrt((1 - cos(2 pi n / N)) / 2),
        for analysis and synthesis (its squares at hop n_fft / 2 sum to one)."""
        n = np.arange(self.n_fft)
        return np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.n_fft))

    def to_dict(self) -> dict[str, Any]:
        """The STFT part of model.json's "streaming" entry."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop_length": self.hop_length,
                "window": WINDOW, "latency_ms": self.latency_ms}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StreamSettings":
        """From model.json's "streaming" entry (other keys ignored). KeyError for a missing key,
        ValueError for a window other than `WINDOW` or a hop that is not half of n_fft."""
        if values.get("window", WINDOW) != WINDOW:
            raise ValueError(f"window {values['window']!r} is not {WINDOW!r}")
        return cls(int(values["sample_rate"]), int(values["n_fft"]), int(values["hop_length"]))
