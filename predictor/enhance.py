"""Denoising audio of any length with a trained model directory, alone or folder by folder.

How a signal of any length goes through a model that sees fixed windows of
`config.num_frames` STFT frames (128 frames = 8064 samples = 1.008 s at 8 kHz):

1. The signal is placed after `pad = num_frames - hop` frames of silence (half a window at 50 %
   overlap) and followed by at least as many, so every frame of the signal is covered by the same
   number of windows. A signal that fits in one window is centred in a single window. The STFT of
   this padded signal is taken with the shared `stft` (the dataset writer's function).
2. Windows of `num_frames` frames start every `hop = round(num_frames * (1 - overlap))` frames;
   their features (`trainer.targets.model_input`) go to the model in batches of `batch_size`,
   windows of different signals and channels sharing a batch.
3. The model's outputs are joined by weighted overlap-add: each window's output is multiplied by a
   crossfade weight (raised-cosine ramps of `num_frames - hop` frames, flat in between; a Hann
   window at 50 % overlap) and the sum is divided by the summed weights, so there are no seams and
   no gain change where windows meet.
4. The joined output and the noisy magnitude give the enhanced magnitude
   (`trainer.targets.enhance_magnitude`); with the noisy phase, the inverse STFT (the shared
   `istft`) gives the waveform, cut back to the input's samples. No gain is applied anywhere:
   the level is preserved.

Every step is local in time, so a signal is streamed through them a block at a time and memory
does not grow with its length: `_Analysis` computes a frame as soon as every sample under it has
arrived, `_Track` runs a window once its frames are there and releases a frame once every window
over it has run, and `_Synthesis` inverts the frames whose samples no later frame touches. Each
frame, window and sample is computed from the same numbers, in the same order, as for the whole
signal at once, so the result does not depend on the block size (tested to float rounding).
`enhance_files` reads, resamples, enhances and writes each file that way (blocks of
`block_seconds`); `Enhancer.enhance` and `enhance_many` take signals already in memory.

The model is a Keras 3 model; Keras places it on a GPU when there is one. The numpy and file work
around it runs in a few threads (`workers`), so it overlaps the model calls.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from predictor import audio_io
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft, tune_malloc
from trainer.targets import check_target, enhance_magnitude, model_input

logger = logging.getLogger(__name__)

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
FAILURES_FILE = "failures.jsonl"
# Windows per model call when none is given. On a CPU small batches are faster (the full U-Net on
# two AMD EPYC cores: 16.6 ms per window at 8, 19.9 at 32, 21.2 at 64; a batch of 8 keeps its
# activations in cache); an accelerator wants large ones.
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 64
DEFAULT_OVERLAP = 0.5
# Threads for the numpy and file work around the model (reading, resampling, STFT, inverse STFT,
# writing). numpy, scipy.fft, soxr and libsndfile release the GIL, so this work overlaps the
# model's and, on a machine with many cores, keeps a GPU fed. `predict --workers` help quotes the cap.
MAX_DEFAULT_WORKERS = 16
DEFAULT_WORKERS = min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
# Seconds of input read, resampled and enhanced at a time. A file in flight holds a few blocks'
# spectrograms (about 1.2 MB per second of audio and channel at 8 kHz: some 22 MB of arrays for a
# mono file, whatever its length), and the per-block overhead is small against the model's time
# for the block's 20 windows.
DEFAULT_BLOCK_SECONDS = 10.0


def resolve_model_dir(model_dir: str | None) -> str:
    """`model_dir`, or the model shipped in the package when it is None.

    Raises FileNotFoundError saying how to pass a model when none is given and none is shipped.
    """
    if model_dir:
        return model_dir
    if not os.path.isfile(os.path.join(PRETRAINED_DIR, "model.json")):
        raise FileNotFoundError(
            f"No --model was given and this installation ships no pretrained model ({PRETRAINED_DIR} "
            "holds no model.json yet). Pass --model DIR, a directory written by "
            "`speech-enhance train --model-dir DIR` (it holds model.keras and model.json).")
    return PRETRAINED_DIR


def has_accelerator() -> bool:
    """Whether the Keras backend sees a GPU or TPU (where Keras will place the model)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def default_batch_size() -> int:
    """ACCELERATOR_BATCH_SIZE when the backend sees a GPU or TPU, else CPU_BATCH_SIZE."""
    return ACCELERATOR_BATCH_SIZE if has_accelerator() else CPU_BATCH_SIZE


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
class _Layout:
    """Where a signal of `length` samples lies in its padded spectrogram, in STFT frames."""

    lead_frames: int  # frames of silence before the signal's first sample
    num_windows: int
    total_frames: int  # (num_windows - 1) * hop + window frames: where the last window ends
    length: int  # samples of the signal


