"""Streaming tf.data input pipeline over the shards of a dataset directory (local or gs://).

    shards --interleave(parallel)--> records --shuffle--> batch --parse_example + decode_raw-->
    {noisy_magnitude, clean_magnitude: [B, frames, bins]} --targets--> (x, y) --prefetch-->

Records are batched *before* they are parsed, so `tf.io.parse_example` and `tf.io.decode_raw` run
once per batch instead of once per example. Every stage is a TensorFlow op (no `py_function`), so
the same dataset runs in-process, under the tf.data service, and on TPU hosts.

Model inputs and targets have shape [batch, frames, bins, 1] (float32; three input channels for
the complex mask, `trainer.targets.model_features`); see `trainer.targets`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import INFO_FILE, DatasetInfo, shard_files, shard_sizes, spectrogram_config
from tfrecord_schema.schema import METADATA_FEATURES, SCHEMA_VERSION, SPECTROGRAM_KEYS, tf_feature_spec
from trainer.targets import (check_loss_weighting, check_target, input_channels, target_spectrograms, tf_loss_weight,
                             tf_model_features, tf_model_input, tf_model_target)
from trainer.waveform_loss import tf_packed_spectra

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
def target_keys(target: str) -> tuple[str, ...]:
    """The record features `target_model_io(..., target)` reads: the magnitudes (and the phases for the
    phase-sensitive target), no metadata."""
    return (*target_spectrograms(target), "schema_version", "shape")
# Read buffer per open shard on object stores (gs://...): fewer, larger requests. Local files keep
# TensorFlow's default (256 KiB), which is as fast there.
_REMOTE_READ_BUFFER_BYTES = 8 << 20


def read_dataset_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks `dataset_dir/dataset_info.json` (local path or gs://) through `DatasetInfo.read`;
    returns its dict.

    Raises FileNotFoundError when there is no dataset there, and `SchemaVersionError` (a
    ValueError) when it was written under another schema version.
    """
    if not isinstance(dataset_dir, (str, os.PathLike)) or not os.fspath(dataset_dir):
        raise ValueError(f"dataset_dir must be a non-empty path or gs:// URL. Received: dataset_dir={dataset_dir!r}")
    return DatasetInfo.read(dataset_dir).to_dict()


def num_examples(info: dict[str, Any], split: str) -> int:
    """Examples in `split` according to dataset_info (0 when the split is absent)."""
    entry = info["splits"].get(split)
    return int(entry["num_examples"]) if entry else 0


