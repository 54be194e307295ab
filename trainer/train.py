"""Training the U-Net on a dataset directory, and exporting the best model as a model directory.

    summary = train("data/demo", "models/demo", epochs=4, batch_size=16)
    summary = train("data/demo", "models/demo", TrainConfig.from_preset("gpu", epochs=10))

The options, their defaults and their checks live in `trainer.config.TrainConfig`.

Keras picks its backend when it is first imported: set KERAS_BACKEND ("tensorflow", "jax" or
"torch") before importing this module (the `speech-enhance train --backend` flag does so;
`trainer.backend` sets the backend up). The input pipeline is tf.data on the tensorflow and jax
backends; on torch it is what `torch_inputs` makes: the PyTorch reader of the shards
(`readers.torch_training.training_loaders`, through the shard indexes; the U-Net family only).

Outputs:
    MODEL_DIR/model.keras, model.json      the best model (lowest validation loss), always float32
    WORK_DIR (default MODEL_DIR/training; `trainer.work_dir` names its files and resumes runs):
        history.csv        one row per epoch (loss, val_loss, mae, learning_rate...; `trainer.history`)
        loss.png           the loss curves, redrawn after every epoch
        tensorboard/       TensorBoard logs, when the tensorboard package is installed
        checkpoints/best.weights.h5   the best weights so far
        backup/            the last finished epoch (weights, optimizer, epoch), or from a source store
                           the last backed-up step (`StepBackup`, every backup_steps steps); deleted
                           when training ends; a rerun of the same command resumes from it
        run.json           the options of the run (`TrainConfig.to_dict()`, steps resolved), the paths and
                           the dataset's fingerprint; checked when resuming

A model directory that already holds a finished model (model.json and no backup) is refused unless
`overwrite=True`; an interrupted run resumes without it.

`dataset_dir` may be a source store: its examples are mixed on the fly (`trainer.mixed_input`),
the model's STFT follows the store's rate, and a resumed run continues at the exact step.

Before training, every shard's size is compared with dataset_info.json; a corrupt record found
while training is traced to its shard. Both errors name the shard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.dataset import Dataset, ShardedStore
from tfrecord_schema.dataset_info import DatasetInfo
from tfrecord_schema.sources import SourceStore, open_store
from trainer import input_pipeline, mixed_input
from trainer.backend import check_backend, distribution, dtype_policy, keep_tensorflow_off_accelerators
from trainer.callbacks import EpochStats, StepBackup, training_callbacks
from trainer.config import TrainConfig
from trainer.families import Family, get_family
from trainer.model_dir import save_model_dir
from trainer.plots import plot_history
from trainer.work_dir import WorkDir, check_finished_model, prepare_work_dir

logger = logging.getLogger(__name__)

_MIXING_KEYWORDS = ("snr", "level", "gain", "loudness")

# (dataset, config, architecture, validation_split, validation_steps) -> (training batches,
# validation batches or None): the input pipeline on the torch backend (`readers.torch_training`).
TorchInputs = Callable[..., tuple[Any, Any]]


def _learning_rate(schedule: str, learning_rate: float, total_steps: int, warmup_fraction: float):
    if schedule != "cosine":
        return learning_rate
    warmup = int(round(warmup_fraction * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.1 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup), alpha=0.01,
        warmup_target=learning_rate if warmup else None, warmup_steps=warmup)


def _training_data_summary(dataset: Dataset, train_split: str, validation_split: str | None) -> dict[str, Any]:
    arguments = dataset.info.arguments or {}
    return {
        "dataset": dataset.directory,
        "fingerprint": dataset.fingerprint(),
        "schema_version": dataset.info.schema_version,
        "compression": dataset.compression,
        "seed": dataset.info.seed,
        "num_examples": {name: int(split.num_examples or 0) for name, split in dataset.splits.items()},
        "num_bytes": {name: int(split.num_bytes or 0) for name, split in dataset.splits.items()},
        "train_split": train_split,
        "validation_split": validation_split,
        "mixing": {k: v for k, v in arguments.items() if any(word in k.lower() for word in _MIXING_KEYWORDS)},
        "arguments": arguments,
    }


def _summary(options: dict[str, Any], history: dict[str, list[float]], monitor: str, rates: list[float], *,
             replicas: int, loss: str, parameters: int, initial_epoch: int, exported: str, duration: float,
             work: WorkDir) -> dict[str, Any]:
    """model.json's "training" block: the options as run, then what the run did."""
    monitored = list(history.get(monitor, []))
    finite = [i for i, v in enumerate(monitored) if math.isfinite(v)]
    best_index = min(finite, key=monitored.__getitem__) if finite else None
    return {
        **options,
        "epochs_requested": options["epochs"],
        "epochs_run": len(history.get("loss", [])),
        "initial_epoch": initial_epoch,
        "stopped_early": len(history.get("loss", [])) < options["epochs"],
        "replicas": replicas,
        "loss_description": loss,
        "parameters": parameters,
        "optimizer": "adam",
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "monitor": monitor,
        "exported_weights": exported,
        "best_epoch": best_index + 1 if best_index is not None else None,  # 1-based
        "best_val_loss": monitored[best_index] if best_index is not None and monitor.startswith("val_") else None,
        "final_loss": history["loss"][-1] if history.get("loss") else None,
        "final_val_loss": history["val_loss"][-1] if history.get("val_loss") else None,
        # The first epoch includes compilation; later epochs show the steady rate.
        "examples_per_second": statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None,
        "duration_seconds": round(duration, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "work_dir": work.path,
        "history_csv": work.history.path,
        "loss_curve_png": work.loss_png,
    }


@dataclasses.dataclass
class _Run:
    """What a run reads and how much: the dataset, the model family, the splits and the steps."""
    dataset: ShardedStore  # a spectrogram Dataset or a SourceStore (then `mixed` is set)
    info: DatasetInfo  # what the model families read
    spectrogram: SpectrogramConfig
    family: Family
    train_split: str
    validation_split: str | None  # None: no validation examples, the training loss is monitored
    n_train: int
    used_splits: list[str]
    steps_per_epoch: int
    validation_steps: int | None
    drop_remainder: bool  # for validation batches: what a TPU or a JAX data-parallel run needs
    monitor: str
    # The options as run: what run.json records (resume checks) and model.json's "training" block holds.
    options: dict[str, Any]
    mixed: mixed_input.MixedPlan | None = None  # a source store's mixing and steps


def _resolved_config(config: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    if config is not None and not isinstance(config, TrainConfig):
        raise ValueError(f"train(): config must be a TrainConfig (or None). Received: config={config!r}. "
                         "Build one with TrainConfig(...) or TrainConfig.from_dict(...).")
    unknown = sorted(set(overrides) - set(TrainConfig().to_dict()))
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments {unknown}: not TrainConfig fields. "
                        f"Known: {sorted(TrainConfig().to_dict())}")
    return dataclasses.replace(config or TrainConfig(), **overrides)


def _plan_sources(store: SourceStore, config: TrainConfig, mix: MixOptions | None,
                  augment: AugmentOptions | None) -> _Run:
    """`_plan` for a source store (`trainer.mixed_input.plan_sources`)."""
    family = get_family(config.architecture)
    plan = mixed_input.plan_sources(store, config, mix, augment)
    family.build_training_model(plan.spectrogram, config, plan.info)  # checks the architecture against the data
    used_splits = [plan.train_split] + ([plan.validation_split] if plan.validation_split else [])
    input_pipeline.refuse_damaged_shards(store, used_splits)
    options = dict(config.to_dict(), steps_per_epoch=plan.steps_per_epoch, validation_steps=plan.validation_steps,
                   **plan.options())
    monitor = f"val_{family.monitor}" if plan.validation_split is not None else family.monitor
    return _Run(store, plan.info, plan.spectrogram, family, plan.train_split, plan.validation_split,
                plan.epoch_plan.examples_per_epoch, used_splits, plan.steps_per_epoch, plan.validation_steps, True,
                monitor, options, plan)


def _plan(dataset_dir: str, config: TrainConfig, mix: MixOptions | None = None,
          augment: AugmentOptions | None = None) -> _Run:
    """Reads the dataset's description and checks it against `config`: the splits, the batch size, the
    shard sizes and the architecture; resolves the steps per epoch. A source store is mixed on the fly
    (`mix`, `augment`); a spectrogram dataset refuses them and the model STFT options."""
    if not dataset_dir:
        raise ValueError(f"dataset_dir must be a non-empty path or gs:// URL. Received: dataset_dir={dataset_dir!r}")
    dataset = open_store(dataset_dir)
    if isinstance(dataset, SourceStore):
        return _plan_sources(dataset, config, mix, augment)
    mixed_input.refuse_mixing_options(dataset_dir, config, mix, augment)
    info, spectrogram = dataset.info, dataset.config
    family = get_family(config.architecture)
    family.build_training_model(spectrogram, config, info)  # checks the architecture against the data early
    drop_remainder = config.distribution in ("tpu", "jax-data-parallel")

    train_split, validation_split, batch_size = config.train_split, config.validation_split, config.batch_size
    if validation_split is not None and dataset.num_examples(validation_split) == 0:
        logger.warning("the dataset has no %r examples: monitoring the training loss instead", validation_split)
        validation_split = None
    n_train = dataset.num_examples(train_split)
    if n_train == 0:
        raise ValueError(f"train(): the dataset in {dataset_dir!r} has no {train_split!r} examples. "
                         f"Splits: { {s: dataset.num_examples(s) for s in dataset.splits} }")
    if batch_size > n_train:
        # The repeated, shuffled split would fill each batch with copies of the same examples.
        raise ValueError(
            f"train(): batch_size must be at most the {n_train} examples of the {train_split!r} split of "
            f"{dataset_dir!r}, or every batch repeats examples (and a large one runs out of memory). "
            f"Received: batch_size={batch_size}. Use --batch-size {n_train} or less, or a bigger dataset.")
    used_splits = [train_split] + ([validation_split] if validation_split is not None else [])
    input_pipeline.refuse_damaged_shards(dataset, used_splits)
    steps_per_epoch, validation_steps = config.steps_per_epoch, config.validation_steps
    if steps_per_epoch is None:
        steps_per_epoch = input_pipeline.steps_per_epoch(dataset, train_split, batch_size, drop_remainder=False)
    if validation_split is not None:
        full = input_pipeline.steps_per_epoch(dataset, validation_split, batch_size, drop_remainder)
        validation_steps = min(validation_steps or full, full)
    options = dict(config.to_dict(), steps_per_epoch=steps_per_epoch, validation_steps=validation_steps)
    monitor = f"val_{family.monitor}" if validation_split is not None else family.monitor
    return _Run(dataset, info, spectrogram, family, train_split, validation_split, n_train, used_splits,
                steps_per_epoch, validation_steps, drop_remainder, monitor, options)


# (training batches, validation batches or None, initial epoch, epochs, steps per epoch): one `fit`.
_Stage = tuple[Any, Any, int, int, int]


def _mixed_stages(run: _Run, config: TrainConfig, first_step: int, torch_inputs: TorchInputs | None) -> list[_Stage]:
    """The fits of a source store's run from global step `first_step`: the rest of an interrupted epoch
    (validated, logged and scheduled as the whole epoch would be), then the remaining epochs. On the
    torch backend the batches come from `torch_inputs` (the PyTorch mixing reader), else from tf.data."""
    plan, family = run.mixed, run.family
    if keras.backend.backend() == "torch":
        def batches(first: int, end: int):
            return torch_inputs(run.dataset, config, family.name, run.validation_split, run.validation_steps,
                                spectrogram=plan.spectrogram, mix=plan.mix, augment=plan.augment, first_step=first,
                                steps=end - first)
    else:
        keys, model_io = family.record_keys(config), family.model_io(run.spectrogram, config, run.info)
        val_ds = mixed_input.validation_batches(plan, keys, model_io)
        processes = mixed_input.mixing_processes(config)

        def batches(first: int, end: int):
            return mixed_input.training_batches(plan, keys, model_io, first_step=first, end_step=end,
                                                processes=processes), val_ds
    epoch, done = divmod(first_step, run.steps_per_epoch)
    stages = []
    if done:
        end = (epoch + 1) * run.steps_per_epoch
        stages.append((*batches(first_step, end), epoch, epoch + 1, run.steps_per_epoch - done))
        first_step, epoch = end, epoch + 1
    if epoch < config.epochs:
        stages.append((*batches(first_step, plan.total_steps(config.epochs)), epoch, config.epochs,
                       run.steps_per_epoch))
    return stages


def _tf_data(run: _Run, config: TrainConfig):
    """(training, validation or None) tf.data datasets of a spectrogram dataset: the input pipeline on
    tensorflow and jax."""
    dataset, family = run.dataset, run.family
    data_args = dict(batch_size=config.batch_size, cycle_length=config.cycle_length, keys=family.record_keys(config),
                     model_io=family.model_io(run.spectrogram, config, dataset.info))
    train_ds = input_pipeline.make_dataset(
        dataset, run.train_split, shuffle=True, shuffle_buffer=config.shuffle_buffer, seed=config.seed,
        repeat=True, drop_remainder=True, deterministic=config.deterministic, **data_args)
    val_ds = None
    if run.validation_split is not None:
        val_ds = input_pipeline.make_dataset(dataset, run.validation_split, shuffle=False, deterministic=True,
                                             drop_remainder=run.drop_remainder, **data_args).take(run.validation_steps)
    return train_ds, val_ds


def _fit(run: _Run, config: TrainConfig, stages: list[_Stage], callback_list: list[keras.callbacks.Callback],
         verbose: int | str, backup_weights: str | None = None) -> tuple[list, dict[str, list], int]:
    """Builds, compiles and fits the training model, starting from `backup_weights` (weights and
    optimizer) when given, one `fit` per stage; returns (its last weights, the History's logs, replicas)."""
    spectrogram, family = run.spectrogram, run.family
    with dtype_policy(config.precision), distribution(config.distribution, config.tpu, config.batch_size) as replicas:
        model = family.build_training_model(spectrogram, config, run.info)
        schedule = _learning_rate(config.lr_schedule, config.learning_rate, config.epochs * run.steps_per_epoch,
                                  config.warmup_fraction)
        model.compile(optimizer=keras.optimizers.Adam(schedule, **family.optimizer_args),
                      **family.compile_args(config, spectrogram), steps_per_execution=config.steps_per_execution,
                      jit_compile=config.jit_compile)
        if backup_weights is not None:
            model.optimizer.build(model.trainable_variables)  # so that its variables are loaded too
            model.load_weights(backup_weights)
        logs: dict[str, list] = {}
        for train_ds, val_ds, initial_epoch, epochs, steps in stages:
            try:
                fit_history = model.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch, epochs=epochs,
                                        steps_per_epoch=steps, callbacks=callback_list, verbose=verbose, shuffle=False)
            except tf.errors.DataLossError as err:  # "corrupted record at N", naming no file: find the shard
                if isinstance(run.dataset, Dataset):
                    input_pipeline.raise_for_corrupt_shards(run.dataset, run.used_splits, err)
                raise
            for key, values in fit_history.history.items():
                logs.setdefault(key, []).extend(values)
            if model.stop_training:  # early stopping in the rest of an interrupted epoch
                break
        return model.get_weights(), logs, replicas


