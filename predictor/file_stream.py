"""One file through the model, a block at a time: its frames as it is read, its output as it is written.

`read_frames` reads and resamples a file a block at a time (splitting off the band above the
model's, `predictor.high_band`) into the frames of its padded STFT (`predictor.overlap_add`);
`FileSink` turns the joined frames back into samples, resamples them to the file's rate and writes
them atomically. Both need only the model's `WindowGeometry`, so they run in the threads of
`predictor.folders.enhance_files`, in its file processes (`predictor.file_processes`) and in the
Beam job's workers (`predictor.beam_predict`) alike.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Iterator

from predictor import audio_io
from predictor.high_band import Crossover, HighBandGain, HighBandMixer
from predictor.overlap_add import Frames, Joined, WindowGeometry
from predictor.streaming import StreamGeometry

# Seconds of input read, resampled and enhanced at a time. A file in flight holds a few blocks'
# spectrograms (about 1.2 MB per second of audio and channel at 8 kHz: some 22 MB of arrays for a
# mono file, whatever its length), and the per-block overhead is small against the model's time
# for the block's 20 windows.
DEFAULT_BLOCK_SECONDS = 10.0


@dataclasses.dataclass
class FileJob:
    """One input file and its output. The reader fills in what the file holds as it reads it."""

    rel: str
    source: str
    target: str
    sample_rate: int = 0  # Hz, of the input
    subtype: str | None = None  # soundfile subtype of the input ("PCM_16", ...)
    channels: int = 0  # channels denoised and written (1 with downmix)
    seconds: float = 0.0  # the input's duration as its header gives it
    num_samples: int = 0  # samples per channel read, final once the file has been read to its end
    sink: FileSink | None = None
    high_band: HighBandMixer | None = None  # the band above the model's, kept (`predictor.high_band`)
    last_write: concurrent.futures.Future | None = None


class FileSink:
    """Writes one file's output from its joined frames: synthesis, resampling back, atomic write.

    Its `push` calls must run one after another, in order (`run_after` chains them).
    """

    def __init__(self, job: FileJob, geometry: WindowGeometry | StreamGeometry, keep_model_rate: bool) -> None:
        self.job = job
        self.rate = geometry.sample_rate if keep_model_rate else job.sample_rate
        self.synthesis = geometry.synthesis()
        self.resampler = audio_io.StreamResampler(geometry.sample_rate, self.rate, job.channels)
        subtype = audio_io.output_subtype(audio_io.extension(job.target), job.subtype, audio_io.extension(job.source))
        self.writer = audio_io.AtomicAudioWriter(job.target, self.rate, job.channels, subtype)
        self.error: str | None = None
        self.errno: int | None = None  # of the OSError that `error` reports
        # The input's band above the model's Nyquist frequency, when it is kept (see `read_frames`).
        self.high_band = None if keep_model_rate else job.high_band
        self.low_samples = 0  # samples of the model's band written or waiting for their high band

    @property
    def seconds_written(self) -> float:
        return self.writer.samples_written / self.rate

    def push(self, block: Joined) -> str | None:
        """Writes the samples `block` completes; the last block commits the file. None, or what went wrong."""
        if self.error is not None:
            return self.error
        out = self.resampler.process(self.synthesis.push(block), last=block.last)
        if block.last:
            # Resampling there and back can be a sample off: give the output the input's duration.
            expected = int(round(self.job.num_samples * self.rate / self.job.sample_rate))
            out = audio_io.fit_length(out, max(0, expected - self.low_samples))
        self.low_samples += int(out.shape[0])
        if self.high_band is not None:
            out = self.high_band.push(block, out, length=expected if block.last else None)
        try:
            self.writer.write(out)
            if block.last:
                self.writer.commit()
        except (RuntimeError, OSError, ValueError) as err:
            self.writer.abort()
            if isinstance(err, OSError) and err.strerror:  # "No space left on device", as the system says it
                self.errno, reason = err.errno, err.strerror
            else:
                reason = f"{type(err).__name__}: {err}"
            self.error = f"{self.job.target}: cannot write ({reason})"
        return self.error

    def abort(self) -> None:
        self.writer.abort()


def read_frames(job: FileJob, geometry: WindowGeometry | StreamGeometry, downmix: bool, block_seconds: float,
                 high_band: HighBandGain | None = None) -> Iterator[tuple[FileJob, Frames | audio_io.AudioError]]:
    """One file's frames at the model's rate, read and resampled a block at a time.

    With `high_band` (the gain's design) and a file above the model's rate, the band the model
    does not see is split off as it is read (`Crossover`) and handed to `job.high_band`, which the
    file's sink adds back. A file that cannot be used ends its items with an AudioError naming it
    and the reason.
    """
    try:
        with audio_io.AudioReader(job.source) as reader:
            job.sample_rate, job.subtype = reader.sample_rate, reader.subtype
            job.channels = 1 if downmix else reader.num_channels
            job.seconds = reader.num_samples / reader.sample_rate
            if high_band is not None and reader.sample_rate > geometry.sample_rate:
                crossover = Crossover(reader.sample_rate, geometry.sample_rate, job.channels)
                job.high_band = HighBandMixer(geometry, reader.sample_rate, job.channels, high_band)
            else:
                crossover, job.high_band = None, None
            resampler = audio_io.StreamResampler(reader.sample_rate, geometry.sample_rate, job.channels)
            analysis = geometry.analysis(job.channels)
            for samples, last in reader.blocks(max(1, int(round(block_seconds * reader.sample_rate)))):
                if job.sink is not None and job.sink.error is not None:
                    # A write of this file failed: reading on would only run the model for nothing.
                    raise audio_io.AudioError("unwritable", job.sink.error)
                if downmix and samples.shape[1] > 1:
                    samples = samples.mean(axis=1, keepdims=True)
                if crossover is not None:
                    low, high = crossover.process(samples, last=last)
                    job.high_band.add_high(high)  # before the frames it goes with reach the sink
                else:
                    low = resampler.process(samples, last=last)
                frames = analysis.feed(low)
                if frames is not None:
                    yield job, frames
            job.num_samples = reader.samples_read
            if analysis.received == 0:
                raise audio_io.AudioError(
                    "too_short", f"{job.source}: {reader.samples_read} sample(s) at {reader.sample_rate} Hz are "
                                 f"no samples at all at the model's {geometry.sample_rate} Hz: too short to denoise")
            yield job, analysis.close()
    except audio_io.AudioError as err:
        yield job, err
