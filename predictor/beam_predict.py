"""`predict` as an Apache Beam pipeline: the same outputs as `enhance_files`, spread over a cluster.

The pipeline (`build_predict_pipeline`), stage by stage:

1. **ListInputs** (in the launcher, as `enhance_files` does: `folders.plan_jobs`): the inputs are
   found with `audio_io.find_audio_files` (local folders, globs, gs:// prefixes, through
   `tfrecord_schema.paths`), each gets its output path (`folders.output_path`), inputs that would be
   overwritten are refused, duplicate outputs are failures, and files whose output exists are
   skipped unless `overwrite` (a remote output prefix is listed once). The rest are written, one
   JSON line per file, to a few shards of a job manifest (`JobManifest`) in a hidden folder of the
   output, OUTPUT/.predict-jobs-PID-XXXXXXXX/, removed when the pipeline has run.
   **ReadJobs** (`ReadJobs`): the pipeline reads the manifest's shards, spread over the workers,
   line by line through the path layer, and reshuffles the files over the workers. The job graph
   holds the shards' paths only, never the list of files (Dataflow refuses graphs over ~10 MB).
2. **AnalyseFiles** (`AnalyseFile`): each file is read, resampled to the model's rate (the band
   above it split off for `high_band="keep"`) and turned into STFT frames by the same generator as
   `enhance_files` (`folders._read_frames`: `Analysis`, `Crossover`); its model windows go out one by
   one, keyed by file, channel and window index, and what the file needs to be put back together
   (`FileState`: the noisy STFT, its layout, the high band, the input's rate, encoding and length)
   goes out once. A file that cannot be used becomes a failure with its reason.
3. **Enhance**: Beam's `RunInference` with `WindowModelHandler` (a model directory loaded with
   `trainer.model_dir.load_model_dir`, `head` supported). Windows of all files share fixed-size
   batches (`BatchElements` with min = max = `batch_size`; the last batch of a bundle is padded), so
   `predict_on_batch` sees one shape and never retraces.
4. **Regroup**: the enhanced windows and the file's state are grouped on the file's key.
5. **FinishFiles** (`FinishFile`): the windows are joined by the same weighted overlap-add
   (`overlap_add.Track`, windows added in the order `enhance_files` adds them) and the result goes
   through the same `folders.FileSink` as `predict`: synthesis (`Synthesis`), resampling back,
   the high band added back (`high_band.HighBandMixer`), length fitted to the input's, written
   atomically (`audio_io.AtomicAudioWriter`).
6. **WriteFailures**: failures of every stage, with their reasons, are written to
   OUTPUT/failures.jsonl after the entries of an earlier run's list for files this run did not
   cover (as `enhance_files` does).

Outputs equal `enhance_files`'s to float rounding (tests/test_predict_beam.py): every number goes
through the same functions; only the model batches differ (other windows share them), and a file
is synthesised in one block instead of several (`Synthesis`, `HighBandMixer` and the resamplers are
block-size independent to float rounding).

Memory: streaming stops at the file. A file's windows and its noisy STFT meet on the worker that
finishes it. At 8 kHz (hop 63) a second of audio and channel is 127 frames x 129 bins: 66 kB of
float32 features, so 131 kB of model windows (and as much of model outputs) at 50 % overlap, and
131 kB of complex64 STFT. Estimated from the arrays held (not measured): the analysing worker holds
about 0.35 MB and the finishing worker about 0.7 MB per second of audio and channel at once
(grouped outputs, STFT, the overlap-add's arrays, synthesis), i.e. ~2.5 GB per hour; a 2-hour mono
file (~914k frames) needs ~5 GB on one worker. Split longer files first, or use `predict` without
a runner, which streams any length in constant memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from beam_pipelines import runners
from predictor import audio_io
from predictor.folders import (DEFAULT_BLOCK_SECONDS, FAILURES_FILE, FileJob, FileSink, PredictSummary, _finish,
                               _read_frames, _unwritable, _write_failures, plan_jobs)
from predictor.high_band import HighBandGain, HighBandMixer, check_high_band
from predictor.overlap_add import Frames, Layout, Track
from tfrecord_schema import paths

logger = logging.getLogger(__name__)

__all__ = ["AnalyseFile", "FileState", "FinishFile", "JobManifest", "PadToBatches", "RUNNERS", "ReadJobs",
           "WindowModelHandler", "beam_args_for", "build_predict_pipeline", "plan_jobs", "run_predict"]

# `--runner` short names of `speech-enhance predict`; any other value is passed to Beam as it is
# (e.g. DataflowRunner).
RUNNERS = {"fnapi": "FnApiRunner", "dask": "DaskRunner"}


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


def _geometry(config_dict: dict[str, Any], target: str, overlap: float):
    """An `Enhancer` without a model: the window geometry that `Analysis`, `Track` and `FileSink` read."""
    from predictor.enhance import Enhancer
    from tfrecord_schema.config import SpectrogramConfig

    return Enhancer(None, SpectrogramConfig.from_dict(config_dict), target, batch_size=1, overlap=overlap, workers=0)


class AnalyseFile(beam.DoFn):
    """FileJob -> ("window", (key, (channel, index, features [frames, bins]))) for each model window,
    ("file", (key, FileState)) once, or ("failure", dict) for a file that cannot be used."""

    def __init__(self, config: dict[str, Any], target: str, overlap: float, downmix: bool,
                 block_seconds: float, gain: HighBandGain | None) -> None:
        self.config, self.target, self.overlap = config, target, overlap
        self.downmix, self.block_seconds, self.gain = downmix, block_seconds, gain

    def setup(self) -> None:
        self.enhancer = _geometry(self.config, self.target, self.overlap)

    def process(self, job: FileJob) -> Iterator[tuple[str, Any]]:
        job = dataclasses.replace(job)  # the reader fills it in; Beam's input elements are not to be changed
        spectrograms, features, layout, lead = [], [], None, 0
        for _, item in _read_frames(job, self.enhancer, self.downmix, self.block_seconds, self.gain):
            if isinstance(item, audio_io.AudioError):
                logger.error("skipped %s", item)
                yield "failure", _failure(job, item.reason, str(item))
                return
            spectrograms.append(item.spectrogram)
            features.append(item.features)
            lead, layout = item.lead_frames, item.layout or layout
        spectrogram = np.concatenate(spectrograms, axis=1)
        feats = np.concatenate(features, axis=1)
        W, hop = self.enhancer.window_frames, self.enhancer.hop_frames
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
        self.enhancer = _geometry(self.config, self.target, self.overlap)

    def process(self, item: tuple[str, dict[str, list]]) -> Iterator[tuple[str, Any]]:
        key, grouped = item
        states, windows = list(grouped["file"]), sorted(grouped["windows"], key=lambda w: (w[1], w[0]))
        if len(states) != 1:
            yield "failure", _lost(key, f"{len(states)} file states arrived with {len(windows)} windows")
            return
        state = states[0]
        job = state.job
        track = Track(key, self.enhancer)
        features = np.zeros((*state.spectrogram.shape, self.enhancer.input_channels), np.float32)  # not used
        ready = track.add_frames(Frames(0, state.spectrogram, features, state.lead_frames, state.layout))
        if [(c, i) for _, c, i in ready] != [(c, i) for c, i, _ in windows]:
            yield "failure", _lost(key, f"{len(windows)} of its {len(ready)} model windows arrived", job)
            return
        for channel, index, output in windows:  # in the order `enhance_files` adds them
            track.add(channel, index, output)
        block = track.take_joined()
        if state.high is not None:
            job.high_band = HighBandMixer(self.enhancer, job.sample_rate, job.channels, self.gain)
            job.high_band.add_high(state.high)
        runners.stop_if_launcher_gone(self.launcher, f"{job.target} and the job's other outputs are not written")
        sink = FileSink(job, self.enhancer, self.keep_model_rate)
        error = sink.push(block)
        if error:
            logger.error("skipped %s", error)
            yield "failure", _failure(job, "unwritable", error)
        else:
            yield "written", (key, job.num_samples / job.sample_rate)


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
_FILES_PER_GROUP = 16


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


def _finalize(_: Any, results: list[tuple[str, Any]], output_dir: str, earlier: list[dict[str, str]],
              launcher: str | None = None) -> int:
    runners.stop_if_launcher_gone(launcher, f"{paths.join(output_dir, FAILURES_FILE)} is not written")
    failures = earlier + sorted((value for kind, value in results if kind == "failure"), key=lambda f: f["input"])
    _write_failures(output_dir, failures)
    written = [value[1] for kind, value in results if kind == "written"]
    logger.info("%d files written (%.1f s of audio), %d failed", len(written), sum(written), len(failures))
    return len(failures)


# The job manifest: OUTPUT/.predict-jobs-PID-XXXXXXXX/jobs-SSSSS-of-NNNNN.jsonl. At least
# _MIN_SHARDS shards (fewer only for fewer files), at most _JOBS_PER_SHARD files (~2 MB) in each:
# Beam's DaskRunner spreads the shards, not the lines, over its partitions (its Reshuffle changes
# nothing), so there must be some to spread.
MANIFEST_PREFIX = ".predict-jobs-"
_MIN_SHARDS = 16
_JOBS_PER_SHARD = 10_000
_MANIFEST_NAME = re.compile(r"^\.predict-jobs-(?P<pid>\d+)-[0-9a-f]{8}$")


class JobManifest:
    """The files a run denoises, handed to the pipeline in a few JSON-lines shards instead of its graph.

    It lives in a hidden folder of `output_dir` (local or gs://, through `tfrecord_schema.paths`)
    named for this process and a random suffix, `.predict-jobs-PID-XXXXXXXX`: it is never taken as
    an input (`find_audio_files` takes wav/flac/ogg only, and leaves out an output folder inside the
    input), never as an output (outputs are named after inputs, and a run refuses a folder that
    exists or that an output would fall in), and `remove` deletes it. A local one that a killed run
    left behind is removed by the next run (`remove_stale`). Each line is one `FileJob`'s
    {"rel", "source", "target"}; `write` and `job_from_line` are the format's two ends.
    """

    def __init__(self, output_dir: str, name: str | None = None) -> None:
        import uuid

        self.output_dir = output_dir
        self.name = name or f"{MANIFEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.folder = paths.join(output_dir, self.name)
        self.shards: list[tuple[str, int]] = []  # (path, number of lines)
        self.created = False  # `remove` deletes only a folder this object made

    @staticmethod
    def num_shards(num_jobs: int) -> int:
        return max(min(num_jobs, _MIN_SHARDS), -(-num_jobs // _JOBS_PER_SHARD))

    def write(self, jobs: Sequence[FileJob]) -> list[tuple[str, int]]:
        """Writes `jobs` in `num_shards(len(jobs))` shards, in their order, streamed line by line;
        returns the shards as (path, number of lines), what `ReadJobs` reads. Refuses (ValueError)
        a folder that exists, or a job whose output would fall inside it, before writing anything."""
        if paths.exists_folder(self.folder) or paths.isfile(self.folder):
            raise ValueError(f"{self.folder} exists already: another run's job manifest? Run again (another "
                             "name is drawn).")
        inside = paths.join(self.folder, "")
        for job in jobs:
            if job.target.startswith(inside):
                raise ValueError(f"{job.source}: its output {job.target} would fall in the job manifest's folder "
                                 f"{self.folder}. Rename the input folder {self.name}.")
        n, count = len(jobs), self.num_shards(len(jobs))
        self.shards = []
        self.created = True
        paths.makedirs(self.folder)
        for k in range(count):
            path = paths.join(self.folder, f"jobs-{k:05d}-of-{count:05d}.jsonl")
            start, end = k * n // count, (k + 1) * n // count
            with paths.open_write(path) as f:
                for i in range(start, end):
                    job = jobs[i]
                    f.write(json.dumps({"rel": job.rel, "source": job.source, "target": job.target},
                                       ensure_ascii=False).encode("utf-8") + b"\n")
            self.shards.append((path, end - start))
        return self.shards

    @staticmethod
    def job_from_line(line: str) -> FileJob:
        item = json.loads(line)
        return FileJob(item["rel"], item["source"], item["target"])

    def remove(self) -> None:
        """Deletes the manifest's folder, if `write` made it."""
        if self.created:
            paths.delete_tree(self.folder)
            self.created = False

    @staticmethod
    def remove_stale(output_dir: str) -> list[str]:
        """Deletes the manifests that killed runs left directly in a local `output_dir` (their process
        no longer runs); returns their paths. A bucket's are left alone: their run may live elsewhere
        (e.g. a Dataflow job whose launcher was stopped)."""
        if paths.is_remote(output_dir) or not os.path.isdir(output_dir):
            return []
        removed = []
        for name in sorted(os.listdir(output_dir)):
            match = _MANIFEST_NAME.match(name)
            path = os.path.join(output_dir, name)
            if match and not os.path.islink(path) and not audio_io._process_running(int(match.group("pid"))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if removed:
            logger.info("removed %d job manifest(s) left in %s by an interrupted run", len(removed), output_dir)
        return removed


def _read_shard(shard: tuple[str, int]) -> Iterator[FileJob]:
    """The jobs of a manifest shard (path, number of lines), streamed line by line through the path
    layer. The path is taken literally (Beam's text sources take it for a pattern, and `[`, `*` or
    `?` in an output folder's name would make it match nothing, which they read as no lines at all);
    a shard that does not hold its number of lines raises OSError, so no file is silently left out."""
    path, expected = shard
    count = 0
    with paths.open_read(path) as f:
        for line in f:
            count += 1
            yield JobManifest.job_from_line(line)
    if count != expected:
        raise OSError(f"{path}: {count} lines read, {expected} written: the job manifest was changed or cut short")


class ReadJobs(beam.PTransform):
    """The manifest's shards -> FileJob per file, reshuffled over the workers."""

    def __init__(self, shards: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.shards = [(path, int(lines)) for path, lines in shards]

    def expand(self, p):
        return (p
                | "Shards" >> beam.Create(self.shards)
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShards" >> beam.FlatMap(_read_shard)
                | "Spread" >> beam.Reshuffle())


def build_predict_pipeline(p, shards: Sequence[tuple[str, int]], num_jobs: int, *, model_dir: str,
                           config: dict[str, Any], target: str, head: str | None, batch_size: int,
                           overlap: float, keep_model_rate: bool, downmix: bool, gain: HighBandGain | None,
                           block_seconds: float, output_dir: str, earlier_failures: list[dict[str, str]],
                           pad_bundles: bool = False, launcher: str | None = None):
    """Adds the prediction stages to pipeline `p` (see the module's docstring); returns the last one.

    `shards`: the job manifest's shards, (path, lines) (`JobManifest.write`), `num_jobs` files in all.
    `pad_bundles` (for Beam's DaskRunner) adds `PadToBatches` before the model and drops the padding after it.
    `launcher` (for Beam's DaskRunner): the launcher's Dask client name (`runners.dask_client_name`);
    the writing stages stop once it has left the scheduler (`runners.launcher_gone`).
    """
    jobs = p | "ReadJobs" >> ReadJobs(shards)
    analysed = jobs | "AnalyseFiles" >> beam.ParDo(AnalyseFile(config, target, overlap, downmix, block_seconds, gain))
    windows = analysed | "Windows" >> beam.FlatMap(lambda kv: [kv[1]] if kv[0] == "window" else [])
    states = analysed | "States" >> beam.FlatMap(lambda kv: [kv[1]] if kv[0] == "file" else [])
    read_failures = analysed | "ReadFailures" >> beam.FlatMap(lambda kv: [kv] if kv[0] == "failure" else [])
    if pad_bundles:
        windows = windows | "PadToBatches" >> PadToBatches(batch_size, max(1, num_jobs // _FILES_PER_GROUP))
    enhanced = windows | "Enhance" >> RunInference(WindowModelHandler(model_dir, batch_size, head))
    if pad_bundles:
        enhanced = enhanced | "DropPadding" >> beam.Filter(lambda kv: kv[0] is not None)
    finished = (
        {"file": states, "windows": enhanced}
        | "Regroup" >> beam.CoGroupByKey()
        | "FinishFiles" >> beam.ParDo(FinishFile(config, target, overlap, keep_model_rate, gain, launcher)))
    # Every planned file must end written or failed: one with no result at all is reported as lost.
    outcomes = ((read_failures, finished)
                | "Outcomes" >> beam.Flatten()
                | "OutcomeKeys" >> beam.Map(lambda kv: (kv[1][0] if kv[0] == "written" else kv[1]["output"], kv[0])))
    lost = ({"job": jobs | "JobKeys" >> beam.Map(lambda job: (job.target, job.source)), "result": outcomes}
            | "Account" >> beam.CoGroupByKey()
            | "Lost" >> beam.FlatMap(account_for_files))
    results = (read_failures, finished, lost) | "Results" >> beam.Flatten()
    # Applied last: DaskRunner computes the last transform of the graph (and what it depends on) only.
    return (
        p
        | "Start" >> beam.Create([None])
        | "WriteFailures" >> beam.Map(_finalize, results=beam.pvalue.AsList(results), output_dir=output_dir,
                                      earlier=list(earlier_failures), launcher=launcher))


def beam_args_for(runner: str, beam_args: Sequence[str] = (), dask_address: str | None = None) -> list[str]:
    """Beam options for `runner` ("fnapi", "dask", or a Beam runner name such as DataflowRunner)."""
    name = RUNNERS.get(runner, runner)
    # FnApiRunner: no --runner, so that `runners.default_beam_args` adds it with one process per worker.
    args = ([] if name == "FnApiRunner" else [f"--runner={name}"]) + list(beam_args)
    if dask_address:
        if name != "DaskRunner":
            raise ValueError(f"dask_address needs runner='dask'. Received: runner={runner!r}")
        args.append(f"--dask_client_address={dask_address}")
    return args


def run_predict(source: str, output_dir: str, *, model_dir: str | None = None, head: str | None = None,
                runner: str = "fnapi", beam_args: Sequence[str] = (), workers: int | None = None,
                dask_address: str | None = None, batch_size: int | None = None, overlap: float = 0.5,
                overwrite: bool = False, output_format: str | None = None, keep_model_rate: bool = False,
                downmix: bool = False, high_band: str = "keep", high_band_gain: HighBandGain = HighBandGain(),
                block_seconds: float = DEFAULT_BLOCK_SECONDS) -> PredictSummary:
    """Denoises `source` into `output_dir` as `enhance_files` does, on a Beam runner.

    `runner`: "fnapi" (Beam's FnApiRunner, `workers` processes; default one per core), "dask" (Beam's
    DaskRunner on the cluster at `dask_address`, or on a LocalCluster of `workers` processes), or
    any Beam runner name, e.g. "DataflowRunner", with its options in `beam_args`. `batch_size`:
    windows per model call (default: 8, `predictor.enhance.CPU_BATCH_SIZE`; use 64 or more on GPU
    workers). The other arguments are `enhance_files`'s. Returns the summary; its failures are
    also in `output_dir/failures.jsonl`. `audio_seconds` is not known to the launcher (0).
    """
    from predictor.enhance import CPU_BATCH_SIZE, resolve_model_dir
    from trainer.model_dir import read_model_info, select_head

    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive. Received: block_seconds={block_seconds!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1) (a fraction of a window). Received: overlap={overlap!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer (processes). Received: workers={workers!r}")
    check_high_band(high_band)
    batch_size = CPU_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    model_dir = resolve_model_dir(model_dir)
    info = read_model_info(model_dir)
    select_head(info, head, model_dir)  # a wrong head fails here, not on a worker
    gain = high_band_gain if high_band == "keep" and not keep_model_rate else None
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    args, launcher = runners.dask_client_name(beam_args_for(runner, beam_args, dask_address))
    jobs, summary = plan_jobs(source, output_dir, overwrite=overwrite, output_format=output_format)
    num_jobs = len(jobs)
    logger.info("denoising %d files from %s into %s on %s (batch %d, overlap %.0f%%)", num_jobs, source,
                output_dir, runners.runner_of(args) or f"FnApiRunner ({workers} processes)", batch_size, 100 * overlap)
    JobManifest.remove_stale(output_dir)
    if jobs:
        if runners.is_dask(args):
            runners.require_dask()
        manifest = JobManifest(output_dir)
        try:
            try:
                shards = manifest.write(jobs)
            except OSError as err:  # the output's disk full or read-only: before any model work
                raise _unwritable(manifest.folder, err, "cannot write the job manifest") from err
            del jobs  # the launcher holds no list of files while the pipeline runs
            runners.run_pipeline(
                lambda p: build_predict_pipeline(
                    p, shards, num_jobs, model_dir=model_dir, config=info["config"].to_dict(), target=info["target"],
                    head=head, batch_size=batch_size, overlap=overlap, keep_model_rate=keep_model_rate,
                    downmix=downmix, gain=gain, block_seconds=block_seconds, output_dir=output_dir,
                    earlier_failures=summary.earlier_failures + summary.failures,
                    pad_bundles=runners.is_dask(args), launcher=launcher),
                args, workers)
        finally:
            # The pipeline has ended, run or failed; only a killed launcher leaves the manifest behind.
            manifest.remove()
        path = paths.join(output_dir, FAILURES_FILE)
        failures = ([json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]
                    if paths.isfile(path) else [])
        failures = failures[len(summary.earlier_failures):]  # the earlier runs' entries come first (`_finalize`)
        summary.written = num_jobs - (len(failures) - len(summary.failures))
        summary.failures = failures
    else:
        _finish(output_dir, summary)
    summary.processing_seconds = time.perf_counter() - started
    return summary