def _inference_model(run: _Run, config: TrainConfig, work: WorkDir, trained_weights: list) -> tuple[keras.Model, str]:
    """(the model to export, "best" or "last": which weights it holds), float32 whatever the training
    precision: the predictor runs anywhere."""
    with dtype_policy("float32"):
        trained = run.family.build_training_model(run.spectrogram, config, run.info)
        if paths.isfile(work.best_weights):
            trained.load_weights(work.best_weights)
            exported = "best"
        else:
            trained.set_weights(trained_weights)
            exported = "last"
        return run.family.inference_model(trained, run.spectrogram, config), exported


def _inputs(run: _Run, config: TrainConfig, work: WorkDir, initial_epoch: int,
            torch_inputs: TorchInputs | None) -> tuple[list[_Stage], StepBackup | None, str | None]:
    """(the fits, the step backup or None for Keras' epoch backup, the backed-up weights to resume from
    or None)."""
    if run.mixed is None:
        if keras.backend.backend() == "torch":
            train_ds, val_ds = torch_inputs(run.dataset, config, run.family.name, run.validation_split,
                                            run.validation_steps)
        else:
            train_ds, val_ds = _tf_data(run, config)
        return [(train_ds, val_ds, 0, config.epochs, run.steps_per_epoch)], None, None
    backup = work.backup_step()
    first_step, weights = backup if backup else (initial_epoch * run.steps_per_epoch, None)
    if weights is not None:
        logger.info("resuming at step %d (epoch %d, batch %d) from %s", first_step,
                    *divmod(first_step, run.steps_per_epoch), weights)
    step_backup = StepBackup(work, config.backup_steps, run.steps_per_epoch, first_step)
    return _mixed_stages(run, config, first_step, torch_inputs), step_backup, weights