@dataclasses.dataclass
class _Frames:
    """Frames [start, start + n) of a signal's padded STFT, every channel; `_Analysis` hands these on.

    `layout` comes with a signal's last block, once its length is known.
    """

    start: int
    spectrogram: np.ndarray  # complex64 [channels, n, bins]
    features: np.ndarray  # float32 [channels, n, bins]: the model's input
    lead_frames: int
    layout: _Layout | None = None


@dataclasses.dataclass
class _Joined:
    """Frames [start, start + n) that every window over them has seen: noisy STFT and joined output."""

    start: int
    spectrogram: np.ndarray  # complex64 [channels, n, bins]
    joined: np.ndarray  # float32 [channels, n, bins]: the weighted mean of the windows' outputs
    lead_frames: int
    layout: _Layout | None  # known once the signal has ended
    last: bool


class _Analysis:
    """The frames of a signal's padded STFT, from its samples fed a block at a time.

    Frame f covers the padded samples [f * hop_length - n_fft // 2, ... + n_fft). It is computed as
    soon as all of those are known, with the shared `stft` on a stretch of samples that starts a
    few frames earlier (whose first frames, cut short by `stft`'s centre padding, are dropped), so
    it holds the same numbers as the whole signal's STFT. Nothing is computed until the signal is
    known to be longer than one window, or has ended: a shorter one is centred in its window.
    """

    def __init__(self, enhancer: "Enhancer", channels: int) -> None:
        self._enhancer = enhancer
        self._config = enhancer.config
        self.channels = channels
        self.received = 0  # samples per channel fed so far
        self.lead_frames: int | None = None
        self._early: list[np.ndarray] = []  # blocks fed before lead_frames was known, [n, channels]
        self._samples = np.zeros((channels, 0), np.float32)  # padded samples from _samples_start on
        self._samples_start = 0
        self._next_frame = 0
        # Frames of a stretch that `stft` pads with zeros in front instead of the samples before it.
        self._context = -(-(self._config.n_fft // 2) // self._config.hop_length)

    def feed(self, samples: np.ndarray) -> _Frames | None:
        """Adds float32 [n, channels]; returns the frames that can now be computed, if any."""
        if samples.shape[0] == 0:
            return None
        self.received += int(samples.shape[0])
        if self.lead_frames is None:
            self._early.append(samples)
            if self._config.frames_for(self.received) <= self._enhancer.window_frames:
                return None
            self._place(self._enhancer.pad_frames)  # longer than one window, whatever follows
        else:
            self._samples = np.concatenate([self._samples, samples.T], axis=1)
        cfg = self._config
        known = self.lead_frames * cfg.hop_length + self.received  # padded samples known so far
        end = (known - cfg.n_fft + cfg.n_fft // 2) // cfg.hop_length + 1  # frames lying within them
        return self._frames(end) if end > self._next_frame else None

    def close(self) -> _Frames:
        """Ends the signal: returns its remaining frames (up to the end of its last window) and layout."""
        if self.received == 0:
            raise ValueError("a signal needs at least one sample to be enhanced")
        layout = self._enhancer._layout(self.received)
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

    def _frames(self, end: int) -> _Frames:
        cfg, start = self._config, self._next_frame
        bins = cfg.num_bins
        if end <= start:
            empty = np.zeros((self.channels, 0, bins), np.float32)
            return _Frames(start, empty.astype(np.complex64), empty, self.lead_frames)
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
        features = model_input(np.abs(spectrogram), cfg)
        self._next_frame = end
        keep = (end - self._context) * hop  # the next stretch's start
        if keep > self._samples_start:
            self._samples = self._samples[:, keep - self._samples_start:]
            self._samples_start = keep
        return _Frames(start, spectrogram, features, self.lead_frames)


class _Track:
    """One signal in flight between `_Analysis` and `_Synthesis`: its windows and their weighted sum.

    Holds only the frames that a window still to run needs or that are not joined yet.
    """

    def __init__(self, key: Any, enhancer: "Enhancer") -> None:
        self.key = key
        self._enhancer = enhancer
        self.start = 0  # the first frame held
        self.frames_end = 0  # one past the last frame received
        self.lead_frames = 0
        self.layout: _Layout | None = None
        self.next_window = 0  # windows handed out so far
        self.done: np.ndarray | None = None  # windows run, per channel
        self.joined_end = 0  # frames handed on, joined
        self.dropped = False  # the signal failed: its windows still in a batch are run and ignored

    def add_frames(self, frames: _Frames) -> list[tuple["_Track", int, int]]:
        """Takes the next frames; returns the (track, channel, window index) that can now run."""
        if self.done is None:
            channels, _, bins = frames.spectrogram.shape
            self.spectrogram = np.zeros((channels, 0, bins), np.complex64)
            self.features = np.zeros((channels, 0, bins), np.float32)
            self.output = np.zeros((channels, 0, bins), np.float32)
            self.weight_sum = np.zeros((channels, 0), np.float32)
            self.done = np.zeros(channels, np.int64)
        n = frames.spectrogram.shape[1]
        self.spectrogram = np.concatenate([self.spectrogram, frames.spectrogram], axis=1)
        self.features = np.concatenate([self.features, frames.features], axis=1)
        self.output = np.concatenate([self.output, np.zeros_like(frames.features)], axis=1)
        self.weight_sum = np.concatenate([self.weight_sum, np.zeros((len(self.done), n), np.float32)], axis=1)
        self.frames_end += n
        self.lead_frames = frames.lead_frames
        self.layout = frames.layout or self.layout
        W, hop = self._enhancer.window_frames, self._enhancer.hop_frames
        limit = self.layout.num_windows if self.layout else None
        ready = []
        while (limit is None or self.next_window < limit) and self.next_window * hop + W <= self.frames_end:
            ready.extend((self, c, self.next_window) for c in range(len(self.done)))
            self.next_window += 1
        return ready

    def window(self, channel: int, index: int) -> np.ndarray:
        start = index * self._enhancer.hop_frames - self.start
        return self.features[channel, start: start + self._enhancer.window_frames]

    def add(self, channel: int, index: int, prediction: np.ndarray) -> None:
        weights = self._enhancer.weights
        start = index * self._enhancer.hop_frames - self.start
        self.output[channel, start: start + len(weights)] += weights[:, None] * prediction
        self.weight_sum[channel, start: start + len(weights)] += weights
        self.done[channel] += 1

    def take_joined(self) -> _Joined | None:
        """The frames that every window over them has now seen, joined; None when there are none."""
        if self.done is None:
            return None
        finished = int(self.done.min())  # windows are run in order, per channel
        last = self.layout is not None and finished == self.layout.num_windows
        # Windows start every hop frames, so no window still to run reaches a frame before this.
        end = self.layout.total_frames if last else finished * self._enhancer.hop_frames
        if end <= self.joined_end:
            return None
        a, b = self.joined_end - self.start, end - self.start
        block = _Joined(self.joined_end, self.spectrogram[:, a:b],
                        self.output[:, a:b] / self.weight_sum[:, a:b, None], self.lead_frames, self.layout, last)
        self.joined_end = end
        drop = b  # windows still to run start at `end` or later
        self.spectrogram, self.features = self.spectrogram[:, drop:], self.features[:, drop:]
        self.output, self.weight_sum = self.output[:, drop:], self.weight_sum[:, drop:]
        self.start += drop
        return block


class _Synthesis:
    """A signal's enhanced waveform from its `_Joined` blocks, a block at a time.

    A sample of the padded signal is inverted once the last frame over it has arrived, with the
    shared `istft` on a stretch of frames that starts with the first frame over it, so it gets the
    same overlap-add and window-envelope sums as in the inverse STFT of the whole signal.
    """

    def __init__(self, enhancer: "Enhancer") -> None:
        self._enhancer = enhancer
        self._frames: np.ndarray | None = None  # enhanced STFT frames from _start on
        self._start = 0
        self._position = 0  # the padded sample to return next

    def push(self, block: _Joined) -> np.ndarray:
        """Returns the samples `block` completes, float32 [n, channels]; all that remain with the last."""
        cfg = self._enhancer.config
        magnitude = np.abs(block.spectrogram)
        enhanced = enhance_magnitude(magnitude, block.joined, self._enhancer.target, cfg)
        # Scaling the complex STFT by enhanced / noisy magnitude keeps the noisy phase exactly.
        gain = np.divide(enhanced, magnitude, out=np.zeros_like(enhanced), where=magnitude > 0)
        frames = block.spectrogram * gain
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
        cfg = self._enhancer.config
        return max(0, (sample + cfg.n_fft // 2 - cfg.n_fft) // cfg.hop_length + 1)


class Enhancer:
    """Runs a spectrogram model over signals of any length at the model's sample rate.

    Args:
        model: a Keras model mapping [B, frames, bins, 1] features to [B, frames, bins, 1] in [-1, 1],
            or any callable doing the same on numpy arrays.
        config: the model's `SpectrogramConfig`.
        target: "noise" or "mask" (what the model predicts; see `trainer.targets`).
        batch_size: windows per model call; windows of several signals share a batch. None:
            `default_batch_size()` (8 on a CPU, 64 on a GPU or TPU).
        overlap: fraction of a window shared with the next one, in [0, 1). 0.5 by default.
        workers: threads for the STFT and file work around the model (0: all in the caller's thread).
    """

    def __init__(self, model: Any, config: SpectrogramConfig, target: str, *,
                 batch_size: int | None = None, overlap: float = DEFAULT_OVERLAP,
                 workers: int = DEFAULT_WORKERS) -> None:
        check_target(target)
        if batch_size is None:
            batch_size = default_batch_size()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0. Received: workers={workers!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1) (a fraction of a window). Received: overlap={overlap!r}")
        tune_malloc()  # the STFT work handles arrays of the size glibc would mmap and unmap each time
        self.model = model
        self.config = config
        self.target = target
        self.batch_size = batch_size
        self.overlap = float(overlap)
        self.workers = workers
        self.window_frames = config.num_frames
        self.hop_frames = max(1, int(round(self.window_frames * (1.0 - overlap))))
        self.pad_frames = self.window_frames - self.hop_frames
        self.weights = crossfade_weights(self.window_frames, self.hop_frames)
        self.predict = predict_function(model)  # numpy [B, frames, bins, 1] -> [B, frames, bins]
        self.windows_run = 0  # counts model windows, for benchmarks and tests

    @classmethod
    def from_model_dir(cls, model_dir: str | None = None, **kwargs: Any) -> "Enhancer":
        """Loads a model directory (`trainer.model_dir` layout); None means the shipped model."""
        from trainer.model_dir import load_model_dir

        model, info = load_model_dir(resolve_model_dir(model_dir))
        return cls(model, info["config"], info["target"], **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def _layout(self, length: int) -> _Layout:
        """Where a signal of `length` samples goes: `pad_frames` of silence in front and enough windows
        to cover it and as much silence behind; one centred window when it fits in one."""
        W, hop, pad = self.window_frames, self.hop_frames, self.pad_frames
        real_frames = self.config.frames_for(length)
        if real_frames <= W:  # one window holds it all: centre it, every sample is seen once
            lead_frames, num_windows = (W - real_frames) // 2, 1
        else:
            lead_frames, num_windows = pad, -(-(real_frames + 2 * pad - W) // hop) + 1
        return _Layout(lead_frames, num_windows, (num_windows - 1) * hop + W, length)

    def enhance(self, signal: np.ndarray) -> np.ndarray:
        """Enhances one signal at the model's rate: float32 [samples] or [samples, channels].

        Channels are enhanced independently. Returns the same shape.
        """
        x = np.asarray(signal, np.float32)
        if x.ndim not in (1, 2) or x.shape[0] == 0 or (x.ndim == 2 and x.shape[1] == 0):
            raise ValueError(f"enhance() takes a non-empty [samples] or [samples, channels] array. "
                             f"Received: shape={x.shape}")
        [(_, y)] = self._enhance_arrays([(None, x if x.ndim == 2 else x[:, None])])
        return y if x.ndim == 2 else y[:, 0]

    def enhance_many(self, signals: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """Enhances a stream of (key, mono float32 [samples]) pairs; yields (key, enhanced) in order.

        Windows of consecutive signals share model batches. The input is consumed lazily, a few
        signals ahead of the model, so only those and the ones being finished are in memory.
        """
        def as_columns() -> Iterator[tuple[Any, np.ndarray]]:
            for key, signal in signals:
                x = np.asarray(signal, np.float32)
                if x.ndim != 1 or x.shape[0] == 0:
                    raise ValueError(f"enhance_many() takes non-empty mono signals. Received: key={key!r}, "
                                     f"shape={x.shape}")
                yield key, x[:, None]

        for key, y in self._enhance_arrays(as_columns()):
            yield key, y[:, 0]

    def _enhance_arrays(self, signals: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, float32 [samples, channels]) in, (key, enhanced of the same shape) out, in order."""
        def analyse(item: tuple[Any, np.ndarray]) -> list[tuple[Any, _Frames]]:
            key, x = item
            analysis = _Analysis(self, x.shape[1])
            blocks = [analysis.feed(x), analysis.close()]
            return [(key, block) for block in blocks if block is not None]

        def synthesise(blocks: list[_Joined]) -> np.ndarray:
            synthesis = _Synthesis(self)
            return np.concatenate([synthesis.push(block) for block in blocks], axis=0)

        with _Workers(self.workers) as pool:
            def frames() -> Iterator[tuple[Any, _Frames]]:
                for blocks in pool.prefetch(analyse, signals, depth=2 * self.workers + 2):
                    yield from blocks

            joined: dict[_Track, list[_Joined]] = {}
            finishing: collections.deque[tuple[Any, concurrent.futures.Future]] = collections.deque()
            for track, block in self._enhance_frames(frames()):
                joined.setdefault(track, []).append(block)
                if block.last:
                    finishing.append((track.key, pool.submit(synthesise, joined.pop(track))))
                yield from _done_in_order(finishing, keep=4 * self.workers + 4)
            yield from _done_in_order(finishing, keep=0)

    def _enhance_frames(self, items: Iterable[tuple[Any, _Frames | Exception]]
                        ) -> Iterator[tuple[_Track, _Joined | Exception]]:
        """Runs the model over signals given as frames; yields each signal's joined frames as they complete.

        `items` are (key, frames) of one signal after another; a signal ends with the block that
        carries its layout, or with an exception (a file that failed part way through), which is
        passed on as (track, exception) and the signal dropped. Windows of consecutive signals and
        channels share batches; joined blocks come out in signal order.
        """
        in_flight: collections.deque[_Track] = collections.deque()
        batch: list[tuple[_Track, int, int]] = []
        track: _Track | None = None
        for key, item in items:
            if track is None:
                track = _Track(key, self)
                in_flight.append(track)
            if isinstance(item, Exception):
                track.dropped = True
                in_flight.remove(track)
                yield track, item
                track = None
                continue
            for window in track.add_frames(item):
                batch.append(window)
                if len(batch) == self.batch_size:
                    self._run(batch)
                    batch = []
                    yield from self._take_joined(in_flight)
            if item.layout is not None:
                track = None
        if batch:
            self._run(batch)
        yield from self._take_joined(in_flight)

    def _run(self, batch: Sequence[tuple[_Track, int, int]]) -> None:
        x = np.stack([track.window(channel, index) for track, channel, index in batch])[..., None]
        y = self.predict(x)
        self.windows_run += len(batch)
        for (track, channel, index), prediction in zip(batch, y):
            track.add(channel, index, prediction)

    @staticmethod
    def _take_joined(in_flight: collections.deque) -> Iterator[tuple[_Track, _Joined]]:
        for track in list(in_flight):
            block = track.take_joined()
            if block is None:
                continue
            if block.last:
                in_flight.remove(track)
            yield track, block


class _Workers:
    """A thread pool with in-order prefetching; with 0 threads every task runs at once, inline."""

    def __init__(self, threads: int) -> None:
        self._executor = (concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="predictor")
                          if threads else None)

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # handed to whoever asks for the result, as the executor would
            future.set_exception(err)
        return future

    def prefetch(self, fn: Callable, items: Iterable, depth: int) -> Iterator:
        """fn(item) for each item, in order, computed up to `depth` items ahead of the consumer."""
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        for item in items:
            pending.append(self.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Readahead:
    """Runs iterators in background threads and yields their items in order, one iterator after another.

    Up to `threads` iterators run at once, each at most `depth` items ahead of the consumer: the
    files of a folder are decoded and resampled this way, several at a time and each in order,
    while the model runs. The threads are its own, so they never wait on a task queued behind
    them. With 0 threads the iterators run inline, in the consumer's thread.
    """

    _END = object()

    def __init__(self, threads: int, depth: int) -> None:
        self.threads, self.depth = threads, depth

    def chain(self, iterators: Iterable[Iterator]) -> Iterator:
        if not self.threads:
            for iterator in iterators:
                yield from iterator
            return
        stop = threading.Event()
        executor = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="predictor-read")
        running: collections.deque[tuple[queue.Queue, concurrent.futures.Future]] = collections.deque()
        source = iter(iterators)

        def start_next() -> None:
            iterator = next(source, None)
            if iterator is not None:
                items: queue.Queue = queue.Queue(self.depth)
                running.append((items, executor.submit(self._produce, iterator, items, stop)))

        try:
            for _ in range(self.threads):
                start_next()
            while running:
                items, future = running[0]
                while (item := items.get()) is not self._END:
                    yield item
                running.popleft()
                future.result()  # raises what went wrong in the iterator
                start_next()
        finally:
            stop.set()  # a consumer that stops early releases the threads waiting to hand on items
            executor.shutdown(wait=True, cancel_futures=True)

    @classmethod
    def _produce(cls, iterator: Iterator, items: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in iterator:
                if not put(item):
                    return
        finally:
            put(cls._END)


def _done_in_order(pending: collections.deque, keep: int) -> Iterator[tuple[Any, Any]]:
    """Pops (key, future) pairs from the left while done, or while more than `keep` are waiting."""
    while pending and (pending[0][1].done() or len(pending) > keep):
        key, future = pending.popleft()
        yield key, future.result()


def _after(previous: concurrent.futures.Future | None, fn: Callable, *args: Any) -> Any:
    """fn(*args) once `previous` is done: a file's writes, submitted in order, run in order.

    A pool takes tasks first in, first out, so `previous` has started before this one: waiting on it
    cannot deadlock.
    """
    if previous is not None:
        previous.result()
    return fn(*args)


def predict_function(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """numpy [B, frames, bins, 1] -> numpy [B, frames, bins]."""
    if hasattr(model, "predict_on_batch"):
        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_on_batch(x), np.float32)[..., 0]
    else:
        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model(x), np.float32)[..., 0]
    return predict


# --- folders of files ------------------------------------------------------------------------

@dataclasses.dataclass
class PredictSummary:
    """What `enhance_files` did. Seconds are audio seconds at the input's rate."""

    total: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        """Processing seconds per audio second (lower is faster)."""
        return self.processing_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["real_time_factor"] = self.real_time_factor
        return out


class _Progress:
    """Logs files done/total, audio seconds and real-time factor at most every `interval` seconds.

    Within a long file the lines also say how far into it the output has been written.
    """

    def __init__(self, total: int, interval: float = 5.0) -> None:
        self.total, self.interval = total, interval
        self.start = self.last = time.perf_counter()

    def update(self, summary: PredictSummary, force: bool = False, current: _FileJob | None = None) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        done = summary.written + summary.skipped + len(summary.failures)
        elapsed = now - self.start
        audio_seconds, within = summary.audio_seconds, ""
        if current is not None and current.sink is not None:
            written = current.sink.seconds_written
            audio_seconds += written
            within = f"; {current.rel}: {written:.1f} of {current.seconds:.1f} s written"
        rtf = f"{elapsed / audio_seconds:.4f}" if audio_seconds else "n/a"
        logger.info("%d/%d files (%d written, %d skipped, %d failed), %.1f s of audio, %.1f s elapsed, "
                    "real-time factor %s%s", done, self.total, summary.written, summary.skipped,
                    len(summary.failures), audio_seconds, elapsed, rtf, within)


@dataclasses.dataclass
class _FileJob:
    """One input file and its output. The reader fills in what the file holds as it reads it."""

    rel: str
    source: str
    target: str
    sample_rate: int = 0  # Hz, of the input
    subtype: str | None = None  # soundfile subtype of the input ("PCM_16", ...)
    channels: int = 0  # channels denoised and written (1 with downmix)
    seconds: float = 0.0  # the input's duration as its header gives it
    num_samples: int = 0  # samples per channel read, final once the file has been read to its end
    sink: _FileSink | None = None
    last_write: concurrent.futures.Future | None = None


class _FileSink:
    """Writes one file's output from its joined frames: synthesis, resampling back, atomic write.

    Its `push` calls must run one after another, in order (`_after` chains them).
    """

    def __init__(self, job: _FileJob, enhancer: Enhancer, keep_model_rate: bool) -> None:
        self.job = job
        self.rate = enhancer.sample_rate if keep_model_rate else job.sample_rate
        self.synthesis = _Synthesis(enhancer)
        self.resampler = audio_io.StreamResampler(enhancer.sample_rate, self.rate, job.channels)
        subtype = audio_io.output_subtype(audio_io.extension(job.target), job.subtype, audio_io.extension(job.source))
        self.writer = audio_io.AtomicAudioWriter(job.target, self.rate, job.channels, subtype)
        self.error: str | None = None

    @property
    def seconds_written(self) -> float:
        return self.writer.samples_written / self.rate

    def push(self, block: _Joined) -> str | None:
        """Writes the samples `block` completes; the last block commits the file. None, or what went wrong."""
        if self.error is not None:
            return self.error
        out = self.resampler.process(self.synthesis.push(block), last=block.last)
        if block.last:
            # Resampling there and back can be a sample off: give the output the input's duration.
            expected = int(round(self.job.num_samples * self.rate / self.job.sample_rate))
            out = audio_io.fit_length(out, max(0, expected - self.writer.samples_written))
        try:
            self.writer.write(out)
            if block.last:
                self.writer.commit()
        except (RuntimeError, OSError, ValueError) as err:
            self.writer.abort()
            self.error = f"{self.job.target}: cannot write ({type(err).__name__}: {err})"
        return self.error

    def abort(self) -> None:
        self.writer.abort()


def _read_frames(job: _FileJob, enhancer: Enhancer, downmix: bool,
                 block_seconds: float) -> Iterator[tuple[_FileJob, _Frames | audio_io.AudioError]]:
    """One file's frames at the model's rate, read and resampled a block at a time.

    A file that cannot be used ends its items with an AudioError naming it and the reason.
    """
    try:
        with audio_io.AudioReader(job.source) as reader:
            job.sample_rate, job.subtype = reader.sample_rate, reader.subtype
            job.channels = 1 if downmix else reader.num_channels
            job.seconds = reader.num_samples / reader.sample_rate
            resampler = audio_io.StreamResampler(reader.sample_rate, enhancer.sample_rate, job.channels)
            analysis = _Analysis(enhancer, job.channels)
            for samples, last in reader.blocks(max(1, int(round(block_seconds * reader.sample_rate)))):
                if downmix and samples.shape[1] > 1:
                    samples = samples.mean(axis=1, keepdims=True)
                frames = analysis.feed(resampler.process(samples, last=last))
                if frames is not None:
                    yield job, frames
            job.num_samples = reader.samples_read
            if analysis.received == 0:
                raise audio_io.AudioError(
                    "too_short", f"{job.source}: {reader.samples_read} sample(s) at {reader.sample_rate} Hz are "
                                 f"no samples at all at the model's {enhancer.sample_rate} Hz: too short to denoise")
            yield job, analysis.close()
    except audio_io.AudioError as err:
        yield job, err


def output_path(output_dir: str, rel: str, output_format: str | None) -> str:
    """Where the output of input `rel` goes: same relative path; extension from `output_format`."""
    stem, ext = audio_io.split_extension(rel)
    if output_format:
        ext = "." + output_format.lower().lstrip(".")
        if ext not in audio_io.FORMATS:
            raise ValueError(f"output format must be one of {sorted(f[1:] for f in audio_io.FORMATS)}. "
                             f"Received: format={output_format!r}")
    return paths.join(output_dir, stem + ext.lower())


def enhance_files(enhancer: Enhancer, source: str, output_dir: str, *, overwrite: bool = False,
                  output_format: str | None = None, keep_model_rate: bool = False, downmix: bool = False,
                  progress_interval: float = 5.0, block_seconds: float = DEFAULT_BLOCK_SECONDS) -> PredictSummary:
    """Denoises every wav/flac/ogg file of `source` (folder, file or glob) into `output_dir`.

    `source` and `output_dir` may be local or remote (gs://...; a remote `source` is a folder
    prefix or one object, never a glob). Remote inputs are streamed; remote outputs are written to
    a local temporary file and uploaded when complete (`audio_io.AtomicAudioWriter`).

    Outputs mirror the input's folder structure, keep the input's sample rate (the model's with
    `keep_model_rate`), length, channel count (mono with `downmix`), format (or `output_format`:
    "wav", "flac", "ogg") and, for the same format, sample encoding. Files are streamed: read,
    resampled, enhanced and written `block_seconds` (of input) at a time, so memory does not grow
    with their length, and the output is the same as for the whole file at once. Each output is
    written under a temporary name and renamed when complete; temporaries that a killed run left
    in a local `output_dir` are removed (a bucket cannot tell whether their writer still runs).
    Outputs that exist are skipped unless `overwrite`, so an interrupted run resumes. A file that
    cannot be read, is too short to resample to the model's rate, or cannot be written is logged,
    recorded in `output_dir/failures.jsonl` with its reason, and skipped. Refuses (ValueError)
    when an output would replace an input.
    """
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive. Received: block_seconds={block_seconds!r}")
    base, rels = audio_io.find_audio_files(source, exclude=output_dir)
    jobs = [_FileJob(rel, paths.join(base, rel), output_path(output_dir, rel, output_format)) for rel in rels]
    _check_no_input_overwritten(base, output_dir, jobs)
    # Local only (remove_stale_temporaries does nothing for a bucket): an object cannot say whether
    # the process writing it still runs, and remote outputs are staged on the local disk anyway.
    audio_io.remove_stale_temporaries(output_dir, endings=tuple(audio_io.FORMATS) + (FAILURES_FILE,))
    output_exists = _existing_outputs(output_dir)
    summary = PredictSummary(total=len(jobs))
    progress = _Progress(len(jobs), progress_interval)
    logger.info("denoising %d files from %s into %s (model rate %d Hz, batch %d, overlap %.0f%%)",
                len(jobs), source, output_dir, enhancer.sample_rate, enhancer.batch_size, 100 * enhancer.overlap)
    targets_seen: set[str] = set()
    todo: list[_FileJob] = []
    for job in jobs:
        if job.target in targets_seen:
            _fail(summary, job, "duplicate output",
                  f"{job.source}: another input already writes {job.target} (same name, other extension); "
                  "use --format to keep them apart or rename one")
            continue
        targets_seen.add(job.target)
        if not overwrite and output_exists(job.target):
            summary.skipped += 1
            continue
        todo.append(job)
    if summary.skipped:
        logger.info("skipping %d files whose output exists (pass --overwrite to redo them)", summary.skipped)

    start = time.perf_counter()
    depth = 2 * enhancer.workers + 2
    reader = _Readahead(enhancer.workers, depth=2)

    def record(job: _FileJob, error: str | None) -> None:
        if error:
            _fail(summary, job, "unwritable", error)
        else:
            summary.written += 1
            summary.audio_seconds += job.num_samples / job.sample_rate
        job.sink = None
        summary.processing_seconds = time.perf_counter() - start
        progress.update(summary)

    with _Workers(enhancer.workers) as pool:
        writing: collections.deque[concurrent.futures.Future] = collections.deque()  # every write task
        finished: collections.deque[tuple[_FileJob, concurrent.futures.Future]] = collections.deque()
        files = reader.chain(_read_frames(job, enhancer, downmix, block_seconds) for job in todo)
        for track, block in enhancer._enhance_frames(files):
            job = track.key
            if isinstance(block, audio_io.AudioError):
                _fail(summary, job, block.reason, str(block))
                if job.sink is not None:  # it failed part way through: drop what was written of it
                    writing.append(pool.submit(_after, job.last_write, job.sink.abort))
                    job.sink = None
                continue
            if job.sink is None:
                job.sink = _FileSink(job, enhancer, keep_model_rate)
            job.last_write = pool.submit(_after, job.last_write, job.sink.push, block)
            writing.append(job.last_write)
            if block.last:
                finished.append((job, job.last_write))
            # Joined blocks waiting to be written hold memory: let only a few wait.
            while writing and (writing[0].done() or len(writing) > depth):
                writing.popleft().result()
            for done, error in _done_in_order(finished, keep=depth):
                record(done, error)
            summary.processing_seconds = time.perf_counter() - start
            progress.update(summary, current=job)
        for done, error in _done_in_order(finished, keep=0):
            record(done, error)
        for future in writing:
            future.result()
    summary.processing_seconds = time.perf_counter() - start
    progress.update(summary, force=True)
    _write_failures(output_dir, summary.failures)
    return summary


def _fail(summary: PredictSummary, job: _FileJob, reason: str, message: str) -> None:
    logger.error("skipped %s", message)
    summary.failures.append({"input": job.source, "output": job.target, "reason": reason, "message": message})


def _existing_outputs(output_dir: str) -> Callable[[str], bool]:
    """A test of whether an output path exists, for the resume check.

    Locally one `os.path.exists` per file, as always. For a remote `output_dir` the prefix is
    listed once (one request per 1000 objects) instead of asking for every output in turn.
    """
    if not paths.is_remote(output_dir):
        return os.path.exists
    existing = {paths.join(output_dir, rel) for rel in paths.list_files(output_dir)}
    return existing.__contains__


def _location(path: str) -> str:
    """`path` normalised for comparing with another: resolved locally, without trailing "/" remotely."""
    return path.rstrip("/") if paths.is_remote(path) else os.path.realpath(path)


def _check_no_input_overwritten(base: str, output_dir: str, jobs: Sequence[_FileJob]) -> None:
    if audio_io.same_location(output_dir, base):
        raise ValueError(
            "--output must not be the input folder: outputs would replace or mix with the inputs. "
            f"Received: input folder={base!r}, output={output_dir!r}. Choose another --output.")
    sources = {_location(job.source) for job in jobs}
    clashes = [job.source for job in jobs if _location(job.target) in sources]
    if clashes:
        raise ValueError(f"--output {output_dir!r} would overwrite {len(clashes)} input file(s), e.g. "
                         f"{clashes[0]!r}. Choose an --output folder that holds no inputs.")


def _write_failures(output_dir: str, failures: list[dict[str, str]]) -> None:
    path = paths.join(output_dir, FAILURES_FILE)
    if paths.is_remote(path):
        # Whole, under a temporary object name renamed into place; an earlier run's list is replaced.
        if failures:
            paths.write_atomic(path, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures).encode("utf-8"))
            logger.error("%d file(s) failed; reasons in %s", len(failures), path)
        elif paths.isfile(path):  # from an earlier run; its files were retried
            paths.delete_files([path])
        return
    if not failures:
        if os.path.exists(path):  # from an earlier run; its files were retried
            os.remove(path)
        return
    os.makedirs(output_dir, exist_ok=True)
    tmp = audio_io.temporary_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for failure in failures:
            f.write(json.dumps(failure, sort_keys=True) + "\n")
    os.replace(tmp, path)
    logger.error("%d file(s) failed; reasons in %s", len(failures), path)
