"""Running a streaming model (`predictor.streaming`) in the predictor: `StreamingEnhancer`, loaded from
a model directory of the streaming family (model.keras, model.json "streaming") or from its ONNX
export (`predictor.export`: model.onnx and model.json), with the same interface as the windowed
`predictor.enhance.Enhancer`, so `enhance_files`, the file processes and `evaluate` run either.

The step function is the Keras core under one `tf.function` whose time axis is left open (one
trace for every block length; on one CPU core it is as fast as `predict_on_batch` and XLA is
slower), or, for an ONNX export, an onnxruntime session.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from predictor.streaming import (StepFunction, StreamAnalysis, StreamFrames, StreamGeometry, StreamRunner,
                                 StreamTrack)
from tfrecord_schema.config import SpectrogramConfig

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_INFO_FILE = "model.json"
ONNX_FORMAT = "speech-enhance-onnx-stream"
# Frames per model call (16 ms each at any rate): 256 frames, 4.1 s. The per-call overhead is
# paid once per 4 s of audio; a 10 s read block goes through in three calls.
DEFAULT_FRAMES_PER_CALL = 256


def is_onnx_dir(model_dir: str) -> bool:
    """Whether `model_dir` holds an ONNX export of a streaming model (`predictor.export`)."""
    return os.path.isfile(os.path.join(model_dir, ONNX_FILE))


def read_onnx_info(model_dir: str) -> dict[str, Any]:
    """The export's model.json; FileNotFoundError or ValueError naming the file and the fix."""
    path = os.path.join(model_dir, ONNX_INFO_FILE)
    fix = "Export the model again with `speech-enhance export --format onnx MODEL_DIR OUT_DIR`."
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir} holds {ONNX_FILE} but not {ONNX_INFO_FILE}, which says how to run it. {fix}")
    try:
        info = json.loads(open(path, encoding="utf-8").read())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is truncated or corrupt (not valid JSON: {err}). {fix}") from err
    if info.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r} is not {ONNX_FORMAT!r}. {fix}")
    return info


