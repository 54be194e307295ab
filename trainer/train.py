"""Training the U-Net on a dataset directory, and exporting the best model as a model directory.

    summary = train("data/demo", "models/demo", epochs=4, batch_size=16)
    summary = train("data/demo", "models/demo", TrainConfig.from_preset("gpu", epochs=10))

The options, their defaults and their checks live in `trainer.config.TrainConfig`.

Keras picks its backend when it is first imported: set KERAS_BACKEND ("tensorflow", "jax" or
"torch") before importing this module (the `speech-enhance train --backend` flag does so). The
input pipeline is tf.data on the tensorflow and jax backends; on torch it is the PyTorch reader of
the shards (`readers.torch_data`, through the shard indexes; the U-Net family only).

Outputs:
    MODEL_DIR/model.keras, model.json      the best model (lowest validation loss), always float32
    WORK_DIR (default MODEL_DIR/training):
        history.csv        one row per epoch (loss, val_loss, mae, learning_rate...)
        loss.png           the loss curves, redrawn after every epoch
        tensorboard/       TensorBoard logs, when the tensorboard package is installed
        checkpoints/best.weights.h5   the best weights so far
        backup/            the last finished epoch (weights, optimizer, epoch); deleted when
                           training ends; a rerun of the same command resumes from it
        run.json           the options of the run (`TrainConfig.to_dict()`, steps resolved), the paths and
                           the dataset's fingerprint; checked when resuming

A model directory that already holds a finished model (model.json and no backup) is refused unless
`overwrite=True`; an interrupted run resumes without it.

Before training, every shard's size is compared with dataset_info.json; a corrupt record found
while training is traced to its shard. Both errors name the shard.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import json
import logging
import math
import os
import statistics
import sys
import time
from typing import Any, Iterator, Sequence

import keras
import tensorflow as tf

from tfrecord_schema import paths
from tfrecord_schema.dataset import Dataset
from trainer import input_pipeline
from trainer.config import RESUME_KEYS, TrainConfig
from trainer.families import get_family
from trainer.model_dir import INFO_FILE, save_model_dir
from trainer.plots import plot_history, read_history_csv

logger = logging.getLogger(__name__)

_MIXING_KEYWORDS = ("snr", "level", "gain", "loudness")
_BACKEND_OF = {"mirrored": "tensorflow", "tpu": "tensorflow", "jax-data-parallel": "jax"}


def _check_backend(distribution: str | None) -> None:
    backend = keras.backend.backend()
    wanted = _BACKEND_OF.get(distribution)
    if wanted and backend != wanted:
        raise ValueError(
            f"train(): distribution={distribution!r} needs the {wanted} backend, but Keras runs on "
            f"{backend!r}. Set KERAS_BACKEND={wanted} before Keras is imported (`speech-enhance train "
            f"--backend {wanted}`).")


# --- distribution -----------------------------------------------------------------------------

@contextlib.contextmanager
def _distribution(kind: str | None, tpu: str | None, batch_size: int) -> Iterator[int]:
    """Enters the distribution scope for building and compiling the model; yields the replica count."""
    if kind is None:
        yield 1
        return
    if kind == "jax-data-parallel":
        devices = keras.distribution.list_devices()
        if batch_size % len(devices):
            raise ValueError(f"train(): batch_size must be a multiple of the {len(devices)} devices for "
                             f"distribution='jax-data-parallel'. Received: batch_size={batch_size}")
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
        return
    if kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        # None: Colab or $TPU_NAME; "local": the TPU VM this runs on; else a TPU name or grpc:// address.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"train(): batch_size (global) must be a multiple of the {strategy.num_replicas_in_sync} "
                         f"replicas. Received: batch_size={batch_size}")
    with strategy.scope():
        yield strategy.num_replicas_in_sync


def _keep_tensorflow_off_accelerators() -> None:
    """On JAX, TensorFlow only feeds batches (on torch, not even that): stop it from taking GPU
    memory that the backend needs."""
    if keras.backend.backend() not in ("jax", "torch"):
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as err:  # TensorFlow already initialised its devices in this process
        logger.warning("could not hide the GPUs from TensorFlow (%s); it may hold GPU memory JAX needs", err)


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --- callbacks --------------------------------------------------------------------------------

class _EpochStats(keras.callbacks.Callback):
    """Logs the learning rate and measures training examples/s per epoch (first batch excluded).

    Placed before CSVLogger so the learning rate lands in history.csv.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.first_epoch: int | None = None
        self.examples_per_second: list[float] = []
        self._start: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        self._start = self._last = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._start is None:
            self._start = (batch, now)
        self._last = (batch, now)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self._start and self._last and self._last[0] > self._start[0]:
            steps = self._last[0] - self._start[0]
            rate = steps * self.batch_size / max(self._last[1] - self._start[1], 1e-9)
            self.examples_per_second.append(rate)
            if logs is not None:
                logs["examples_per_second"] = rate


