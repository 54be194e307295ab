"""Weighted overlap-add of a fixed-window spectrogram model over signals of any length, streamed.

How a signal of any length goes through a model that sees fixed windows of
`config.num_frames` STFT frames (128 frames = 8064 samples = 1.008 s at 8 kHz):

1. The signal is placed after `pad = num_frames - hop` frames of silence (half a window at 50 %
   overlap) and followed by at least as many, so every frame of the signal is covered by the same
   number of windows. A signal that fits in one window is centred in a single window. The STFT of
   this padded signal is taken with the shared `stft` (the dataset writer's function).
2. Windows of `num_frames` frames start every `hop = round(num_frames * (1 - overlap))` frames;
   their features (`trainer.targets.model_features`: the scaled log magnitude, and for a complex
   mask the noisy phase too) go to the model in batches of `batch_size`, windows of different
   signals and channels sharing a batch.
3. The model's outputs are joined by weighted overlap-add: each window's output is multiplied by a
   crossfade weight (raised-cosine ramps of `num_frames - hop` frames, flat in between; a Hann
   window at 50 % overlap) and the sum is divided by the summed weights, so there are no seams and
   no gain change where windows meet.
4. The joined output and the noisy spectrum give the enhanced spectrum
   (`trainer.targets.enhance_spectrum`: the enhanced magnitude with the noisy phase, or for a
   complex mask the phase turned by the output); the inverse STFT (the shared `istft`) gives the
   waveform, cut back to the input's samples. No gain is applied anywhere: the level is preserved.

Every step is local in time, so a signal is streamed through them a block at a time and memory
does not grow with its length: `Analysis` computes a frame as soon as every sample under it has
arrived, `Track` runs a window once its frames are there and releases a frame once every window
over it has run, and `Synthesis` inverts the frames whose samples no later frame touches. Each
frame, window and sample is computed from the same numbers, in the same order, as for the whole
signal at once, so the result does not depend on the block size (tested to float rounding).
`enhance_files` reads, resamples, enhances and writes each file that way (blocks of
`block_seconds`); `Enhancer.enhance` and `enhance_many` take signals already in memory.

The classes here take a `WindowGeometry` (the model's config and target, and the overlap): all
they need of the model that runs the windows, so the file processes and the Beam workers, which
never run one, build them without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft
from trainer.targets import check_target, enhance_spectrum, input_channels, model_features, output_channels


def crossfade_weights(num_frames: int, hop: int) -> np.ndarray:
    """Weights [num_frames] for joining windows that start every `hop` frames.

    Raised-cosine ramps over the `num_frames - hop` frames that overlap a neighbour, 1 in between;
    a rising and a falling ramp sum to exactly 1. All weights are positive (the ramps are sampled
    half a frame off their ends), so every frame of every window counts.
    """
    ramp = num_frames - hop
    w = np.ones(num_frames, np.float64)
    if ramp <= 0:
        return w.astype(np.float32)
    if 2 * ramp > num_frames:  # more than 50 % overlap: ramps would cross, use a (shifted) Hann
        return (np.sin(np.pi * (np.arange(num_frames) + 0.5) / num_frames) ** 2).astype(np.float32)
    rise = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
    w[:ramp] = rise
    w[num_frames - ramp:] = rise[::-1]
    return w.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a signal of `length` samples lies in its padded spectrogram, in STFT frames."""

    lead_frames: int  # frames of silence before the signal's first sample
    num_windows: int
    total_frames: int  # (num_windows - 1) * hop + window frames: where the last window ends
    length: int  # samples of the signal


