"""Streaming models (`trainer.streaming_crn`): their STFT, frame by frame, and a model with state run over it.

A streaming model maps the spectra of any number of frames and its states to the enhanced spectra
and new states, so a signal goes through it a block at a time in constant memory and the output
does not depend on where the blocks are cut. The STFT (model.json "streaming"):

    hop = n_fft / 2; w = sqrt(periodic Hann) [n_fft], for analysis and synthesis (w^2 sums to 1)
    padded = n_fft - hop zeros, then the signal, then zeros to flush
    frame t = rfft(padded[t * hop: t * hop + n_fft] * w) -> [bins = n_fft / 2 + 1, 2] (real, imaginary)
    synthesis: irfft(n_fft) * w, overlap-added at hop; output sample i is OLA sample i + n_fft - hop

A signal of L samples takes ceil(L / hop) + 1 frames. The output lags the input by n_fft samples
(`latency_ms`): n_fft - hop of the STFT and the hop that is buffered before a frame is complete.

`StreamGeometry` is the STFT (`tfrecord_schema.stream_stft.StreamSettings`, the trainer's) and the
model's states (picklable, no Keras: the file processes build it); `StreamAnalysis`,
`StreamTrack` and `StreamSynthesis` are its counterparts of `predictor.overlap_add`'s `Analysis`,
`Track` and `Synthesis`, so the file reading and writing of `predictor.file_stream`, the threads
and the file processes handle a streaming model as they handle a windowed one. `StreamRunner` runs
a step function (`predictor.stream_models`: the Keras core or an ONNX session) over frames, in
calls of at most `frames_per_call` frames, carrying the model's states.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.stream_stft import StreamSettings

# A step function: (spectra float32 [B, T, bins, 2], states [B, ...] each) -> (enhanced, new states).
StepFunction = Callable[[np.ndarray, Sequence[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class StreamGeometry:
    """A streaming model as the predictor runs it: its STFT (`stft`, the trainer's own settings), the
    shapes of its states (per channel, in the model's order) and how its output reads as a target."""

    stft: StreamSettings
    state_shapes: tuple[tuple[int, ...], ...] = ()
    target: str = "mask"  # how `predictor.high_band` reads a `StreamBlock.joined` (`trainer.targets`)

    @classmethod
    def from_dict(cls, streaming: dict[str, Any], source: str = "model.json") -> "StreamGeometry":
        """From model.json's "streaming" entry; ValueError naming `source` when it is not one this runs."""
        try:
            shapes = tuple(tuple(int(d) for d in shape) for shape in streaming.get("state_shapes", ()))
            return cls(StreamSettings.from_dict(streaming), shapes)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: its \"streaming\" entry is not a streaming STFT this predictor runs ({err}). "
                             f"Received: {streaming!r}") from err

    @property
    def sample_rate(self) -> int:
        return self.stft.sample_rate

    @property
    def n_fft(self) -> int:
        return self.stft.n_fft

    @property
    def hop_length(self) -> int:
        return self.stft.hop_length

    @property
    def latency_ms(self) -> float:
        return self.stft.latency_ms

    @property
    def window(self) -> np.ndarray:
        """float32 [n_fft]: the analysis and synthesis window (`StreamSettings.window`)."""
        return self.stft.window().astype(np.float32)

    @property
    def config(self) -> SpectrogramConfig:
        """The STFT as a `SpectrogramConfig` (what `predictor.high_band` reads of a model's frames)."""
        return SpectrogramConfig(sample_rate=self.sample_rate, window_samples=self.n_fft, n_fft=self.n_fft,
                                 hop_length=self.hop_length)

    def frames_for(self, length: int) -> int:
        """Frames that a signal of `length` samples takes, its flush included."""
        return -(-length // self.hop_length) + 1

    def initial_states(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, *shape), np.float32) for shape in self.state_shapes]

    # `predictor.overlap_add.WindowGeometry`'s counterparts, for the file stages.
    def analysis(self, channels: int) -> "StreamAnalysis":
        return StreamAnalysis(self, channels)

    def track(self, key: Any) -> "StreamTrack":
        return StreamTrack(key, self)

    def synthesis(self) -> "StreamSynthesis":
        return StreamSynthesis(self)


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """A signal's extent, known once it has ended: `length` samples, `total_frames` frames."""

    length: int
    total_frames: int


@dataclasses.dataclass
class StreamFrames:
    """Frames [start, start + n) of a signal's STFT, every channel (what `StreamAnalysis` hands on)."""

    start: int
    spectrogram: np.ndarray  # complex64 [channels, n, bins]
    layout: StreamLayout | None = None  # with the signal's last frames
    lead_frames: int = 0  # frame t is centred on signal sample t * hop

    @property
    def spectra(self) -> np.ndarray:
        """float32 [channels, n, bins, 2]: the model's input."""
        return np.stack([self.spectrogram.real, self.spectrogram.imag], axis=-1).astype(np.float32)


