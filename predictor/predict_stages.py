"""The stages of `predict --runner` (`predictor.beam_predict`) that work on files and model windows.

`AnalyseFile` reads a file into its model windows and what is needed to put it back together
(`FileState`); `WindowModelHandler` runs the model on them in fixed-size batches (`RunInference`);
`FinishFile` joins a file's enhanced windows and writes it; `EnhanceStreamingFiles` runs whole
files through a streaming model instead; `account_for_files` reports a file that the runner lost;
`PadToBatches` keeps every batch of real windows out of a bundle's end on Beam's DaskRunner. They
use the functions `enhance_files` uses (`predictor.file_stream`, `predictor.folders`), so the
outputs are the same.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_pipelines import runners
from predictor import audio_io
from predictor.file_stream import FileJob, FileSink, read_frames
from predictor.folders import enhance_jobs
from predictor.high_band import HighBandGain, HighBandMixer
from predictor.overlap_add import Frames, Layout, Track, WindowGeometry
from tfrecord_schema.config import SpectrogramConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FileState:
    """What a file needs, besides its enhanced windows, to be put back together and written."""

    job: FileJob  # paths, input rate, encoding, channels and length; no sink or mixer
    spectrogram: np.ndarray  # complex64 [channels, total_frames, bins]: the noisy padded STFT
    lead_frames: int
    layout: Layout
    high: np.ndarray | None  # float32 [samples, channels] at the input's rate: the band above the model's


def _failure(job: FileJob, reason: str, message: str) -> dict[str, str]:
    return {"input": job.source, "output": job.target, "reason": reason, "message": message}


def _lost(key: str, what: str, job: FileJob | None = None) -> dict[str, str]:
    """The failure of a file whose parts the runner did not deliver: nothing is written for it, so
    the next run (which skips finished outputs) redoes it."""
    message = (f"{job.source if job else key}: {what} at the regrouping; the runner lost elements, nothing was "
               "written for it: run the same command again to redo it")
    logger.error("skipped %s", message)
    return {"input": job.source if job else key, "output": key, "reason": "lost_by_runner", "message": message}


def _geometry(config_dict: dict[str, Any], target: str, overlap: float) -> WindowGeometry:
    """The window geometry that `Analysis`, `Track` and `FileSink` read (no model)."""
    return WindowGeometry(SpectrogramConfig.from_dict(config_dict), target, overlap)


class AnalyseFile(beam.DoFn):
    """FileJob -> ("window", (key, (channel, index, features [frames, bins]))) for each model window,
    ("file", (key, FileState)) once, or ("failure", dict) for a file that cannot be used."""

    def __init__(self, config: dict[str, Any], target: str, overlap: float, downmix: bool,
                 block_seconds: float, gain: HighBandGain | None) -> None:
        self.config, self.target, self.overlap = config, target, overlap
        self.downmix, self.block_seconds, self.gain = downmix, block_seconds, gain

    def setup(self) -> None:
        self.geometry = _geometry(self.config, self.target, self.overlap)

    def process(self, job: FileJob) -> Iterator[tuple[str, Any]]:
        job = dataclasses.replace(job)  # the reader fills it in; Beam's input elements are not to be changed
        spectrograms, features, layout, lead = [], [], None, 0
        for _, item in read_frames(job, self.geometry, self.downmix, self.block_seconds, self.gain):
            if isinstance(item, audio_io.AudioError):
                logger.error("skipped %s", item)
                yield "failure", _failure(job, item.reason, str(item))
                return
            spectrograms.append(item.spectrogram)
            features.append(item.features)
            lead, layout = item.lead_frames, item.layout or layout
        spectrogram = np.concatenate(spectrograms, axis=1)
        feats = np.concatenate(features, axis=1)
        W, hop = self.geometry.window_frames, self.geometry.hop_frames
        for index in range(layout.num_windows):  # the order `Track.add_frames` hands them out
            for channel in range(feats.shape[0]):
                window = np.ascontiguousarray(feats[channel, index * hop: index * hop + W])
                yield "window", (job.target, (channel, index, window))
        high = None
        if job.high_band is not None:
            # The high band that `Crossover` split off as the file was read; the mixer that
            # collected it is rebuilt where the file is finished.
            parts = list(job.high_band._highs)
            high = (np.concatenate(parts) if parts else np.zeros((0, job.channels), np.float32))
        job.high_band = job.sink = job.last_write = None
        yield "file", (job.target, FileState(job, spectrogram, lead, layout, high))

class FinishFile(beam.DoFn):
    """(key, {"file": [FileState], "windows": [(channel, index, output)]}) -> ("written", (key, seconds))
    or ("failure", dict): overlap-add, synthesis, resampling back, high band, atomic write."""

    def __init__(self, config: dict[str, Any], target: str, overlap: float, keep_model_rate: bool,
                 gain: HighBandGain | None, launcher: str | None = None) -> None:
        self.config, self.target, self.overlap = config, target, overlap
        self.keep_model_rate, self.gain = keep_model_rate, gain
        self.launcher = launcher  # on Dask: the launcher's client name (`runners.launcher_gone`)

    def setup(self) -> None:
        self.geometry = _geometry(self.config, self.target, self.overlap)

    def process(self, item: tuple[str, dict[str, list]]) -> Iterator[tuple[str, Any]]:
        key, grouped = item
        states, windows = list(grouped["file"]), sorted(grouped["windows"], key=lambda w: (w[1], w[0]))
        if len(states) != 1:
            yield "failure", _lost(key, f"{len(states)} file states arrived with {len(windows)} windows")
            return
        state = states[0]
        job = state.job
        track = Track(key, self.geometry)
        features = np.zeros((*state.spectrogram.shape, self.geometry.input_channels), np.float32)  # not used
        ready = track.add_frames(Frames(0, state.spectrogram, features, state.lead_frames, state.layout))
        if [(c, i) for _, c, i in ready] != [(c, i) for c, i, _ in windows]:
            yield "failure", _lost(key, f"{len(windows)} of its {len(ready)} model windows arrived", job)
            return
        for channel, index, output in windows:  # in the order `enhance_files` adds them
            track.add(channel, index, output)
        block = track.take_joined()
        if state.high is not None:
            job.high_band = HighBandMixer(self.geometry, job.sample_rate, job.channels, self.gain)
            job.high_band.add_high(state.high)
        runners.stop_if_launcher_gone(self.launcher, f"{job.target} and the job's other outputs are not written")
        sink = FileSink(job, self.geometry, self.keep_model_rate)
        error = sink.push(block)
        if error:
            logger.error("skipped %s", error)
            yield "failure", _failure(job, "unwritable", error)
        else:
            yield "written", (key, job.num_samples / job.sample_rate)


class EnhanceStreamingFiles(beam.DoFn):
    """FileJob -> ("written", (key, seconds)) or ("failure", dict): a whole file through a streaming model.

    A streaming model's frames of one file go through it in order with its state carried, so a
    file is not cut into windows: each worker loads the model once (`load_enhancer`, `batch_size`
    frames per call) and runs whole files through it as `enhance_files` does in its threads
    (`predictor.folders.enhance_jobs`: read, resample, STFT, model, synthesis, atomic write), in
    constant memory whatever the file's length.
    """

    def __init__(self, model_dir: str, batch_size: int | None, downmix: bool, block_seconds: float,
                 keep_model_rate: bool, gain: HighBandGain | None, launcher: str | None = None) -> None:
        self.model_dir, self.batch_size, self.downmix, self.block_seconds = model_dir, batch_size, downmix, block_seconds
        self.keep_model_rate, self.gain = keep_model_rate, gain
        self.launcher = launcher  # on Dask: the launcher's client name (`runners.launcher_gone`)

    def setup(self) -> None:
        from predictor.enhance import load_enhancer

        # One thread: the file's reading and writing overlap the model's work on it.
        self.enhancer = load_enhancer(self.model_dir, batch_size=self.batch_size, workers=1)

    def process(self, job: FileJob) -> Iterator[tuple[str, Any]]:
        job = dataclasses.replace(job)  # the reader fills it in; Beam's input elements are not to be changed
        runners.stop_if_launcher_gone(self.launcher, f"{job.target} and the job's other outputs are not written")
        summary = enhance_jobs(self.enhancer, [job], downmix=self.downmix, block_seconds=self.block_seconds,
                               keep_model_rate=self.keep_model_rate, gain=self.gain)
        for failure in summary.failures:
            yield "failure", failure
        if summary.written:
            yield "written", (job.target, summary.audio_seconds)


def account_for_files(item: tuple[str, dict[str, list]]) -> Iterator[tuple[str, dict[str, str]]]:
    """(output key, {"job": [input path], "result": [result kinds]}) -> a `lost_by_runner` failure for a
    file that was planned but has no result at all (neither written nor failed): the case the
    regrouping cannot see, where a file's state and every one of its windows went missing."""
    key, grouped = item
    sources, results = list(grouped["job"]), list(grouped["result"])
    if sources and not results:
        yield "failure", {**_lost(key, "neither its file state nor any of its windows arrived"), "input": sources[0]}