def plan_layout(length: int, config: SpectrogramConfig, window_frames: int, hop_frames: int) -> Layout:
    """Where a signal of `length` samples goes: `window_frames - hop_frames` frames of silence in
    front and enough windows to cover it and as much silence behind; one centred window when it
    fits in one."""
    W, hop, pad = window_frames, hop_frames, window_frames - hop_frames
    real_frames = config.frames_for(length)
    if real_frames <= W:  # one window holds it all: centre it, every sample is seen once
        lead_frames, num_windows = (W - real_frames) // 2, 1
    else:
        lead_frames, num_windows = pad, -(-(real_frames + 2 * pad - W) // hop) + 1
    return Layout(lead_frames, num_windows, (num_windows - 1) * hop + W, length)


@dataclasses.dataclass(frozen=True)
class WindowGeometry:
    """How a model's fixed windows tile a signal: its `config` and `target`, and the `overlap` of
    its windows (a fraction of a window, in [0, 1)). The other fields follow from these: windows of
    `window_frames` frames start every `hop_frames`, after `pad_frames` of silence, and are joined
    with `weights` [window_frames]; the model reads `input_channels` and gives `output_channels`
    per bin. Picklable: the file processes and Beam workers receive it."""

    config: SpectrogramConfig
    target: str
    overlap: float
    window_frames: int = dataclasses.field(init=False)
    hop_frames: int = dataclasses.field(init=False)
    pad_frames: int = dataclasses.field(init=False)
    weights: np.ndarray = dataclasses.field(init=False, compare=False, repr=False)
    input_channels: int = dataclasses.field(init=False)
    output_channels: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        check_target(self.target)
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1) (a fraction of a window). Received: overlap={self.overlap!r}")
        window = self.config.num_frames
        hop = max(1, int(round(window * (1.0 - self.overlap))))
        derived = {"overlap": float(self.overlap), "window_frames": window, "hop_frames": hop,
                   "pad_frames": window - hop, "weights": crossfade_weights(window, hop),
                   "input_channels": input_channels(self.target), "output_channels": output_channels(self.target)}
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def layout(self, length: int) -> Layout:
        """Where a signal of `length` samples goes (`plan_layout`)."""
        return plan_layout(length, self.config, self.window_frames, self.hop_frames)

    # What a file's reading, model and writing stages build for this geometry (`predictor.streaming`'s
    # `StreamGeometry` builds its own), so they need not ask which kind of model they serve.
    def analysis(self, channels: int) -> "Analysis":
        return Analysis(self, channels)

    def track(self, key: Any) -> "Track":
        return Track(key, self)

    def synthesis(self) -> "Synthesis":
        return Synthesis(self)


@dataclasses.dataclass
class Frames:
    """Frames [start, start + n) of a signal's padded STFT, every channel; `Analysis` hands these on.

    `layout` comes with a signal's last block, once its length is known.
    """

    start: int
    spectrogram: np.ndarray  # complex64 [channels, n, bins]
    features: np.ndarray  # float32 [channels, n, bins, input channels]: the model's input
    lead_frames: int
    layout: Layout | None = None


@dataclasses.dataclass
class Joined:
    """Frames [start, start + n) that every window over them has seen: noisy STFT and joined output."""

    start: int
    spectrogram: np.ndarray  # complex64 [channels, n, bins]
    joined: np.ndarray  # float32 [channels, n, bins, output channels]: the weighted mean of the windows' outputs
    lead_frames: int
    layout: Layout | None  # known once the signal has ended
    last: bool


