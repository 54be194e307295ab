"""The U-Net: the reference size, save/load round trips, argument checks, mixed precision."""

import ast
import inspect

import keras
import numpy as np
import pytest

import trainer.config
import trainer.model
import trainer.targets
from tfrecord_schema.config import SpectrogramConfig
from trainer.config import ARCHITECTURES, TrainConfig
from trainer.families import FAMILIES, get_family
from trainer.model import build_unet
from trainer.model_dir import load_model_dir, save_model_dir
from beam_pipelines.testing import SMALL_CONFIG

# Keras 3 on TensorFlow converts tensors with np.array(x), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _inputs(config, n=3, seed=0):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, *config.shape, 1)).astype(np.float32)


def test_reference_unet_has_about_1_94_million_parameters():
    model = build_unet(SpectrogramConfig())
    print(f"reference U-Net parameters: {model.count_params():,}")
    assert model.count_params() == 1_941_093
    assert model.input_shape == (None, 128, 128, 1) and model.output_shape == (None, 128, 128, 1)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs[:10]] == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    assert convs[-2].filters == 2 and convs[-1].filters == 1 and convs[-1].kernel_size == (1, 1)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2
    assert all(c.kernel_initializer.__class__.__name__ == "HeNormal" for c in convs)


def test_full_model_round_trips_through_a_model_directory(tmp_path):
    model = build_unet(SpectrogramConfig())
    x = _inputs(SpectrogramConfig(), n=2)
    expected = model.predict(x, verbose=0)
    assert np.all(np.abs(expected) <= 1.0)
    save_model_dir(model, str(tmp_path / "m"), config=SpectrogramConfig(), target="noise",
                   model_args=TrainConfig().model_args())
    loaded, info = load_model_dir(str(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert info["config"] == SpectrogramConfig() and info["model"]["base_filters"] == 16


def test_tiny_model_config_round_trip_and_dropout_only_in_training():
    model = build_unet(SMALL_CONFIG, base_filters=4, depth=3, dropout=0.5)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = _inputs(SMALL_CONFIG)
    np.testing.assert_array_equal(clone(x, training=False), model(x, training=False))
    a, b = (keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2))
    assert not np.array_equal(a, b)


def test_output_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_unet(SMALL_CONFIG, base_filters=4, depth=3)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.layers[-2].compute_dtype == "bfloat16"
    assert model.layers[-1].dtype_policy.name == "float32"
    assert keras.ops.convert_to_numpy(model(_inputs(SMALL_CONFIG))).dtype == np.float32


def test_model_uses_keras_only():
    tree = ast.parse(inspect.getsource(trainer.model))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "typing", "keras", "numpy", "tfrecord_schema", "trainer"}
    # trainer.config and trainer.targets, the trainer modules the model imports, import no TensorFlow
    # when loaded (trainer.targets' TensorFlow twins import it inside their functions).
    for module in (trainer.config, trainer.targets):
        tree = ast.parse(inspect.getsource(module))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
        assert not names & {"keras", "tensorflow"}, module.__name__


def test_every_architecture_has_a_family_and_the_unet_family_passes_its_arguments():
    assert tuple(FAMILIES) == ARCHITECTURES
    model = get_family("unet").build_training_model(SMALL_CONFIG, TrainConfig(base_filters=4, depth=3, dropout=0.0))
    assert model.get_layer("down1a_conv").filters == 4 and model.get_layer("down3b_conv").filters == 16
    assert not [layer for layer in model.layers if "dropout" in layer.name]


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 7}, r"frames and bins must be multiples of 64. Received: shape=\(32, 32\)"),
    ({"depth": 1}, r"depth must be at least 2"),
    ({"base_filters": 0}, r"base_filters must be a positive integer. Received: base_filters=0"),
    ({"base_filters": 8.0}, r"base_filters must be a positive integer. Received: base_filters=8.0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\). Received: dropout=1.0"),
    ({"negative_slope": -0.1}, r"negative_slope must be a number >= 0"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet(SMALL_CONFIG, **kwargs)


def test_config_must_be_a_spectrogram_config():
    with pytest.raises(ValueError, match="config must be a SpectrogramConfig"):
        build_unet((128, 128))
