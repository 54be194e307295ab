"""`speech-enhance predict`: a thin wrapper over the library (`speech-enhance evaluate` is
`predictor.evaluation.cli`, registered from here).

Nothing heavy is imported at module level, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

# Library errors name the library's arguments (`noisy_dir=`); the commands re-raise them with their
# flags. A name with "_" is replaced wherever it stands, a plain word only as `word=` or where it
# opens the message (prose such as "the systems of ..." stays as it is).
_PREDICT_FLAGS = {"model_dir": "--model", "source": "--input", "output_dir": "--output", "output_format": "--format",
                  "batch_size": "--batch-size", "overlap": "--overlap", "workers": "--workers",
                  "progress_interval": "--progress-interval", "keep_model_rate": "--keep-model-rate", "head": "--head",
                  "high_band": "--high-band", "runner": "--runner", "file_processes": "--file-processes",
                  "dask_address": "--dask-address"}


def _with_flags(err: Exception, flags: dict[str, str]) -> Exception:
    """`err` again, of the same type, with the library's argument names written as `flags`."""
    import re

    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))

    def flag(match: re.Match) -> str:
        name, equals = match.group(1), match.group(2)
        if "_" not in name and not equals and match.start() > 0:
            return match.group(0)
        return flags[name] + (" " if equals else "")

    text = re.sub(rf"(?<![\w-])({names})(?![\w-])(=?)", flag, str(err))
    # Built without calling the class's __init__, whose signature may differ (AudioError takes a
    # reason and a message): the same type, its attributes (e.g. `reason`) and the renamed text.
    renamed = type(err).__new__(type(err), text)
    renamed.args = (text,)
    renamed.__dict__.update(getattr(err, "__dict__", {}))
    return renamed


def register(subparsers: argparse._SubParsersAction) -> None:
    from predictor.evaluation.cli import register as register_evaluate

    _register_predict(subparsers)
    register_evaluate(subparsers)


def _common_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=None,
                        help="model windows per batch; windows of several files share a batch "
                             "(default: 8 on a CPU, 64 on a GPU or TPU)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="fraction of a window shared with the next, in [0, 1); windows are joined by "
                             "weighted overlap-add (default: 0.5)")


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
    p.add_argument("--model", metavar="DIR", default=None,
                   help="model directory (local or gs://) written by `speech-enhance train` (model.keras + "
                        "model.json), or a model shipped in the package: shipped:8k (the default) or "
                        "shipped:16k (for input at 16 kHz and above: it denoises up to 8 kHz)")
    p.add_argument("--head", metavar="NAME", default=None,
                   help="the output to run, for a model with several (model.json \"heads\"; a BLSTM has "
                        "\"mask\", the mask-inference head, and \"kmeans\", the clustering of its embeddings); "
                        "default: the model's first head")
    p.add_argument("--input", required=True, metavar="PATH",
                   help="a folder (searched recursively) or one audio file; or a gs:// folder prefix "
                        "(searched recursively) or object. Taken literally, never as a glob pattern")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder (or gs:// prefix) for the denoised files; must not be the input folder")
    _common_model_args(p)
    p.add_argument("--format", choices=("wav", "flac", "ogg"), default=None,
                   help="output format; default: the input file's own format")
    p.add_argument("--keep-model-rate", action=argparse.BooleanOptionalAction, default=False,
                   help="write at the model's sample rate instead of resampling back to the input's rate "
                        "(band-limited to the model's band, whatever --high-band says)")
    p.add_argument("--high-band", choices=("keep", "drop"), default="keep",
                   help="for inputs above the model's rate, the band the model does not see (above 4 kHz for an "
                        "8 kHz model): 'keep' adds it back, attenuated as the model attenuates the top of its own "
                        "band (frame by frame, never below -20 dB); 'drop' leaves it out, so the output is "
                        "band-limited like the model's (default: keep)")
    p.add_argument("--downmix", action=argparse.BooleanOptionalAction, default=False,
                   help="average the channels and write mono, instead of denoising each channel")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="redo files whose output already exists (default: skip them)")
    # 16 is predictor.enhance.MAX_DEFAULT_WORKERS, written out so that --help imports no numpy work
    # (tests/test_predict_streaming.py keeps the two equal).
    p.add_argument("--workers", type=int, default=None,
                   help="threads for reading, resampling, STFT and writing around the model "
                        "(default: the number of CPU cores, at most 16; 0: none); with --runner fnapi or "
                        "dask (local cluster): worker processes (default: the number of CPU cores)")
    p.add_argument("--file-processes", type=int, default=0, metavar="N",
                   help="worker processes for reading, resampling, STFT, overlap-add, inverse STFT and writing, "
                        "while this process only batches the windows of all files and runs the model: for a GPU "
                        "that threads cannot keep fed (try the number of CPU cores). --workers threads are then "
                        "not used. Same outputs (default: 0, threads in this process; see docs/predict.md)")
    p.add_argument("--progress-interval", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between progress log lines, which also say how far into a long file the "
                        "output is (default: 5)")
    cluster = p.add_argument_group(
        "cluster (Apache Beam)",
        "With --runner the same prediction runs as an Apache Beam pipeline (predictor/beam_predict.py): the same "
        "outputs, skipping, failures.jsonl and atomic writes, with files' model windows batched together across "
        "worker processes or machines. Without --runner, predict runs in this process. Apache Beam's own "
        "options are passed to Beam, e.g. for Dataflow: --runner DataflowRunner --project P --region R "
        "--temp_location gs://B/tmp --setup_file ./setup.py; any other unknown option is an error. See "
        "docs/predict.md, Cluster.")
    cluster.add_argument("--runner", metavar="NAME", default=None,
                         help="'fnapi': Beam's FnApiRunner on this machine, --workers processes (default: one per "
                              "core); 'dask': Beam's DaskRunner on the cluster at --dask-address, or on a local "
                              "cluster of --workers processes (pip install 'speech-enhance[dask]'); or a Beam "
                              "runner name such as DataflowRunner")
    cluster.add_argument("--dask-address", metavar="tcp://HOST:PORT", default=None,
                         help="with --runner dask: the scheduler of an existing dask.distributed cluster")
    p.set_defaults(func=_predict, accepts_extra=True)