class _HistoryCsv(keras.callbacks.Callback):
    """history.csv as Keras' CSVLogger writes it (epoch, then the logs' keys sorted), rewritten whole
    through the path layer after every epoch: CSVLogger's open file fails on gs:// in Keras 3."""

    def __init__(self, path: str, append: bool) -> None:
        super().__init__()
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if append and paths.isfile(path):
            self.rows = list(csv.DictReader(io.StringIO(paths.read_text(path))))

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: logs[k] for k in sorted(logs or {})}})
        fields = ["epoch"] + sorted({k for row in self.rows for k in row if k != "epoch"})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        paths.write_atomic(self.path, out.getvalue().encode("utf-8"))


class _LossCurve(keras.callbacks.Callback):
    """Redraws loss.png from history.csv after every epoch (so a long run can be watched)."""

    def __init__(self, csv_path: str, png_path: str, title: str) -> None:
        super().__init__()
        self.csv_path, self.png_path, self.title = csv_path, png_path, title

    def on_epoch_end(self, epoch, logs=None):
        try:
            plot_history(read_history_csv(self.csv_path), self.png_path, self.title)
        except (OSError, ValueError) as err:  # a plot must never stop training
            logger.warning("could not draw %s: %s", self.png_path, err)


# --- resuming ---------------------------------------------------------------------------------

_join = paths.join


def _read_json(path: str) -> dict[str, Any] | None:
    if not paths.isfile(path):
        return None
    return json.loads(paths.read_text(path))


def _write_json(path: str, value: dict[str, Any]) -> None:
    paths.write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


def _keep_history_before(csv_path: str, epoch: int) -> list[dict[str, str]]:
    """Drops history rows of epochs >= `epoch` (written after the last backup); returns the kept rows."""
    if not paths.isfile(csv_path):
        return []
    reader = csv.DictReader(io.StringIO(paths.read_text(csv_path)))
    fields = reader.fieldnames or []
    rows = [row for row in reader if int(float(row.get("epoch", "0"))) < epoch]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    paths.write_atomic(csv_path, out.getvalue().encode("utf-8"))
    return rows


def _check_same_dataset(work_dir: str, previous: dict[str, Any], run_args: dict[str, Any]) -> None:
    """Refuses to resume a run on another dataset than the one it started on (see `Dataset.fingerprint`)."""
    old, new = previous.get("dataset_fingerprint"), run_args["dataset_fingerprint"]
    old_dir, new_dir = previous.get("dataset_dir"), run_args["dataset_dir"]
    if old is None:  # run.json written before fingerprints were recorded
        logger.warning("%s does not record which dataset its run started on; resuming on %s unchecked",
                       work_dir, new_dir)
        return
    if old != new:
        raise ValueError(
            f"{work_dir} holds the backup of an interrupted run on another dataset: it started on {old_dir!r} "
            f"(fingerprint {old}), and this run reads {new_dir!r} (fingerprint {new}); resuming would train one "
            f"model on two datasets. Pass dataset_dir={old_dir!r} (--dataset) to resume that run, resume=False "
            "(--no-resume) to start over on this dataset, or choose another work directory (--work-dir).")
    if old_dir != new_dir:
        logger.info("resuming on %s, a copy of %s (same dataset_info.json fingerprint %s)", new_dir, old_dir, new)