def keras_step(core: Any) -> StepFunction:
    """The Keras core model as a step function on numpy arrays."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        specs = [tf.TensorSpec([None, *(d for d in x.shape[1:])], tf.float32) for x in core.inputs]
        function = tf.function(lambda *args: core(list(args), training=False), input_signature=specs,
                               reduce_retracing=True)
    else:
        def function(*args):
            return core(list(args), training=False)

    def step(spectra: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs = [keras.ops.convert_to_numpy(y) for y in function(spectra, *states)]
        return outputs[0], outputs[1:]

    # Traced now, with the model's loading, rather than in the first file's time.
    spectra, *states = core.inputs
    step(np.zeros((1, 1, *spectra.shape[2:]), np.float32), [np.zeros((1, *x.shape[1:]), np.float32) for x in states])
    return step


def onnx_step(model_path: str, info: dict[str, Any]) -> StepFunction:
    """An onnxruntime session of an export (`predictor.export`) as a step function, on one thread
    per call (the file work runs in threads or processes of its own)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    inputs, outputs = info["inputs"], info["outputs"]

    def step(spectra: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = dict(zip(inputs, [np.ascontiguousarray(spectra, np.float32), *states]))
        results = session.run(outputs, feed)
        return results[0], results[1:]
    return step


class StreamingEnhancer:
    """Runs a streaming model over signals of any length at its rate, a block at a time with its state.

    Args:
        step: the model's step function (`keras_step`, `onnx_step`).
        geometry: its STFT and state shapes.
        config: the `SpectrogramConfig` of the data it was trained on (for `evaluate`'s baselines).
        frames_per_call: frames per model call (`DEFAULT_FRAMES_PER_CALL`).
        workers: threads for the file work around the model (as for `Enhancer`).
        description: what `evaluate` and the logs say the model is.
    """

    target = "mask"
    head = None
    overlap = 0.0

    def __init__(self, step: StepFunction, geometry: StreamGeometry, config: SpectrogramConfig, *,
                 frames_per_call: int | None = None, workers: int = 0, description: str = "") -> None:
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0. Received: workers={workers!r}")
        self.geometry, self.config, self.workers = geometry, config, workers
        self.runner = StreamRunner(step, geometry, frames_per_call or DEFAULT_FRAMES_PER_CALL)
        self.description = description
        self._states: dict[Any, list[np.ndarray]] = {}  # per stream in flight (a file's channels)

    @classmethod
    def from_model_dir(cls, model_dir: str, *, batch_size: int | None = None, workers: int = 0) -> "StreamingEnhancer":
        """A streaming model directory (model.json "streaming") or its ONNX export; `batch_size`: frames per call."""
        if is_onnx_dir(model_dir):
            info = read_onnx_info(model_dir)
            step, kind = onnx_step(os.path.join(model_dir, ONNX_FILE), info), "ONNX"
        else:
            from trainer.model_dir import load_model_dir  # it registers the family's layers

            core, info = load_model_dir(model_dir)
            step, kind = keras_step(core), "Keras"
        # Both kinds of directory describe the model in model.json (ONNX_INFO_FILE is that name too).
        geometry = StreamGeometry.from_dict(info["streaming"], os.path.join(model_dir, ONNX_INFO_FILE))
        config = SpectrogramConfig.from_dict(info["spectrogram"])
        streaming = info["streaming"]
        description = (f"{model_dir}: streaming {streaming.get('size', '')} model ({kind}), "
                       f"{geometry.latency_ms:.0f} ms latency")
        return cls(step, geometry, config, frames_per_call=batch_size, workers=workers, description=description)

    @property
    def sample_rate(self) -> int:
        return self.geometry.sample_rate

    @property
    def batch_size(self) -> int:
        """Frames per model call."""
        return self.runner.frames_per_call

    @property
    def windows_run(self) -> int:
        return self.runner.frames_run

    def describe_run(self) -> str:
        return f"streaming, {self.batch_size} frames per call, {self.geometry.latency_ms:.0f} ms latency"

    def run_stream(self, key: Any, spectra: np.ndarray, last: bool) -> np.ndarray:
        """Runs the next frames float32 [channels, n, bins, 2] of stream `key`, carrying its state; `last`
        ends it (its state is dropped). Returns the enhanced frames of the same shape."""
        states = self._states.pop(key, None)
        if states is None:
            states = self.geometry.initial_states(spectra.shape[0])
        y, states = self.runner.run(spectra, states)
        if not last:
            self._states[key] = states
        return y

    def drop_stream(self, key: Any) -> None:
        self._states.pop(key, None)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        raise TypeError("a streaming model runs with the state of each stream (run_stream), not on windows")

    def enhance(self, signal: np.ndarray) -> np.ndarray:
        """float32 [samples] or [samples, channels] at the model's rate -> the enhanced signal, same shape."""
        x = np.asarray(signal, np.float32)
        if x.ndim not in (1, 2) or x.shape[0] == 0 or (x.ndim == 2 and x.shape[1] == 0):
            raise ValueError(f"enhance() takes a non-empty [samples] or [samples, channels] array. "
                             f"Received: shape={x.shape}")
        y = self.runner.enhance(x if x.ndim == 2 else x[:, None])
        return y if x.ndim == 2 else y[:, 0]

    def enhance_many(self, signals: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, mono float32 [samples]) pairs in, (key, enhanced) out, in order."""
        for key, signal in signals:
            x = np.asarray(signal, np.float32)
            if x.ndim != 1 or x.shape[0] == 0:
                raise ValueError(f"enhance_many() takes non-empty mono signals. Received: key={key!r}, shape={x.shape}")
            yield key, self.enhance(x)

    def enhance_frames(self, items: Iterable[tuple[Any, StreamFrames | Exception]]
                       ) -> Iterator[tuple[StreamTrack, Any]]:
        """`Enhancer.enhance_frames` for a streaming model: (key, frames) of one signal after another in,
        (track, `StreamBlock`) out as each block is run; an exception ends its signal and is passed on."""
        track: StreamTrack | None = None
        for key, item in items:
            if track is None:
                track = StreamTrack(key, self.geometry)
            if isinstance(item, Exception):
                self.drop_stream(track)
                track.dropped = True
                yield track, item
                track = None
                continue
            ready = track.add_frames(item)
            last = item.layout is not None
            if ready:
                spectra = np.stack([track.window(c, i) for _, c, i in ready])
                for (_, c, i), y in zip(ready, self.run_stream(track, spectra, last)):
                    track.add(c, i, y)
            block = track.take_joined()
            if block is not None:
                yield track, block
            if last:
                self.drop_stream(track)
                track = None