def _predict(args: argparse.Namespace, extra: list[str]) -> int:
    from predictor.folders import check_progress_interval
    from predictor.output_folder import FAILURES_FILE, OutputNotWritableError
    from tfrecord_schema import paths

    try:
        check_progress_interval(args.progress_interval)  # before the model loads
    except ValueError as err:
        raise _with_flags(err, _PREDICT_FLAGS) from err
    try:
        return _run_predict(args, extra, paths.join(args.output, FAILURES_FILE) if args.output else "")
    except OutputNotWritableError as err:  # the output's disk full or read-only: one line, as for a usage error
        raise _with_flags(ValueError(str(err)), _PREDICT_FLAGS) from err


def _run_predict(args: argparse.Namespace, extra: list[str], failures_path: str) -> int:
    from predictor.enhance import DEFAULT_WORKERS, Enhancer
    from predictor.folders import enhance_files

    if args.runner is None:
        if extra or args.dask_address:
            flags = [a for a in extra if a.startswith("-")] or extra or ["--dask-address"]
            raise ValueError(f"unrecognized arguments: {' '.join(flags)} (Apache Beam options and --dask-address "
                             "need --runner)")
        from predictor.file_processes import FileProcessError, FileProcesses, check_file_processes

        workers = DEFAULT_WORKERS if args.workers is None else args.workers
        file_processes = args.file_processes
        try:
            if file_processes:
                from predictor.audio_io import find_audio_files

                check_file_processes(file_processes)
                workers = 0  # the file processes do the work the threads would
                # No more processes than files (each takes whole files): every one costs a start-up and
                # memory. Started first: their start-up overlaps loading the model.
                _, rels = find_audio_files(args.input, exclude=args.output)
                if rels:
                    file_processes = FileProcesses(min(file_processes, len(rels)))
            try:
                enhancer = Enhancer.from_model_dir(args.model, head=args.head, batch_size=args.batch_size,
                                                   overlap=args.overlap, workers=workers)
                summary = enhance_files(enhancer, args.input, args.output, overwrite=args.overwrite,
                                        output_format=args.format, keep_model_rate=args.keep_model_rate,
                                        downmix=args.downmix, high_band=args.high_band,
                                        progress_interval=args.progress_interval, file_processes=file_processes)
            finally:
                if isinstance(file_processes, FileProcesses):
                    file_processes.close()
        except (ValueError, FileNotFoundError) as err:
            raise _with_flags(err, _PREDICT_FLAGS) from err
        except FileProcessError as err:  # a worker killed (out of memory?) or failed: the others were stopped
            print(f"speech-enhance predict: error: {err}. Finished outputs are kept: run the same command again to "
                  "resume.", file=sys.stderr)
            return 1
    else:
        summary = _predict_on_beam(args, extra)
    rtf = f"{summary.real_time_factor:.4f}" if summary.audio_seconds else "n/a"
    if args.runner is not None:  # the launcher does not see the audio's duration (the workers do)
        print(f"{summary.written} written, {summary.skipped} skipped (output exists), {len(summary.failures)} "
              f"failed of {summary.total} files in {summary.processing_seconds:.1f} s on {args.runner}")
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


def _predict_on_beam(args: argparse.Namespace, extra: list[str]):
    from beam_pipelines.cli import refuse_unknown_beam_args
    from predictor.beam_predict import run_predict

    refuse_unknown_beam_args(extra, "predict")
    if args.file_processes:
        raise ValueError(f"--file-processes works without --runner (Beam's workers are processes already; use "
                         f"--workers). Received: --file-processes {args.file_processes}, --runner {args.runner}")
    try:
        return run_predict(args.input, args.output, model_dir=args.model, head=args.head, runner=args.runner,
                           beam_args=extra, workers=args.workers, dask_address=args.dask_address,
                           batch_size=args.batch_size, overlap=args.overlap, overwrite=args.overwrite,
                           output_format=args.format, keep_model_rate=args.keep_model_rate, downmix=args.downmix,
                           high_band=args.high_band)
    except (ValueError, FileNotFoundError) as err:
        raise _with_flags(err, _PREDICT_FLAGS) from err