def _check_finished_model(model_dir: str, work_dir: str, overwrite: bool) -> None:
    """Refuses to train over a finished model in `model_dir` unless `overwrite`.

    A model directory with model.json and no backup in `work_dir` holds the result of a finished run:
    retraining would silently replace it (perhaps with a worse model). A backup means a run that
    may replace it was already started here and interrupted: resuming it stays automatic.
    """
    info_path = _join(model_dir, INFO_FILE)
    if not paths.isfile(info_path):
        return
    if paths.isfile(_join(work_dir, "backup", "training_metadata.json")):
        return
    if overwrite:
        logger.warning("overwrite=True: the finished model in %s will be replaced when this run ends", model_dir)
        return
    try:
        training = json.loads(paths.read_text(info_path)).get("training") or {}
    except (ValueError, OSError):  # unreadable model.json: still a model someone may want to keep
        training = {}
    known = []
    if training.get("finished"):
        known.append(f"finished {training['finished']}")
    if training.get("epochs_run") is not None:
        known.append(f"{training['epochs_run']} epochs")
    if training.get("best_val_loss") is not None:
        known.append(f"best val_loss {training['best_val_loss']:.4g}")
    described = f" ({', '.join(known)})" if known else ""
    raise FileExistsError(
        f"model_dir={model_dir!r} already holds a finished model{described}; training again would replace it. "
        "Pass overwrite=True to train a new model in its place, or choose another model_dir.")


def _prepare_work_dir(work_dir: str, run_args: dict[str, Any], resume: bool,
                      monitor: str = "val_loss") -> tuple[int, float | None]:
    """Returns (epoch to resume from, best value of `monitor` so far) and records this run's arguments."""
    backup_dir = _join(work_dir, "backup")
    history_csv = _join(work_dir, "history.csv")
    paths.makedirs(work_dir)
    state = _read_json(_join(backup_dir, "training_metadata.json"))
    if state is not None and not resume:
        logger.info("resume=False: discarding the backup in %s", backup_dir)
        paths.delete_tree(backup_dir)
        state = None
    if state is None:
        if paths.isfile(history_csv):
            paths.delete_files([history_csv])
        paths.delete_tree(_join(work_dir, "checkpoints"))
        _write_json(_join(work_dir, "run.json"), run_args)
        return 0, None
    previous = _read_json(_join(work_dir, "run.json")) or {}
    _check_same_dataset(work_dir, previous, run_args)
    # A key missing from an older run.json held that option's default then.
    defaults = TrainConfig().to_dict()
    changed = {k: (previous.get(k, defaults[k]), run_args[k]) for k in RESUME_KEYS
               if previous.get(k, defaults[k]) != run_args[k]}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise ValueError(
            f"{work_dir} holds the backup of an interrupted run with other arguments ({details}). "
            "Rerun with the same arguments to resume it, pass resume=False (--no-resume) to start over, "
            "or choose another work directory (--work-dir).")
    epoch = int(state.get("epoch", 0))
    rows = _keep_history_before(history_csv, epoch)
    val = [float(r[monitor]) for r in rows if r.get(monitor) not in (None, "")]
    best = min(val) if val else None
    logger.info("resuming from the backup in %s after epoch %d (best %s so far: %s)", backup_dir, epoch, monitor, best)
    return epoch, best


# --- the training run -------------------------------------------------------------------------

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


