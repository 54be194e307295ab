"""Denoising audio of any length with a trained model directory, alone or folder by folder.

How a signal of any length goes through a model that sees fixed windows of
`config.num_frames` STFT frames (128 frames = 8064 samples = 1.008 s at 8 kHz):

1. The whole signal's STFT is taken once with the shared `stft` (the dataset writer's function).
   Before that, `pad = num_frames - hop` frames of silence (half a window at 50 % overlap) are
   added at the front and at least as many at the back, so every frame of the signal is covered
   by the same number of windows. A signal that fits in one window is centred in a single window.
2. Windows of `num_frames` frames start every `hop = round(num_frames * (1 - overlap))` frames;
   their features (`trainer.targets.model_input`) go to the model in batches of `batch_size`,
   windows of different signals sharing a batch.
3. The model's outputs are joined by weighted overlap-add: each window's output is multiplied by a
   crossfade weight (raised-cosine ramps of `num_frames - hop` frames, flat in between; a Hann
   window at 50 % overlap) and the sum is divided by the summed weights, so there are no seams and
   no gain change where windows meet.
4. The joined output and the noisy magnitude give the enhanced magnitude
   (`trainer.targets.enhance_magnitude`); with the noisy phase, one inverse STFT (the shared
   `istft`) gives the waveform, cut back to the input's samples. No gain is applied anywhere:
   the level is preserved.

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
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from predictor import audio_io
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
# model's and, on a machine with many cores, keeps a GPU fed.
DEFAULT_WORKERS = min(16, os.cpu_count() or 1)


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


class _Track:
    """One mono signal in flight: its padded spectrogram, model features and output accumulator."""

    def __init__(self, key: Any, signal: np.ndarray, enhancer: "Enhancer") -> None:
        config, W, hop, pad = enhancer.config, enhancer.window_frames, enhancer.hop_frames, enhancer.pad_frames
        self.key = key
        self.length = int(signal.shape[0])
        real_frames = config.frames_for(self.length)
        if real_frames <= W:  # one window holds it all: centre it, every sample is seen once
            self.num_windows, lead_frames = 1, (W - real_frames) // 2
        else:
            self.num_windows, lead_frames = -(-(real_frames + 2 * pad - W) // hop) + 1, pad
        total_frames = (self.num_windows - 1) * hop + W
        # Zeros in front shift the STFT frames by exactly `lead_frames`; the padded length gives
        # exactly `total_frames` centred frames.
        lead = lead_frames * config.hop_length
        padded = np.zeros(total_frames * config.hop_length, np.float32)
        padded[lead: lead + self.length] = signal
        self.lead = lead
        self.spectrogram = stft(padded, config)
        self.magnitude = np.abs(self.spectrogram)
        self.features = model_input(self.magnitude, config)
        self.output = np.zeros_like(self.features)
        self.weight_sum = np.zeros(total_frames, np.float32)
        self.pending = self.num_windows

    def window(self, index: int, hop: int, width: int) -> np.ndarray:
        start = index * hop
        return self.features[start: start + width]

    def add(self, index: int, prediction: np.ndarray, hop: int, weights: np.ndarray) -> None:
        start = index * hop
        self.output[start: start + len(weights)] += weights[:, None] * prediction
        self.weight_sum[start: start + len(weights)] += weights
        self.pending -= 1

    def finish(self, enhancer: "Enhancer") -> np.ndarray:
        joined = self.output / self.weight_sum[:, None]
        magnitude = enhance_magnitude(self.magnitude, joined, enhancer.target, enhancer.config)
        # Scaling the complex STFT by enhanced / noisy magnitude keeps the noisy phase exactly.
        gain = np.divide(magnitude, self.magnitude, out=np.zeros_like(magnitude), where=self.magnitude > 0)
        padded_length = self.magnitude.shape[0] * enhancer.config.hop_length
        waveform = istft(self.spectrogram * gain, enhancer.config, padded_length)
        return waveform[self.lead: self.lead + self.length]


class Enhancer:
    """Runs a spectrogram model over mono signals of any length at the model's sample rate.

    Args:
        model: a Keras model mapping [B, frames, bins, 1] features to [B, frames, bins, 1] in [-1, 1],
            or any callable doing the same on numpy arrays.
        config: the model's `SpectrogramConfig`.
        target: "noise" or "mask" (what the model predicts; see `trainer.targets`).
        batch_size: windows per model call; windows of several signals share a batch. None:
            `default_batch_size()` (8 on a CPU, 64 on a GPU or TPU).
        overlap: fraction of a window shared with the next one, in [0, 1). 0.5 by default.
        workers: threads for the STFT work before and after the model (0: all in the caller's thread).
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

    def enhance(self, signal: np.ndarray) -> np.ndarray:
        """Enhances one signal at the model's rate: float32 [samples] or [samples, channels].

        Channels are enhanced independently. Returns the same shape.
        """
        x = np.asarray(signal, np.float32)
        if x.ndim == 1:
            return [y for _, y in self.enhance_many([(None, x)])][0]
        if x.ndim != 2:
            raise ValueError(f"enhance() takes [samples] or [samples, channels]. Received: shape={x.shape}")
        outputs = [y for _, y in self.enhance_many((c, x[:, c]) for c in range(x.shape[1]))]
        return np.stack(outputs, axis=1)

    def enhance_many(self, signals: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """Enhances a stream of (key, mono float32 [samples]) pairs; yields (key, enhanced) in order.

        Windows of consecutive signals share model batches. The input is consumed lazily, a few
        signals ahead of the model, so only those and the ones being finished are in memory.
        """
        with _Workers(self.workers) as pool:
            in_flight: collections.deque[_Track] = collections.deque()
            finishing: collections.deque[tuple[Any, concurrent.futures.Future]] = collections.deque()
            batch: list[tuple[_Track, int]] = []
            for track in pool.prefetch(self._track, signals, depth=2 * self.workers + 2):
                in_flight.append(track)
                for index in range(track.num_windows):
                    batch.append((track, index))
                    if len(batch) == self.batch_size:
                        self._run(batch)
                        batch = []
                        self._finish_ready(in_flight, finishing, pool)
                        yield from _done_in_order(finishing, keep=4 * self.workers + 4)
            if batch:
                self._run(batch)
            self._finish_ready(in_flight, finishing, pool)
            yield from _done_in_order(finishing, keep=0)

    def _track(self, item: tuple[Any, np.ndarray]) -> _Track:
        key, signal = item
        x = np.asarray(signal, np.float32)
        if x.ndim != 1 or x.shape[0] == 0:
            raise ValueError(f"enhance_many() takes non-empty mono signals. Received: key={key!r}, shape={x.shape}")
        return _Track(key, x, self)

    def _run(self, batch: Sequence[tuple[_Track, int]]) -> None:
        W, hop = self.window_frames, self.hop_frames
        x = np.stack([track.window(index, hop, W) for track, index in batch])[..., None]
        y = self.predict(x)
        self.windows_run += len(batch)
        for (track, index), prediction in zip(batch, y):
            track.add(index, prediction, hop, self.weights)

    def _finish_ready(self, in_flight: collections.deque, finishing: collections.deque, pool: "_Workers") -> None:
        while in_flight and in_flight[0].pending == 0:
            track = in_flight.popleft()
            finishing.append((track.key, pool.submit(track.finish, self)))


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


def _done_in_order(pending: collections.deque, keep: int) -> Iterator[tuple[Any, Any]]:
    """Pops (key, future) pairs from the left while done, or while more than `keep` are waiting."""
    while pending and (pending[0][1].done() or len(pending) > keep):
        key, future = pending.popleft()
        yield key, future.result()


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
    """Logs files done/total, audio seconds and real-time factor at most every `interval` seconds."""

    def __init__(self, total: int, interval: float = 5.0) -> None:
        self.total, self.interval = total, interval
        self.start = self.last = time.perf_counter()

    def update(self, summary: PredictSummary, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        done = summary.written + summary.skipped + len(summary.failures)
        elapsed = now - self.start
        rtf = f"{elapsed / summary.audio_seconds:.4f}" if summary.audio_seconds else "n/a"
        logger.info("%d/%d files (%d written, %d skipped, %d failed), %.1f s of audio, %.1f s elapsed, "
                    "real-time factor %s", done, self.total, summary.written, summary.skipped,
                    len(summary.failures), summary.audio_seconds, elapsed, rtf)


@dataclasses.dataclass
class _FileJob:
    rel: str
    source: str
    target: str
    audio: audio_io.Audio | None = None
    channels: list[np.ndarray | None] = dataclasses.field(default_factory=list)
    pending: int = 0


def output_path(output_dir: str, rel: str, output_format: str | None) -> str:
    """Where the output of input `rel` goes: same relative path; extension from `output_format`."""
    stem, ext = os.path.splitext(rel)
    if output_format:
        ext = "." + output_format.lower().lstrip(".")
        if ext not in audio_io.FORMATS:
            raise ValueError(f"output format must be one of {sorted(f[1:] for f in audio_io.FORMATS)}. "
                             f"Received: format={output_format!r}")
    return os.path.join(output_dir, stem + ext.lower())


def enhance_files(enhancer: Enhancer, source: str, output_dir: str, *, overwrite: bool = False,
                  output_format: str | None = None, keep_model_rate: bool = False, downmix: bool = False,
                  progress_interval: float = 5.0) -> PredictSummary:
    """Denoises every wav/flac/ogg file of `source` (folder, file or glob) into `output_dir`.

    Outputs mirror the input's folder structure, keep the input's sample rate (the model's with
    `keep_model_rate`), channel count (mono with `downmix`), format (or `output_format`: "wav",
    "flac", "ogg") and, for the same format, sample encoding. Each output is written atomically;
    outputs that exist are skipped unless `overwrite`, so an interrupted run resumes. A file that
    cannot be read or written is logged, recorded in `output_dir/failures.jsonl` with its reason,
    and skipped. Refuses (ValueError) when an output would replace an input.
    """
    base, rels = audio_io.find_audio_files(source, exclude=output_dir)
    jobs = [_FileJob(rel, os.path.join(base, rel), output_path(output_dir, rel, output_format)) for rel in rels]
    _check_no_input_overwritten(base, output_dir, jobs)
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
        if os.path.exists(job.target) and not overwrite:
            summary.skipped += 1
            continue
        todo.append(job)
    if summary.skipped:
        logger.info("skipping %d files whose output exists (pass --overwrite to redo them)", summary.skipped)

    start = time.perf_counter()
    depth = 2 * enhancer.workers + 2

    def load(job: _FileJob) -> tuple[_FileJob, np.ndarray | audio_io.AudioError]:
        try:
            job.audio = audio_io.read_audio(job.source)
        except audio_io.AudioError as err:
            return job, err
        samples = job.audio.samples
        if downmix and samples.shape[1] > 1:
            samples = samples.mean(axis=1, keepdims=True)
        return job, audio_io.resample(samples, job.audio.sample_rate, enhancer.sample_rate)

    def signals(pool: _Workers) -> Iterator[tuple[tuple[_FileJob, int], np.ndarray]]:
        for job, samples in pool.prefetch(load, todo, depth):
            if isinstance(samples, audio_io.AudioError):
                _fail(summary, job, samples.reason, str(samples))
                continue
            job.channels = [None] * samples.shape[1]
            job.pending = samples.shape[1]
            for c in range(samples.shape[1]):
                yield (job, c), np.ascontiguousarray(samples[:, c])

    def record(job: _FileJob, error: str | None) -> None:
        if error:
            _fail(summary, job, "unwritable", error)
        else:
            summary.written += 1
            summary.audio_seconds += job.audio.seconds
        job.audio = None
        summary.processing_seconds = time.perf_counter() - start
        progress.update(summary)

    with _Workers(enhancer.workers) as pool:
        writes: collections.deque[tuple[_FileJob, concurrent.futures.Future]] = collections.deque()
        for (job, channel), enhanced in enhancer.enhance_many(signals(pool)):
            job.channels[channel] = enhanced
            job.pending -= 1
            if not job.pending:
                writes.append((job, pool.submit(_write, job, enhancer.sample_rate, keep_model_rate)))
            for done, error in _done_in_order(writes, keep=depth):
                record(done, error)
        for done, error in _done_in_order(writes, keep=0):
            record(done, error)
    summary.processing_seconds = time.perf_counter() - start
    progress.update(summary, force=True)
    _write_failures(output_dir, summary.failures)
    return summary


def _write(job: _FileJob, model_rate: int, keep_model_rate: bool) -> str | None:
    """Resamples and writes one job's output; returns None, or what went wrong."""
    audio = job.audio
    out = np.stack(job.channels, axis=1)
    job.channels = []
    rate = model_rate if keep_model_rate else audio.sample_rate
    out = audio_io.resample(out, model_rate, rate)
    out = audio_io.fit_length(out, int(round(audio.num_samples * rate / audio.sample_rate)))
    source_ext = os.path.splitext(job.source)[1].lower()
    target_ext = os.path.splitext(job.target)[1].lower()
    subtype = audio_io.output_subtype(target_ext, audio.subtype, source_ext)
    try:
        audio_io.write_audio_atomic(job.target, out, rate, subtype)
    except (RuntimeError, OSError, ValueError) as err:
        return f"{job.target}: cannot write ({type(err).__name__}: {err})"
    return None


def _fail(summary: PredictSummary, job: _FileJob, reason: str, message: str) -> None:
    logger.error("skipped %s", message)
    summary.failures.append({"input": job.source, "output": job.target, "reason": reason, "message": message})


def _check_no_input_overwritten(base: str, output_dir: str, jobs: Sequence[_FileJob]) -> None:
    if os.path.realpath(output_dir) == os.path.realpath(base):
        raise ValueError(
            "--output must not be the input folder: outputs would replace or mix with the inputs. "
            f"Received: input folder={base!r}, output={output_dir!r}. Choose another --output.")
    sources = {os.path.realpath(job.source) for job in jobs}
    clashes = [job.source for job in jobs if os.path.realpath(job.target) in sources]
    if clashes:
        raise ValueError(f"--output {output_dir!r} would overwrite {len(clashes)} input file(s), e.g. "
                         f"{clashes[0]!r}. Choose an --output folder that holds no inputs.")


def _write_failures(output_dir: str, failures: list[dict[str, str]]) -> None:
    path = os.path.join(output_dir, FAILURES_FILE)
    if not failures:
        if os.path.exists(path):  # from an earlier run; its files were retried
            os.remove(path)
        return
    os.makedirs(output_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for failure in failures:
            f.write(json.dumps(failure, sort_keys=True) + "\n")
    os.replace(tmp, path)
    logger.error("%d file(s) failed; reasons in %s", len(failures), path)