class WindowModelHandler(ModelHandler):
    """RunInference over model windows: (key, (channel, index, features [frames, bins, C])) in,
    (key, (channel, index, output [frames, bins, K])) out (`Enhancer`'s channels).

    Loads a model directory (`trainer.model_dir.load_model_dir`, `head` as for `predict`).
    Every call gets exactly `batch_size` windows: a short batch is padded with zeros, so the
    model sees one shape and `predict_on_batch` never retraces.
    """

    def __init__(self, model_dir: str, batch_size: int, head: str | None = None) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        self.model_dir, self.batch_size, self.head = model_dir, batch_size, head

    def load_model(self) -> Any:
        from trainer.model_dir import load_model_dir

        model, _ = load_model_dir(self.model_dir, head=self.head)
        return model

    def run_inference(self, batch: Sequence[tuple[str, tuple[int, int, np.ndarray]]], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[tuple[str, tuple]]:
        from predictor.enhance import predict_function

        results = []
        for start in range(0, len(batch), self.batch_size):
            part = batch[start: start + self.batch_size]
            x = np.zeros((self.batch_size, *part[0][1][2].shape), np.float32)
            for j, (_, (_, _, window)) in enumerate(part):
                x[j] = window
            y = predict_function(model)(x)
            results += [(key, (channel, index, np.array(y[j])))
                        for j, (key, (channel, index, _)) in enumerate(part)]
        return results

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def get_metrics_namespace(self) -> str:
        return "speech_enhance_predict"





# Files whose windows `PadToBatches` groups together (on DaskRunner): the padding costs at most
# batch_size - 1 windows per group.
FILES_PER_GROUP = 16


class PadToBatches(beam.PTransform):
    """Windows regrouped so that every group holds a whole number of batches, padded with windows
    keyed None (dropped after the model), and followed by one batch of such padding.

    Beam's DaskRunner (2.77) drops what a DoFn emits in `finish_bundle`, which is where
    `BatchElements` (inside `RunInference`) emits a bundle's last batch (a batch is emitted when the
    element after it arrives): windows would go missing. With every group a whole number of
    batches and a batch of padding last, every batch of real windows is emitted from `process`, and
    the batch that a bundle's end holds back is padding.
    """

    def __init__(self, batch_size: int, groups: int) -> None:
        super().__init__()
        self.batch_size, self.groups = batch_size, groups

    def expand(self, windows):
        import zlib

        groups, batch = self.groups, self.batch_size

        def pad(item):
            _, members = item
            members = list(members)
            if members:
                channel, index, window = members[0][1]
                members += [(None, (channel, index, np.zeros_like(window)))] * (-len(members) % batch + batch)
            return members

        return (windows
                | "Group" >> beam.Map(lambda kv: (zlib.crc32(kv[0].encode("utf-8")) % groups, kv))
                | "GroupByKey" >> beam.GroupByKey()
                | "Pad" >> beam.FlatMap(pad))
