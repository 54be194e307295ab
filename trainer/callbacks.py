"""The Keras callbacks of a training run: examples/s and the learning rate per epoch, history.csv,
loss.png, the best checkpoint, TensorBoard, early stopping, the time limit, the plateau schedule and the backup
that a rerun resumes from.

    stats = EpochStats(batch_size)
    callbacks = [stats, *training_callbacks(config, WorkDir(work_dir), "val_loss", None, False, title)]
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from typing import Any

import keras

from tfrecord_schema import paths
from trainer.config import TrainConfig
from trainer.history import HistoryCsv
from trainer.plots import plot_history
from trainer.work_dir import WorkDir

logger = logging.getLogger(__name__)


class EpochStats(keras.callbacks.Callback):
    """Logs the learning rate and measures training examples/s per epoch (first batch excluded).

    Placed before `HistoryLogger` so the learning rate lands in history.csv.
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


class HistoryLogger(keras.callbacks.Callback):
    """Adds a row to history.csv after every epoch: "epoch", then the logs' keys sorted, as Keras'
    CSVLogger writes them (`trainer.history`). `append`: keep the rows already in the file (a
    resumed run; they were cut back to its backup)."""

    def __init__(self, history: HistoryCsv, append: bool) -> None:
        super().__init__()
        self.history = history
        self.rows: list[dict[str, Any]] = history.rows() if append else []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: logs[k] for k in sorted(logs or {})}})
        self.history.write(self.rows)


class LossCurve(keras.callbacks.Callback):
    """Redraws loss.png from history.csv after every epoch (so a long run can be watched)."""

    def __init__(self, history: HistoryCsv, png_path: str, title: str) -> None:
        super().__init__()
        self.history, self.png_path, self.title = history, png_path, title

    def on_epoch_end(self, epoch, logs=None):
        try:
            plot_history(self.history.columns(), self.png_path, self.title)
        except (OSError, ValueError) as err:  # a plot must never stop training
            logger.warning("could not draw %s: %s", self.png_path, err)


class StepBackup(keras.callbacks.Callback):
    """Backs up the weights (with the optimizer's variables) every `every` steps and after every epoch,
    with a state file {"step": the next global step, "epoch": the epoch it falls in, "weights": the
    weights' file}, so that a rerun resumes at that exact step (`trainer.work_dir.WorkDir.backup_step`).

    The weights are written under a new name before the state names them, and the older weights are
    deleted after: a kill at any point leaves a state and the weights of the same step. The backup of an
    epoch's last step is taken at the epoch's end, after its validation, history row and checkpoint.

    `first_step`: the global step the run starts at; `steps_per_epoch`: the epoch's length.
    """

    def __init__(self, work: WorkDir, every: int, steps_per_epoch: int, first_step: int) -> None:
        super().__init__()
        self.work, self.every, self.steps_per_epoch = work, every, steps_per_epoch
        self.step = self.saved = self.epoch_start = first_step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.step

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.epoch_start + batch + 1
        if self.step % self.steps_per_epoch and self.step // self.every > self.saved // self.every:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()

    def _save(self) -> None:
        previous = self.work.backup_weights(self.saved)
        paths.makedirs(self.work.backup)
        weights = self.work.backup_weights(self.step)
        self.model.save_weights(weights)
        state = {"step": self.step, "epoch": self.step // self.steps_per_epoch, "weights": paths.basename(weights)}
        paths.write_atomic(self.work.backup_state, json.dumps(state).encode("utf-8"))
        if previous != weights and paths.isfile(previous):
            paths.delete_files([previous])
        self.saved = self.step


class TimeLimit(keras.callbacks.Callback):
    """Stops training at the end of the first epoch that ends `minutes` after training began."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = time.monotonic()

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.monotonic() - self.start
        if elapsed >= self.seconds and not self.model.stop_training:
            logger.info("stopping after epoch %d: %.1f of at most %.1f minutes spent", epoch + 1, elapsed / 60,
                        self.seconds / 60)
            self.model.stop_training = True


def training_callbacks(config: TrainConfig, work: WorkDir, monitor: str, best_so_far: float | None, append: bool,
                       title: str, step_backup: StepBackup | None = None) -> list[keras.callbacks.Callback]:
    """The run's callbacks after `EpochStats`: best checkpoint, history.csv, loss.png, TensorBoard,
    early stopping, the time limit, the plateau schedule, and last the backup: `step_backup` when given, else Keras'
    `BackupAndRestore` (after every epoch).

    `best_so_far`: the best value of `monitor` before a resumed run (the checkpoint keeps only a
    better one); `append`: the run resumes (history.csv keeps its rows)."""
    callback_list: list[keras.callbacks.Callback] = [
        keras.callbacks.ModelCheckpoint(work.best_weights, monitor=monitor,
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_so_far, mode="min", verbose=0),
        HistoryLogger(work.history, append=append),
        LossCurve(work.history, work.loss_png, title),
    ]
    tensorboard = config.tensorboard
    if tensorboard is None:
        tensorboard = importlib.util.find_spec("tensorboard") is not None
        if not tensorboard:
            logger.info("the tensorboard package is not installed: no TensorBoard logs (history.csv and "
                        "loss.png are written anyway)")
    if tensorboard:
        callback_list.append(keras.callbacks.TensorBoard(work.tensorboard, write_graph=False,
                                                         update_freq="epoch", profile_batch=0))
    if config.early_stopping_patience:
        callback_list.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience,
                                                           mode="min", verbose=1))
    if config.time_limit_minutes:
        callback_list.append(TimeLimit(config.time_limit_minutes))
    if config.lr_schedule == "plateau":
        callback_list.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=2, mode="min",
                                                               min_lr=config.learning_rate * 0.01, verbose=1))
    # Last of ours, so an epoch is backed up only after its history row and checkpoint are written
    # (a resumed run then drops rows newer than the backup instead of missing any).
    callback_list.append(step_backup or keras.callbacks.BackupAndRestore(work.backup))
    return callback_list
