"""`speech-enhance predict` and `speech-enhance evaluate`: thin wrappers over the library.

Nothing heavy is imported at module level, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
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
_EVALUATE_FLAGS = {"model_dir": "--model", "noisy_dir": "--noisy-dir", "clean_dir": "--clean-dir",
                   "voice_dir": "--voice-dir", "noise_dir": "--noise-dir", "snrs": "--snrs",
                   "num_mixtures": "--num-mixtures", "duration": "--duration", "seed": "--seed",
                   "sample_rate": "--sample-rate", "systems": "--systems", "batch_size": "--batch-size",
                   "overlap": "--overlap", "num_examples": "--examples", "output_dir": "--output",
                   "snmf_speech_dir": "--snmf-speech-dir", "snmf_noise_dir": "--snmf-noise-dir",
                   "snmf_dataset": "--snmf-dataset", "snmf_file": "--snmf-model", "snmf_atoms": "--snmf-atoms",
                   "snmf_sparsity": "--snmf-sparsity", "peers": "--peers"}


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
    _register_predict(subparsers)
    _register_evaluate(subparsers)


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


def _model_spec(value: str) -> tuple[str, str]:
    from tfrecord_schema import paths

    name, sep, directory = value.partition("=")
    if not sep:
        directory = value
        name = (paths.basename(value) if paths.is_remote(value) else os.path.basename(os.path.normpath(value))
                ) or "model"
    if not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR or DIR, got {value!r}")
    return name, directory


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from predictor.evaluate import DEFAULT_SNRS  # numpy only; the metrics packages load when used

    p = subparsers.add_parser(
        "evaluate", help="score models against classical baselines and an oracle",
        description="Score the noisy input, one or more models, the reference's recipe on each model, spectral "
                    "subtraction, a Wiener filter, noisereduce (stationary and non-stationary) and the oracle "
                    "(clean magnitude, noisy phase) with SI-SDR, SI-SDR improvement, PESQ and STOI, per input-SNR "
                    "bin and per noise class. Items are paired files (--noisy-dir/--clean-dir) or mixtures made "
                    "reproducibly from held-out voices and noises (--voice-dir/--noise-dir). Items shorter than one "
                    "model window, with a silent clean file, or whose noisy file equals the clean one are skipped "
                    "and listed with their reason in the report. Writes results.json, "
                    "results.md, si_sdri_vs_snr.png and examples.png into --output. Every folder (and --model) "
                    "may be a gs:// prefix; its files are listed and read through the bucket.")
    p.add_argument("--model", action="append", type=_model_spec, default=None, metavar="NAME=DIR",
                   help="a model directory to score, named NAME in the tables (DIR alone: named after the folder); "
                        "repeat for several models; default: the shipped model if there is one, else baselines only")
    p.add_argument("--noisy-dir", metavar="DIR",
                   help="noisy files, paired with --clean-dir by relative path; classes as for --noise-dir")
    p.add_argument("--clean-dir", metavar="DIR", help="clean files at the same relative paths as --noisy-dir")
    p.add_argument("--voice-dir", metavar="DIR", help="held-out clean speech to make mixtures from")
    p.add_argument("--noise-dir", metavar="DIR",
                   help="held-out noise to make mixtures from; classes from the nearest classes.tsv "
                        "(file<TAB>class) or ESC-50 meta/esc50.csv in a file's folder or above (as the dataset "
                        "job reads them), else sub-folder names")
    p.add_argument("--snrs", type=float, nargs="+", default=list(DEFAULT_SNRS), metavar="DB",
                   help="input SNRs (dB) to mix at, or bin centres for paired files (default: -5 0 5 10 15)")
    p.add_argument("--num-mixtures", type=int, default=20, help="mixtures per SNR (default: 20)")
    p.add_argument("--duration", type=float, default=4.0, metavar="SECONDS",
                   help="longest mixture, at least one model window (about 1 s); shorter voice files give "
                        "shorter mixtures, and those shorter than a window are skipped (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixtures (default: 0)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="evaluation rate when no model is given (default: 8000); with models, their rate")
    p.add_argument("--systems", nargs="+", default=None, metavar="NAME",
                   help="score only these systems (names as in the tables)")
    p.add_argument("--reference-recipe", action=argparse.BooleanOptionalAction, default=True,
                   help="also run each model the way the reference project did (default: on)")
    p.add_argument("--pesq", action=argparse.BooleanOptionalAction, default=True, help="compute PESQ (default: on)")
    p.add_argument("--stoi", action=argparse.BooleanOptionalAction, default=True, help="compute STOI (default: on)")
    _common_model_args(p)
    p.add_argument("--examples", type=int, default=3, help="items shown in examples.png (default: 3)")
    p.add_argument("--save-audio", action=argparse.BooleanOptionalAction, default=False,
                   help="also write the example items' clean, noisy and enhanced audio under OUTPUT/audio/")
    snmf = p.add_argument_group(
        "sparse-NMF baseline",
        "Adds the system 'snmf' (sparse NMF with W normalised in the cost, Le Roux et al. 2015): a speech and a "
        "noise dictionary learnt from training audio, then a Wiener-like mask. Give exactly one source of "
        "dictionaries; none: no snmf system. Training folders must not be the evaluation folders. The "
        "dictionaries used are written to OUTPUT/snmf.npz (pass it to --snmf-model to repeat the run).")
    snmf.add_argument("--snmf-speech-dir", metavar="DIR",
                      help="clean training speech (local or gs://, searched recursively) to learn the speech "
                           "dictionary from; with --snmf-noise-dir")
    snmf.add_argument("--snmf-noise-dir", metavar="DIR",
                      help="training noise to learn the noise dictionary from; with --snmf-speech-dir")
    snmf.add_argument("--snmf-dataset", metavar="DIR",
                      help="a dataset directory written by `speech-enhance dataset`: learn from the clean and the "
                           "noise (noisy - clean) spectrograms of its train split, read without TensorFlow")
    snmf.add_argument("--snmf-model", metavar="FILE",
                      help="an snmf.npz written by an earlier evaluation (or SparseNMF.save): use its dictionaries "
                           "instead of learning")
    snmf.add_argument("--snmf-atoms", type=int, default=None, metavar="N",
                      help="atoms per dictionary, speech and noise alike, when learning (default: 128)")
    snmf.add_argument("--snmf-sparsity", type=float, default=None, metavar="X",
                      help="L1 weight on the activations, for learning and enhancing, on spectrograms normalised "
                           "to mean 1 (default: 1.0; 0: plain NMF)")
    p.add_argument("--peers", nargs="+", default=[], metavar="NAME",
                   help="also score learned denoisers a user could pick instead: deepfilternet3 (DeepFilterNet3), "
                        "rnnoise (RNNoise), or all. Each runs at 48 kHz on the items resampled up, with a fresh state "
                        "per item and its delay compensated. Needs: pip install 'speech-enhance[peers]'")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder (or gs:// prefix) for the report; each file is written whole under a temporary "
                        "name and renamed into place")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from predictor.enhance import PRETRAINED_DIR
    from predictor.evaluate import run_evaluation
    from predictor.peers import PeerNotInstalledError
    from tfrecord_schema import paths

    models = dict(args.model or [])
    if args.model and len(models) != len(args.model):
        raise ValueError(f"--model names must be unique. Received: {[name for name, _ in args.model]}")
    if not models:
        if os.path.isfile(os.path.join(PRETRAINED_DIR, "model.json")):
            models = {"pretrained": PRETRAINED_DIR}
        else:
            logger.warning("no --model given and no shipped model: scoring the baselines only")
    try:
        results = run_evaluation(
            args.output, models=models, noisy_dir=args.noisy_dir, clean_dir=args.clean_dir,
            voice_dir=args.voice_dir, noise_dir=args.noise_dir, snrs=args.snrs, num_mixtures=args.num_mixtures,
            duration=args.duration, seed=args.seed, sample_rate=args.sample_rate, systems=args.systems,
            reference_recipe=args.reference_recipe, with_pesq=args.pesq, with_stoi=args.stoi,
            batch_size=args.batch_size, overlap=args.overlap, num_examples=args.examples,
            save_audio=args.save_audio, snmf_speech_dir=args.snmf_speech_dir, snmf_noise_dir=args.snmf_noise_dir,
            snmf_dataset=args.snmf_dataset, snmf_file=args.snmf_model, snmf_atoms=args.snmf_atoms,
            snmf_sparsity=args.snmf_sparsity, peers=args.peers)
    except (ValueError, FileNotFoundError) as err:
        raise _with_flags(err, _EVALUATE_FLAGS) from err
    except PeerNotInstalledError as err:  # a --peers package missing: the message names the extra to install
        raise ValueError(str(err)) from err
    text = paths.read_text(results["paths"]["markdown"])
    start = text.find("## Overall")
    print(text[start: text.find("\n## ", start + 1)].strip())
    if results["skipped"] or results["failures"]:
        print(f"\n{len(results['skipped'])} items skipped, {len(results['failures'])} metric values not computed; "
              f"the reasons are listed in {results['paths']['markdown']}")
    print("\nwritten: " + ", ".join(results["paths"].values()))
    return 0