class Analysis:
    """The frames of a signal's padded STFT, from its samples fed a block at a time.

    Frame f covers the padded samples [f * hop_length - n_fft // 2, ... + n_fft). It is computed as
    soon as all of those are known, with the shared `stft` on a stretch of samples that starts a
    few frames earlier (whose first frames, cut short by `stft`'s centre padding, are dropped), so
    it holds the same numbers as the whole signal's STFT. Nothing is computed until the signal is
    known to be longer than one window, or has ended: a shorter one is centred in its window.
    """

    def __init__(self, geometry: WindowGeometry, channels: int) -> None:
        self._geometry = geometry
        self._config = geometry.config
        self.channels = channels
        self.received = 0  # samples per channel fed so far
        self.lead_frames: int | None = None
        self._early: list[np.ndarray] = []  # blocks fed before lead_frames was known, [n, channels]
        self._samples = np.zeros((channels, 0), np.float32)  # padded samples from _samples_start on
        self._samples_start = 0
        self._next_frame = 0
        # Frames of a stretch that `stft` pads with zeros in front instead of the samples before it.
        self._context = -(-(self._config.n_fft // 2) // self._config.hop_length)

    def feed(self, samples: np.ndarray) -> Frames | None:
        """Adds float32 [n, channels]; returns the frames that can now be computed, if any."""
        if samples.shape[0] == 0:
            return None
        self.received += int(samples.shape[0])
        if self.lead_frames is None:
            self._early.append(samples)
            if self._config.frames_for(self.received) <= self._geometry.window_frames:
                return None
            self._place(self._geometry.pad_frames)  # longer than one window, whatever follows
        else:
            self._samples = np.concatenate([self._samples, samples.T], axis=1)
        cfg = self._config
        known = self.lead_frames * cfg.hop_length + self.received  # padded samples known so far
        end = (known - cfg.n_fft + cfg.n_fft // 2) // cfg.hop_length + 1  # frames lying within them
        return self._frames(end) if end > self._next_frame else None

    def close(self) -> Frames:
        """Ends the signal: returns its remaining frames (up to the end of its last window) and layout."""
        if self.received == 0:
            raise ValueError("a signal needs at least one sample to be enhanced")
        layout = self._geometry.layout(self.received)
        if self.lead_frames is None:
            self._place(layout.lead_frames)
        frames = self._frames(layout.total_frames)
        frames.layout = layout
        return frames

    def _place(self, lead_frames: int) -> None:
        self.lead_frames = lead_frames
        lead = np.zeros((self.channels, lead_frames * self._config.hop_length), np.float32)
        self._samples = np.concatenate([lead] + [x.T for x in self._early], axis=1)
        self._early = []

    def _frames(self, end: int) -> Frames:
        cfg, start = self._config, self._next_frame
        bins = cfg.num_bins
        if end <= start:
            empty = np.zeros((self.channels, 0, bins), np.complex64)
            features = np.zeros((self.channels, 0, bins, self._geometry.input_channels), np.float32)
            return Frames(start, empty, features, self.lead_frames)
        hop = cfg.hop_length
        first = (start - self._context) * hop  # padded sample at the stretch's start
        stop = (end - 1) * hop - cfg.n_fft // 2 + cfg.n_fft  # one past the last frame's last sample
        # Samples before the signal and after its end are zeros, as in the whole padded signal.
        stretch = np.zeros((self.channels, stop - first), np.float32)
        have_from = self._samples_start
        lo, hi = max(first, have_from), min(stop, have_from + self._samples.shape[1])
        if hi > lo:
            stretch[:, lo - first: hi - first] = self._samples[:, lo - have_from: hi - have_from]
        spectrogram = stft(stretch, cfg)[:, self._context: self._context + end - start]
        phase = np.angle(spectrogram) if self._geometry.input_channels > 1 else None  # only a complex mask reads it
        features = model_features(np.abs(spectrogram), phase, self._geometry.target, cfg)
        self._next_frame = end
        keep = (end - self._context) * hop  # the next stretch's start
        if keep > self._samples_start:
            self._samples = self._samples[:, keep - self._samples_start:]
            self._samples_start = keep
        return Frames(start, spectrogram, features, self.lead_frames)


class Track:
    """One signal in flight between `Analysis` and `Synthesis`: its windows and their weighted sum.

    Holds only the frames that a window still to run needs or that are not joined yet.
    """

    def __init__(self, key: Any, geometry: WindowGeometry) -> None:
        self.key = key
        self._geometry = geometry
        self.start = 0  # the first frame held
        self.frames_end = 0  # one past the last frame received
        self.lead_frames = 0
        self.layout: Layout | None = None
        self.next_window = 0  # windows handed out so far
        self.done: np.ndarray | None = None  # windows run, per channel
        self.joined_end = 0  # frames handed on, joined
        self.dropped = False  # the signal failed: its windows still in a batch are run and ignored

    def add_frames(self, frames: Frames) -> list[tuple["Track", int, int]]:
        """Takes the next frames; returns the (track, channel, window index) that can now run."""
        if self.done is None:
            channels, _, bins = frames.spectrogram.shape
            self.spectrogram = np.zeros((channels, 0, bins), np.complex64)
            self.features = np.zeros((channels, 0, *frames.features.shape[2:]), np.float32)
            self.output = np.zeros((channels, 0, bins, self._geometry.output_channels), np.float32)
            self.weight_sum = np.zeros((channels, 0), np.float32)
            self.done = np.zeros(channels, np.int64)
        n = frames.spectrogram.shape[1]
        self.spectrogram = np.concatenate([self.spectrogram, frames.spectrogram], axis=1)
        self.features = np.concatenate([self.features, frames.features], axis=1)
        self.output = np.concatenate([self.output, np.zeros((len(self.done), n, *self.output.shape[2:]), np.float32)],
                                     axis=1)
        self.weight_sum = np.concatenate([self.weight_sum, np.zeros((len(self.done), n), np.float32)], axis=1)
        self.frames_end += n
        self.lead_frames = frames.lead_frames
        self.layout = frames.layout or self.layout
        W, hop = self._geometry.window_frames, self._geometry.hop_frames
        limit = self.layout.num_windows if self.layout else None
        ready = []
        while (limit is None or self.next_window < limit) and self.next_window * hop + W <= self.frames_end:
            ready.extend((self, c, self.next_window) for c in range(len(self.done)))
            self.next_window += 1
        return ready

    def window(self, channel: int, index: int) -> np.ndarray:
        start = index * self._geometry.hop_frames - self.start
        return self.features[channel, start: start + self._geometry.window_frames]

    def add(self, channel: int, index: int, prediction: np.ndarray) -> None:
        weights = self._geometry.weights
        start = index * self._geometry.hop_frames - self.start
        self.output[channel, start: start + len(weights)] += weights[:, None, None] * prediction
        self.weight_sum[channel, start: start + len(weights)] += weights
        self.done[channel] += 1

    def take_joined(self) -> Joined | None:
        """The frames that every window over them has now seen, joined; None when there are none."""
        if self.done is None:
            return None
        finished = int(self.done.min())  # windows are run in order, per channel
        last = self.layout is not None and finished == self.layout.num_windows
        # Windows start every hop frames, so no window still to run reaches a frame before this.
        end = self.layout.total_frames if last else finished * self._geometry.hop_frames
        if end <= self.joined_end:
            return None
        a, b = self.joined_end - self.start, end - self.start
        block = Joined(self.joined_end, self.spectrogram[:, a:b],
                        self.output[:, a:b] / self.weight_sum[:, a:b, None, None], self.lead_frames, self.layout, last)
        self.joined_end = end
        drop = b  # windows still to run start at `end` or later
        self.spectrogram, self.features = self.spectrogram[:, drop:], self.features[:, drop:]
        self.output, self.weight_sum = self.output[:, drop:], self.weight_sum[:, drop:]
        self.start += drop
        return block


class Synthesis:
    """A signal's enhanced waveform from its `Joined` blocks, a block at a time.

    A sample of the padded signal is inverted once the last frame over it has arrived, with the
    shared `istft` on a stretch of frames that starts with the first frame over it, so it gets the
    same overlap-add and window-envelope sums as in the inverse STFT of the whole signal.
    """

    def __init__(self, geometry: WindowGeometry) -> None:
        self._geometry = geometry
        self._frames: np.ndarray | None = None  # enhanced STFT frames from _start on
        self._start = 0
        self._position = 0  # the padded sample to return next

    def push(self, block: Joined) -> np.ndarray:
        """Returns the samples `block` completes, float32 [n, channels]; all that remain with the last."""
        cfg = self._geometry.config
        frames = enhance_spectrum(block.spectrogram, block.joined, self._geometry.target, cfg)
        if self._frames is None:
            self._frames, self._start, self._position = frames, block.start, block.lead_frames * cfg.hop_length
        else:
            self._frames = np.concatenate([self._frames, frames], axis=1)
        hop = cfg.hop_length
        frames_end = block.start + frames.shape[1]
        end = frames_end * hop - cfg.n_fft // 2  # frames still to come reach back to here
        if block.layout is not None:
            signal_end = block.lead_frames * hop + block.layout.length
            end = signal_end if block.last else min(end, signal_end)
        if end <= self._position:
            return np.zeros((0, self._frames.shape[0]), np.float32)
        first = min(self._first_frame_over(self._position), self._position // hop)
        stretch = self._frames[:, first - self._start: frames_end - self._start]
        waveform = istft(stretch, cfg, end - first * hop)[:, self._position - first * hop:]
        self._position = end
        keep = min(self._first_frame_over(end), end // hop)
        if keep > self._start:
            self._frames, self._start = self._frames[:, keep - self._start:], keep
        return np.ascontiguousarray(waveform.T)

    def _first_frame_over(self, sample: int) -> int:
        cfg = self._geometry.config
        return max(0, (sample + cfg.n_fft // 2 - cfg.n_fft) // cfg.hop_length + 1)
