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
import json
import logging
import os
import time
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
            self.error = f"{self.job.target}: cannot write ({type(err).__name__}: {err})"
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
        _write_failures(output_dir, summary.failures)
        return summary
    depth = 2 * enhancer.workers + 2
    reader = Readahead(enhancer.workers, depth=2)

    def record(job: FileJob, error: str | None) -> None:
        job.sink = job.high_band = None
        _record_outcome(summary, progress, start, job, error)

    files = reader.chain(_read_frames(job, enhancer, downmix, block_seconds, gain) for job in todo)
    try:
        _enhance_in_threads(enhancer, files, summary, progress, start, depth, record, keep_model_rate)
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
    _write_failures(output_dir, summary.failures)
    return summary


def _enhance_in_threads(enhancer: Enhancer, files: Iterator[tuple[FileJob, Frames | audio_io.AudioError]],
                        summary: PredictSummary, progress: Progress, start: float, depth: int,
                        record: Callable[[FileJob, str | None], None], keep_model_rate: bool) -> None:
    """`enhance_files`'s work in `enhancer.workers` threads: `files` read ahead, the model here, writes in a pool."""
    with Workers(enhancer.workers) as pool:
        writing: collections.deque[concurrent.futures.Future] = collections.deque()  # every write task
        finished: collections.deque[tuple[FileJob, concurrent.futures.Future]] = collections.deque()
        for track, block in enhancer.enhance_frames(files):
            job = track.key
            if isinstance(block, audio_io.AudioError):
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
        for done, error in done_in_order(finished, keep=0):
            record(done, error)
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
    output would replace an input; removes temporaries a killed run left in a local `output_dir`.
    Used by `enhance_files` and by the Beam pipeline (`predictor.beam_predict`)."""
    base, rels = audio_io.find_audio_files(source, exclude=output_dir)
    jobs = [FileJob(rel, paths.join(base, rel), output_path(output_dir, rel, output_format)) for rel in rels]
    _check_no_input_overwritten(base, output_dir, jobs)
    # Local only (remove_stale_temporaries does nothing for a bucket): an object cannot say whether
    # the process writing it still runs, and remote outputs are staged on the local disk anyway.
    audio_io.remove_stale_temporaries(output_dir, endings=tuple(audio_io.FORMATS) + (FAILURES_FILE,))
    output_exists = _existing_outputs(output_dir)
    summary = PredictSummary(total=len(jobs))
    targets_seen: set[str] = set()
    todo: list[FileJob] = []
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
