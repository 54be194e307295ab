"""Training from a source store: examples mixed on the fly, the model's STFT from the store's rate, exact
mid-epoch resume after a SIGKILL, the same validation examples every epoch and run, and refusals."""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from beam_pipelines import synthetic
from beam_pipelines.testing import SMALL_CONFIG, write_dataset, write_source_store
from mixing.on_the_fly import VALIDATION_SEED, EpochPlan, SourceMixer
from mixing.options import AugmentOptions, MixOptions
from trainer.cli import flag_terms
from trainer.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, BATCH, STEPS, EPOCHS, VALIDATION_STEPS = 5, 4, 6, 3, 2
# SMALL_CONFIG's windows (32 frames x 32 bins at 8 kHz) and a tiny U-Net: a few seconds per epoch on a CPU.
FLAGS = ["--window-samples", "512", "--n-fft", "63", "--hop-length", "16", "--base-filters", "4", "--depth", "3",
         "--batch-size", str(BATCH), "--steps-per-epoch", str(STEPS), "--epochs", str(EPOCHS), "--validation-steps",
         str(VALIDATION_STEPS), "--backup-steps", "2", "--learning-rate", "3e-3", "--seed", str(SEED),
         "--noise-level", "0.1:0.5", "--early-stopping-patience", "0"]
TINY = dict(window_samples=512, n_fft=63, hop_length=16, base_filters=4, depth=3, batch_size=BATCH, verbose=0)