@dataclasses.dataclass
class StreamBlock:
    """Frames [start, start + n) run through the model: the noisy and the enhanced STFT."""

    start: int
    spectrogram: np.ndarray  # complex64 [channels, n, bins]: noisy
    enhanced: np.ndarray  # complex64 [channels, n, bins]
    layout: StreamLayout | None
    last: bool
    lead_frames: int = 0

    @property
    def joined(self) -> np.ndarray:
        """float32 [channels, n, bins, 1]: the enhanced magnitude as a "mask" target's output, 2 |E| / |X| - 1,
        which `trainer.targets.enhance_magnitude` turns back into |E| (for `predictor.high_band`)."""
        noisy = np.abs(self.spectrogram)
        ratio = np.divide(np.abs(self.enhanced), noisy, out=np.zeros(noisy.shape, np.float32), where=noisy > 0)
        return (2.0 * ratio - 1.0)[..., None]


def as_complex(spectra: np.ndarray) -> np.ndarray:
    """[..., 2] (real, imaginary) float -> complex64 [...]."""
    return (spectra[..., 0] + 1j * spectra[..., 1]).astype(np.complex64)


class StreamAnalysis:
    """A signal's STFT frames from its samples fed a block at a time (`feed`), the flush with `close`."""

    def __init__(self, geometry: StreamGeometry, channels: int) -> None:
        self._geometry = geometry
        self._window = geometry.window
        self.channels = channels
        self.received = 0  # samples per channel fed so far
        self.lead_frames = 0
        self._next_frame = 0
        # Padded samples from frame _next_frame's start on: the n_fft - hop zeros in front at first.
        self._samples = np.zeros((channels, geometry.n_fft - geometry.hop_length), np.float32)

    def feed(self, samples: np.ndarray) -> StreamFrames | None:
        """Adds float32 [n, channels]; returns the frames now complete, if any."""
        if samples.shape[0] == 0:
            return None
        self.received += int(samples.shape[0])
        self._samples = np.concatenate([self._samples, np.asarray(samples, np.float32).T], axis=1)
        n = (self._samples.shape[1] - self._geometry.n_fft) // self._geometry.hop_length + 1
        return self._frames(n) if n > 0 else None

    def close(self) -> StreamFrames:
        """Ends the signal: its remaining frames, up to the last one its final sample needs, and its layout."""
        if self.received == 0:
            raise ValueError("a signal needs at least one sample to be enhanced")
        total = self._geometry.frames_for(self.received)
        n = total - self._next_frame
        hop = self._geometry.hop_length
        missing = (n + 1) * hop - self._samples.shape[1]
        if missing > 0:  # the flush: zeros after the signal
            self._samples = np.concatenate([self._samples, np.zeros((self.channels, missing), np.float32)], axis=1)
        frames = self._frames(n)
        frames.layout = StreamLayout(self.received, total)
        return frames

    def _frames(self, n: int) -> StreamFrames:
        hop, channels = self._geometry.hop_length, self.channels
        halves = self._samples[:, : (n + 1) * hop].reshape(channels, n + 1, hop)  # n_fft = 2 hop
        frames = np.concatenate([halves[:, :-1], halves[:, 1:]], axis=2) * self._window
        spectrogram = np.fft.rfft(frames, axis=-1).astype(np.complex64)
        start, self._next_frame = self._next_frame, self._next_frame + n
        self._samples = self._samples[:, n * hop:]
        return StreamFrames(start, spectrogram)


class StreamSynthesis:
    """A signal's enhanced waveform from its `StreamBlock`s: inverse FFT, window, overlap-add at hop."""

    def __init__(self, geometry: StreamGeometry) -> None:
        self._geometry = geometry
        self._window = geometry.window
        self._tail: np.ndarray | None = None  # [channels, hop]: the last frame's second half
        self._skip = geometry.n_fft - geometry.hop_length  # OLA samples before the signal's first
        self._position = 0  # output samples returned so far

    def push(self, block: StreamBlock) -> np.ndarray:
        """Returns the output samples `block` completes, float32 [n, channels]; the rest with the last."""
        hop = self._geometry.hop_length
        channels, n = block.enhanced.shape[:2]
        if self._tail is None:
            self._tail = np.zeros((channels, hop), np.float32)
        frames = np.fft.irfft(block.enhanced, n=self._geometry.n_fft, axis=-1).astype(np.float32) * self._window
        ola = np.concatenate([self._tail, np.zeros((channels, n * hop), np.float32)], axis=1)
        ola[:, : n * hop] += frames[:, :, :hop].reshape(channels, n * hop)
        ola[:, hop:] += frames[:, :, hop:].reshape(channels, n * hop)
        done, self._tail = ola[:, : n * hop], ola[:, n * hop:]
        skip = min(self._skip, done.shape[1])
        done, self._skip = done[:, skip:], self._skip - skip
        if block.layout is not None:
            done = done[:, : max(0, block.layout.length - self._position)]
        self._position += done.shape[1]
        return np.ascontiguousarray(done.T)


