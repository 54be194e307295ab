"""`speech-enhance evaluate`: a thin wrapper over `predictor.evaluation.run.run_evaluation`.

Nothing heavy is imported at module level, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os

from predictor.cli import _common_model_args, _with_flags

logger = logging.getLogger(__name__)

# run_evaluation's argument names and the command's flags (see `predictor.cli._with_flags`).
_EVALUATE_FLAGS = {"model_dir": "--model", "noisy_dir": "--noisy-dir", "clean_dir": "--clean-dir",
                   "voice_dir": "--voice-dir", "noise_dir": "--noise-dir", "snrs": "--snrs",
                   "num_mixtures": "--num-mixtures", "duration": "--duration", "seed": "--seed",
                   "sample_rate": "--sample-rate", "systems": "--systems", "batch_size": "--batch-size",
                   "overlap": "--overlap", "num_examples": "--examples", "output_dir": "--output",
                   "snmf_speech_dir": "--snmf-speech-dir", "snmf_noise_dir": "--snmf-noise-dir",
                   "snmf_dataset": "--snmf-dataset", "snmf_file": "--snmf-model", "snmf_atoms": "--snmf-atoms",
                   "snmf_sparsity": "--snmf-sparsity", "peers": "--peers"}


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
    from predictor.evaluation.items import DEFAULT_SNRS  # numpy only; the metrics packages load when used

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
    from predictor.evaluation.run import run_evaluation
    from predictor.evaluation.peers import PeerNotInstalledError
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
