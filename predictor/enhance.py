"""Denoising audio of any length with a trained model directory, alone or folder by folder.

`Enhancer` runs a model that sees fixed windows of STFT frames over signals of any length, by
weighted overlap-add, streamed a block at a time (`predictor.overlap_add` holds the algorithm and
says how it works); `Enhancer.enhance` and `enhance_many` take signals already in memory.
`predictor.folders.enhance_files` denoises a folder of files into another with an `Enhancer`.

The model is a Keras 3 model; Keras places it on a GPU when there is one. The numpy and file work
around it runs in a few threads (`workers`, `predictor.workers`), so it overlaps the model calls, or
in worker processes (`enhance_files(file_processes=N)`, `predictor.file_processes`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from predictor.overlap_add import Analysis, Frames, Joined, Synthesis, Track, WindowGeometry
from predictor.predict_options import ACCELERATOR_BATCH_SIZE, CPU_BATCH_SIZE, DEFAULT_OVERLAP, MAX_DEFAULT_WORKERS
from predictor.workers import Workers, done_in_order
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.malloc import tune_malloc
from trainer.targets import check_target

logger = logging.getLogger(__name__)

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
PRETRAINED_16K_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained_16k")
# Names that `--model` / `model_dir` take for the models shipped in the package. The 8 kHz model
# is the default; the 16 kHz one is for input at 16 kHz and above (docs/predict.md compares them).
SHIPPED_MODELS = {"shipped:8k": PRETRAINED_DIR, "shipped:16k": PRETRAINED_16K_DIR}
_SHIPPED_PREFIX = "shipped:"
# Threads for the numpy and file work around the model (`predict_options.MAX_DEFAULT_WORKERS`).
DEFAULT_WORKERS = min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


# The input rate from which the 16 kHz shipped model is the default (`default_shipped_model`).
WIDE_BAND_RATE = 16000
# Files whose header `default_shipped_model` reads at most, spread over the sorted list.
RATE_PROBE_FILES = 64


def default_shipped_model(source: str, exclude: str | None = None) -> tuple[str, str]:
    """(name, reason): the shipped model for the files of `source` when no model is named: "shipped:16k"
    when every file whose header could be read is at `WIDE_BAND_RATE` or above (it denoises up to 8
    kHz), else "shipped:8k", which is also the choice when the 16 kHz model is not installed. Reads the
    headers of at most `RATE_PROBE_FILES` files, spread evenly over the sorted list; a file that
    cannot be read is left to the run, which reports it."""
    from predictor.audio_io import AudioError, AudioReader, find_audio_files
    from tfrecord_schema import paths

    base, rels = find_audio_files(source, exclude=exclude)
    step = max(1, -(-len(rels) // RATE_PROBE_FILES))
    rates: dict[int, int] = {}
    for rel in rels[::step]:
        try:
            with AudioReader(paths.join(base, rel)) as reader:
                rates[reader.sample_rate] = rates.get(reader.sample_rate, 0) + 1
        except AudioError:
            continue
    seen = ", ".join(f"{count} at {rate} Hz" for rate, count in sorted(rates.items())) or "no readable header"
    wide = bool(rates) and min(rates) >= WIDE_BAND_RATE
    if wide and os.path.isfile(os.path.join(SHIPPED_MODELS["shipped:16k"], "model.json")):
        return "shipped:16k", f"input files {seen}: all at {WIDE_BAND_RATE} Hz or above"
    why = "the 16 kHz model is not installed" if wide else f"not all at {WIDE_BAND_RATE} Hz or above"
    return "shipped:8k", f"input files {seen}: {why}"


def resolve_model_dir(model_dir: str | None) -> str:
    """`model_dir`; the directory of a shipped model for one of the names of `SHIPPED_MODELS`
    ("shipped:8k", "shipped:16k"); the shipped 8 kHz model when it is None.

    Raises FileNotFoundError saying how to pass a model when the shipped model asked for is missing,
    and ValueError listing the shipped models for another "shipped:" name (unless a folder has that name).
    """
    if model_dir and model_dir not in SHIPPED_MODELS:
        if model_dir.startswith(_SHIPPED_PREFIX) and not os.path.isdir(model_dir):
            raise ValueError(f"model_dir={model_dir!r} is no shipped model; the shipped models are "
                             f"{', '.join(SHIPPED_MODELS)}. Pass one of them, or a directory written by "
                             "`speech-enhance train --model-dir DIR`.")
        return model_dir
    directory = SHIPPED_MODELS.get(model_dir, PRETRAINED_DIR)
    if not os.path.isfile(os.path.join(directory, "model.json")):
        asked = f"model_dir={model_dir!r} names a shipped model" if model_dir else "No model_dir was given"
        raise FileNotFoundError(
            f"{asked}, but this installation does not ship it ({directory} holds no model.json). Pass "
            "model_dir=DIR, a directory written by `speech-enhance train --model-dir DIR` (it holds "
            "model.keras and model.json).")
    return directory


def load_enhancer(model_dir: str | None = None, *, head: str | None = None, batch_size: int | None = None,
                  overlap: float = DEFAULT_OVERLAP, workers: int = DEFAULT_WORKERS) -> Any:
    """The enhancer a model directory asks for: a `StreamingEnhancer` (`predictor.stream_models`) for a
    streaming model (model.json "streaming") or its ONNX export, which runs `batch_size` frames per
    call; else an `Enhancer` over windows. Both run in `enhance_files` and `evaluate` alike."""
    from predictor.stream_models import StreamingEnhancer

    directory = resolve_model_dir(model_dir)
    if is_streaming_model(directory):
        if head is not None:
            raise ValueError(f"head={head!r}: the streaming model in {directory} has one output and no heads.")
        return StreamingEnhancer.from_model_dir(directory, batch_size=batch_size, workers=workers)
    return Enhancer.from_model_dir(directory, head=head, batch_size=batch_size, overlap=overlap, workers=workers)


def is_streaming_model(directory: str) -> bool:
    """Whether the model directory `directory` (resolved: `resolve_model_dir`) holds a streaming model
    (model.json "streaming") or its ONNX export, which `StreamingEnhancer` runs."""
    from predictor.stream_models import is_onnx_dir
    from trainer.model_dir import read_model_info

    return is_onnx_dir(directory) or bool(read_model_info(directory).get("streaming"))


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


class Enhancer:
    """Runs a spectrogram model over signals of any length at the model's sample rate.

    Args:
        model: a Keras model mapping [B, frames, bins, C] features (`trainer.targets.model_features`)
            to [B, frames, bins, K] in [-1, 1] (C and K: `input_channels(target)`, `output_channels(target)`,
            1 but for a complex mask), or any callable doing the same on numpy arrays.
        config: the model's `SpectrogramConfig`.
        target: "noise", "mask", "psa" or "cmask" (what the model predicts; see `trainer.targets`).
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
        self.geometry = WindowGeometry(config, target, overlap)  # what the overlap-add needs of the model
        tune_malloc()  # the STFT work handles arrays of the size glibc would mmap and unmap each time
        self.model = model
        self.batch_size = batch_size
        self.workers = workers
        self.predict = predict_function(model)  # numpy [B, frames, bins, C] -> [B, frames, bins, K]
        self.windows_run = 0  # counts model windows, for benchmarks and tests
        self.head: str | None = None  # the output of a several-headed model directory this runs

    @classmethod
    def from_model_dir(cls, model_dir: str | None = None, *, head: str | None = None, **kwargs: Any) -> "Enhancer":
        """Loads a model directory (`trainer.model_dir` layout); None means the shipped model.

        `head` picks one output of a model with several (model.json "heads", e.g. "mask" or
        "kmeans" of a BLSTM); None: its default head.
        """
        from trainer.model_dir import load_model_dir

        model, info = load_model_dir(resolve_model_dir(model_dir), head=head)
        enhancer = cls(model, info["config"], info["target"], **kwargs)
        enhancer.head = info.get("head")
        return enhancer

    @property
    def config(self) -> SpectrogramConfig:
        return self.geometry.config

    def describe_run(self) -> str:
        """How the model runs, for the logs."""
        return f"batch {self.batch_size}, overlap {100 * self.overlap:.0f}%"

    @property
    def target(self) -> str:
        return self.geometry.target

    @property
    def overlap(self) -> float:
        return self.geometry.overlap

    @property
    def sample_rate(self) -> int:
        return self.geometry.sample_rate

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
        def analyse(item: tuple[Any, np.ndarray]) -> list[tuple[Any, Frames]]:
            key, x = item
            analysis = Analysis(self.geometry, x.shape[1])
            blocks = [analysis.feed(x), analysis.close()]
            return [(key, block) for block in blocks if block is not None]

        def synthesise(blocks: list[Joined]) -> np.ndarray:
            synthesis = Synthesis(self.geometry)
            return np.concatenate([synthesis.push(block) for block in blocks], axis=0)

        with Workers(self.workers) as pool:
            def frames() -> Iterator[tuple[Any, Frames]]:
                for blocks in pool.prefetch(analyse, signals, depth=2 * self.workers + 2):
                    yield from blocks

            joined: dict[Track, list[Joined]] = {}
            finishing: collections.deque[tuple[Any, concurrent.futures.Future]] = collections.deque()
            for track, block in self.enhance_frames(frames()):
                joined.setdefault(track, []).append(block)
                if block.last:
                    finishing.append((track.key, pool.submit(synthesise, joined.pop(track))))
                yield from done_in_order(finishing, keep=4 * self.workers + 4)
            yield from done_in_order(finishing, keep=0)

    def enhance_frames(self, items: Iterable[tuple[Any, Frames | Exception]]
                        ) -> Iterator[tuple[Track, Joined | Exception]]:
        """Runs the model over signals given as frames; yields each signal's joined frames as they complete.

        `items` are (key, frames) of one signal after another; a signal ends with the block that
        carries its layout, or with an exception (a file that failed part way through), which is
        passed on as (track, exception) and the signal dropped. Windows of consecutive signals and
        channels share batches; joined blocks come out in signal order.
        """
        in_flight: collections.deque[Track] = collections.deque()
        batch: list[tuple[Track, int, int]] = []
        track: Track | None = None
        for key, item in items:
            if track is None:
                track = Track(key, self.geometry)
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

    def _run(self, batch: Sequence[tuple[Track, int, int]]) -> None:
        x = np.stack([track.window(channel, index) for track, channel, index in batch])
        y = self.predict(x)
        self.windows_run += len(batch)
        for (track, channel, index), prediction in zip(batch, y):
            track.add(channel, index, prediction)

    @staticmethod
    def _take_joined(in_flight: collections.deque) -> Iterator[tuple[Track, Joined]]:
        for track in list(in_flight):
            block = track.take_joined()
            if block is None:
                continue
            if block.last:
                in_flight.remove(track)
            yield track, block


def predict_function(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """numpy [B, frames, bins, C] -> numpy [B, frames, bins, K] float32 (the model's channels); a
    callable that returns [B, frames, bins] is taken as giving one channel."""
    if hasattr(model, "predict_on_batch"):
        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_on_batch(x), np.float32)
    else:
        def predict(x: np.ndarray) -> np.ndarray:
            y = np.asarray(model(x), np.float32)
            return y[..., None] if y.ndim == x.ndim - 1 else y
    return predict