def _callbacks(config: TrainConfig, work_dir: str, monitor: str, best_so_far: float | None, append: bool,
               title: str) -> list[keras.callbacks.Callback]:
    """Our callbacks after `_EpochStats`: best checkpoint, history.csv, loss.png, TensorBoard, early
    stopping, the plateau schedule, and last the backup."""
    history_csv = _join(work_dir, "history.csv")
    callback_list: list[keras.callbacks.Callback] = [
        keras.callbacks.ModelCheckpoint(_join(work_dir, "checkpoints", "best.weights.h5"), monitor=monitor,
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_so_far, mode="min", verbose=0),
        _HistoryCsv(history_csv, append=append),
        _LossCurve(history_csv, _join(work_dir, "loss.png"), title),
    ]
    tensorboard = config.tensorboard
    if tensorboard is None:
        tensorboard = importlib.util.find_spec("tensorboard") is not None
        if not tensorboard:
            logger.info("the tensorboard package is not installed: no TensorBoard logs (history.csv and "
                        "loss.png are written anyway)")
    if tensorboard:
        callback_list.append(keras.callbacks.TensorBoard(_join(work_dir, "tensorboard"), write_graph=False,
                                                         update_freq="epoch", profile_batch=0))
    if config.early_stopping_patience:
        callback_list.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience,
                                                           mode="min", verbose=1))
    if config.lr_schedule == "plateau":
        callback_list.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=2, mode="min",
                                                               min_lr=config.learning_rate * 0.01, verbose=1))
    # Last of ours, so an epoch is backed up only after its history row and checkpoint are written
    # (a resumed run then drops rows newer than the backup instead of missing any).
    callback_list.append(keras.callbacks.BackupAndRestore(_join(work_dir, "backup")))
    return callback_list


def _summary(options: dict[str, Any], history: dict[str, list[float]], monitor: str, rates: list[float], *,
             replicas: int, loss: str, parameters: int, initial_epoch: int, exported: str, duration: float,
             work_dir: str) -> dict[str, Any]:
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
        "work_dir": work_dir,
        "history_csv": _join(work_dir, "history.csv"),
        "loss_curve_png": _join(work_dir, "loss.png"),
    }