# `speech-enhance train` in a process that logs every batch the mixer draws (split, seed, global step,
# a hash of its arrays) to $BATCH_LOG; with $KILL_AT_STEP it SIGKILLs itself when asked for that
# training step, once the backup of a step >= $BACKUP_AT_LEAST is written (the step cannot be trained
# before: it is the batch the model waits for).
_LOGGED_TRAIN = r"""
import hashlib, json, os, signal, sys, time
from mixing.on_the_fly import SourceMixer
log, kill_at = os.environ["BATCH_LOG"], int(os.environ.get("KILL_AT_STEP", "-1"))
drawn = SourceMixer.spectrograms

def logged(self, indices, config, metadata=False, **kwargs):
    indices = list(indices)
    step = indices[0] // len(indices)
    if self.split == "train" and step == kill_at:
        state = os.environ["BACKUP_STATE"]
        while True:
            try:
                if json.load(open(state))["step"] >= int(os.environ["BACKUP_AT_LEAST"]):
                    os.kill(os.getpid(), signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
    out = drawn(self, indices, config, metadata, **kwargs)
    digest = hashlib.sha256(b"".join(out[k].tobytes() for k in sorted(out) if k != "metadata")).hexdigest()
    with open(log, "a") as f:
        f.write(json.dumps({"split": self.split, "seed": self.mix.seed, "step": step, "first": indices[0],
                            "hash": digest}) + "\n")
    return out

SourceMixer.spectrograms = logged
import speech_enhance
sys.exit(speech_enhance.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_source_store(tmp_path_factory.mktemp("sources") / "store", seed=2)


def _train(store, model_dir, log, env=None, timeout=400):
    """Runs the logging `speech-enhance train`; returns the process."""
    cmd = [sys.executable, "-c", _LOGGED_TRAIN, "train", "--dataset", store.directory, "--model-dir", str(model_dir),
           *FLAGS]
    full_env = dict(os.environ, PYTHONPATH=REPO, BATCH_LOG=str(log), KERAS_BACKEND="tensorflow", **(env or {}))
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc


def _log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _by_step(entries, split):
    return {e["step"]: e["hash"] for e in entries if e["split"] == split}


def _epochs(work):
    with open(os.path.join(work, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_a_run_killed_mid_epoch_resumes_at_its_backup_step_with_the_same_batches(store, tmp_path):
    # The uninterrupted run.
    whole = _train(store, tmp_path / "whole", tmp_path / "whole.jsonl")
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = _log(tmp_path / "whole.jsonl")
    train_steps = [e["step"] for e in reference if e["split"] == "train"]
    assert sorted(train_steps) == list(range(EPOCHS * STEPS))  # each step drawn once, by its global number
    assert {e["seed"] for e in reference if e["split"] == "train"} == {SEED}
    # Validation is mixed once (not once per epoch) under its own seed.
    valid = [e for e in reference if e["split"] == "valid"]
    assert sorted(e["step"] for e in valid) == list(range(VALIDATION_STEPS))
    assert {e["seed"] for e in valid} == {VALIDATION_SEED}
    reference_steps = _by_step(reference, "train")

    # The same command, SIGKILLed mid-epoch 1 once a backup at step >= 8 exists (steps 8, 10 are mid-epoch).
    model_dir, work = tmp_path / "model", tmp_path / "model" / "training"
    state = work / "backup" / "training_metadata.json"
    killed = _train(store, model_dir, tmp_path / "killed.jsonl",
                    env={"KILL_AT_STEP": "10", "BACKUP_AT_LEAST": "8", "BACKUP_STATE": str(state)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    backup = json.loads(state.read_text())
    assert backup["step"] in (8, 10) and backup["epoch"] == 1
    assert os.path.isfile(work / "backup" / backup["weights"])
    assert _epochs(work) == [0]  # epoch 1 was not finished
    killed_log = _log(tmp_path / "killed.jsonl")
    assert all(reference_steps[e["step"]] == e["hash"] for e in killed_log if e["split"] == "train")

    resumed = _train(store, model_dir, tmp_path / "resumed.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_log = _log(tmp_path / "resumed.jsonl")
    resumed_steps = [e["step"] for e in resumed_log if e["split"] == "train"]
    # From the backup's step on, exactly the batches the uninterrupted run drew at those steps.
    assert sorted(resumed_steps) == list(range(backup["step"], EPOCHS * STEPS))
    assert _by_step(resumed_log, "train") == {s: reference_steps[s] for s in resumed_steps}
    # The same validation examples in every run.
    assert _by_step(resumed_log, "valid") == _by_step(reference, "valid")
    # Epoch boundaries as in the uninterrupted run: one history row per epoch, the backup gone.
    assert _epochs(work) == list(range(EPOCHS)) == _epochs(tmp_path / "whole" / "training")
    assert not os.path.exists(work / "backup")
    with open(model_dir / "model.json") as f:
        info = json.load(f)
    assert info["training"]["epochs_run"] == EPOCHS and info["training"]["backup_steps"] == 2
    assert info["training"]["mix"]["seed"] == SEED and info["training"]["mix"]["level_range"] == [0.1, 0.5]
    assert info["training_data"]["kind"] == "sources" and info["training_data"]["fingerprint"] == store.fingerprint()
    assert info["spectrogram"]["n_fft"] == 63 and info["spectrogram"]["sample_rate"] == 8000

    # The trained model enhances a recording.
    rng = np.random.default_rng(0)
    voice = synthetic.speech(rng, 12000, 8000, 120.0)
    noisy = 0.3 * voice / np.max(np.abs(voice)) + 0.05 * rng.standard_normal(12000)
    wav = tmp_path / "call.wav"
    soundfile.write(wav, noisy.astype(np.float32), 8000, subtype="PCM_16")
    predicted = subprocess.run([sys.executable, "-m", "speech_enhance", "predict", "--model", str(model_dir),
                                "--input", str(wav), "--output", str(tmp_path / "out")],
                               env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    written = [os.path.join(root, f) for root, _, files in os.walk(tmp_path / "out") for f in files
               if f.endswith(".wav")]
    assert len(written) == 1
    enhanced, rate = soundfile.read(written[0])
    assert rate == 8000 and len(enhanced) == 12000 and np.isfinite(enhanced).all()


def test_batches_depend_on_their_step_only_and_validation_is_drawn_once(store):
    import tensorflow as tf

    from trainer.families import get_family
    from trainer.mixed_input import plan_sources, training_batches, validation_batches

    config = TrainConfig(steps_per_epoch=3, validation_steps=2, seed=SEED, **{k: v for k, v in TINY.items()
                                                                               if k != "verbose"})
    plan = plan_sources(store, config, MixOptions(), None)
    assert plan.spectrogram == SMALL_CONFIG and plan.mix.seed == SEED
    family = get_family("unet")
    keys, model_io = family.record_keys(config), family.model_io(plan.spectrogram, config, plan.info)
    whole = [x.numpy() for x, _ in training_batches(plan, keys, model_io, first_step=0, end_step=6)]
    later = [x.numpy() for x, _ in training_batches(plan, keys, model_io, first_step=4, end_step=6)]
    assert len(whole) == 6 and all(np.array_equal(a, b) for a, b in zip(whole[4:], later))
    # Mixed in worker processes: the same batches, in step order.
    pooled = [x.numpy() for x, _ in training_batches(plan, keys, model_io, first_step=1, end_step=6, processes=2)]
    assert len(pooled) == 5 and all(np.array_equal(a, b) for a, b in zip(whole[1:], pooled))
    # A batch is the mixer's examples of its step, through the family's model_io.
    drawn = SourceMixer.for_config(store, "train", plan.mix, plan.spectrogram).spectrograms(
        EpochPlan(3, BATCH).batch_indices(4), plan.spectrogram)
    x, _ = model_io({k: tf.constant(v) for k, v in drawn.items()})
    assert np.array_equal(x.numpy(), later[0])

    calls = []
    original = SourceMixer.spectrograms

    def counted(self, indices, config, metadata=False, **kwargs):
        calls.append((self.split, self.mix.seed, list(indices)))
        return original(self, indices, config, metadata, **kwargs)

    SourceMixer.spectrograms = counted
    try:
        val = validation_batches(plan, keys, model_io)
        first = [y.numpy() for _, y in val]
        second = [y.numpy() for _, y in val]
    finally:
        SourceMixer.spectrograms = original
    assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, second))
    assert sorted(c[2][0] for c in calls) == [0, BATCH] and {c[:2] for c in calls} == {("valid", VALIDATION_SEED)}


def test_the_torch_backend_trains_from_a_source_store(store, tmp_path):
    """`--backend torch` mixes through the PyTorch reader (readers.torch_mixed) and writes a model."""
    model_dir = tmp_path / "model"
    flags = [*FLAGS, "--epochs", "1"]  # the last --epochs counts
    proc = subprocess.run([sys.executable, "-m", "speech_enhance", "train", "--backend", "torch", "--dataset",
                           store.directory, "--model-dir", str(model_dir), *flags],
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((model_dir / "model.json").read_text())
    assert info["training"]["backend"] == "torch" and info["training_data"]["kind"] == "sources"


def test_the_sce_family_learns_the_store_s_speakers_and_noise_classes(store, tmp_path):
    from trainer.families import source_vocabulary
    from trainer.train import train

    summary = train(store.directory, str(tmp_path / "model"), architecture="blstm-sce", blstm_layers=1,
                    blstm_units=8, embedding_dim=4, epochs=1, steps_per_epoch=2, validation_steps=1,
                    augment=AugmentOptions(speed_probability=0.5), **TINY)
    assert summary["epochs_run"] == 1 and summary["augment"]["speed_probability"] == 0.5
    from trainer.mixed_input import plan_sources

    plan = plan_sources(store, TrainConfig(**{k: v for k, v in TINY.items() if k != "verbose"}), None, None)
    assert source_vocabulary(plan.info) == [*(f"speaker:train-speaker-{k}" for k in range(3)),
                                            "noise:brown", "noise:hum", "noise:white"]


def test_source_store_options_are_refused_where_they_do_not_apply(store, tmp_path):
    from trainer.train import train

    dataset = str(tmp_path / "dataset")
    write_dataset(dataset, splits={"train": 8, "valid": 4})
    with pytest.raises(ValueError, match="spectrogram dataset, whose records fix the STFT") as err:
        train(dataset, str(tmp_path / "m1"), n_fft=63, epochs=1, verbose=0)
    assert "--n-fft" in flag_terms(str(err.value))
    with pytest.raises(ValueError, match=r"mix \(--noise-level"):
        train(dataset, str(tmp_path / "m2"), mix=MixOptions(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="holds 8000 Hz audio, and examples are mixed at the store's rate"):
        train(store.directory, str(tmp_path / "m3"), sample_rate=16000, epochs=1, verbose=0)
    # Windows longer than every voice: no default steps per epoch, no examples.
    with pytest.raises(ValueError, match=r"'train' split of the source store .* has 0 voices of at least one window"):
        train(store.directory, str(tmp_path / "m4"), window_samples=40000, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="n_fft must be a positive integer or None"):
        TrainConfig(n_fft=0)


def test_resuming_with_other_mixing_is_refused(store, tmp_path):
    import keras

    from trainer.train import train

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise KeyboardInterrupt("killed")

    args = dict(TINY, epochs=2, steps_per_epoch=4, validation_steps=1, backup_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(store.directory, str(tmp_path / "model"), callbacks=[Interrupt()], **args)
    with open(tmp_path / "model" / "training" / "backup" / "training_metadata.json") as f:
        assert json.load(f)["step"] == 2
    with pytest.raises(ValueError, match=r"backup of an interrupted run with other arguments \(mix: .*0\.2, 0\.8"):
        train(store.directory, str(tmp_path / "model"), mix=MixOptions(level_range=(0.1, 0.3)), **args)
    summary = train(store.directory, str(tmp_path / "model"), **args)
    assert summary["epochs_run"] == 2