def steps_per_epoch(info: dict[str, Any], split: str, batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass over `split`: floor when the last partial batch is dropped, else ceil."""
    count = num_examples(info, split)
    steps = count // batch_size if drop_remainder else math.ceil(count / batch_size)
    if steps < 1:
        raise ValueError(
            f"Split {split!r} has {count} examples, fewer than one batch of batch_size={batch_size} "
            f"(drop_remainder={drop_remainder}). Use a smaller --batch-size or a bigger dataset.")
    return steps


def _check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    return batch_size


def _existing_shards(info: dict[str, Any], dataset_dir: str, split: str) -> list[str]:
    files = shard_files(info, dataset_dir, split)
    if not files:
        raise ValueError(f"Split {split!r} of {dataset_dir!r} lists no shards; rebuild the dataset.")
    # One listing instead of one request per shard (cheap on GCS too).
    listed = set(paths.list_files(dataset_dir))
    names = [shard["file"] for shard in info["splits"][split]["shards"]]
    missing = [path for name, path in zip(names, files) if name not in listed]
    if missing:
        raise _missing_shards(missing, dataset_dir)
    return files


def _missing_shards(missing: list[str], dataset_dir: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{len(missing)} shard(s) listed in {INFO_FILE} are missing from {dataset_dir!r}, e.g. "
        f"{missing[0]!r}. The dataset was moved or only partly copied; copy the whole directory.")


class CorruptShardError(ValueError):
    """A shard on disk does not match dataset_info.json, or cannot be read back; the message names it."""


def _verify_hint(dataset_dir: str) -> str:
    return (f"Check the whole dataset with `speech-enhance inspect --verify {dataset_dir}`, then copy the "
            "shard again from where the dataset was built, or rebuild the dataset.")


def check_shard_sizes(info: dict[str, Any], dataset_dir: str | os.PathLike, splits: Sequence[str]) -> None:
    """Compares each shard of `splits` with its size in dataset_info.json (`num_bytes`).

    Raises FileNotFoundError for a missing shard and `CorruptShardError` naming the first shard
    whose size differs (with the expected and the actual size), so that an interrupted copy is
    refused before training starts rather than hours into it. Shards without a recorded size
    are not checked. Sizes are read in parallel: on gs:// each one is a request.
    """
    dataset_dir = os.fspath(dataset_dir)
    for split in splits:
        if not info["splits"][split]["shards"]:
            raise ValueError(f"Split {split!r} of {dataset_dir!r} lists no shards; rebuild the dataset.")
    found = shard_sizes(info, dataset_dir, splits)
    missing = [path for _, _, path, actual in found if actual is None]
    if missing:
        raise _missing_shards(missing, dataset_dir)
    for split, entry, path, actual in found:
        if entry.get("num_bytes") is not None and actual != int(entry["num_bytes"]):
            raise CorruptShardError(
                f"Shard {path} ({split!r} split) is {actual} bytes on disk, but {INFO_FILE} expects "
                f"{int(entry['num_bytes'])} bytes: it was cut short (an interrupted copy?) or rewritten after the "
                f"dataset was built. {_verify_hint(dataset_dir)}")


def find_corrupt_shards(info: dict[str, Any], dataset_dir: str | os.PathLike,
                        splits: Sequence[str]) -> list[tuple[str, str]]:
    """Reads every shard of `splits` on its own; returns (path, TensorFlow's error) for each that fails.

    tf.data reports a bad record as "corrupted record at <offset>" without the file, since the
    shards are interleaved; reading them one by one finds it. This reads the whole split.
    """
    dataset_dir = os.fspath(dataset_dir)
    compression = info.get("compression", "")
    corrupt = []
    for split in splits:
        for path in shard_files(info, dataset_dir, split):
            try:
                for _ in tf.data.TFRecordDataset(path, compression_type=compression).batch(1024):
                    pass
            except tf.errors.OpError as err:
                corrupt.append((path, err.message.strip().splitlines()[0]))
    return corrupt


def raise_for_corrupt_shards(info: dict[str, Any], dataset_dir: str | os.PathLike, splits: Sequence[str],
                             cause: BaseException) -> None:
    """After tf.data failed with `cause` (a DataLossError), raises `CorruptShardError` naming the
    corrupt shards of `splits`; returns when every shard reads back cleanly (a transient error)."""
    dataset_dir = os.fspath(dataset_dir)
    logger.error("reading %s failed (%s); reading its shards one by one to find the corrupt one", dataset_dir,
                 getattr(cause, "message", str(cause)).strip().splitlines()[0])
    corrupt = find_corrupt_shards(info, dataset_dir, splits)
    if not corrupt:
        return
    listed = "; ".join(f"{path}: {error}" for path, error in corrupt[:5])
    more = f"; and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""
    raise CorruptShardError(f"{len(corrupt)} shard(s) of {dataset_dir} are corrupt: {listed}{more}. "
                            f"{_verify_hint(dataset_dir)}") from cause


def dataset_fingerprint(info: dict[str, Any]) -> str:
    """A short hash of what makes a dataset itself, read from its dataset_info.json.

    It covers the schema, spectrogram config, compression, seed, the build arguments and sources,
    and every split's shard list (file, examples, bytes); not the directory, so a copy of a
    dataset (local or gs://) has the same fingerprint and a rebuilt or different one does not.
    """
    identity = {
        "schema_version": info.get("schema_version"),
        "spectrogram": info.get("spectrogram"),
        "compression": info.get("compression", ""),
        "seed": info.get("seed"),
        "arguments": info.get("arguments"),
        "sources": info.get("sources"),
        "splits": {split: [[s.get("file"), s.get("num_examples"), s.get("num_bytes")] for s in entry["shards"]]
                   for split, entry in sorted(info["splits"].items())},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _records(files: Sequence[str], compression: str, *, shuffle: bool, seed: int | None,
             cycle_length: int | None, deterministic: bool) -> tf.data.Dataset:
    """Serialized records of `files`, read `cycle_length` shards at a time in parallel."""
    files_ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = min(cycle_length or 16, len(files))
    buffer_size = _REMOTE_READ_BUFFER_BYTES if "://" in files[0] else None
    return files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=buffer_size),
        cycle_length=cycle, block_length=1, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def parse_batch(serialized: tf.Tensor, config: SpectrogramConfig,
                keys: Sequence[str] | None = None) -> dict[str, tf.Tensor]:
    """Parses a [B] string tensor of records into a dict of batched tensors.

    Spectrogram keys become `config.dtype` tensors [B, frames, bins]; metadata keys [B]. `keys`
    limits parsing to those features (default: all). The records' `schema_version` and `shape`
    are checked in the graph: a mismatch fails the iteration with InvalidArgumentError.
    """
    spec = tf_feature_spec()
    wanted = set(keys or spec) | {"schema_version", "shape"}
    unknown = sorted(wanted - set(spec))
    if unknown:
        raise ValueError(f"parse_batch(): unknown feature keys {unknown}. Known: {sorted(spec)}")
    parsed = tf.io.parse_example(serialized, {k: v for k, v in spec.items() if k in wanted})
    frames, bins = config.shape
    checks = [
        tf.debugging.assert_equal(
            parsed["schema_version"], tf.constant(SCHEMA_VERSION, tf.int64),
            message=(f"records were written with another TFRecord schema version; this toolkit reads "
                     f"schema version {SCHEMA_VERSION}. Rebuild the dataset with `speech-enhance dataset`")),
        tf.debugging.assert_equal(
            parsed["shape"], tf.constant([[frames, bins]], tf.int64),
            message=(f"records hold spectrograms of another shape than the dataset's config "
                     f"({frames} frames x {bins} bins); dataset_info.json does not match the shards")),
    ]
    out: dict[str, tf.Tensor] = {}
    with tf.control_dependencies(checks):
        for key, value in parsed.items():
            if key in SPECTROGRAM_KEYS:
                raw = tf.io.decode_raw(value, tf.dtypes.as_dtype(config.dtype), little_endian=True)
                # The static batch size (when batches are fixed) survives: TPUs need static shapes.
                out[key] = tf.reshape(raw, [value.shape[0] if value.shape[0] is not None else -1, frames, bins])
            else:
                out[key] = tf.identity(value)
    return out


def _batched_records(dataset_dir: str, split: str, batch_size: int, *, info: dict[str, Any] | None,
                     shuffle: bool, shuffle_buffer: int, seed: int | None, repeat: bool,
                     drop_remainder: bool, deterministic: bool, cycle_length: int | None,
                     ) -> tuple[tf.data.Dataset, dict[str, Any]]:
    _check_batch_size(batch_size)
    dataset_dir = os.fspath(dataset_dir)
    if shuffle and (not isinstance(shuffle_buffer, int) or shuffle_buffer < 1):
        raise ValueError(f"shuffle_buffer must be a positive integer. Received: shuffle_buffer={shuffle_buffer!r}")
    info = info if info is not None else read_dataset_info(dataset_dir)
    files = _existing_shards(info, dataset_dir, split)
    ds = _records(files, info.get("compression", ""), shuffle=shuffle, seed=seed,
                  cycle_length=cycle_length, deterministic=deterministic)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                  deterministic=deterministic)
    if not repeat:
        # A known length gives Keras its progress bar and validation length, and checks the shards
        # against the counts of dataset_info.json while reading.
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            steps_per_epoch(info, split, batch_size, drop_remainder)))
    return ds, info


def _with_options(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = deterministic
    # Shards are listed explicitly; let each tf.data worker (or TPU host) take its own files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    return ds.with_options(options)


def target_model_io(config: SpectrogramConfig, target: str, loss_weighting: str = "none") -> Callable:
    """The U-Net's (input, target[, per-bin weights]) from a batch of parsed spectrograms ([B, frames,
    bins] each; `target_keys(target)`), all float32 [B, frames, bins, 1] (weights [B, frames, bins])."""
    check_target(target)
    check_loss_weighting(loss_weighting)

    def model_io(batch):
        noisy, clean = batch["noisy_magnitude"], batch["clean_magnitude"]
        x = tf.ensure_shape(tf_model_input(noisy, config)[..., tf.newaxis], [None, *config.shape, 1])
        t = tf_model_target(noisy, clean, target, config, batch.get("noisy_phase"), batch.get("clean_phase"))
        y = tf.ensure_shape(t[..., tf.newaxis], [None, *config.shape, 1])
        if loss_weighting == "magnitude":
            return x, y, tf.ensure_shape(tf_loss_weight(noisy, config), [None, *config.shape])
        return x, y

    return model_io


# The record features `waveform_model_io` reads: the psa target's, both magnitudes and both phases.
WAVEFORM_KEYS = target_keys("psa")


def waveform_model_io(config: SpectrogramConfig, target: str = "mask") -> Callable:
    """The U-Net's (input, packed spectra) for the waveform losses (trainer/waveform_loss.py): the
    input of `target` (`trainer.targets.tf_model_features`: as `target_model_io`'s, and for "cmask"
    also the noisy phase), and [B, frames, bins, 4] holding the noisy and the clean complex
    spectrum as real and imaginary parts."""
    channels = input_channels(target)

    def model_io(batch):
        x = tf_model_features(batch["noisy_magnitude"], batch["noisy_phase"], target, config)
        x = tf.ensure_shape(x, [None, *config.shape, channels])
        y = tf_packed_spectra(batch["noisy_magnitude"], batch["noisy_phase"], batch["clean_magnitude"],
                              batch["clean_phase"])
        return x, tf.ensure_shape(y, [None, *config.shape, 4])

    return model_io


def make_dataset(dataset_dir: str | os.PathLike, split: str = "train", *, batch_size: int, target: str = "noise",
                 shuffle: bool = True, shuffle_buffer: int = 2048, seed: int | None = None,
                 repeat: bool = False, drop_remainder: bool = False, deterministic: bool = False,
                 cycle_length: int | None = None, info: dict[str, Any] | None = None,
                 loss_weighting: str = "none", keys: Sequence[str] | None = None,
                 model_io: Callable[[dict[str, tf.Tensor]], Any] | None = None) -> tf.data.Dataset:
    """Batches (model input, target) for training or evaluation, both float32 [B, frames, bins, 1].

    With `loss_weighting="magnitude"` each element is (input, target, weights [B, frames, bins]),
    the per-bin sample weights Keras applies to the loss (see `trainer.targets.tf_loss_weight`).

    Args:
        dataset_dir: directory (or gs:// URL) holding dataset_info.json and the shards.
        split: "train", "valid" or "test".
        batch_size: examples per batch (the global batch under a distribution strategy).
        target: "noise", "mask" or "psa" (see `trainer.targets`).
        shuffle: shuffle shard order and examples (through a buffer of `shuffle_buffer` examples).
        seed: seeds both shuffles; with `deterministic=True` the order is then reproducible.
        repeat: repeat forever (training with a fixed number of steps per epoch).
        drop_remainder: drop the last partial batch, so every batch has a static size (TPU).
        deterministic: keep the interleave and parallel maps in order (tests); slower.
        cycle_length: shards read concurrently (default: min(16, number of shards)).
        info: an already-read dataset_info dict, to skip reading it again.
        loss_weighting: "none" or "magnitude" (see above).
        keys, model_io: for the other model families (`trainer.families`): the record features to
            parse, and a TensorFlow function from the dict of parsed batch tensors to the model's
            (inputs, targets); they replace `target` and `loss_weighting`.
    """
    check_target(target)
    check_loss_weighting(loss_weighting)
    ds, info = _batched_records(dataset_dir, split, batch_size, info=info, shuffle=shuffle,
                                shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
                                drop_remainder=drop_remainder, deterministic=deterministic,
                                cycle_length=cycle_length)
    config = spectrogram_config(info)

    if model_io is None:
        keys, model_io = target_keys(target), target_model_io(config, target, loss_weighting)
    elif keys is None:
        raise ValueError("make_dataset(): model_io needs the record keys it reads. Received: keys=None")

    def to_model_io(serialized):
        return model_io(parse_batch(serialized, config, keys=keys))

    ds = ds.map(to_model_io, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return _with_options(ds.prefetch(AUTOTUNE), deterministic)


def raw_batches(dataset_dir: str | os.PathLike, split: str = "train", *, batch_size: int = 32, shuffle: bool = False,
                shuffle_buffer: int = 2048, seed: int | None = None, drop_remainder: bool = False,
                deterministic: bool = True, cycle_length: int | None = None,
                info: dict[str, Any] | None = None) -> tf.data.Dataset:
    """Batches of every parsed feature, for tests and inspection (one pass, no shuffle by default).

    Each element is a dict: the four spectrograms as `config.dtype` [B, frames, bins], the
    metadata of `METADATA_FEATURES` [B] (strings as bytes), `schema_version` [B] and `shape` [B, 2].
    """
    ds, info = _batched_records(dataset_dir, split, batch_size, info=info, shuffle=shuffle,
                                shuffle_buffer=shuffle_buffer, seed=seed, repeat=False,
                                drop_remainder=drop_remainder, deterministic=deterministic,
                                cycle_length=cycle_length)
    config = spectrogram_config(info)
    keys = (*SPECTROGRAM_KEYS, *METADATA_FEATURES)
    ds = ds.map(lambda s: parse_batch(s, config, keys=keys), num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
    return _with_options(ds.prefetch(AUTOTUNE), deterministic)
