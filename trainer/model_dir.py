"""A model directory: everything the predictor needs, and nothing else.

    DIR/model.keras   the Keras 3 model (architecture + weights), backend-agnostic
    DIR/model.json    {"format_version", "schema_version", "spectrogram", "target",
                       "model": {...architecture arguments...},
                       "heads": [...] when the model has several outputs (the first is the default),
                       "streaming": {...STFT, latency, state shapes...} for the streaming family,
                       "model_file": {"num_bytes", "sha256"} of model.keras (absent in older directories),
                       "training_data": {...summary of the dataset...},
                       "training": {...how it was trained...}}

The two files are one pair: a new pair replaces the old one as a unit. `save_model_dir` writes the
new pair into a temporary directory beside it, DIR/.model-save-<id>, and renames that directory
to DIR/.model-save-<id>.ready once both files are complete (the commit point), then moves the
two files into place. Readers resolve the pair through any `.ready` directory first (a file still
there is newer than the one in DIR), so a save interrupted at any point leaves readers either the
old complete pair or the new complete pair, never a mix. The next save finishes an interrupted
commit and deletes incomplete temporaries. One writer at a time per directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from typing import Any, Sequence

from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import MODEL_SCHEMA_VERSIONS, SCHEMA_VERSION, check_schema_version
from trainer.targets import check_target

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
INFO_FILE = "model.json"
FORMAT_VERSION = 1
STAGING_PREFIX = ".model-save-"
READY_SUFFIX = ".ready"
_PAIR = (MODEL_FILE, INFO_FILE)  # moved into place in this order
_LEGACY_TEMPORARIES = (".tmp-" + MODEL_FILE, ".tmp-" + INFO_FILE)  # written by earlier versions of this module


def save_model_dir(model, directory: str, *, config: SpectrogramConfig, target: str,
                   model_args: dict[str, Any] | None = None, training_data: dict[str, Any] | None = None,
                   training: dict[str, Any] | None = None, heads: Sequence[str] = (),
                   streaming: dict[str, Any] | None = None) -> str:
    """Writes `model.keras` and `model.json` into `directory` (created); returns the directory.

    `heads` names the model's outputs when it has several (each maps the input to `target`'s range);
    the first is the one the predictor runs unless told otherwise. `streaming` marks a model of the
    streaming family (`trainer.streaming_crn`): its STFT, latency and state shapes, which the
    predictor needs to run it frame by frame.

    The pair replaces an existing pair as a unit (see the module docstring): if the save fails
    or is killed, readers keep seeing the old pair. Other files in `directory` (e.g. the
    `training/` work directory) are left alone.
    """
    check_target(target)
    outputs = len(getattr(model, "outputs", None) or [None])
    if heads and len(heads) != outputs:
        raise ValueError(f"save_model_dir(): heads must name each of the model's {outputs} outputs. "
                         f"Received: heads={list(heads)}")
    info = {
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "spectrogram": config.to_dict(),
        "target": target,
        "model": dict(model_args or {}),
        **({"heads": list(heads)} if heads else {}),
        **({"streaming": dict(streaming)} if streaming else {}),
        "training_data": dict(training_data or {}),
        "training": dict(training or {}),
    }
    json.dumps(info)  # a value JSON cannot hold fails here, before anything is written
    if paths.is_remote(directory):
        _save_remote(model, directory, info)
        return directory
    os.makedirs(directory, exist_ok=True)
    _clean_up_interrupted_saves(directory)
    staging = os.path.join(directory, f"{STAGING_PREFIX}{time.time_ns()}-{os.getpid()}")
    os.mkdir(staging)
    try:
        model_path = os.path.join(staging, MODEL_FILE)
        model.save(model_path)
        _fsync(model_path)
        info["model_file"] = _describe_file(model_path)
        info_path = os.path.join(staging, INFO_FILE)
        with open(info_path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        ready = staging + READY_SUFFIX
        os.rename(staging, ready)  # the commit point: from here on, readers take the new pair
        _fsync(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(ready, directory)
    return directory


def _save_remote(model, directory: str, info: dict[str, Any]) -> None:
    """A bucket has no folder rename: both files are uploaded under temporary names, then renamed into
    place, model.keras first. A reader that meets a new model.keras beside the old model.json is
    refused by the size and SHA-256 that model.json records, never served a mixed pair."""
    with tempfile.TemporaryDirectory() as local:
        model_path = os.path.join(local, MODEL_FILE)
        model.save(model_path)
        info["model_file"] = _describe_file(model_path)
        staged = [paths.temporary_name(paths.join(directory, name)) for name in _PAIR]
        paths.upload_atomic(model_path, staged[0])
        paths.write_atomic(staged[1], json.dumps(info, indent=2, sort_keys=True).encode("utf-8"))
    for tmp, name in zip(staged, _PAIR):
        paths.rename(tmp, paths.join(directory, name))


def _fsync(path: str) -> None:
    """Flushes a file or a directory entry to disk, so a rename never exposes unwritten data after a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe_file(path: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"num_bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def _move_into_place(ready: str, directory: str) -> None:
    """Finishes a committed save: moves the pair's files still in `ready` into `directory`."""
    for name in _PAIR:
        staged = os.path.join(ready, name)
        if os.path.exists(staged):
            os.replace(staged, os.path.join(directory, name))
    os.rmdir(ready)
    _fsync(directory)


def _staged(directory: str) -> tuple[list[str], list[str]]:
    """(committed `.ready` temporaries oldest first, incomplete temporaries) in a local `directory`."""
    names = sorted(os.listdir(directory)) if not paths.is_remote(directory) and os.path.isdir(directory) else []
    ours = [os.path.join(directory, n) for n in names if n.startswith(STAGING_PREFIX)]
    # time_ns ids have the same number of digits for centuries, so names sort by age
    return [p for p in ours if p.endswith(READY_SUFFIX)], [p for p in ours if not p.endswith(READY_SUFFIX)]


def _clean_up_interrupted_saves(directory: str) -> None:
    ready, incomplete = _staged(directory)
    for path in ready:
        logger.warning("finishing an interrupted save of a model into %s", directory)
        _move_into_place(path, directory)
    for path in incomplete:
        logger.info("removing %s, left by a save that was interrupted before it was complete", path)
        shutil.rmtree(path, ignore_errors=True)
    for name in _LEGACY_TEMPORARIES:
        if os.path.isfile(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))


