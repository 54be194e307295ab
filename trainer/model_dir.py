"""A model directory: everything the predictor needs, and nothing else.

    DIR/model.keras   the Keras 3 model (architecture + weights), backend-agnostic
    DIR/model.json    {"format_version", "schema_version", "spectrogram", "target",
                       "model": {...architecture arguments...},
                       "training_data": {...summary of the dataset...},
                       "training": {...how it was trained...}}
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import SCHEMA_VERSION, check_schema_version
from trainer.targets import check_target

MODEL_FILE = "model.keras"
INFO_FILE = "model.json"
FORMAT_VERSION = 1


def save_model_dir(model, directory: str, *, config: SpectrogramConfig, target: str,
                   model_args: dict[str, Any] | None = None, training_data: dict[str, Any] | None = None,
                   training: dict[str, Any] | None = None) -> str:
    """Writes `model.keras` and `model.json` into `directory` (created); returns the directory.

    Both files are written under temporary names and renamed, so a reader never sees half a model.
    """
    check_target(target)
    os.makedirs(directory, exist_ok=True)
    info = {
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "spectrogram": config.to_dict(),
        "target": target,
        "model": dict(model_args or {}),
        "training_data": dict(training_data or {}),
        "training": dict(training or {}),
    }
    tmp_model = os.path.join(directory, ".tmp-" + MODEL_FILE)
    model.save(tmp_model)
    os.replace(tmp_model, os.path.join(directory, MODEL_FILE))
    tmp_info = os.path.join(directory, ".tmp-" + INFO_FILE)
    with open(tmp_info, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(tmp_info, os.path.join(directory, INFO_FILE))
    return directory


def read_model_info(directory: str) -> dict[str, Any]:
    """Reads and checks `model.json`; raises FileNotFoundError/ValueError that say what is wrong."""
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not a model directory: {INFO_FILE} is missing. Train one with "
            "`speech-enhance train --model-dir DIR`, or omit --model to use the shipped model.")
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model directory format {info.get('format_version')!r} is not "
                         f"{FORMAT_VERSION}; upgrade the toolkit.")
    check_schema_version(info.get("schema_version"), path)
    info["config"] = SpectrogramConfig.from_dict(info["spectrogram"])
    check_target(info["target"])
    return info


def load_model_dir(directory: str, compile: bool = False):
    """Returns (keras model, info dict with a parsed `config`: SpectrogramConfig)."""
    import keras

    info = read_model_info(directory)
    import trainer.model  # noqa: F401  (registers the toolkit's serializable layers, if any)

    model = keras.saving.load_model(os.path.join(directory, MODEL_FILE), compile=compile)
    return model, info
