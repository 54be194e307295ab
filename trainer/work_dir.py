"""A training run's work directory: where each file lives, and the bookkeeping that lets a rerun of
an interrupted command resume it.

    work = WorkDir("models/demo/training")
    initial_epoch, best_so_far = prepare_work_dir(work, run_args, resume=True, monitor="val_loss")

Files (local or gs://): run.json (the run's options, paths and dataset fingerprint; checked when
resuming), history.csv (`trainer.history`), loss.png, checkpoints/best.weights.h5, tensorboard/,
and backup/ (Keras' `BackupAndRestore`: the last finished epoch; or, training from a source store,
`trainer.callbacks.StepBackup`: the last backed-up step; deleted when training ends).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tfrecord_schema import paths
from trainer.config import RESUME_KEYS, TrainConfig
from trainer.history import HistoryCsv
from trainer.model_dir import INFO_FILE

logger = logging.getLogger(__name__)


class WorkDir:
    """The paths of the files in the work directory `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.run_json = paths.join(path, "run.json")
        self.history = HistoryCsv(paths.join(path, "history.csv"))
        self.loss_png = paths.join(path, "loss.png")
        self.checkpoints = paths.join(path, "checkpoints")
        self.best_weights = paths.join(self.checkpoints, "best.weights.h5")
        self.tensorboard = paths.join(path, "tensorboard")
        self.backup = paths.join(path, "backup")
        # What BackupAndRestore writes with each backup: the epoch it follows; `StepBackup` adds the step.
        self.backup_state = paths.join(self.backup, "training_metadata.json")

    def backup_weights(self, step: int) -> str:
        """The weights file `trainer.callbacks.StepBackup` writes at global step `step`."""
        return paths.join(self.backup, f"step-{step}.weights.h5")

    def backup_step(self) -> tuple[int, str] | None:
        """(global step, weights file) of the backup `StepBackup` left, or None (none, or Keras' own)."""
        state = _read_json(self.backup_state)
        if not state or "step" not in state:
            return None
        return int(state["step"]), paths.join(self.backup, state["weights"])


def _read_json(path: str) -> dict[str, Any] | None:
    if not paths.isfile(path):
        return None
    return json.loads(paths.read_text(path))


def _write_json(path: str, value: dict[str, Any]) -> None:
    paths.write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


def _check_same_dataset(work_dir: str, previous: dict[str, Any], run_args: dict[str, Any]) -> None:
    """Refuses to resume a run on another dataset than the one it started on (see `dataset_fingerprint`)."""
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


def check_finished_model(model_dir: str, work: WorkDir, overwrite: bool) -> None:
    """Refuses to train over a finished model in `model_dir` unless `overwrite`.

    A model directory with model.json and no backup in the work directory holds the result of a
    finished run: retraining would silently replace it (perhaps with a worse model). A backup means
    a run that may replace it was already started here and interrupted: resuming it stays automatic.
    """
    info_path = paths.join(model_dir, INFO_FILE)
    if not paths.isfile(info_path):
        return
    if paths.isfile(work.backup_state):
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


def prepare_work_dir(work: WorkDir, run_args: dict[str, Any], resume: bool,
                     monitor: str = "val_loss") -> tuple[int, float | None]:
    """Returns (epoch to resume from, best value of `monitor` so far) and records this run's arguments
    (`run_args`: what run.json holds)."""
    paths.makedirs(work.path)
    state = _read_json(work.backup_state)
    if state is not None and not resume:
        logger.info("resume=False: discarding the backup in %s", work.backup)
        paths.delete_tree(work.backup)
        state = None
    if state is None:
        work.history.delete()
        paths.delete_tree(work.checkpoints)
        _write_json(work.run_json, run_args)
        return 0, None
    previous = _read_json(work.run_json) or {}
    _check_same_dataset(work.path, previous, run_args)
    # A key missing from an older run.json held that option's default then.
    defaults = TrainConfig().to_dict()
    # A source store's run also records its mixing ("mix", "augment"), which the backup depends on too.
    defaults.update(mix=None, augment=None)
    keys = RESUME_KEYS + tuple(k for k in ("mix", "augment") if k in run_args or k in previous)
    changed = {k: (previous.get(k, defaults[k]), run_args.get(k)) for k in keys
               if previous.get(k, defaults[k]) != run_args.get(k)}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise ValueError(
            f"{work.path} holds the backup of an interrupted run with other arguments ({details}). "
            "Rerun with the same arguments to resume it, pass resume=False (--no-resume) to start over, "
            "or choose another work directory (--work-dir).")
    epoch = int(state.get("epoch", 0))
    rows = work.history.keep_before(epoch)
    val = [float(r[monitor]) for r in rows if r.get(monitor) not in (None, "")]
    best = min(val) if val else None
    logger.info("resuming from the backup in %s after epoch %d (best %s so far: %s)", work.backup, epoch, monitor, best)
    return epoch, best
