"""The band above the model's Nyquist frequency, kept and attenuated instead of dropped.

A file at a rate above the model's is split by a complementary crossover: the low band is what is
resampled down to the model's rate (as always) and the high band is the input minus that low band
resampled back up, `high = x - up(down(x))`, so `low + high == x` exactly when nothing is changed.
soxr's HQ filter is linear-phase with its delay compensated, so the two bands are in phase and
their amplitude responses sum to 1 through the transition (about 3.75-3.9 kHz for an 8 kHz model:
at 3.8 kHz 0.53 low + 0.47 high): no hole and no bump at the crossover.

The model never sees the high band, so its gain is borrowed from the model's output in the top of
its own band (`HighBandGain`): per model frame, the enhanced over noisy magnitude there
(magnitude-weighted by default, i.e. the band's magnitude ratio), smoothed over a few frames,
floored and capped at 1. The per-frame gains are placed at the frames' centres and interpolated
linearly to every sample of the high band at the input's rate, which they multiply; the result is
added to the enhanced low band resampled back up. A gain that moves this slowly (the smoothing
keeps it below ~30 Hz) spreads the high band's spectrum by no more than that, so no separate STFT
at the input's rate (whose hop would not be a whole number of samples) is needed.

Both halves stream: `Crossover` on the reading side, a block at a time, and `HighBandMixer` on
the writing side, which emits a sample once its enhanced low band, its high band and the gains
around it are known; the result does not depend on the block size.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from predictor.audio_io import StreamResampler
from predictor.predict_options import HIGH_BAND_MODES
from trainer.targets import enhance_magnitude

if TYPE_CHECKING:
    from predictor.overlap_add import Joined, WindowGeometry

WEIGHTINGS = ("magnitude", "power", "none")


def check_high_band(high_band: str) -> str:
    if high_band not in HIGH_BAND_MODES:
        raise ValueError(f"high_band must be one of {HIGH_BAND_MODES}: 'keep' adds the band above the model's "
                         f"Nyquist frequency back, attenuated as the model attenuates the top of its band; 'drop' "
                         f"leaves it out. Received: high_band={high_band!r}")
    return high_band


@dataclasses.dataclass(frozen=True)
class HighBandGain:
    """How the high band's gain is derived from the model's output.

    Args:
        band_hz: (low, high) offsets in Hz below the model's Nyquist frequency of the bins whose
            mask sets the gain; (1250, 250): 2.75-3.75 kHz for an 8 kHz model, the top kHz of
            the band that the resampler passes untouched.
        weighting: how the bins' masks (enhanced / noisy magnitude) are averaged per frame:
            "magnitude": sum(enhanced) / sum(noisy), the band's magnitude ratio; "power":
            sqrt(sum(enhanced^2) / sum(noisy^2)); "none": the plain mean of the masks.
        smooth_seconds: half-width of the Hann window over which frames are averaged (numerator
            and denominator separately, so silent frames, e.g. the padding, do not count).
        floor_db: the lowest gain, dB (<= 0): the high band is never attenuated further.
    """

    band_hz: tuple[float, float] = (1250.0, 250.0)
    weighting: str = "magnitude"
    smooth_seconds: float = 0.03
    floor_db: float = -20.0

    def __post_init__(self) -> None:
        low, high = self.band_hz
        if not low > high >= 0:
            raise ValueError(f"band_hz must be (low, high) offsets below the Nyquist frequency with low > high >= 0. "
                             f"Received: band_hz={self.band_hz!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}. Received: weighting={self.weighting!r}")
        if not self.smooth_seconds >= 0:
            raise ValueError(f"smooth_seconds must be >= 0. Received: smooth_seconds={self.smooth_seconds!r}")
        if not self.floor_db <= 0:
            raise ValueError(f"floor_db must be <= 0 dB. Received: floor_db={self.floor_db!r}")

    @property
    def floor(self) -> float:
        return float(10.0 ** (self.floor_db / 20.0))


class Crossover:
    """Splits blocks at the input's rate into the low band at the model's rate and the high band.

    `process(x, last)` returns (low float32 [m, channels] at `model_rate`, high float32
    [n, channels] at `rate`); joined over a file, the lows are `resample(x, rate, model_rate)`
    (the same stream the predictor always used) and the highs are `x - up(low)`, with as many
    samples as `x` once `last` has been passed.
    """

    def __init__(self, rate: int, model_rate: int, channels: int) -> None:
        self._down = StreamResampler(rate, model_rate, channels)
        self._up = StreamResampler(model_rate, rate, channels)
        self._x = np.zeros((0, channels), np.float32)  # input samples not yet matched by up(low)
        self._back = np.zeros((0, channels), np.float32)  # up(low) samples not yet matched by input

    def process(self, x: np.ndarray, last: bool = False) -> tuple[np.ndarray, np.ndarray]:
        low = self._down.process(x, last=last)
        self._x = np.concatenate([self._x, x])
        self._back = np.concatenate([self._back, self._up.process(low, last=last)])
        n = min(len(self._x), len(self._back))
        high = self._x[:n] - self._back[:n]
        self._x, self._back = self._x[n:], self._back[n:]
        if last:  # up(down(x)) can be a sample off x's length: what is left of x has no low band
            high = np.concatenate([high, self._x])
            self._x, self._back = self._x[:0], self._back[:0]
        return low, high


class HighBandMixer:
    """Adds the gained high band to the enhanced low band at the input's rate, a block at a time.

    `add_high` takes the high band (in order, from the reading side); `push(block, low)` takes each
    joined block of model frames with the enhanced low band, resampled to the input's rate, that
    its synthesis gave, and returns the output samples that are now complete. The last block
    returns the rest, `length` samples in all.
    """

    def __init__(self, geometry: WindowGeometry, rate: int, channels: int, gain: HighBandGain = HighBandGain()) -> None:
        cfg = geometry.config
        self._geometry, self._gain, self.rate = geometry, gain, rate
        nyquist = cfg.sample_rate / 2
        freqs = np.arange(cfg.num_bins) * cfg.sample_rate / cfg.n_fft
        self._bins = np.flatnonzero((freqs >= nyquist - gain.band_hz[0]) & (freqs <= nyquist - gain.band_hz[1]))
        if self._bins.size == 0:
            raise ValueError(f"band_hz selects no bin of the model's spectrogram. Received: band_hz={gain.band_hz!r}")
        self._half = int(round(gain.smooth_seconds * cfg.sample_rate / cfg.hop_length))
        self._window = (np.hanning(2 * self._half + 3)[1:-1] if self._half else np.ones(1)).astype(np.float64)
        # Frames per sample of the input: frame f is centred on signal sample (f - lead) * hop at the model's rate.
        self._frames_per_sample = cfg.sample_rate / (rate * cfg.hop_length)
        self._highs: collections.deque[np.ndarray] = collections.deque()
        self._high = np.zeros((0, channels), np.float32)
        self._low = np.zeros((0, channels), np.float32)
        self._position = 0  # output samples returned so far
        self._lead: int | None = None
        # Per frame, from frame _raw_start on: the numerator and denominator of the band's gain.
        self._num = np.zeros((channels, 0), np.float64)
        self._den = np.zeros((channels, 0), np.float64)
        self._raw_start = -self._half
        self._gains = np.zeros((channels, 0), np.float32)  # smoothed gains from frame _gain_start on
        self._gain_start = 0
        self.channels = channels

    def add_high(self, high: np.ndarray) -> None:
        """Appends float32 [n, channels] of the high band (safe to call from another thread)."""
        if high.shape[0]:
            self._highs.append(high)

    def push(self, block: Joined, low: np.ndarray, length: int | None = None) -> np.ndarray:
        """Returns the output samples that `block` and `low` complete, float32 [n, channels].

        `length` (samples of the output) comes with the last block.
        """
        if self._lead is None:
            self._lead = block.lead_frames
            self._num = np.zeros((self.channels, self._half), np.float64)  # frames -half..-1: none
            self._den = np.zeros_like(self._num)
        self._add_frames(block)
        self._low = np.concatenate([self._low, low])
        while self._highs:
            self._high = np.concatenate([self._high, self._highs.popleft()])
        if block.last:
            end = length if length is not None else self._position + len(self._low)
            self._smooth(self._raw_start + self._num.shape[1], final=True)
        else:
            ready = self._raw_start + self._num.shape[1] - self._half  # frames whose window is complete
            self._smooth(ready, final=False)
            last_gain = self._gain_start + self._gains.shape[1] - 1
            by_gain = int(np.floor((last_gain - self._lead) / self._frames_per_sample))
            end = min(self._position + len(self._low), self._position + len(self._high), by_gain + 1)
        n = max(0, end - self._position)
        low_part = _fit(self._low, n)
        high_part = _fit(self._high, n)
        gains = self._sample_gains(self._position, n)
        out = low_part + gains * high_part
        self._low, self._high = self._low[min(n, len(self._low)):], self._high[min(n, len(self._high)):]
        self._position += n
        self._trim()
        return out.astype(np.float32, copy=False)

    def _add_frames(self, block: Joined) -> None:
        cfg = self._geometry.config
        noisy = np.abs(block.spectrogram[:, :, self._bins])
        enhanced = enhance_magnitude(noisy, block.joined[:, :, self._bins, 0], self._geometry.target, cfg)
        weighting = self._gain.weighting
        if weighting == "magnitude":
            num, den = enhanced.sum(axis=2), noisy.sum(axis=2)
        elif weighting == "power":
            num, den = (enhanced.astype(np.float64) ** 2).sum(axis=2), (noisy.astype(np.float64) ** 2).sum(axis=2)
        else:
            seen = noisy > 0
            mask = np.divide(enhanced, noisy, out=np.zeros_like(enhanced), where=seen)
            num, den = mask.sum(axis=2), seen.sum(axis=2)
        self._num = np.concatenate([self._num, num.astype(np.float64)], axis=1)
        self._den = np.concatenate([self._den, den.astype(np.float64)], axis=1)

    def _smooth(self, end: int, final: bool) -> None:
        """Computes the smoothed gains of frames [gains end, `end`)."""
        start = self._gain_start + self._gains.shape[1]
        if end <= start:
            return
        h = self._half
        num, den = self._num, self._den
        if final:  # frames after the last one: none
            pad = np.zeros((self.channels, h), np.float64)
            num, den = np.concatenate([num, pad], axis=1), np.concatenate([den, pad], axis=1)
        a, b = start - h - self._raw_start, end + h - self._raw_start
        n_win = np.stack([np.convolve(row, self._window, mode="valid") for row in num[:, a:b]])
        d_win = np.stack([np.convolve(row, self._window, mode="valid") for row in den[:, a:b]])
        if self._gain.weighting == "power":
            n_win, d_win = np.sqrt(n_win), np.sqrt(d_win)
        # No evidence (a silent band): leave the high band as it is.
        gain = np.divide(n_win, d_win, out=np.ones_like(n_win), where=d_win > 0)
        gain = np.clip(gain, self._gain.floor, 1.0).astype(np.float32)
        self._gains = np.concatenate([self._gains, gain], axis=1)

    def _sample_gains(self, first: int, n: int) -> np.ndarray:
        """Gains [n, channels] of output samples [first, first + n), interpolated between frame centres."""
        if n == 0:
            return np.zeros((0, self.channels), np.float32)
        position = self._lead + (first + np.arange(n)) * self._frames_per_sample - self._gain_start
        frames = np.arange(self._gains.shape[1])
        return np.stack([np.interp(position, frames, row) for row in self._gains], axis=1).astype(np.float32)

    def _trim(self) -> None:
        """Drops the frames that no sample still to come needs."""
        needed = int(np.floor(self._lead + self._position * self._frames_per_sample))  # first gain still needed
        drop = needed - self._gain_start
        if drop > 0:
            drop = min(drop, self._gains.shape[1] - 1) if self._gains.shape[1] else 0
            self._gains, self._gain_start = self._gains[:, drop:], self._gain_start + drop
        raw_needed = self._gain_start + self._gains.shape[1] - self._half  # first raw frame the next gain needs
        drop = raw_needed - self._raw_start
        if drop > 0:
            self._num, self._den = self._num[:, drop:], self._den[:, drop:]
            self._raw_start += drop


def _fit(samples: np.ndarray, n: int) -> np.ndarray:
    if samples.shape[0] >= n:
        return samples[:n]
    return np.pad(samples, [(0, n - samples.shape[0]), (0, 0)])
