"""Denoising folders of files: finding the inputs, where outputs go, what to skip, failures.jsonl.

`enhance_files` streams each file through an `Enhancer` (`predictor.enhance`): read and resampled
a block at a time (`read_frames`), enhanced, then synthesised, resampled back and written
atomically (`FileSink`), in threads or, with `file_processes`, in worker processes
(`predictor.file_processes`). Outputs that exist are skipped, so an interrupted run resumes; files
that fail are listed with their reason in OUTPUT/failures.jsonl.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import json
import logging
import math
import os
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from predictor import audio_io
from predictor.file_processes import FileProcesses, WorkerSettings, check_file_processes, credit_per_worker
from predictor.high_band import Crossover, HighBandGain, HighBandMixer, check_high_band
from predictor.overlap_add import Analysis, Frames, Joined, Synthesis
from predictor.workers import Readahead, Workers, done_in_order, run_after
from tfrecord_schema import paths

if TYPE_CHECKING:
    from predictor.enhance import Enhancer

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.jsonl"
# A write that fails with one of these fails for every file after it as well (the output's disk
# is full or read-only): the run stops there instead of running the model for files it cannot
# write, and says what to fix (`OutputNotWritableError`).
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# The file `check_output_dir` creates and removes to learn whether the output can be written.
_PROBE_NAME = "write-probe"
# Seconds of input read, resampled and enhanced at a time. A file in flight holds a few blocks'
# spectrograms (about 1.2 MB per second of audio and channel at 8 kHz: some 22 MB of arrays for a
# mono file, whatever its length), and the per-block overhead is small against the model's time
# for the block's 20 windows.
DEFAULT_BLOCK_SECONDS = 10.0


@dataclasses.dataclass
class PredictSummary:
    """What `enhance_files` did. Seconds are audio seconds at the input's rate."""

    total: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0
    # failures.jsonl entries of earlier runs for files this run did not cover: kept in the file.
    earlier_failures: list[dict[str, str]] = dataclasses.field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """Processing seconds per audio second (lower is faster)."""
        return self.processing_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["real_time_factor"] = self.real_time_factor
        return out


class Progress:
    """Logs files done/total, audio seconds and real-time factor at most every `interval` seconds.

    Within a long file the lines also say how far into it the output has been written.
    """

    def __init__(self, total: int, interval: float = 5.0) -> None:
        self.total, self.interval = total, interval
        self.start = self.last = time.perf_counter()

    def update(self, summary: PredictSummary, force: bool = False, current: FileJob | None = None,
               written: float | None = None) -> None:
        """`written`: seconds of `current` written so far (default: what its sink says)."""
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        done = summary.written + summary.skipped + len(summary.failures)
        elapsed = now - self.start
        audio_seconds, within = summary.audio_seconds, ""
        if written is None and current is not None and current.sink is not None:
            written = current.sink.seconds_written
        if current is not None and written is not None:
            audio_seconds += written
            within = f"; {current.rel}: {written:.1f} of {current.seconds:.1f} s written"
        rtf = f"{elapsed / audio_seconds:.4f}" if audio_seconds else "n/a"
        logger.info("%d/%d files (%d written, %d skipped, %d failed), %.1f s of audio, %.1f s elapsed, "
                    "real-time factor %s%s", done, self.total, summary.written, summary.skipped,
                    len(summary.failures), audio_seconds, elapsed, rtf, within)


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

    def __init__(self, job: FileJob, enhancer: Enhancer, keep_model_rate: bool) -> None:
        self.job = job
        self.rate = enhancer.sample_rate if keep_model_rate else job.sample_rate
        self.synthesis = Synthesis(enhancer)
        self.resampler = audio_io.StreamResampler(enhancer.sample_rate, self.rate, job.channels)
        subtype = audio_io.output_subtype(audio_io.extension(job.target), job.subtype, audio_io.extension(job.source))
        self.writer = audio_io.AtomicAudioWriter(job.target, self.rate, job.channels, subtype)
        self.error: str | None = None
        self.errno: int | None = None  # of the OSError that `error` reports
        # The input's band above the model's Nyquist frequency, when it is kept (see `_read_frames`).
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


