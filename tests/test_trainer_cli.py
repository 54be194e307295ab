"""`speech-enhance train`: flags, presets, errors, and the installed command end to end."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import speech_enhance
from trainer import cli
from trainer.config import PRESETS, TrainConfig
from beam_pipelines.testing import write_dataset

# Keras 3 on TensorFlow converts tensors with np.array(x), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--base-filters", "4", "--depth", "3", "--batch-size", "4", "--steps-per-epoch", "2",
              "--validation-steps", "1", "--epochs", "1"]


def _train_parser():
    parser = argparse.ArgumentParser()
    return cli.register(parser.add_subparsers())


def test_every_flag_has_help_and_booleans_are_optional_actions():
    parser = _train_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            assert action.type is not bool, action.dest
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--resume", "--no-resume", "--jit-compile", "--no-jit-compile", "--backend", "--tpu"} <= flags


def test_help_answers_without_importing_keras():
    code = ("import sys, speech_enhance; speech_enhance.build_parser(); "
            "print('keras' in sys.modules or 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_presets_fill_in_and_explicit_flags_override():
    parser = _train_parser()
    args = parser.parse_args(["--dataset", "d", "--model-dir", "m", "--preset", "cpu-demo", "--epochs", "1"])
    config, _ = cli.resolve_config(args)
    assert config.epochs == 1 and config.batch_size == PRESETS["cpu-demo"].batch_size
    args = parser.parse_args(["--dataset", "d", "--model-dir", "m", "--preset", "gpu", "--precision", "float32",
                              "--no-resume", "--distribution", "none"])
    config, _ = cli.resolve_config(args)
    assert config.batch_size == 256 and config.precision == "float32" and config.jit_compile is True
    assert config.resume is False and config.distribution is None
    args = parser.parse_args(["--dataset", "d", "--model-dir", "m"])
    assert cli.resolve_config(args)[0] == TrainConfig()


def test_flags_take_their_defaults_choices_and_help_from_train_config():
    parser = _train_parser()
    actions = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        if not field.metadata["cli"]:
            assert field.name not in actions, field.name
            continue
        action = actions[field.name]
        assert action.option_strings[0] == "--" + field.name.replace("_", "-")
        assert action.default is None  # the value comes from TrainConfig (or the preset) unless given
        if field.metadata["choices"]:
            none = {"none"} if field.default is None else set()
            assert set(action.choices) == set(field.metadata["choices"]) | none, field.name
        if not isinstance(field.default, bool) and field.default not in (None, "auto"):
            assert f"(default: {field.default})" in action.help, field.name


def test_library_errors_are_shown_with_flag_names():
    assert (cli.flag_terms("batch_size must be a positive integer. Received: batch_size=0")
            == "--batch-size must be a positive integer. Received: --batch-size 0")
    assert (cli.flag_terms("tpu='local' is only used with distribution='tpu'. Received: distribution=None.")
            == "--tpu 'local' is only used with --distribution 'tpu'. Received: --distribution none.")
    assert cli.flag_terms("pass resume=False to start over") == "pass --no-resume to start over"
    assert cli.flag_terms("an epoch is steps_per_epoch batches") == "an epoch is --steps-per-epoch batches"


def test_train_command_in_process(tmp_path, capsys):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, splits={"train": 8, "valid": 4})
    summary_path = str(tmp_path / "summary.json")
    code = speech_enhance.main(["train", "--dataset", dataset, "--model-dir", str(tmp_path / "model"),
                                "--preset", "cpu-demo", *TINY_FLAGS, "--summary-json", summary_path])
    assert code == 0
    assert "best val_loss" in capsys.readouterr().out
    with open(summary_path) as f:
        summary = json.load(f)
    assert summary["epochs_run"] == 1 and summary["steps_per_epoch"] == 2 and summary["batch_size"] == 4
    assert os.path.isfile(tmp_path / "model" / "model.json")


def test_bad_flags_fail_with_a_message(tmp_path, capsys):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, splits={"train": 4})
    code = speech_enhance.main(["train", "--dataset", dataset, "--model-dir", str(tmp_path / "m"), "--epochs", "0"])
    assert code == 2
    assert "--epochs must be a positive integer. Received: --epochs 0" in capsys.readouterr().err
    code = speech_enhance.main(["train", "--dataset", dataset, "--model-dir", str(tmp_path / "m"),
                                "--tpu", "local"])
    assert code == 2 and "--tpu 'local' is only used with --distribution 'tpu'" in capsys.readouterr().err
    code = speech_enhance.main(["train", "--dataset", str(tmp_path / "none"), "--model-dir", str(tmp_path / "m")])
    assert code == 2 and "not a dataset directory" in capsys.readouterr().err
    # This process already runs Keras on TensorFlow; switching needs a fresh process.
    code = speech_enhance.main(["train", "--dataset", dataset, "--model-dir", str(tmp_path / "m"), "--backend", "jax"])
    assert code == 2 and "already imported with the 'tensorflow' backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speech_enhance.main(["train", "--dataset", dataset, "--model-dir", "m", "--precision", "fp8"])


def test_installed_command_end_to_end(tmp_path):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, splits={"train": 8, "valid": 4})
    command = os.path.join(os.path.dirname(sys.executable), "speech-enhance")
    if not os.path.exists(command):
        pytest.skip("the speech-enhance command is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run([command, "train", "--dataset", dataset, "--model-dir", str(tmp_path / "model"),
                             "--backend", "tensorflow", *TINY_FLAGS, "--target", "mask"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "model" / "model.json") as f:
        info = json.load(f)
    assert info["target"] == "mask" and info["training"]["backend"] == "tensorflow"
    assert "val_loss" in result.stdout + result.stderr  # Keras progress lines


def test_a_finished_model_is_not_replaced_without_overwrite(tmp_path, capsys):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, splits={"train": 8, "valid": 4})
    model_dir = str(tmp_path / "model")
    command = ["train", "--dataset", dataset, "--model-dir", model_dir, "--preset", "cpu-demo", *TINY_FLAGS]
    assert speech_enhance.main(command) == 0
    capsys.readouterr()
    with open(os.path.join(model_dir, "model.json")) as f:
        first = json.load(f)

    assert speech_enhance.main(command) == 2  # a rerun used to retrain from scratch and replace the model
    err = capsys.readouterr().err
    assert f"--model-dir '{model_dir}' already holds a finished model (finished {first['training']['finished']}" in err
    assert f"best val_loss {first['training']['best_val_loss']:.4g}" in err and "Pass --overwrite" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with open(os.path.join(model_dir, "model.json")) as f:
        assert json.load(f) == first

    assert speech_enhance.main([*command, "--overwrite"]) == 0
    with open(os.path.join(model_dir, "model.json")) as f:
        assert json.load(f)["training"]["overwrite"] is True


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_backend_that_is_not_installed_names_the_extra_to_install(tmp_path, backend):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, splits={"train": 4})
    # The backend's package made unimportable in a fresh process (jax is not part of the test install;
    # torch is, so it is hidden the same way): what a user without that extra sees.
    script = (f"import sys; sys.modules[{backend!r}] = None; import speech_enhance; "
              f"sys.exit(speech_enhance.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | {"PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", script, "train", "--dataset", dataset, "--model-dir",
                             str(tmp_path / "m"), "--backend", backend], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]  # was a raw ModuleNotFoundError traceback, rc 1
    assert result.stderr.startswith(f"speech-enhance train: error: --backend {backend} needs the {backend} package")
    assert f"pip install 'speech-enhance[{backend}]'" in result.stderr
    assert f"pip install -e '.[{backend}]'" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
