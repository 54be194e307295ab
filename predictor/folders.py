"""Denoising a folder of files into another: `enhance_files`.

Each file streams through an `Enhancer` (`predictor.enhance`): read and resampled a block at a
time (`predictor.file_stream.read_frames`), enhanced, then synthesised, resampled back and written
atomically (`FileSink`), in threads or, with `file_processes`, in worker processes
(`predictor.file_processes`). Which files, where their outputs go, what is skipped and
failures.jsonl are the output folder's (`predictor.output_folder`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import time
from typing import TYPE_CHECKING, Callable, Iterator

from predictor import audio_io
from predictor.file_processes import FileProcesses, check_file_processes, credit_per_worker
from predictor.file_worker import WorkerSettings
from predictor.file_stream import DEFAULT_BLOCK_SECONDS, FileJob, FileSink, read_frames
from predictor.high_band import HighBandGain, check_high_band
from predictor.output_folder import (OUTPUT_ERRNOS, PredictSummary, add_failure, finish_run, plan_jobs,
                                     stop_on_full_output)
from predictor.overlap_add import Frames
from predictor.predict_options import DEFAULT_PROGRESS_INTERVAL, PredictOptions
from predictor.workers import Readahead, Workers, done_in_order, run_after
from tfrecord_schema import paths

if TYPE_CHECKING:
    from predictor.enhance import Enhancer
    from predictor.stream_models import StreamingEnhancer

logger = logging.getLogger(__name__)


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


def check_progress_interval(progress_interval: float) -> None:
    """Refuses (ValueError) a `progress_interval` that is not a number of seconds >= 0."""
    if isinstance(progress_interval, bool) or not isinstance(progress_interval, (int, float)) or not (
            math.isfinite(progress_interval) and progress_interval >= 0):
        raise ValueError(f"progress_interval must be a finite number of seconds >= 0. "
                         f"Received: progress_interval={progress_interval!r}")


def enhance_files(enhancer: Enhancer | StreamingEnhancer, source: str, output_dir: str, *, overwrite: bool = False,
                  output_format: str | None = None, keep_model_rate: bool = False, downmix: bool = False,
                  high_band: str = PredictOptions.high_band, high_band_gain: HighBandGain = HighBandGain(),
                  progress_interval: float = DEFAULT_PROGRESS_INTERVAL, block_seconds: float = DEFAULT_BLOCK_SECONDS,
                  file_processes: int | FileProcesses = 0) -> PredictSummary:
    """Denoises every wav/flac/ogg file of `source` (a folder or one file) into `output_dir`.

    `source` and `output_dir` may be local or remote (gs://...); both are literal paths, never glob
    patterns (`audio_io.find_audio_files`). Remote inputs are streamed; remote outputs are written to
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
    logger.info("denoising %d files from %s into %s (model rate %d Hz, %s%s)", summary.total, source, output_dir,
                enhancer.sample_rate, enhancer.describe_run(),
                f", {_count(file_processes)} file processes" if file_processes else "")

    start = time.perf_counter()
    stopped: list[tuple[str, int]] = []  # the write error that stops the run (`OUTPUT_ERRNOS`), if one did
    if file_processes:
        try:
            _enhance_in_processes(enhancer, todo, summary, progress, start, file_processes, downmix=downmix,
                                  block_seconds=block_seconds, keep_model_rate=keep_model_rate, gain=gain)
        except BaseException:
            # The workers are stopped (they removed their temporaries) or dead: a killed one could not,
            # and its process no longer runs, so its temporary goes as a killed run's would.
            paths.remove_stale_temporaries(output_dir, log=False)
            raise
    else:
        _enhance_with_threads(enhancer, todo, summary, progress, start, stopped, downmix=downmix,
                              block_seconds=block_seconds, keep_model_rate=keep_model_rate, gain=gain)
    summary.processing_seconds = time.perf_counter() - start
    progress.update(summary, force=True)
    if stopped:
        stop_on_full_output(output_dir, summary, *stopped[0])
    finish_run(output_dir, summary)
    return summary


def enhance_jobs(enhancer: Enhancer | StreamingEnhancer, jobs: list[FileJob], *, downmix: bool = False,
                 block_seconds: float = DEFAULT_BLOCK_SECONDS, keep_model_rate: bool = False,
                 gain: HighBandGain | None = None) -> PredictSummary:
    """`jobs` (planned by `plan_jobs`) through `enhancer` in its threads, as `enhance_files` does them,
    without the output folder's work (planning, failures.jsonl) and without progress lines.

    Returns what happened to them: `written`, `audio_seconds` and `failures` ({"input", "output",
    "reason", "message"}). A write error that would fail every later file too (a full disk) fails its
    file and ends the work there: the files after it have no outcome (total - written - failures).
    `gain`: the high band's design (None drops the band, as `high_band="drop"`).
    """
    summary = PredictSummary(total=len(jobs))
    start = time.perf_counter()
    _enhance_with_threads(enhancer, jobs, summary, Progress(len(jobs), math.inf), start, [], downmix=downmix,
                          block_seconds=block_seconds, keep_model_rate=keep_model_rate, gain=gain)
    summary.processing_seconds = time.perf_counter() - start
    return summary


def _enhance_with_threads(enhancer: Enhancer, todo: list[FileJob], summary: PredictSummary, progress: Progress,
                          start: float, stopped: list[tuple[str, int]], *, downmix: bool, block_seconds: float,
                          keep_model_rate: bool, gain: HighBandGain | None) -> None:
    """`enhance_files`'s work in `enhancer.workers` threads; a write error that stops the run goes to `stopped`."""
    depth = 2 * enhancer.workers + 2
    reader = Readahead(enhancer.workers, depth=2)

    def check_stop(job: FileJob) -> None:
        if not stopped and job.sink is not None and job.sink.errno in OUTPUT_ERRNOS:
            stopped.append((job.sink.error, job.sink.errno))

    def record(job: FileJob, error: str | None) -> None:
        check_stop(job)
        job.sink = job.high_band = None
        _record_outcome(summary, progress, start, job, error)

    files = reader.chain(read_frames(job, enhancer.geometry, downmix, block_seconds, gain) for job in todo)
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
                add_failure(summary, job, block.reason, str(block))
                if job.sink is not None:  # it failed part way through: drop what was written of it
                    writing.append(pool.submit(run_after, job.last_write, job.sink.abort))
                    job.sink = None
                job.high_band = None
                continue
            if job.sink is None:
                job.sink = FileSink(job, enhancer.geometry, keep_model_rate)
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
                        add_failure(summary, job, "unwritable", job.sink.error)
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
    settings = WorkerSettings(enhancer.geometry, downmix, block_seconds, keep_model_rate, gain,
                              credit_per_worker(enhancer.batch_size, processes.processes))

    def on_failed(job: FileJob, reason: str, message: str) -> None:
        add_failure(summary, job, reason, message)

    def on_done(job: FileJob, error: str | None) -> None:
        _record_outcome(summary, progress, start, job, error)

    def on_progress(job: FileJob, written: float) -> None:
        summary.processing_seconds = time.perf_counter() - start
        progress.update(summary, current=job, written=written)

    processes.run(enhancer, todo, settings, on_failed=on_failed, on_done=on_done, on_progress=on_progress)


def _record_outcome(summary: PredictSummary, progress: Progress, start: float, job: FileJob, error: str | None) -> None:
    """Counts a finished file (written, or failed to write with `error`) and updates the progress."""
    if error:
        add_failure(summary, job, "unwritable", error)
    else:
        summary.written += 1
        summary.audio_seconds += job.num_samples / job.sample_rate
    summary.processing_seconds = time.perf_counter() - start
    progress.update(summary)


