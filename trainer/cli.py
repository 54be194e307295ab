"""`speech-enhance train`: the command line over `trainer.train.train`.

Nothing heavy is imported at module level (`speech-enhance --help` imports this module): Keras
and TensorFlow are imported in `run()`, after `--backend` has set KERAS_BACKEND.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# Values used when neither a preset nor a flag gives one.
DEFAULTS: dict[str, Any] = {
    "target": "noise", "epochs": 20, "batch_size": 32, "learning_rate": 3e-4, "lr_schedule": "cosine",
    "warmup_fraction": 0.05, "steps_per_epoch": None, "validation_steps": None, "base_filters": 16,
    "depth": 5, "dropout": 0.5, "negative_slope": 0.3, "precision": "float32", "distribution": None,
    "tpu": None, "seed": 0, "shuffle_buffer": 2048, "early_stopping_patience": 8, "huber_delta": 1.0, "loss_weighting": "none",
    "steps_per_execution": 1, "jit_compile": None, "cycle_length": None, "resume": True,
    "backend": "tensorflow",
}

# Presets fill in values that no flag set explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # The reference U-Net on `make dataset`'s demo corpus in a few minutes on a 2-core CPU: a quick
    # check that everything works end to end, not a good denoiser.
    "cpu-demo": {"epochs": 3, "batch_size": 16, "steps_per_epoch": 20, "validation_steps": 4,
                 "learning_rate": 3e-4, "lr_schedule": "cosine", "shuffle_buffer": 512,
                 "early_stopping_patience": 0, "precision": "float32"},
    # One modern GPU (A100/H100/L4): big batches in bfloat16, XLA, full passes over the data.
    "gpu": {"epochs": 40, "batch_size": 256, "learning_rate": 5e-4, "lr_schedule": "cosine",
            "precision": "mixed_bfloat16", "shuffle_buffer": 8192, "early_stopping_patience": 8,
            "jit_compile": True},
    # A TPU (Colab, TPU VM): global batch 1024 over the cores, several steps per host call.
    "tpu": {"epochs": 40, "batch_size": 1024, "learning_rate": 5e-4, "lr_schedule": "cosine",
            "precision": "mixed_bfloat16", "shuffle_buffer": 16384, "early_stopping_patience": 8,
            "distribution": "tpu", "steps_per_execution": 32},
}

BACKENDS = ("tensorflow", "jax")
_TARGETS = ("noise", "mask")
_LR_SCHEDULES = ("cosine", "plateau", "constant")
_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_DISTRIBUTIONS = ("none", "mirrored", "tpu", "jax-data-parallel")


def _preset_help() -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                     for name, values in PRESETS.items())


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the `train` subcommand to the `speech-enhance` parser."""
    p = subparsers.add_parser(
        "train", help="train the U-Net denoiser on a dataset directory",
        description=("Train the U-Net on the spectrogram shards of DATASET (built by `speech-enhance dataset`) "
                     "and export the model with the lowest validation loss to MODEL_DIR. Rerunning an "
                     "interrupted command resumes from its last finished epoch. docs/training.md has more."))
    io = p.add_argument_group("data and outputs")
    io.add_argument("--dataset", required=True, help="dataset directory (local or gs://) with dataset_info.json")
    io.add_argument("--model-dir", required=True,
                    help="where to write the exported model (model.keras + model.json)")
    io.add_argument("--work-dir", default=None,
                    help="checkpoints, resume backup, history.csv, loss.png, TensorBoard logs "
                         "(default: MODEL_DIR/training)")
    io.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="a set of defaults; flags given explicitly override them. " + _preset_help())
    io.add_argument("--target", choices=_TARGETS, default=None,
                    help=f"what the model predicts: the noise in dB ('noise') or a magnitude mask ('mask') "
                         f"(default {DEFAULTS['target']})")
    io.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                    help="continue an interrupted run from its backup in the work dir; --no-resume starts over "
                         "(default: resume)")
    io.add_argument("--summary-json", default=None,
                    help="also write the training summary (losses, examples/s, paths) to this JSON file")

    fit = p.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=int, default=None, help=f"epochs to train (default {DEFAULTS['epochs']})")
    fit.add_argument("--batch-size", type=int, default=None,
                     help=f"global batch size, split across replicas; at most the number of training examples "
                          f"(default {DEFAULTS['batch_size']})")
    fit.add_argument("--learning-rate", type=float, default=None,
                     help=f"peak Adam learning rate (default {DEFAULTS['learning_rate']})")
    fit.add_argument("--lr-schedule", choices=_LR_SCHEDULES, default=None,
                     help="cosine: warm-up then cosine decay to 1%% of the peak; plateau: halve when the "
                          "validation loss stalls for 2 epochs; constant (default cosine)")
    fit.add_argument("--warmup-fraction", type=float, default=None,
                     help=f"share of all steps spent warming up with the cosine schedule "
                          f"(default {DEFAULTS['warmup_fraction']})")
    fit.add_argument("--steps-per-epoch", type=int, default=None,
                     help="batches per epoch (default: one pass over the training split)")
    fit.add_argument("--validation-steps", type=int, default=None,
                     help="validation batches per epoch, the same ones each epoch (default: the whole split)")
    fit.add_argument("--early-stopping-patience", type=int, default=None,
                     help=f"stop after this many epochs without a better validation loss; 0 never stops "
                          f"(default {DEFAULTS['early_stopping_patience']})")
    fit.add_argument("--huber-delta", type=float, default=None,
                     help=f"delta of the Huber loss (default {DEFAULTS['huber_delta']})")
    fit.add_argument("--loss-weighting", choices=("none", "magnitude"), default=None,
                     help="weigh the loss per time-frequency bin: 'none' (all alike, the reference) or "
                          "'magnitude' (by the noisy magnitude, so loud bins count most) "
                          f"(default {DEFAULTS['loss_weighting']})")
    fit.add_argument("--seed", type=int, default=None,
                     help=f"seed of the weights, dropout and shuffling (default {DEFAULTS['seed']})")
    fit.add_argument("--shuffle-buffer", type=int, default=None,
                     help=f"examples held in the shuffle buffer (default {DEFAULTS['shuffle_buffer']})")
    fit.add_argument("--cycle-length", type=int, default=None,
                     help="shards read in parallel (default: min(16, number of shards))")

    arch = p.add_argument_group("model")
    arch.add_argument("--base-filters", type=int, default=None,
                      help=f"filters of the first U-Net level, doubled per level (default {DEFAULTS['base_filters']})")
    arch.add_argument("--depth", type=int, default=None,
                      help=f"U-Net levels; frames and bins must be multiples of 2**(depth-1) "
                           f"(default {DEFAULTS['depth']})")
    arch.add_argument("--dropout", type=float, default=None,
                      help=f"dropout rate after the two deepest levels (default {DEFAULTS['dropout']})")
    arch.add_argument("--negative-slope", type=float, default=None,
                      help=f"LeakyReLU slope for negative inputs (default {DEFAULTS['negative_slope']})")

    hw = p.add_argument_group("hardware")
    hw.add_argument("--backend", choices=BACKENDS, default=None,
                    help="Keras backend; the input pipeline is tf.data either way (default tensorflow, or "
                         "$KERAS_BACKEND when set)")
    hw.add_argument("--precision", choices=_PRECISIONS, default=None,
                    help="float32, or mixed precision: mixed_bfloat16 (TPU, Ampere+ GPUs) or mixed_float16 "
                         "(older GPUs, loss-scaled); the exported model is float32 (default float32)")
    hw.add_argument("--distribution", choices=_DISTRIBUTIONS, default=None,
                    help="none; mirrored: all local GPUs (TensorFlow); tpu: TPUStrategy (TensorFlow); "
                         "jax-data-parallel: all local devices (JAX) (default none)")
    hw.add_argument("--tpu", default=None,
                    help="with --distribution tpu: TPU name or grpc:// address, or 'local' on a TPU VM "
                         "(default: auto-detect, e.g. on Colab)")
    hw.add_argument("--steps-per-execution", type=int, default=None,
                    help=f"batches per compiled call; raise on TPUs (default {DEFAULTS['steps_per_execution']})")
    hw.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                    help="compile the train step with XLA (default: Keras decides)")
    p.set_defaults(func=run)
    return p


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merges DEFAULTS, then the preset, then every flag given explicitly (not None)."""
    options = dict(DEFAULTS)
    if os.environ.get("KERAS_BACKEND") in BACKENDS:
        options["backend"] = os.environ["KERAS_BACKEND"]
    if getattr(args, "preset", None):
        options.update(PRESETS[args.preset])
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    if options["distribution"] == "none":
        options["distribution"] = None
    if options["jit_compile"] is None:
        options["jit_compile"] = "auto"
    return options


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


def run(args: argparse.Namespace, extra: list[str]) -> int:
    options = resolve_options(args)
    _select_backend(options.pop("backend"))
    from trainer.train import train  # after KERAS_BACKEND is set

    summary = train(args.dataset, args.model_dir, work_dir=args.work_dir, **options)
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
