"""A model directory's pair (model.keras + model.json) is replaced as a unit and checked when loaded."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from trainer import model_dir as model_dir_module
from trainer.model_dir import load_model_dir, read_model_info, save_model_dir
from beam_pipelines.testing import SMALL_CONFIG

# Keras 3 on TensorFlow converts tensors with np.array(x), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SMALL_CONFIG.shape, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(inputs)
    return keras.Model(inputs, outputs)


def save(model, directory, **training):
    return save_model_dir(model, str(directory), config=SMALL_CONFIG, target="noise", training=training)


def assert_holds(directory, model, version):
    loaded, info = load_model_dir(str(directory))
    assert info["training"]["version"] == version
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_truncated_model_file_is_reported_as_truncated_not_missing(tmp_path):
    directory = save(tiny_model(0), tmp_path / "m", version=1)
    path = os.path.join(directory, "model.keras")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt: it is {size // 2} bytes, but "
                                         rf"model.json records {size} bytes\. Copy the model directory again"):
        load_model_dir(directory)

    # A directory whose model.json predates the recorded size (like an older export) is checked as a zip.
    info_path = os.path.join(directory, "model.json")
    with open(info_path) as f:
        info = json.load(f)
    del info["model_file"]
    with open(info_path, "w") as f:
        json.dump(info, f)
    with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt: at {size // 2} bytes it is not a "
                                         r"complete \.keras \(zip\) archive"):
        load_model_dir(directory)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=rf"{path} is missing: the model directory holds model.json"):
        load_model_dir(directory)


def test_a_failed_save_leaves_the_old_pair_and_no_temporaries(tmp_path):
    old = tiny_model(0)
    directory = save(old, tmp_path / "m", version=1)
    # A summary value JSON cannot hold: the old code had already replaced model.keras by then.
    with pytest.raises(TypeError, match="not JSON serializable"):
        save(tiny_model(1), directory, version=2, best_loss=np.float32(0.5))
    assert_holds(directory, old, 1)
    assert sorted(os.listdir(directory)) == ["model.json", "model.keras"]


def test_an_interrupted_commit_is_read_as_the_new_pair_and_finished_by_the_next_save(tmp_path):
    old, new = tiny_model(0), tiny_model(1)
    directory = save(old, tmp_path / "m", version=1)
    complete = save(new, tmp_path / "new", version=2)
    # The state a save killed between its two renames leaves: the new model.keras is in place,
    # the new model.json still in the committed temporary directory beside it.
    ready = os.path.join(directory, f"{model_dir_module.STAGING_PREFIX}1700000000000000000-1"
                                    f"{model_dir_module.READY_SUFFIX}")
    os.mkdir(ready)
    shutil.copy(os.path.join(complete, "model.json"), ready)
    shutil.copy(os.path.join(complete, "model.keras"), directory)
    assert read_model_info(directory)["training"]["version"] == 2
    assert_holds(directory, new, 2)

    newest = tiny_model(2)
    save(newest, directory, version=3)
    assert_holds(directory, newest, 3)
    assert sorted(os.listdir(directory)) == ["model.json", "model.keras"]


def test_a_save_killed_while_writing_keeps_the_old_pair_and_its_temporary_is_removed_later(tmp_path):
    old = tiny_model(0)
    directory = save(old, tmp_path / "m", version=1)
    os.makedirs(os.path.join(directory, "training"))  # the work directory lives beside the pair
    script = textwrap.dedent(f"""
        import os, signal, keras
        from trainer.model_dir import save_model_dir
        from beam_pipelines.testing import SMALL_CONFIG

        class Killed(keras.layers.Layer):
            def call(self, x):
                return x

            def save_own_variables(self, store):  # runs while model.keras is being written
                os.kill(os.getpid(), signal.SIGKILL)

        inputs = keras.Input((*SMALL_CONFIG.shape, 1))
        model = keras.Model(inputs, Killed()(keras.layers.Conv2D(1, 3, padding="same")(inputs)))
        save_model_dir(model, {directory!r}, config=SMALL_CONFIG, target="noise", training={{"version": 2}})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    leftovers = [n for n in os.listdir(directory) if n.startswith(model_dir_module.STAGING_PREFIX)]
    assert len(leftovers) == 1 and not leftovers[0].endswith(model_dir_module.READY_SUFFIX)
    assert_holds(directory, old, 1)

    new = tiny_model(1)
    save(new, directory, version=2)
    assert_holds(directory, new, 2)
    assert sorted(os.listdir(directory)) == ["model.json", "model.keras", "training"]