def train(dataset_dir: str | os.PathLike, model_dir: str | os.PathLike, config: TrainConfig | None = None, *,
          work_dir: str | os.PathLike | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
          verbose: int | str = "auto", torch_inputs: TorchInputs | None = None, mix: MixOptions | None = None,
          augment: AugmentOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Trains the model `config` describes on `dataset_dir` and writes the best one to `model_dir`.

    Args:
        dataset_dir: dataset directory (local or gs://) with dataset_info.json and shards: a spectrogram
            dataset, or a source store, whose examples are mixed on the fly (`trainer.mixed_input`).
        model_dir: directory (local or gs://) for the exported model (model.keras + model.json).
        config: every training option (`trainer.config.TrainConfig`; default: its defaults).
        work_dir: checkpoints, backup, logs, history.csv and loss.png (default MODEL_DIR/training;
            local or gs://).
        callbacks: extra Keras callbacks.
        verbose: Keras progress output: 0, 1 (bar), 2 (a line per epoch) or "auto" (bar on a terminal).
        torch_inputs: on the torch backend (and needed there), what makes the batches:
            `readers.torch_training.training_loaders`; unused on tensorflow and jax (tf.data).
        mix, augment: a source store's mixing (default `MixOptions()`, whose seed is replaced by
            `config.seed`) and augmentation (default none); refused with a spectrogram dataset.
        **overrides: TrainConfig fields replacing those of `config`, e.g. `epochs=4, batch_size=16`.

    Returns a summary dict (also stored under "training" in model.json): the options
    (`TrainConfig.to_dict()`, with steps_per_epoch and validation_steps resolved), epochs run,
    initial epoch, best/final losses, examples/s, paths of the outputs.
    """
    config = _resolved_config(config, overrides)
    check_backend(config.distribution)
    on_torch = keras.backend.backend() == "torch"
    if on_torch and torch_inputs is None:
        raise ValueError("train(): on the torch backend the batches come from the PyTorch reader of the shards. "
                         "Pass torch_inputs=readers.torch_training.training_loaders (as `speech-enhance train "
                         "--backend torch` does), or use the tensorflow or jax backend.")
    dataset_dir, model_dir = os.fspath(dataset_dir), os.fspath(model_dir)
    work = WorkDir(os.fspath(work_dir) if work_dir is not None else paths.join(model_dir, "training"))
    check_finished_model(model_dir, work, config.overwrite)
    keep_tensorflow_off_accelerators()
    run = _plan(dataset_dir, config, mix, augment)
    dataset, batch_size = run.dataset, config.batch_size

    run_args = {**run.options, "dataset_dir": dataset_dir, "model_dir": model_dir, "work_dir": work.path,
                "dataset_fingerprint": dataset.fingerprint()}
    initial_epoch, best_so_far = prepare_work_dir(work, run_args, config.resume, run.monitor)
    paths.makedirs(work.checkpoints)

    keras.utils.set_random_seed(config.seed)
    logger.info("training on %s: %d train examples, %s validation examples, %d steps/epoch x %d epochs, "
                "batch %d, backend %s, precision %s, distribution %s", dataset_dir, run.n_train,
                (run.validation_steps or 0) * batch_size if run.mixed else
                dataset.num_examples(run.validation_split) if run.validation_split else 0,
                run.steps_per_epoch, config.epochs, batch_size, keras.backend.backend(), config.precision,
                config.distribution or "none")
    stages, step_backup, backup_weights = _inputs(run, config, work, initial_epoch, torch_inputs)

    title = f"{run.family.describe(config)} on {dataset_dir}"
    stats = EpochStats(batch_size)
    callback_list = [stats, *training_callbacks(config, work, run.monitor, best_so_far, initial_epoch > 0, title,
                                                step_backup), *callbacks]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.time()
    trained_weights, fit_logs, replicas = _fit(run, config, stages, callback_list, verbose, backup_weights)
    duration = time.time() - started
    if step_backup is not None:  # Keras' BackupAndRestore deletes its own when training ends
        paths.delete_tree(work.backup)
    export, exported = _inference_model(run, config, work, trained_weights)

    history = work.history.columns() if work.history.exists() else fit_logs
    summary = _summary(run.options, history, run.monitor, stats.examples_per_second, replicas=replicas,
                       loss=run.family.loss_description(config), parameters=int(export.count_params()),
                       initial_epoch=stats.first_epoch if stats.first_epoch is not None else initial_epoch,
                       exported=exported, duration=duration, work=work)
    plot_history(history, work.loss_png, title)
    save_model_dir(export, model_dir, config=run.spectrogram, target=run.family.target(config),
                   heads=run.family.heads, model_args=config.model_args(),
                   training_data=_training_data_summary(dataset, run.train_split, run.validation_split)
                   if run.mixed is None else mixed_input.training_data_summary(run.mixed, dataset_dir),
                   training=summary, streaming=run.family.streaming(export, run.spectrogram, config))
    best_epoch = summary["best_epoch"]
    logger.info("saved the %s model (epoch %s, %s %s) to %s; %s examples/s", exported, best_epoch, run.monitor,
                history[run.monitor][best_epoch - 1] if best_epoch else None, model_dir,
                None if summary["examples_per_second"] is None else round(summary["examples_per_second"], 1))
    return {"model_dir": model_dir, **summary, "history": history}