def _pair_paths(directory: str) -> tuple[str, str]:
    """Paths of the current model.keras and model.json, looking into an interrupted commit first."""
    ready, _ = _staged(directory)
    found = []
    for name in _PAIR:
        staged = os.path.join(ready[-1], name) if ready else None
        found.append(staged if staged and os.path.exists(staged) else paths.join(directory, name))
    return found[0], found[1]


def read_model_info(directory: str) -> dict[str, Any]:
    """Reads and checks `model.json` (local or gs://); raises FileNotFoundError/ValueError that say what is wrong."""
    _, path = _pair_paths(directory)
    if not paths.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not a model directory: {INFO_FILE} is missing. Train one with "
            "`speech-enhance train --model-dir DIR`, or omit --model to use the shipped model.")
    try:
        info = json.loads(paths.read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is truncated or corrupt (not valid JSON: {err}). Copy the model directory "
                         "again, or export the model again with `speech-enhance train`.") from err
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model directory format {info.get('format_version')!r} is not "
                         f"{FORMAT_VERSION}; upgrade the toolkit.")
    # Schema 2 added augmentation metadata only: the model's input features are those of schema 1.
    check_schema_version(info.get("schema_version"), path, accepted=MODEL_SCHEMA_VERSIONS)
    info["config"] = SpectrogramConfig.from_dict(info["spectrogram"])
    check_target(info["target"])
    return info


def check_model_file(path: str, recorded: dict[str, Any] | None = None) -> None:
    """Refuses a missing, truncated or corrupt `model.keras` with an error that names it.

    `recorded` is model.json's "model_file" entry (size and SHA-256), when it has one; without it
    the file is checked as a zip archive (a .keras file is one), member checksums included.
    Keras itself would report a truncated file as "File not found".
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the model directory holds {INFO_FILE} but not {MODEL_FILE}. "
                                "Copy the whole model directory, or export the model again with `speech-enhance "
                                "train`.")
    fix = "Copy the model directory again, or export the model again with `speech-enhance train`."
    size = os.path.getsize(path)
    if recorded:
        if size != recorded["num_bytes"]:
            raise ValueError(f"{path} is truncated or corrupt: it is {size} bytes, but {INFO_FILE} records "
                             f"{recorded['num_bytes']} bytes. {fix}")
        if _describe_file(path)["sha256"] != recorded["sha256"]:
            raise ValueError(f"{path} is corrupt: its SHA-256 differs from the one {INFO_FILE} records (the file "
                             f"was damaged, or replaced without its {INFO_FILE}). {fix}")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path} is truncated or corrupt: at {size} bytes it is not a complete .keras (zip) "
                         f"archive ({err}). {fix}") from err
    if damaged is not None:
        raise ValueError(f"{path} is corrupt: its member {damaged!r} fails its checksum. {fix}")


def select_head(info: dict[str, Any], head: str | None, directory: str = "") -> int | None:
    """Index of the output `head` names among model.json's "heads" (None: the first, the default);
    None for a model with one output and no head asked for."""
    heads = info.get("heads") or []
    if head is None:
        return 0 if heads else None
    if head not in heads:
        available = f"its heads are {heads}" if heads else "it has one output and no named heads"
        raise ValueError(f"head={head!r} is not a head of the model in {directory or 'this directory'}: {available}.")
    return heads.index(head)


def load_model_dir(directory: str, compile: bool = False, head: str | None = None):
    """Returns (keras model, info dict with a parsed `config`: SpectrogramConfig).

    For a model with several heads (model.json "heads"), the model returned computes only `head`
    (default: the first); `info["head"]` says which.
    """
    import keras

    info = read_model_info(directory)
    index = select_head(info, head, directory)
    import trainer.families  # noqa: F401  (registers the toolkit's serializable layers)

    model = _load_keras_file(directory, info, compile)
    if index is not None:
        info["head"] = info["heads"][index]
        model = keras.Model(model.inputs, model.outputs[index], name=f"{model.name}_{info['head']}")
    return model, info


def _load_keras_file(directory: str, info: dict[str, Any], compile: bool):
    import keras

    model_path, _ = _pair_paths(directory)
    if paths.is_remote(model_path):
        if not paths.isfile(model_path):
            raise FileNotFoundError(f"{model_path} is missing: the model directory holds {INFO_FILE} but not "
                                    f"{MODEL_FILE}. Copy the whole model directory.")
        with tempfile.TemporaryDirectory() as local:
            local_path = os.path.join(local, MODEL_FILE)
            paths.download(model_path, local_path)
            check_model_file(local_path, info.get("model_file"))
            return keras.saving.load_model(local_path, compile=compile)
    check_model_file(model_path, info.get("model_file"))
    return keras.saving.load_model(model_path, compile=compile)