def _read_frames(job: FileJob, enhancer: Enhancer, downmix: bool, block_seconds: float,
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
            if high_band is not None and reader.sample_rate > enhancer.sample_rate:
                crossover = Crossover(reader.sample_rate, enhancer.sample_rate, job.channels)
                job.high_band = HighBandMixer(enhancer, reader.sample_rate, job.channels, high_band)
            else:
                crossover, job.high_band = None, None
            resampler = audio_io.StreamResampler(reader.sample_rate, enhancer.sample_rate, job.channels)
            analysis = Analysis(enhancer, job.channels)
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
            raise ValueError(f"output_format must be one of {sorted(f[1:] for f in audio_io.FORMATS)}. "
                             f"Received: output_format={output_format!r}")
    return paths.join(output_dir, stem + ext.lower())


class OutputNotWritableError(OSError):
    """The output location cannot take the outputs (full, read-only, no permission): the run stops.

    `errno` is the system's error number when there is one; the message names the path, says what
    the system said ("No space left on device") and what to do.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _unwritable(path: str, err: OSError, what: str = "cannot write there") -> OutputNotWritableError:
    reason = err.strerror or str(err)
    fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
           errno.EROFS: "choose a writable output_dir", errno.EACCES: "choose an output_dir you may write to",
           errno.EPERM: "choose an output_dir you may write to"}.get(err.errno, "choose another output_dir")
    return OutputNotWritableError(f"{path}: {what} ({reason}); {fix}", err.errno)


def check_progress_interval(progress_interval: float) -> None:
    """Refuses (ValueError) a `progress_interval` that is not a number of seconds >= 0."""
    if isinstance(progress_interval, bool) or not isinstance(progress_interval, (int, float)) or not (
            math.isfinite(progress_interval) and progress_interval >= 0):
        raise ValueError(f"progress_interval must be a finite number of seconds >= 0. "
                         f"Received: progress_interval={progress_interval!r}")


def check_output_dir(output_dir: str) -> None:
    """Makes sure, before any model work, that `output_dir` can take the outputs; changes nothing there.

    Refuses (ValueError) an empty `output_dir` (it would be the current folder), one that is a file
    or lies below a file; raises `OutputNotWritableError` when a file cannot be created and written
    there (read-only, full, no permission): a probe file is written and removed, with the folders
    made for it. A remote prefix gets a probe object, written and deleted through the path layer.
    """
    if not output_dir:
        raise ValueError(f"output_dir must name a folder (an empty one would be the current folder). Received: "
                         f"output_dir={output_dir!r}. Pass the folder to write into, e.g. output_dir='denoised'.")
    if paths.is_remote(output_dir):
        probe = paths.join(output_dir, f".{_PROBE_NAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            paths.write_atomic(probe, b"")
            paths.delete_files([probe])
        except Exception as err:  # the storage clients' own errors (google.api_core, ...) are no OSError
            raise OutputNotWritableError(f"{output_dir}: cannot write there ({type(err).__name__}: {err}); "
                                         "choose an output_dir you may write to") from err
        return
    existing = paths.existing_ancestor(output_dir)
    if not os.path.isdir(existing):
        where = ("is a file" if existing == os.path.abspath(output_dir)
                 else f"lies below {existing!r}, which is a file")
        raise ValueError(f"output_dir must be a folder, but it {where}. Received: output_dir={output_dir!r}. "
                         "Choose a folder (one that does not exist yet is created).")
    target = os.path.abspath(output_dir)
    # The folders made for the probe are removed with it: a refused run leaves nothing behind.
    makes_folders = target != existing
    probe = audio_io.temporary_path(os.path.join(target, _PROBE_NAME))
    try:
        os.makedirs(target, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")  # a block of its own: a full disk refuses it
    except OSError as err:
        raise _unwritable(output_dir, err) from err
    finally:
        if os.path.exists(probe):
            os.remove(probe)
        folder = target
        while makes_folders and folder != existing:
            try:
                os.rmdir(folder)
            except OSError:  # never made, or another run writes there now
                break
            folder = os.path.dirname(folder)


def _stop_on_full_output(output_dir: str, summary: PredictSummary, error: str, errno_: int | None) -> None:
    """Raises the error of a run stopped by a write that every later file would fail as well.

    failures.jsonl is left as it was: the files not written are redone by the next run anyway,
    and the disk would most likely refuse the list too.
    """
    done = summary.written + summary.skipped + len(summary.failures)
    # A remote output is written to a local temporary file first: that disk is the one that is full.
    where = (f"the local folder of temporary files, {tempfile.gettempdir()}" if paths.is_remote(output_dir)
             else f"output_dir={output_dir!r} (or choose another)")
    raise OutputNotWritableError(
        f"{error}: the run stopped after {done} of {summary.total} files ({summary.written} written, "
        f"{summary.skipped} skipped, {len(summary.failures)} failed, named in the log above). Make room in "
        f"{where} and run the same command again: the files written are skipped", errno_)


def enhance_files(enhancer: Enhancer, source: str, output_dir: str, *, overwrite: bool = False,
                  output_format: str | None = None, keep_model_rate: bool = False, downmix: bool = False,
                  high_band: str = "keep", high_band_gain: HighBandGain = HighBandGain(),
                  progress_interval: float = 5.0, block_seconds: float = DEFAULT_BLOCK_SECONDS,
                  file_processes: int | FileProcesses = 0) -> PredictSummary:
    """Denoises every wav/flac/ogg file of `source` (folder, file or glob) into `output_dir`.

    `source` and `output_dir` may be local or remote (gs://...; a remote `source` is a folder
    prefix or one object, never a glob). Remote inputs are streamed; remote outputs are written to
    a local temporary file and uploaded when complete (`audio_io.AtomicAudioWriter`).

    Outputs mirror the input's folder structure, keep the input's sample rate (the model's with
    `keep_model_rate`), length, channel count (mono with `downmix`), format (or `output_format`:
    "wav", "flac", "ogg") and, for the same format, sample encoding. Files are streamed: read,
    resampled, enhanced and written `block_seconds` (of input) at a time, so memory does not grow
    with their length, and the output is the same as for the whole file at once.

    A file above the model's rate keeps the band the model does not see with `high_band="keep"`
    (the default): split off by a complementary crossover, multiplied by a gain that follows the
    model's mask in the top of its band (`high_band_gain`, see `predictor.high_band`) and added
    back, so a model that changes nothing gives back the input. `high_band="drop"` writes only the
    model's band (band-limited to its Nyquist frequency, the behaviour before). Files at or below
    the model's rate, and outputs at the model's rate (`keep_model_rate`), are not affected. Each output is
    written under a temporary name and renamed when complete; temporaries that a killed run left
    in a local `output_dir` are removed (a bucket cannot tell whether their writer still runs).
    Outputs that exist are skipped unless `overwrite`, so an interrupted run resumes. A file that
    cannot be read, is too short to resample to the model's rate, or cannot be written is logged,
    recorded in `output_dir/failures.jsonl` with its reason, and skipped. Refuses (ValueError)
    when an output would replace an input.

    `file_processes=0` (the default) does the file work (reading, resampling, STFT, overlap-add,
    inverse STFT, writing) in `enhancer.workers` threads of this process. `file_processes=N` does
    it in N worker processes (`predictor.file_processes`), which no interpreter lock holds back,
    while this process batches the windows of all files and runs the model: for an accelerator
    fast enough that threads cannot keep it fed. The outputs are the same to float rounding. A
    started `FileProcesses` is used and left running (its start-up then overlaps loading the model).
    """
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive. Received: block_seconds={block_seconds!r}")
    check_progress_interval(progress_interval)
    check_file_processes(file_processes)
    check_high_band(high_band)
    gain = high_band_gain if high_band == "keep" and not keep_model_rate else None
    todo, summary = plan_jobs(source, output_dir, overwrite=overwrite, output_format=output_format)
    progress = Progress(summary.total, progress_interval)
    logger.info("denoising %d files from %s into %s (model rate %d Hz, batch %d, overlap %.0f%%%s)",
                summary.total, source, output_dir, enhancer.sample_rate, enhancer.batch_size, 100 * enhancer.overlap,
                f", {_count(file_processes)} file processes" if file_processes else "")

    start = time.perf_counter()
    if file_processes:
        try:
            _enhance_in_processes(enhancer, todo, summary, progress, start, file_processes, downmix=downmix,
                                  block_seconds=block_seconds, keep_model_rate=keep_model_rate, gain=gain)
        except BaseException:
            # The workers are stopped (they removed their temporaries) or dead: a killed one could not,
            # and its process no longer runs, so its temporary goes as a killed run's would.
            audio_io.remove_stale_temporaries(output_dir, endings=tuple(audio_io.FORMATS))
            raise
        summary.processing_seconds = time.perf_counter() - start
        progress.update(summary, force=True)
        _finish(output_dir, summary)
        return summary
    depth = 2 * enhancer.workers + 2
    reader = Readahead(enhancer.workers, depth=2)
    stopped: list[tuple[str, int]] = []  # the write error that stops the run (`OUTPUT_ERRNOS`), if one did

    def check_stop(job: FileJob) -> None:
        if not stopped and job.sink is not None and job.sink.errno in OUTPUT_ERRNOS:
            stopped.append((job.sink.error, job.sink.errno))

    def record(job: FileJob, error: str | None) -> None:
        check_stop(job)
        job.sink = job.high_band = None
        _record_outcome(summary, progress, start, job, error)

    files = reader.chain(_read_frames(job, enhancer, downmix, block_seconds, gain) for job in todo)
    try:
        _enhance_in_threads(enhancer, files, todo, summary, progress, start, depth, record, check_stop, stopped,
                            keep_model_rate)
    except BaseException:
        # Ctrl-C, a model that raises, a disk that fails: the reader threads are stopped here, not in
        # the generator's `finally` (the traceback on its way up keeps the generator alive, and the
        # interpreter would wait for its threads forever), and the files in flight lose their
        # temporaries; their writes have ended (`_enhance_in_threads` left its pool) or never ran.
        files.close()
        for job in todo:
            if job.sink is not None:
                job.sink.abort()
                job.sink = None
        raise
    summary.processing_seconds = time.perf_counter() - start
    progress.update(summary, force=True)
    if stopped:
        _stop_on_full_output(output_dir, summary, *stopped[0])
    _finish(output_dir, summary)
    return summary


def _enhance_in_threads(enhancer: Enhancer, files: Iterator[tuple[FileJob, Frames | audio_io.AudioError]],
                        todo: list[FileJob], summary: PredictSummary, progress: Progress, start: float, depth: int,
                        record: Callable[[FileJob, str | None], None], check_stop: Callable[[FileJob], None],
                        stopped: list[tuple[str, int]], keep_model_rate: bool) -> None:
    """`enhance_files`'s work in `enhancer.workers` threads: `files` read ahead, the model here, writes in a pool.

    A write error that would fail every later file too (`OUTPUT_ERRNOS`, seen by `check_stop`) ends
    the loop early: the readers stop and the files part way through lose their temporaries.
    """
    with Workers(enhancer.workers) as pool:
        writing: collections.deque[concurrent.futures.Future] = collections.deque()  # every write task
        finished: collections.deque[tuple[FileJob, concurrent.futures.Future]] = collections.deque()
        for track, block in enhancer.enhance_frames(files):
            job = track.key
            if isinstance(block, audio_io.AudioError):
                check_stop(job)
                _fail(summary, job, block.reason, str(block))
                if job.sink is not None:  # it failed part way through: drop what was written of it
                    writing.append(pool.submit(run_after, job.last_write, job.sink.abort))
                    job.sink = None
                job.high_band = None
                continue
            if job.sink is None:
                job.sink = FileSink(job, enhancer, keep_model_rate)
            job.last_write = pool.submit(run_after, job.last_write, job.sink.push, block)
            writing.append(job.last_write)
            if block.last:
                finished.append((job, job.last_write))
            # Joined blocks waiting to be written hold memory: let only a few wait.
            while writing and (writing[0].done() or len(writing) > depth):
                writing.popleft().result()
            for done, error in done_in_order(finished, keep=depth):
                record(done, error)
            summary.processing_seconds = time.perf_counter() - start
            progress.update(summary, current=job)
            check_stop(job)
            if stopped:
                break
        if stopped:
            files.close()  # the readers stop (`Readahead.chain`)
        for done, error in done_in_order(finished, keep=0):
            record(done, error)
        if stopped:  # the files part way through: their temporaries go
            for job in todo:
                if job.sink is not None:
                    if job.sink.error is not None:  # the failed write was seen before the file's end
                        _fail(summary, job, "unwritable", job.sink.error)
                    writing.append(pool.submit(run_after, job.last_write, job.sink.abort))
                    job.sink = None
        for future in writing:
            future.result()


def _count(file_processes: int | FileProcesses) -> int:
    return file_processes.processes if isinstance(file_processes, FileProcesses) else file_processes


def _enhance_in_processes(enhancer: Enhancer, todo: list[FileJob], summary: PredictSummary, progress: Progress,
                          start: float, processes: int | FileProcesses, *, downmix: bool, block_seconds: float,
                          keep_model_rate: bool, gain: HighBandGain | None) -> None:
    """`enhance_files`'s work with the file side in worker processes (`predictor.file_processes`)."""
    if not todo:
        return
    if not isinstance(processes, FileProcesses):
        with FileProcesses(min(processes, len(todo))) as pool:
            _enhance_in_processes(enhancer, todo, summary, progress, start, pool, downmix=downmix,
                                  block_seconds=block_seconds, keep_model_rate=keep_model_rate, gain=gain)
        return
    settings = WorkerSettings(enhancer.config, enhancer.target, enhancer.overlap, downmix, block_seconds,
                              keep_model_rate, gain, credit_per_worker(enhancer.batch_size, processes.processes))

    def on_failed(job: FileJob, reason: str, message: str) -> None:
        _fail(summary, job, reason, message)

    def on_done(job: FileJob, error: str | None) -> None:
        _record_outcome(summary, progress, start, job, error)

    def on_progress(job: FileJob, written: float) -> None:
        summary.processing_seconds = time.perf_counter() - start
        progress.update(summary, current=job, written=written)

    processes.run(enhancer, todo, settings, on_failed=on_failed, on_done=on_done, on_progress=on_progress)


def plan_jobs(source: str, output_dir: str, *, overwrite: bool = False, output_format: str | None = None
              ) -> tuple[list[FileJob], PredictSummary]:
    """The files of `source` to denoise into `output_dir`: (jobs to run, summary of the total, the
    outputs skipped because they exist and the inputs refused so far). Refuses (ValueError) when an
    output would replace an input, and `check_output_dir`'s refusals; removes temporaries a killed
    run left in a local `output_dir`. The summary's `earlier_failures` are the entries of an earlier
    run's failures.jsonl for files this run does not cover (`_finish` keeps them in the file).
    Used by `enhance_files` and by the Beam pipeline (`predictor.beam_predict`)."""
    if not output_dir:  # the current folder, which would exclude nothing from the inputs: refused first
        check_output_dir(output_dir)
    base, rels = audio_io.find_audio_files(source, exclude=output_dir)
    jobs = [FileJob(rel, paths.join(base, rel), output_path(output_dir, rel, output_format)) for rel in rels]
    _check_no_input_overwritten(base, output_dir, jobs)
    check_output_dir(output_dir)
    # Local only (remove_stale_temporaries does nothing for a bucket): an object cannot say whether
    # the process writing it still runs, and remote outputs are staged on the local disk anyway.
    audio_io.remove_stale_temporaries(output_dir, endings=tuple(audio_io.FORMATS) + (FAILURES_FILE, _PROBE_NAME))
    output_exists = _existing_outputs(output_dir)
    summary = PredictSummary(total=len(jobs), earlier_failures=_earlier_failures(output_dir, jobs))
    writers: dict[str, FileJob] = {}  # output -> the input that writes it
    todo: list[FileJob] = []
    for job in jobs:
        first = writers.setdefault(job.target, job)
        if first is not job:
            # Without output_format only the extension's case can differ (outputs get lower-case ones).
            cause = (f"--format {output_format.lower().lstrip('.')} gives both that name; denoise one of them "
                     "without --format or into another --output, or rename one" if output_format
                     else "outputs take the extension in lower case; rename one")
            _fail(summary, job, "duplicate output",
                  f"{job.source}: {first.source} already writes {job.target} ({cause})")
            continue
        if not overwrite and output_exists(job.target):
            summary.skipped += 1
            continue
        todo.append(job)
    if summary.skipped:
        logger.info("skipping %d files whose output exists (pass --overwrite to redo them)", summary.skipped)
    return todo, summary


def _record_outcome(summary: PredictSummary, progress: Progress, start: float, job: FileJob, error: str | None) -> None:
    """Counts a finished file (written, or failed to write with `error`) and updates the progress."""
    if error:
        _fail(summary, job, "unwritable", error)
    else:
        summary.written += 1
        summary.audio_seconds += job.num_samples / job.sample_rate
    summary.processing_seconds = time.perf_counter() - start
    progress.update(summary)


def _fail(summary: PredictSummary, job: FileJob, reason: str, message: str) -> None:
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


def _location(path: str, resolved_folders: dict[str, str] | None = None) -> str:
    """`path` normalised for comparing with another: resolved locally, without trailing "/" remotely.

    `resolved_folders` caches resolved folders: a file's resolved path is its resolved folder joined with
    its name, unless the name itself is a link (what `os.path.realpath` gives, with one `lstat`
    per file instead of one per component of its path).
    """
    if paths.is_remote(path):
        return path.rstrip("/")
    if resolved_folders is None:
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if not name or name in (".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    resolved = resolved_folders.get(folder)
    if resolved is None:
        resolved = resolved_folders[folder] = os.path.realpath(folder)
    return os.path.join(resolved, name)


def _check_no_input_overwritten(base: str, output_dir: str, jobs: Sequence[FileJob]) -> None:
    if audio_io.same_location(output_dir, base):
        raise ValueError(
            "output_dir must not be the input folder: outputs would replace or mix with the inputs. "
            f"Received: source folder={base!r}, output_dir={output_dir!r}. Choose another output_dir.")
    resolved: dict[str, str] = {}
    sources = {_location(job.source, resolved) for job in jobs}
    clashes = [job.source for job in jobs if _location(job.target, resolved) in sources]
    if clashes:
        raise ValueError(f"output_dir would overwrite {len(clashes)} input file(s), e.g. {clashes[0]!r}. "
                         f"Received: output_dir={output_dir!r}. Choose an output_dir that holds no inputs.")


def _earlier_failures(output_dir: str, jobs: Sequence[FileJob]) -> list[dict[str, str]]:
    """The entries of `output_dir`'s failures.jsonl whose input is none of `jobs`' (compared as resolved
    locations): files of an earlier run that this run does not retry, which its list keeps. The
    entries of this run's files are replaced by what this run finds (none for a file now written)."""
    path = paths.join(output_dir, FAILURES_FILE)
    try:
        if not paths.isfile(path):
            return []
        lines = paths.read_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as err:
        logger.warning("%s: cannot read the earlier run's failures (%s); it will be replaced", path, err)
        return []
    resolved: dict[str, str] = {}
    covered = {_location(job.source, resolved) for job in jobs}
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # not one of ours (an edited line): dropped with the rewrite
        if isinstance(entry, dict) and isinstance(entry.get("input"), str) and \
                _location(entry["input"], resolved) not in covered:
            kept.append(entry)
    return kept


def _finish(output_dir: str, summary: PredictSummary) -> None:
    """Writes failures.jsonl: the earlier runs' entries that this run did not cover, then this run's.

    A run that cannot write it (its disk full or read-only) raises `OutputNotWritableError` saying
    what was done, since the summary the caller would print is then lost.
    """
    try:
        _write_failures(output_dir, summary.earlier_failures + summary.failures)
    except OutputNotWritableError as err:
        raise OutputNotWritableError(
            f"{summary.written} written, {summary.skipped} skipped, {len(summary.failures)} failed of "
            f"{summary.total} files, but {err} (the failures are named in the log above)", err.errno) from err


def _write_failures(output_dir: str, failures: list[dict[str, str]]) -> None:
    """Writes `failures` to output_dir/failures.jsonl whole (removes the file when there are none).

    Raises `OutputNotWritableError` naming the file when it cannot be written; no temporary is left.
    """
    path = paths.join(output_dir, FAILURES_FILE)
    if paths.is_remote(path):
        # Whole, under a temporary object name renamed into place; an earlier run's list is replaced.
        try:
            if failures:
                paths.write_atomic(path, "".join(json.dumps(f, sort_keys=True) + "\n"
                                                 for f in failures).encode("utf-8"))
                logger.error("%d file(s) listed as failed in %s", len(failures), path)
            elif paths.isfile(path):  # from an earlier run; its files were retried
                paths.delete_files([path])
        except OSError as err:
            raise _unwritable(path, err, "cannot write the list of failures") from err
        return
    tmp = audio_io.temporary_path(path)
    try:
        if not failures:
            if os.path.exists(path):  # from an earlier run; its files were retried
                os.remove(path)
            return
        os.makedirs(output_dir, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            for failure in failures:
                f.write(json.dumps(failure, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        raise _unwritable(path, err, "cannot write the list of failures") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.error("%d file(s) listed as failed in %s", len(failures), path)
