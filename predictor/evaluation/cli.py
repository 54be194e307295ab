"""`speech-enhance evaluate`: a thin wrapper over `predictor.evaluation.run.run_evaluation`.

The flags are built from `EvaluateOptions` (`tfrecord_schema.options`), and library errors, which
name its fields, are shown with those flags. Nothing heavy is imported at module level, so
`speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os

from predictor.evaluation.options import SNMF_GROUP, EvaluateOptions
from tfrecord_schema import options

logger = logging.getLogger(__name__)

# run_evaluation's argument names -> the command's flags ("model_dir": a model's own errors).
FLAGS = options.flag_names(EvaluateOptions, extra={"model_dir": "--model"})


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


def register(subparsers: argparse._SubParsersAction) -> None:
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
    snmf = p.add_argument_group(
        "sparse-NMF baseline",
        "Adds the system 'snmf' (sparse NMF with W normalised in the cost, Le Roux et al. 2015): a speech and a "
        "noise dictionary learnt from training audio, then a Wiener-like mask. Give exactly one source of "
        "dictionaries; none: no snmf system. Training folders must not be the evaluation folders. The "
        "dictionaries used are written to OUTPUT/snmf.npz (pass it to --snmf-model to repeat the run).")
    options.add_flags(p, EvaluateOptions, groups={SNMF_GROUP: snmf}, names=FLAGS)
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from predictor.enhance import PRETRAINED_DIR
    from predictor.evaluation.peer_base import PeerNotInstalledError
    from predictor.evaluation.run import run_evaluation
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
        results = run_evaluation(options.from_args(EvaluateOptions, args, models=models))
    except (ValueError, FileNotFoundError) as err:
        raise options.with_flags(err, FLAGS) from err
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
