"""`predict` as an Apache Beam pipeline: the same outputs as `enhance_files`, spread over a cluster.

The pipeline (`build_predict_pipeline`), stage by stage:

1. **ListInputs** (in the launcher, as `enhance_files` does: `output_folder.plan_jobs`): the inputs are
   found with `audio_io.find_audio_files` (local folders or files, gs:// prefixes or objects, through
   `tfrecord_schema.paths`), each gets its output path (`output_folder.output_path`), inputs that would be
   overwritten are refused, duplicate outputs are failures, and files whose output exists are
   skipped unless `overwrite` (a remote output prefix is listed once). The rest are written, one
   JSON line per file, to a few shards of a job manifest (`predictor.job_manifest.JobManifest`) in a
   hidden folder of the output, OUTPUT/.predict-jobs.PID-XXXXXXXX.tmp/, removed when the pipeline has run.
   **ReadJobs** (`ReadJobs`): the pipeline reads the manifest's shards, spread over the workers,
   line by line through the path layer, and reshuffles the files over the workers. The job graph
   holds the shards' paths only, never the list of files (Dataflow refuses graphs over ~10 MB).
2. **AnalyseFiles** (`AnalyseFile`; the stages on files and windows are in `predictor.predict_stages`):
   each file is read, resampled to the model's rate (the band above it split off for
   `high_band="keep"`) and turned into STFT frames by the same generator as `enhance_files`
   (`file_stream.read_frames`: `Analysis`, `Crossover`); its model windows go out one by one, keyed
   by file, channel and window index, and what the file needs to be put back together (`FileState`:
   the noisy STFT, its layout, the high band, the input's rate, encoding and length) goes out once.
   A file that cannot be used becomes a failure with its reason.
3. **Enhance**: Beam's `RunInference` with `WindowModelHandler` (a model directory loaded with
   `trainer.model_dir.load_model_dir`, `head` supported). Windows of all files share fixed-size
   batches (`BatchElements` with min = max = `batch_size`; the last batch of a bundle is padded), so
   `predict_on_batch` sees one shape and never retraces.
4. **Regroup**: the enhanced windows and the file's state are grouped on the file's key.
5. **FinishFiles** (`FinishFile`): the windows are joined by the same weighted overlap-add
   (`overlap_add.Track`, windows added in the order `enhance_files` adds them) and the result goes
   through the same `file_stream.FileSink` as `predict`: synthesis (`Synthesis`), resampling back,
   the high band added back (`high_band.HighBandMixer`), length fitted to the input's, written
   atomically (`audio_io.AtomicAudioWriter`).
6. **WriteFailures**: failures of every stage, with their reasons, are written to
   OUTPUT/failures.jsonl after the entries of an earlier run's list for files this run did not
   cover (as `enhance_files` does).

Outputs equal `enhance_files`'s to float rounding (tests/test_predict_beam.py): every number goes
through the same functions; only the model batches differ (other windows share them), and a file
is synthesised in one block instead of several (`Synthesis`, `HighBandMixer` and the resamplers are
block-size independent to float rounding).

A streaming model (`predictor.enhance.is_streaming_model`) must see a file's frames in order with its
state carried, so its pipeline (`build_streaming_pipeline`) spreads whole files instead: ReadJobs ->
**EnhanceFiles** (`EnhanceStreamingFiles`: the model loaded once per worker, each file read,
enhanced frame by frame and written by `enhance_files`'s own per-file path,
`predictor.folders.enhance_jobs`, in constant memory) -> the same accounting and WriteFailures.

Memory (windowed models): streaming stops at the file. A file's windows and its noisy STFT meet on the worker that
finishes it. At 8 kHz (hop 63) a second of audio and channel is 127 frames x 129 bins: 66 kB of
float32 features, so 131 kB of model windows (and as much of model outputs) at 50 % overlap, and
131 kB of complex64 STFT. Estimated from the arrays held (not measured): the analysing worker holds
about 0.35 MB and the finishing worker about 0.7 MB per second of audio and channel at once
(grouped outputs, STFT, the overlap-add's arrays, synthesis), i.e. ~2.5 GB per hour; a 2-hour mono
file (~914k frames) needs ~5 GB on one worker. Split longer files first, or use `predict` without
a runner, which streams any length in constant memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_pipelines import runners
from predictor.file_stream import DEFAULT_BLOCK_SECONDS
from predictor.high_band import HighBandGain, check_high_band
from predictor.job_manifest import JobManifest, ReadJobs
from predictor.output_folder import (FAILURES_FILE, PredictSummary, finish_run, plan_jobs, unwritable,
                                     write_failures)
from predictor.predict_options import CPU_BATCH_SIZE, PredictOptions
from predictor.predict_stages import (FILES_PER_GROUP, AnalyseFile, EnhanceStreamingFiles, FinishFile, PadToBatches,
                                      WindowModelHandler, account_for_files)
from tfrecord_schema import paths

logger = logging.getLogger(__name__)

# `--runner` short names of `speech-enhance predict`; any other value is passed to Beam as it is
# (e.g. DataflowRunner).
RUNNERS = {"fnapi": "FnApiRunner", "dask": "DaskRunner"}


def _finalize(_: Any, results: list[tuple[str, Any]], output_dir: str, earlier: list[dict[str, str]],
              launcher: str | None = None) -> int:
    runners.stop_if_launcher_gone(launcher, f"{paths.join(output_dir, FAILURES_FILE)} is not written")
    failures = earlier + sorted((value for kind, value in results if kind == "failure"), key=lambda f: f["input"])
    write_failures(output_dir, failures)
    written = [value[1] for kind, value in results if kind == "written"]
    logger.info("%d files written (%.1f s of audio), %d failed", len(written), sum(written), len(failures))
    return len(failures)


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
        windows = windows | "PadToBatches" >> PadToBatches(batch_size, max(1, num_jobs // FILES_PER_GROUP))
    enhanced = windows | "Enhance" >> RunInference(WindowModelHandler(model_dir, batch_size, head))
    if pad_bundles:
        enhanced = enhanced | "DropPadding" >> beam.Filter(lambda kv: kv[0] is not None)
    finished = (
        {"file": states, "windows": enhanced}
        | "Regroup" >> beam.CoGroupByKey()
        | "FinishFiles" >> beam.ParDo(FinishFile(config, target, overlap, keep_model_rate, gain, launcher)))
    return _account(p, jobs, (read_failures, finished), output_dir, earlier_failures, launcher)


def build_streaming_pipeline(p, shards: Sequence[tuple[str, int]], *, model_dir: str, batch_size: int | None,
                             keep_model_rate: bool, downmix: bool, gain: HighBandGain | None, block_seconds: float,
                             output_dir: str, earlier_failures: list[dict[str, str]], launcher: str | None = None):
    """Adds the stages for a streaming model to pipeline `p`: ReadJobs -> EnhanceFiles (whole files spread
    over the workers, `EnhanceStreamingFiles`) -> the accounting and WriteFailures of `build_predict_pipeline`.

    `batch_size`: frames per model call (None: the model's default); the rest as for `build_predict_pipeline`.
    """
    jobs = p | "ReadJobs" >> ReadJobs(shards)
    enhanced = jobs | "EnhanceFiles" >> beam.ParDo(EnhanceStreamingFiles(
        model_dir, batch_size, downmix, block_seconds, keep_model_rate, gain, launcher))
    return _account(p, jobs, (enhanced,), output_dir, earlier_failures, launcher)


def _account(p, jobs, finished: tuple, output_dir: str, earlier_failures: list[dict[str, str]],
             launcher: str | None):
    """The last stages of both pipelines: `finished` (collections of ("written", (key, seconds)) and
    ("failure", dict)) checked against `jobs`, and failures.jsonl written."""
    # Every planned file must end written or failed: one with no result at all is reported as lost.
    outcomes = (finished
                | "Outcomes" >> beam.Flatten()
                | "OutcomeKeys" >> beam.Map(lambda kv: (kv[1][0] if kv[0] == "written" else kv[1]["output"], kv[0])))
    lost = ({"job": jobs | "JobKeys" >> beam.Map(lambda job: (job.target, job.source)), "result": outcomes}
            | "Account" >> beam.CoGroupByKey()
            | "Lost" >> beam.FlatMap(account_for_files))
    results = (*finished, lost) | "Results" >> beam.Flatten()
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


def run_predict(options: PredictOptions, *, beam_args: Sequence[str] = (),
                high_band_gain: HighBandGain = HighBandGain(),
                block_seconds: float = DEFAULT_BLOCK_SECONDS) -> PredictSummary:
    """Denoises `options.source` into `options.output_dir` as `enhance_files` does, on a Beam runner.

    `options.runner`: "fnapi" (Beam's FnApiRunner, `workers` processes; default one per core; also
    when `runner` is None), "dask" (Beam's DaskRunner on the cluster at `dask_address`, or on a
    LocalCluster of `workers` processes), or any Beam runner name, e.g. "DataflowRunner", with its
    options in `beam_args`. `batch_size`: windows per model call (default: `CPU_BATCH_SIZE`; use 64
    or more on GPU workers); for a streaming model, frames per model call (default: the model's), and
    whole files go to the workers (`build_streaming_pipeline`). The other options, `high_band_gain` and `block_seconds` are
    `enhance_files`'s; `file_processes` and `progress_interval` are not used. Returns the summary; its
    failures are also in `output_dir/failures.jsonl`. `audio_seconds` is not known to the launcher (0).
    """
    from predictor.enhance import is_streaming_model, resolve_model_dir
    from trainer.model_dir import read_model_info, select_head

    source, output_dir, head, overlap = options.source, options.output_dir, options.head, options.overlap
    workers, high_band, keep_model_rate = options.workers, options.high_band, options.keep_model_rate
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive. Received: block_seconds={block_seconds!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1) (a fraction of a window). Received: overlap={overlap!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer (processes). Received: workers={workers!r}")
    check_high_band(high_band)
    batch_size = options.batch_size
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    model_dir = resolve_model_dir(options.model_dir)
    streaming = is_streaming_model(model_dir)
    if streaming:  # frames per call: `batch_size`, or the model's default
        if head is not None:
            raise ValueError(f"head={head!r}: the streaming model in {model_dir} has one output and no heads.")
        info, run = {}, f"streaming, {batch_size or 'default'} frames per call"
    else:
        batch_size = CPU_BATCH_SIZE if batch_size is None else batch_size
        info = read_model_info(model_dir)
        select_head(info, head, model_dir)  # a wrong head fails here, not on a worker
        run = f"batch {batch_size}, overlap {100 * overlap:.0f}%"
    gain = high_band_gain if high_band == "keep" and not keep_model_rate else None
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    args, launcher = runners.dask_client_name(beam_args_for(options.runner or "fnapi", beam_args,
                                                            options.dask_address))
    jobs, summary = plan_jobs(source, output_dir, overwrite=options.overwrite,
                              output_format=options.output_format)
    num_jobs = len(jobs)
    logger.info("denoising %d files from %s into %s on %s (%s)", num_jobs, source, output_dir,
                runners.runner_of(args) or f"FnApiRunner ({workers} processes)", run)
    if jobs:
        if runners.is_dask(args):
            runners.require_dask()
        manifest = JobManifest(output_dir)
        try:
            try:
                shards = manifest.write(jobs)
            except OSError as err:  # the output's disk full or read-only: before any model work
                raise unwritable(manifest.folder, err, "cannot write the job manifest") from err
            del jobs  # the launcher holds no list of files while the pipeline runs
            common = dict(model_dir=model_dir, batch_size=batch_size, keep_model_rate=keep_model_rate,
                          downmix=options.downmix, gain=gain, block_seconds=block_seconds, output_dir=output_dir,
                          earlier_failures=summary.earlier_failures + summary.failures, launcher=launcher)
            runners.run_pipeline(
                (lambda p: build_streaming_pipeline(p, shards, **common)) if streaming else
                (lambda p: build_predict_pipeline(
                    p, shards, num_jobs, config=info["config"].to_dict(), target=info["target"], head=head,
                    overlap=overlap, pad_bundles=runners.is_dask(args), **common)),
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
        finish_run(output_dir, summary)
    summary.processing_seconds = time.perf_counter() - started
    return summary
