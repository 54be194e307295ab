"""Training a tiny U-Net: the loss falls, the model directory describes itself, killed runs resume."""

import csv
import json
import os

import keras
import numpy as np
import pytest

import dataclasses

from trainer.config import PRESETS, RESUME_KEYS, TrainConfig
from trainer.input_pipeline import make_dataset
from trainer.model_dir import load_model_dir
from trainer.targets import enhance_magnitude
from trainer.train import train
from beam_pipelines.testing import SMALL_CONFIG, write_dataset

# Keras 3 on TensorFlow converts tensors with np.array(x), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TINY = {"base_filters": 4, "depth": 3, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
        "deterministic": True, "verbose": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("train") / "dataset")
    write_dataset(directory, splits={"train": 32, "valid": 8, "test": 4}, num_shards=2, seed=1)
    return directory


def _history(csv_path):
    with open(csv_path) as f:
        return list(csv.DictReader(f))


def test_a_few_epochs_lower_the_loss_and_export_a_self_describing_model(dataset, tmp_path):
    model_dir = str(tmp_path / "model")
    summary = train(dataset, model_dir, epochs=5, **TINY)
    losses = summary["history"]["loss"]
    assert len(losses) == 5 and summary["epochs_run"] == 5 and summary["initial_epoch"] == 0
    assert losses[-1] < 0.6 * losses[0], losses
    assert summary["best_val_loss"] == min(summary["history"]["val_loss"])
    assert summary["steps_per_epoch"] == 4  # 32 examples / batch 8, from dataset_info
    assert summary["examples_per_second"] > 0

    model, info = load_model_dir(model_dir)
    assert info["config"] == SMALL_CONFIG and info["target"] == "noise"
    assert info["model"] == {"architecture": "unet", "base_filters": 4, "depth": 3, "dropout": 0.5,
                             "negative_slope": 0.3}
    data = info["training_data"]
    assert data["dataset"] == dataset and data["num_examples"] == {"train": 32, "valid": 8, "test": 4}
    assert data["seed"] == 1 and data["mixing"]["snr_db_range"] == [-5.0, 15.0]
    assert info["training"]["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert info["training"]["learning_rate"] == 3e-3 and info["training"]["precision"] == "float32"

    # The exported model is the best checkpoint: its validation loss is the best one logged.
    val = make_dataset(dataset, "valid", batch_size=8, shuffle=False)
    model.compile(loss=keras.losses.Huber())
    assert model.evaluate(val, verbose=0) == pytest.approx(summary["best_val_loss"], rel=1e-4)
    x, _ = next(iter(val))
    prediction = model.predict(x, verbose=0)
    noisy = 10.0 ** ((x.numpy() * SMALL_CONFIG.input_scale_db + SMALL_CONFIG.input_offset_db) / 20.0)
    assert np.isfinite(enhance_magnitude(noisy, prediction, "noise", SMALL_CONFIG)).all()

    work = os.path.join(model_dir, "training")
    rows = _history(os.path.join(work, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4] and "learning_rate" in rows[0]
    with open(os.path.join(work, "loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(work, "backup"))  # removed once training finished


class _Interrupt(keras.callbacks.Callback):
    """Simulates a killed job part-way through an epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt("killed")


def test_a_killed_run_resumes_from_its_last_finished_epoch(dataset, tmp_path):
    model_dir, work_dir = str(tmp_path / "model"), str(tmp_path / "work")
    args = dict(TINY, epochs=4, work_dir=work_dir, lr_schedule="constant")
    with pytest.raises(KeyboardInterrupt):
        train(dataset, model_dir, callbacks=[_Interrupt(epoch=2, batch=1)], **args)
    with open(os.path.join(work_dir, "backup", "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2
    assert [int(r["epoch"]) for r in _history(os.path.join(work_dir, "history.csv"))] == [0, 1]
    assert not os.path.exists(os.path.join(model_dir, "model.json"))

    with pytest.raises(ValueError, match=r"backup of an interrupted run with other arguments \(depth: 3 -> 2\)"):
        train(dataset, model_dir, **dict(args, depth=2))

    # run.json holds TrainConfig.to_dict(); one written before `architecture` existed still resumes.
    run_json = os.path.join(work_dir, "run.json")
    with open(run_json) as f:
        recorded = json.load(f)
    assert TrainConfig.from_dict({k: v for k, v in recorded.items() if k in TrainConfig().to_dict()}) == TrainConfig(
        **{**{k: v for k, v in args.items() if k not in ("verbose", "work_dir")}, "steps_per_epoch": 4,
           "validation_steps": 1})
    del recorded["architecture"]
    with open(run_json, "w") as f:
        json.dump(recorded, f)

    config = TrainConfig(**{k: v for k, v in args.items() if k not in ("verbose", "work_dir")})
    summary = train(dataset, model_dir, config, work_dir=work_dir, verbose=0)
    assert summary["initial_epoch"] == 2  # continued, not restarted from zero
    rows = _history(os.path.join(work_dir, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3] and summary["epochs_run"] == 4
    assert os.path.isfile(os.path.join(model_dir, "model.json"))

    # A finished model is replaced only with overwrite=True; a run started so and interrupted resumes,
    # and --no-resume starts over even when a backup exists.
    with pytest.raises(FileExistsError, match="already holds a finished model"):
        train(dataset, model_dir, **args)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, model_dir, callbacks=[_Interrupt(epoch=1, batch=0)], overwrite=True, **args)
    summary = train(dataset, model_dir, resume=False, **dict(args, epochs=1))
    assert summary["initial_epoch"] == 0 and summary["epochs_run"] == 1


def test_mixed_precision_training_exports_a_float32_model_and_restores_the_policy(dataset, tmp_path):
    summary = train(dataset, str(tmp_path / "model"), epochs=1, steps_per_epoch=2, validation_steps=1,
                    precision="mixed_bfloat16", **TINY)
    assert keras.config.dtype_policy().name == "float32"
    model, info = load_model_dir(str(tmp_path / "model"))
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert info["training"]["precision"] == "mixed_bfloat16" and summary["validation_steps"] == 1


def test_mirrored_strategy_and_plateau_schedule(dataset, tmp_path):
    # On a machine without GPUs MirroredStrategy has one replica (the CPU): the same code path.
    summary = train(dataset, str(tmp_path / "model"), epochs=2, steps_per_epoch=2, distribution="mirrored",
                    lr_schedule="plateau", **TINY)
    assert summary["replicas"] == 1 and summary["distribution"] == "mirrored"
    assert summary["history"]["learning_rate"] == [pytest.approx(3e-3)] * 2


def test_without_a_validation_split_the_training_loss_is_monitored(tmp_path):
    directory = str(tmp_path / "ds")
    write_dataset(directory, splits={"train": 8})
    summary = train(directory, str(tmp_path / "model"), epochs=1, **TINY)
    assert summary["monitor"] == "loss" and summary["best_val_loss"] is None
    assert summary["exported_weights"] == "best"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"epochs": 0}, ValueError, r"epochs must be a positive integer. Received: epochs=0"),
    ({"batch_size": 2.5}, ValueError, r"batch_size must be a positive integer. Received: batch_size=2.5"),
    ({"learning_rate": 3}, ValueError, r"learning_rate must be a number in \(0, 1\). Received: learning_rate=3"),
    ({"target": "clean"}, ValueError, r"target must be one of \('noise', 'mask', 'psa', 'cmask'\). Received: target='clean'"),
    ({"precision": "fp16"}, ValueError, r"precision must be one of .*Received: precision='fp16'"),
    ({"lr_schedule": "step"}, ValueError, r"lr_schedule must be one of"),
    ({"distribution": "horovod"}, ValueError, r"distribution must be None or one of"),
    ({"tpu": "local"}, ValueError, r"tpu='local' is only used with distribution='tpu'"),
    ({"distribution": "jax-data-parallel"}, ValueError, r"needs the jax backend.*KERAS_BACKEND=jax"),
    ({"depth": 7}, ValueError, r"frames and bins must be multiples of 64"),
    ({"early_stopping_patience": -1}, ValueError, r"early_stopping_patience must be an integer >= 0"),
    ({"time_limit_minutes": 0}, ValueError, r"time_limit_minutes must be a number > 0 or None"),
    ({"loss_weighting": "power"}, ValueError, r"loss_weighting must be one of \('none', 'magnitude'\)"),
])
def test_bad_arguments_are_refused_before_training(dataset, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        train(dataset, str(tmp_path / "model"), **{**TINY, **kwargs})
    assert not os.path.exists(tmp_path / "model")


def test_a_time_limit_stops_at_the_end_of_the_first_epoch_past_it(dataset, tmp_path):
    summary = train(dataset, str(tmp_path / "model"), epochs=4, steps_per_epoch=1, validation_steps=1,
                    time_limit_minutes=1e-6, **TINY)
    assert summary["epochs_run"] == 1
    with open(tmp_path / "model" / "model.json") as handle:
        assert json.load(handle)["training"]["time_limit_minutes"] == 1e-6


def test_a_missing_dataset_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset directory"):
        train(str(tmp_path / "nowhere"), str(tmp_path / "model"))


def test_magnitude_weighted_loss_feeds_per_bin_weights_and_is_recorded(dataset, tmp_path):
    from trainer.input_pipeline import raw_batches

    x, y, w = next(iter(make_dataset(dataset, "valid", batch_size=4, target="mask", shuffle=False,
                                     deterministic=True, loss_weighting="magnitude")))
    raw = next(iter(raw_batches(dataset, "valid", batch_size=4)))
    noisy = raw["noisy_magnitude"].numpy().astype(np.float32)
    assert w.shape == noisy.shape and x.shape[:3] == noisy.shape
    np.testing.assert_allclose(w.numpy(), noisy / noisy.mean(axis=(1, 2), keepdims=True), rtol=1e-4)
    summary = train(dataset, str(tmp_path / "model"), epochs=1, steps_per_epoch=2, validation_steps=1,
                    target="mask", loss_weighting="magnitude", **TINY)
    assert summary["loss_weighting"] == "magnitude" and np.isfinite(summary["final_loss"])
    _, info = load_model_dir(str(tmp_path / "model"))
    assert info["training"]["loss_weighting"] == "magnitude"


def test_phase_sensitive_target_trains_and_its_model_enhances(dataset, tmp_path):
    from predictor.enhance import Enhancer

    summary = train(dataset, str(tmp_path / "model"), epochs=2, steps_per_epoch=2, validation_steps=1,
                    target="psa", loss_weighting="magnitude", **TINY)
    assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["final_val_loss"])
    _, info = load_model_dir(str(tmp_path / "model"))
    assert info["target"] == "psa"
    enhancer = Enhancer.from_model_dir(str(tmp_path / "model"), batch_size=2)
    noisy = np.random.default_rng(0).standard_normal(3 * enhancer.sample_rate).astype(np.float32) * 0.1
    enhanced = enhancer.enhance(noisy)
    # A gain in [0, 1] per bin: same length, finite, never louder than the input (up to the overlap-add).
    assert enhanced.shape == noisy.shape and np.all(np.isfinite(enhanced))
    assert np.sum(enhanced ** 2) <= 1.01 * np.sum(noisy ** 2)


def test_train_config_round_trips_and_refuses_unknown_keys():
    config = TrainConfig(epochs=3, distribution="tpu", tpu="local", jit_compile=True)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"Unknown TrainConfig keys \['epoch'\].*Known keys"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 4


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, r"^batch_size must be a positive integer. Received: batch_size=0$"),
    ({"steps_per_epoch": 0}, r"steps_per_epoch must be a positive integer or None. Received: steps_per_epoch=0"),
    ({"architecture": "resnet"}, r"architecture must be one of \('unet', 'blstm-sce', 'blstm-dc', 'mel-autoencoder', "
                                 r"'stream-crn'\). Received: architecture='resnet'"),
    ({"depth": 1}, r"depth must be at least 2"),
    ({"warmup_fraction": 1.0}, r"warmup_fraction must be in \[0, 1\)"),
    ({"jit_compile": "yes"}, r"jit_compile must be True, False or 'auto'"),
])
def test_train_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_resume_keys_and_presets_come_from_the_fields():
    assert set(RESUME_KEYS) == {"target", "loss", "architecture", "base_filters", "depth", "dropout", "negative_slope",
                                "lr_schedule", "precision", "batch_size", "epochs", "steps_per_epoch",
                                "blstm_layers", "blstm_units", "embedding_dim", "embedding_weight", "mel_bands",
                                "stream_size", "sample_rate", "window_samples", "n_fft", "hop_length"}
    assert PRESETS["gpu"] == dataclasses.replace(TrainConfig(), epochs=40, batch_size=256, learning_rate=5e-4,
                                                 precision="mixed_bfloat16", shuffle_buffer=8192, jit_compile=True)
    assert TrainConfig.from_preset("tpu", epochs=2).distribution == "tpu"
    with pytest.raises(ValueError, match=r"preset must be one of \('cpu-demo', 'gpu', 'tpu'\)"):
        TrainConfig.from_preset("laptop")


def test_train_refuses_an_unknown_keyword(dataset, tmp_path):
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['epoch'\]: not TrainConfig fields"):
        train(dataset, str(tmp_path / "model"), epoch=1)