def _torch_data(dataset: Dataset, config: TrainConfig, architecture: str,
                validation_split: str | None, validation_steps: int | None, *, accelerator: bool | None = None):
    """(training DataLoader, validation DataLoader or None) from the PyTorch readers, for Keras on the
    torch backend: the same batches as the tf.data pipeline, from `readers.torch_data`. Training
    streams the repeated, shuffled split (seeded by `config.seed`) as `_torch_loader_settings` says:
    on a CUDA machine through DataLoader worker processes into pinned memory, on CPU on threads of
    this process. Validation reads the first `validation_steps` batches of its split in order.
    `accelerator`: whether batches go to a CUDA device (default: `torch.cuda.is_available()`)."""
    if architecture != "unet":
        raise ValueError(f"train(): the torch backend reads data through readers.torch_data, which makes the "
                         f"U-Net's inputs and targets only. Received: architecture={architecture!r}. Use "
                         "--backend tensorflow or jax for the other families.")
    import torch.utils.data

    from readers.torch_data import RecordDataset, StreamDataset

    if accelerator is None:
        accelerator = torch.cuda.is_available()
    settings = _torch_loader_settings(accelerator, _usable_cpus())
    workers = settings["loader"]["num_workers"]
    common = dict(target=config.target, loss_weighting=config.loss_weighting, loss=config.loss)
    train_loader = torch.utils.data.DataLoader(
        StreamDataset(dataset, config.train_split, batch_size=config.batch_size, shuffle=True,
                      # One buffer's worth in all, as tf.data holds, shared by the workers.
                      shuffle_buffer=max(1, config.shuffle_buffer // max(1, workers)), seed=config.seed,
                      repeat=True, drop_remainder=True, threads=settings["threads"], **common),
        batch_size=None, **settings["loader"])
    if validation_split is None:
        return train_loader, None
    records = RecordDataset(dataset, validation_split, **common)
    first = torch.utils.data.Subset(records, range(min(len(records), validation_steps * config.batch_size)))
    return train_loader, torch.utils.data.DataLoader(first, batch_size=config.batch_size, shuffle=False,
                                                     collate_fn=_stack, pin_memory=settings["loader"]["pin_memory"])


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _torch_loader_settings(accelerator: bool, cpus: int) -> dict[str, Any]:
    """How the torch backend's training batches are made: {"threads": decoding threads of the
    training process (StreamDataset's `threads`), "loader": DataLoader keyword arguments}.

    With an accelerator, DataLoader worker processes decode (one per CPU, less two kept for the
    training loop and the pin-memory thread; at most 16), each batch lands in pinned memory (a
    faster, DMA copy to the GPU) and the workers stay between epochs. On CPU the training step needs
    the cores itself: up to 4 threads of this process decode ahead instead, in the gaps (numpy
    releases the GIL), with no processes to start."""
    if accelerator:
        workers = max(1, min(16, cpus - 2))
        return {"threads": 0, "loader": {"num_workers": workers, "pin_memory": True, "persistent_workers": True,
                                         "prefetch_factor": 4}}
    return {"threads": min(4, max(1, cpus)), "loader": {"num_workers": 0, "pin_memory": False}}


def _stack(examples: list[tuple]) -> tuple:
    """Collates (x, y[, w]) examples into a tuple of batched tensors (default_collate makes a list)."""
    import torch

    return tuple(torch.stack(column) for column in zip(*examples))


def train(dataset_dir: str | os.PathLike, model_dir: str | os.PathLike, config: TrainConfig | None = None, *,
          work_dir: str | os.PathLike | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
          verbose: int | str = "auto", **overrides: Any) -> dict[str, Any]:
    """Trains the model `config` describes on `dataset_dir` and writes the best one to `model_dir`.

    Args:
        dataset_dir: dataset directory (local or gs://) with dataset_info.json and shards.
        model_dir: directory (local or gs://) for the exported model (model.keras + model.json).
        config: every training option (`trainer.config.TrainConfig`; default: its defaults).
        work_dir: checkpoints, backup, logs, history.csv and loss.png (default MODEL_DIR/training;
            local or gs://).
        callbacks: extra Keras callbacks.
        verbose: Keras progress output: 0, 1 (bar), 2 (a line per epoch) or "auto" (bar on a terminal).
        **overrides: TrainConfig fields replacing those of `config`, e.g. `epochs=4, batch_size=16`.

    Returns a summary dict (also stored under "training" in model.json): the options
    (`TrainConfig.to_dict()`, with steps_per_epoch and validation_steps resolved), epochs run,
    initial epoch, best/final losses, examples/s, paths of the outputs.
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise ValueError(f"train(): config must be a TrainConfig (or None). Received: config={config!r}. "
                         "Build one with TrainConfig(...) or TrainConfig.from_dict(...).")
    unknown = sorted(set(overrides) - set(TrainConfig().to_dict()))
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments {unknown}: not TrainConfig fields. "
                        f"Known: {sorted(TrainConfig().to_dict())}")
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    _check_backend(config.distribution)
    dataset_dir, model_dir = os.fspath(dataset_dir), os.fspath(model_dir)
    work_dir = os.fspath(work_dir) if work_dir is not None else _join(model_dir, "training")
    _check_finished_model(model_dir, work_dir, config.overwrite)
    _keep_tensorflow_off_accelerators()
    dataset = input_pipeline.open_dataset(dataset_dir)
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
    # The options as run: what run.json records (resume checks) and model.json's "training" block holds.
    options = dict(config.to_dict(), steps_per_epoch=steps_per_epoch, validation_steps=validation_steps)
    monitor = f"val_{family.monitor}" if validation_split is not None else family.monitor

    run_args = {**options, "dataset_dir": dataset_dir, "model_dir": model_dir, "work_dir": work_dir,
                "dataset_fingerprint": dataset.fingerprint()}
    initial_epoch, best_so_far = _prepare_work_dir(work_dir, run_args, config.resume, monitor)
    history_csv, loss_png = _join(work_dir, "history.csv"), _join(work_dir, "loss.png")
    best_weights = _join(work_dir, "checkpoints", "best.weights.h5")
    paths.makedirs(_join(work_dir, "checkpoints"))

    keras.utils.set_random_seed(config.seed)
    logger.info("training on %s: %d train examples, %s validation examples, %d steps/epoch x %d epochs, "
                "batch %d, backend %s, precision %s, distribution %s", dataset_dir, n_train,
                dataset.num_examples(validation_split) if validation_split else 0, steps_per_epoch,
                config.epochs, batch_size, keras.backend.backend(), config.precision, config.distribution or "none")

    if keras.backend.backend() == "torch":
        train_ds, val_ds = _torch_data(dataset, config, family.name, validation_split, validation_steps)
    else:
        data_args = dict(batch_size=batch_size, cycle_length=config.cycle_length,
                         keys=family.record_keys(config), model_io=family.model_io(spectrogram, config, info))
        train_ds = input_pipeline.make_dataset(
            dataset, train_split, shuffle=True, shuffle_buffer=config.shuffle_buffer, seed=config.seed,
            repeat=True, drop_remainder=True, deterministic=config.deterministic, **data_args)
        val_ds = None
        if validation_split is not None:
            val_ds = input_pipeline.make_dataset(dataset, validation_split, shuffle=False, deterministic=True,
                                                 drop_remainder=drop_remainder, **data_args).take(validation_steps)

    title = f"{family.describe(config)} on {dataset_dir}"
    stats = _EpochStats(batch_size)
    callback_list = [stats, *_callbacks(config, work_dir, monitor, best_so_far, initial_epoch > 0, title),
                     *callbacks]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2

    started = time.time()
    with _dtype_policy(config.precision), _distribution(config.distribution, config.tpu, batch_size) as replicas:
        model = family.build_training_model(spectrogram, config, info)
        schedule = _learning_rate(config.lr_schedule, config.learning_rate, config.epochs * steps_per_epoch,
                                  config.warmup_fraction)
        model.compile(optimizer=keras.optimizers.Adam(schedule, **family.optimizer_args),
                      **family.compile_args(config, spectrogram), steps_per_execution=config.steps_per_execution,
                      jit_compile=config.jit_compile)
        try:
            fit_history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                                    steps_per_epoch=steps_per_epoch, callbacks=callback_list, verbose=verbose,
                                    shuffle=False)
        except tf.errors.DataLossError as err:  # "corrupted record at N", naming no file: find the shard
            input_pipeline.raise_for_corrupt_shards(dataset, used_splits, err)
            raise
        trained_weights = model.get_weights()
    duration = time.time() - started

    # The exported model is float32 whatever the training precision: the predictor runs anywhere.
    with _dtype_policy("float32"):
        trained = family.build_training_model(spectrogram, config, info)
        if paths.isfile(best_weights):
            trained.load_weights(best_weights)
            exported = "best"
        else:
            trained.set_weights(trained_weights)
            exported = "last"
        export = family.inference_model(trained, spectrogram, config)

    history = read_history_csv(history_csv) if paths.isfile(history_csv) else dict(fit_history.history)
    summary = _summary(options, history, monitor, stats.examples_per_second, replicas=replicas,
                       loss=family.loss_description(config), parameters=int(export.count_params()),
                       initial_epoch=stats.first_epoch if stats.first_epoch is not None else initial_epoch,
                       exported=exported, duration=duration, work_dir=work_dir)
    plot_history(history, loss_png, title)
    save_model_dir(export, model_dir, config=spectrogram, target=family.target(config), heads=family.heads,
                   model_args=config.model_args(),
                   training_data=_training_data_summary(dataset, train_split, validation_split),
                   training=summary)
    best_epoch = summary["best_epoch"]
    logger.info("saved the %s model (epoch %s, %s %s) to %s; %s examples/s", exported, best_epoch, monitor,
                history[monitor][best_epoch - 1] if best_epoch else None, model_dir,
                None if summary["examples_per_second"] is None else round(summary["examples_per_second"], 1))
    return {"model_dir": model_dir, **summary, "history": history}
