"""`speech-enhance predict`: a thin wrapper over the library (`speech-enhance evaluate` is
`predictor.evaluation.cli`, registered from here).

Nothing heavy is imported at module level, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from predictor.predict_options import CLUSTER_GROUP, PredictOptions
from tfrecord_schema import options

logger = logging.getLogger(__name__)

# The library's argument names -> the command's flags, for its errors.
FLAGS = options.flag_names(PredictOptions)


def register(subparsers: argparse._SubParsersAction) -> None:
    from predictor.evaluation.cli import register as register_evaluate

    _register_predict(subparsers)
    register_evaluate(subparsers)


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="denoise audio files with a trained model",
        description="Denoise every wav/flac/ogg file of --input into --output, mirroring the folder structure. "
                    "Files of any length, sample rate and channel count are read; each channel is denoised on "
                    "its own (or the channels are averaged first with --downmix). Outputs keep the input's "
                    "rate, length, channels and format unless told otherwise. Long files are streamed in blocks "
                    "(memory does not grow with their length). Existing outputs are skipped, so an interrupted "
                    "run resumes, and temporaries a killed run left in a local --output are removed; unreadable "
                    "or too-short files are listed in OUTPUT/failures.jsonl and make the exit status 1 after the "
                    "rest are written. --input and --output may be gs:// prefixes: inputs are streamed from the "
                    "bucket, and each output is written to a local temporary file and uploaded when complete.")
    cluster = p.add_argument_group(
        "cluster (Apache Beam)",
        "With --runner the same prediction runs as an Apache Beam pipeline (predictor/beam_predict.py): the same "
        "outputs, skipping, failures.jsonl and atomic writes, with files' model windows batched together across "
        "worker processes or machines. Without --runner, predict runs in this process. Apache Beam's own "
        "options are passed to Beam, e.g. for Dataflow: --runner DataflowRunner --project P --region R "
        "--temp_location gs://B/tmp --setup_file ./setup.py; any other unknown option is an error. See "
        "docs/predict.md, Cluster.")
    # --format is written by hand: its default (None, the input's own format) is no choice of its own.
    names = list(FLAGS)
    fmt = {f.name: f for f in dataclasses.fields(PredictOptions)}["output_format"]
    before, after = names[:names.index(fmt.name)], names[names.index(fmt.name) + 1:]
    options.add_flags(p, PredictOptions, groups={CLUSTER_GROUP: cluster}, names=FLAGS, only=before)
    p.add_argument(options.flag_of(fmt), dest=fmt.name, choices=fmt.metadata["choices"], default=None,
                   help=fmt.metadata["help"])
    options.add_flags(p, PredictOptions, groups={CLUSTER_GROUP: cluster}, names=FLAGS, only=after)
    p.set_defaults(func=_predict, accepts_extra=True)


def _predict(args: argparse.Namespace, extra: list[str]) -> int:
    from predictor.folders import check_progress_interval
    from predictor.output_folder import FAILURES_FILE, OutputNotWritableError
    from tfrecord_schema import paths

    opts = options.from_args(PredictOptions, args)
    try:
        check_progress_interval(opts.progress_interval)  # before the model loads
    except ValueError as err:
        raise options.with_flags(err, FLAGS) from err
    if opts.model_dir is None and opts.source:  # the shipped model that suits the input's rate
        from predictor.enhance import default_shipped_model

        try:
            name, reason = default_shipped_model(opts.source, exclude=opts.output_dir)
        except (ValueError, FileNotFoundError):
            name = None  # no input to read: the run reports that in its own words
        if name:
            logger.info("no --model: %s (%s); --model shipped:8k or shipped:16k forces one", name, reason)
        if name == "shipped:16k":  # the 8 kHz model stays model_dir=None, the default resolve_model_dir reads
            opts = dataclasses.replace(opts, model_dir=name)
    try:
        return _run_predict(opts, extra, paths.join(opts.output_dir, FAILURES_FILE) if opts.output_dir else "")
    except OutputNotWritableError as err:  # the output's disk full or read-only: one line, as for a usage error
        raise options.with_flags(ValueError(str(err)), FLAGS) from err


def _run_predict(opts: PredictOptions, extra: list[str], failures_path: str) -> int:
    if opts.runner is None:
        if extra or opts.dask_address:
            flags = [a for a in extra if a.startswith("-")] or extra or ["--dask-address"]
            raise ValueError(f"unrecognized arguments: {' '.join(flags)} (Apache Beam options and --dask-address "
                             "need --runner)")
        summary = _predict_here(opts)
        if summary is None:
            return 1
    else:
        summary = _predict_on_beam(opts, extra)
    rtf = f"{summary.real_time_factor:.4f}" if summary.audio_seconds else "n/a"
    if opts.runner is not None:  # the launcher does not see the audio's duration (the workers do)
        print(f"{summary.written} written, {summary.skipped} skipped (output exists), {len(summary.failures)} "
              f"failed of {summary.total} files in {summary.processing_seconds:.1f} s on {opts.runner}")
    else:
        print(f"{summary.written} written, {summary.skipped} skipped (output exists), {len(summary.failures)} failed "
              f"of {summary.total} files; {summary.audio_seconds:.1f} s of audio in {summary.processing_seconds:.1f} "
              f"s (real-time factor {rtf})")
    if summary.failures:
        print(f"failures and their reasons: {failures_path}")
        return 1
    if summary.earlier_failures:
        print(f"{len(summary.earlier_failures)} failure(s) of earlier runs, of files this run did not cover, are "
              f"still listed in {failures_path}")
    return 0


def _predict_here(opts: PredictOptions):
    """`enhance_files` in this process (threads or `--file-processes`); None when a file process failed."""
    from predictor.enhance import DEFAULT_WORKERS, load_enhancer
    from predictor.file_processes import FileProcessError, FileProcesses, check_file_processes
    from predictor.folders import enhance_files

    workers = DEFAULT_WORKERS if opts.workers is None else opts.workers
    file_processes = opts.file_processes
    try:
        if file_processes:
            from predictor.audio_io import find_audio_files

            check_file_processes(file_processes)
            workers = 0  # the file processes do the work the threads would
            # No more processes than files (each takes whole files): every one costs a start-up and
            # memory. Started first: their start-up overlaps loading the model.
            _, rels = find_audio_files(opts.source, exclude=opts.output_dir)
            if rels:
                file_processes = FileProcesses(min(file_processes, len(rels)))
        try:
            enhancer = load_enhancer(opts.model_dir, head=opts.head, batch_size=opts.batch_size,
                                     overlap=opts.overlap, workers=workers)
            return enhance_files(enhancer, opts.source, opts.output_dir, overwrite=opts.overwrite,
                                 output_format=opts.output_format, keep_model_rate=opts.keep_model_rate,
                                 downmix=opts.downmix, high_band=opts.high_band,
                                 progress_interval=opts.progress_interval, file_processes=file_processes)
        finally:
            if isinstance(file_processes, FileProcesses):
                file_processes.close()
    except (ValueError, FileNotFoundError) as err:
        raise options.with_flags(err, FLAGS) from err
    except FileProcessError as err:  # a worker killed (out of memory?) or failed: the others were stopped
        print(f"speech-enhance predict: error: {err}. Finished outputs are kept: run the same command again to "
              "resume.", file=sys.stderr)
        return None


def _predict_on_beam(opts: PredictOptions, extra: list[str]):
    from beam_pipelines.cli import refuse_unknown_beam_args
    from predictor.beam_predict import run_predict

    refuse_unknown_beam_args(extra, "predict")
    if opts.file_processes:
        raise ValueError(f"--file-processes works without --runner (Beam's workers are processes already; use "
                         f"--workers). Received: --file-processes {opts.file_processes}, --runner {opts.runner}")
    try:
        return run_predict(opts, beam_args=extra)
    except (ValueError, FileNotFoundError) as err:
        raise options.with_flags(err, FLAGS) from err