class StreamTrack:
    """One signal between `StreamAnalysis` and `StreamSynthesis`: its frame blocks, run as they come.

    The counterpart of `predictor.overlap_add.Track`: `add_frames` returns the (track, channel,
    block index) entries to run, `window(channel, index)` a block's spectra [n, bins, 2], `add`
    takes the model's output for them and `take_joined` the blocks run so far, in order.
    """

    def __init__(self, key: Any, geometry: StreamGeometry) -> None:
        self.key = key
        self._geometry = geometry
        self.layout: StreamLayout | None = None
        self.dropped = False
        self._blocks: dict[int, list] = {}  # index -> [frames, enhanced [channels] (None until run), missing]
        self._added = 0
        self._taken = 0

    def add_frames(self, frames: StreamFrames) -> list[tuple["StreamTrack", int, int]]:
        index, self._added = self._added, self._added + 1
        channels, n = frames.spectrogram.shape[:2]
        self._blocks[index] = [frames, [None] * channels, channels if n else 0]
        self.layout = frames.layout or self.layout
        return [(self, c, index) for c in range(channels)] if n else []

    def window(self, channel: int, index: int) -> np.ndarray:
        frames = self._blocks[index][0]
        return StreamFrames(0, frames.spectrogram[channel]).spectra

    def add(self, channel: int, index: int, prediction: np.ndarray) -> None:
        block = self._blocks[index]
        block[1][channel] = as_complex(prediction)
        block[2] -= 1

    def take_joined(self) -> StreamBlock | None:
        """The consecutive blocks run since the last call, as one; None when there are none."""
        ready = []
        while self._taken in self._blocks and self._blocks[self._taken][2] == 0:
            ready.append(self._blocks.pop(self._taken))
            self._taken += 1
        if not ready:
            return None
        bins = self._geometry.config.num_bins
        channels = ready[0][0].spectrogram.shape[0]
        noisy = np.concatenate([frames.spectrogram for frames, _, _ in ready], axis=1)
        enhanced = np.concatenate([np.stack(out) if frames.spectrogram.shape[1] else
                                   np.zeros((channels, 0, bins), np.complex64) for frames, out, _ in ready], axis=1)
        last = ready[-1][0].layout is not None
        return StreamBlock(ready[0][0].start, noisy, enhanced, self.layout, last)


class StreamRunner:
    """Runs a step function over a stream's frames with its states, `frames_per_call` frames per call.

    `run(spectra [B, T, bins, 2], states)` returns (enhanced [B, T, bins, 2], new states); the B
    streams (a file's channels) share each call. Splitting T into calls changes nothing but speed.
    """

    def __init__(self, step: StepFunction, geometry: StreamGeometry, frames_per_call: int) -> None:
        if not isinstance(frames_per_call, int) or frames_per_call < 1:
            raise ValueError(f"frames_per_call must be a positive integer. Received: frames_per_call={frames_per_call!r}")
        self.step, self.geometry, self.frames_per_call = step, geometry, frames_per_call
        self.frames_run = 0  # frames per stream run so far, for benchmarks and tests

    def run(self, spectra: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        spectra = np.asarray(spectra, np.float32)
        states = list(states)
        outputs = []
        for start in range(0, spectra.shape[1], self.frames_per_call):
            y, states = self.step(spectra[:, start: start + self.frames_per_call], states)
            outputs.append(np.asarray(y, np.float32))
        self.frames_run += spectra.shape[1]
        return (np.concatenate(outputs, axis=1) if outputs else np.zeros_like(spectra)), states

    def enhance(self, signal: np.ndarray) -> np.ndarray:
        """float32 [samples, channels] at the model's rate -> the enhanced signal of the same shape, in one go."""
        analysis = StreamAnalysis(self.geometry, signal.shape[1])
        first = analysis.feed(signal)
        rest = analysis.close()
        spectrogram = rest.spectrogram if first is None else np.concatenate([first.spectrogram, rest.spectrogram], 1)
        y, _ = self.run(StreamFrames(0, spectrogram).spectra, self.geometry.initial_states(signal.shape[1]))
        return StreamSynthesis(self.geometry).push(StreamBlock(0, spectrogram, as_complex(y), rest.layout, True))
