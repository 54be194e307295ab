"""`speech-enhance train`: the command line over `trainer.train.train`.

Every option flag is built from a `trainer.config.TrainConfig` field: its default, choices and help
come from there, `--batch-size` is the field `batch_size`. Errors from the library name fields;
`run()` shows them as flags. Nothing heavy is imported at module level (`speech-enhance --help`
imports this module): Keras and TensorFlow are imported in `run()`, after `--backend` has set
KERAS_BACKEND.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from mixing.options import LEVEL_FLAGS, AugmentOptions, MixOptions, add_mixing_flags, mixing_from_args
from tfrecord_schema import options
from trainer.config import ARCHITECTURE_PRESETS, PRESETS, TrainConfig, preset_overrides

BACKENDS = ("tensorflow", "jax", "torch")
_GROUPS = {"data": "data and outputs", "optimisation": "optimisation", "model": "model", "hardware": "hardware"}
# Library argument names that are not TrainConfig fields, and their flags.
_PATH_FLAGS = {"dataset_dir": "--dataset", "model_dir": "--model-dir", "work_dir": "--work-dir"}
FLAGS = options.flag_names(MixOptions, AugmentOptions, TrainConfig, extra={**_PATH_FLAGS, **LEVEL_FLAGS})


def flag_terms(text: str) -> str:
    """`text` (a library message) with TrainConfig field names shown as this command's flags."""
    return options.flag_terms(text, FLAGS)


def _preset_help() -> str:
    text = "; ".join(f"{name}: " + flag_terms(", ".join(f"{k}={v}" for k, v in preset_overrides(name).items()))
                     for name in PRESETS)
    families = "; ".join(f"{architecture} {name}: " + flag_terms(", ".join(f"{k}={v}" for k, v in overrides.items()))
                         for architecture, by_preset in ARCHITECTURE_PRESETS.items()
                         for name, overrides in by_preset.items())
    return f"{text}. For other architectures, on top: {families}"


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the `train` subcommand to the `speech-enhance` parser."""
    p = subparsers.add_parser(
        "train", help="train a denoiser (U-Net, BLSTM, mel autoencoder) on a dataset directory",
        description=("Train a model family (--architecture; the U-Net by default) on the spectrogram shards of "
                     "DATASET (built by `speech-enhance dataset`) and export the model with the lowest validation "
                     "loss to MODEL_DIR. Rerunning an interrupted command resumes from its last finished epoch. "
                     "docs/training.md has more."))
    groups = {key: p.add_argument_group(title) for key, title in _GROUPS.items()}
    io = groups["data"]
    io.add_argument("--dataset", required=True,
                    help="dataset directory (local or gs://) with dataset_info.json: a spectrogram dataset, or a "
                         "source store (`speech-enhance dataset --kind sources`) mixed on the fly")
    io.add_argument("--model-dir", required=True,
                    help="where to write the exported model (model.keras + model.json)")
    io.add_argument("--work-dir", default=None,
                    help="checkpoints, resume backup, history.csv, loss.png, TensorBoard logs "
                         "(default: MODEL_DIR/training)")
    io.add_argument("--preset", choices=list(PRESETS), default=None,
                    help="a set of defaults for a machine; flags given explicitly override them. " + _preset_help())
    io.add_argument("--summary-json", default=None,
                    help="also write the training summary (losses, examples/s, paths) to this JSON file")
    groups["hardware"].add_argument(
        "--backend", choices=BACKENDS, default=None,
        help=f"Keras backend; the input pipeline is tf.data on tensorflow and jax, the PyTorch reader of the "
             f"shard indexes on torch (U-Net only; needs torch installed and an indexed dataset) (default "
             f"{BACKENDS[0]}, or $KERAS_BACKEND when set)")
    options.add_flags(p, TrainConfig, groups=groups, names=FLAGS)
    add_mixing_flags(p, FLAGS)
    p.set_defaults(func=run)
    return p


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """(TrainConfig, Keras backend) from the defaults, then the preset, then every flag given explicitly."""
    flags = options.given(TrainConfig, args)
    preset = getattr(args, "preset", None)
    base = TrainConfig.from_preset(preset, architecture=flags.get("architecture", "unet")) if preset else TrainConfig()
    environment = os.environ.get("KERAS_BACKEND")
    backend = getattr(args, "backend", None) or (environment if environment in BACKENDS else BACKENDS[0])
    return dataclasses.replace(base, **flags), backend


def _select_backend(backend: str) -> None:
    """Sets KERAS_BACKEND; refuses when Keras was already imported with another backend."""
    keras_module = sys.modules.get("keras")
    if keras_module is not None:
        current = keras_module.backend.backend()
        if current != backend:
            raise ValueError(f"--backend {backend}: Keras was already imported with the {current!r} backend in this "
                             f"process. Run a fresh process with --backend {backend} (or KERAS_BACKEND={backend}).")
        return
    os.environ["KERAS_BACKEND"] = backend


# The setup.py extra that installs each backend's package (`pip install -e '.[jax]'` in a checkout).
BACKEND_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _check_backend_installed(backend: str) -> None:
    """Refuses, in one line, a backend whose package is not installed (Keras would fail on import
    with a bare ModuleNotFoundError)."""
    import importlib

    try:
        importlib.import_module(backend)
    except ImportError as err:
        raise ValueError(
            f"--backend {backend} needs the {backend} package, which cannot be imported here ({type(err).__name__}: "
            f"{err}). Install it with pip install 'speech-enhance[{BACKEND_EXTRAS[backend]}]' (in a checkout: "
            f"pip install -e '.[{BACKEND_EXTRAS[backend]}]'), or choose another --backend.") from err


def run(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        config, backend = resolve_config(args)
        _select_backend(backend)
        _check_backend_installed(backend)
        from trainer.train import train  # after KERAS_BACKEND is set

        mix, augment = mixing_from_args(args, config.seed)
        summary = train(args.dataset, args.model_dir, config, work_dir=args.work_dir,
                        torch_inputs=getattr(args, "torch_inputs", None), mix=mix, augment=augment)
    except ValueError as err:
        raise ValueError(flag_terms(str(err))) from err
    except FileExistsError as err:  # a finished model in --model-dir (see --overwrite)
        raise FileExistsError(flag_terms(str(err))) from err
    if args.summary_json:
        from tfrecord_schema import paths

        text = json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str)
        paths.write_atomic(args.summary_json, text.encode("utf-8"))
    best = summary["best_val_loss"]
    print(f"model: {summary['model_dir']}  epochs: {summary['epochs_run']}  "
          f"best val_loss: {'n/a' if best is None else f'{best:.4f}'}  "
          f"examples/s: {summary['examples_per_second'] and round(summary['examples_per_second'], 1)}  "
          f"loss curve: {summary['loss_curve_png']}")
    return 0
