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

import logging
import math
import os
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.dataset_info import INFO_FILE
from tfrecord_schema.schema import METADATA_FEATURES, READ_SCHEMA_VERSIONS, SPECTROGRAM_KEYS, tf_feature_spec
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


def open_dataset(dataset: str | os.PathLike | Dataset) -> Dataset:
    """`dataset` itself when already open, else `Dataset.open(dataset)` (local path or gs://).

    Raises FileNotFoundError when there is no dataset there, and `SchemaVersionError` (a
    ValueError) when it was written under another schema version.
    """
    if isinstance(dataset, Dataset):
        return dataset
    if not isinstance(dataset, (str, os.PathLike)) or not os.fspath(dataset):
        raise ValueError(f"dataset_dir must be a non-empty path or gs:// URL. Received: dataset_dir={dataset!r}")
    return Dataset.open(dataset)


def steps_per_epoch(dataset: Dataset, split: str, batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass over `split`: floor when the last partial batch is dropped, else ceil."""
    count = dataset.num_examples(split)
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


def _no_shards(dataset: Dataset, split: str) -> None:
    if not dataset.split(split).shards:
        raise ValueError(f"Split {split!r} of {dataset.directory!r} lists no shards; rebuild the dataset.")


def _existing_shards(dataset: Dataset, split: str) -> list[str]:
    _no_shards(dataset, split)
    # One listing instead of one request per shard (cheap on GCS too).
    listed = set(paths.list_files(dataset.directory))
    missing = [dataset.path(shard.file) for shard in dataset.split(split).shards if shard.file not in listed]
    if missing:
        raise _missing_shards(missing, dataset.directory)
    return dataset.shard_paths(split)


def _missing_shards(missing: list[str], dataset_dir: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{len(missing)} shard(s) listed in {INFO_FILE} are missing from {dataset_dir!r}, e.g. "
        f"{missing[0]!r}. The dataset was moved or only partly copied; copy the whole directory.")


class CorruptShardError(ValueError):
    """A shard on disk does not match dataset_info.json, or cannot be read back; the message names it."""


def _verify_hint(dataset_dir: str) -> str:
    return (f"Check the whole dataset with `speech-enhance inspect --verify {dataset_dir}`, then copy the "
            "shard again from where the dataset was built, or rebuild the dataset.")


def refuse_damaged_shards(dataset: Dataset, splits: Sequence[str]) -> None:
    """Refuses to train on a dataset whose shards of `splits` fail `Dataset.check_sizes`, so that an
    interrupted copy is refused before training starts rather than hours into it.

    Raises FileNotFoundError for missing shards and `CorruptShardError` naming the first shard whose
    size differs (with the expected and the actual size).
    """
    for split in splits:
        _no_shards(dataset, split)
    problems = dataset.check_sizes(splits)
    missing = [p.path for p in problems if p.actual is None]
    if missing:
        raise _missing_shards(missing, dataset.directory)
    for p in problems:
        raise CorruptShardError(
            f"Shard {p.path} ({p.split!r} split) is {p.actual} bytes on disk, but {INFO_FILE} expects "
            f"{p.expected} bytes: it was cut short (an interrupted copy?) or rewritten after the "
            f"dataset was built. {_verify_hint(dataset.directory)}")


def raise_for_corrupt_shards(dataset: Dataset, splits: Sequence[str], cause: BaseException) -> None:
    """After tf.data failed with `cause` (a DataLossError), raises `CorruptShardError` naming the
    corrupt shards of `splits` (`Dataset.verify`: tf.data reports a bad record as "corrupted record
    at <offset>" without the file, since the shards are interleaved); returns when every shard reads
    back cleanly (a transient error). This reads the whole of `splits`."""
    logger.error("reading %s failed (%s); reading its shards one by one to find the corrupt one", dataset.directory,
                 getattr(cause, "message", str(cause)).strip().splitlines()[0])
    corrupt, _ = dataset.verify(splits)
    if not corrupt:
        return
    listed = "; ".join(str(problem) for problem in corrupt[:5])
    more = f"; and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""
    raise CorruptShardError(f"{len(corrupt)} shard(s) of {dataset.directory} are corrupt: {listed}{more}. "
                            f"{_verify_hint(dataset.directory)}") from cause


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
        tf.debugging.Assert(
            tf.reduce_all(tf.reduce_any(tf.equal(parsed["schema_version"][:, tf.newaxis],
                                                 tf.constant([READ_SCHEMA_VERSIONS], tf.int64)), axis=1)),
            [f"records were written with another TFRecord schema version; this toolkit reads schema versions "
             f"{', '.join(str(v) for v in READ_SCHEMA_VERSIONS)}. Rebuild the dataset with `speech-enhance dataset`"]),
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


def _batched_records(dataset: str | os.PathLike | Dataset, split: str, batch_size: int, *, shuffle: bool, shuffle_buffer: int, seed: int | None, repeat: bool,
                     drop_remainder: bool, deterministic: bool, cycle_length: int | None,
                     ) -> tuple[tf.data.Dataset, Dataset]:
    _check_batch_size(batch_size)
    if shuffle and (not isinstance(shuffle_buffer, int) or shuffle_buffer < 1):
        raise ValueError(f"shuffle_buffer must be a positive integer. Received: shuffle_buffer={shuffle_buffer!r}")
    dataset = open_dataset(dataset)
    files = _existing_shards(dataset, split)
    ds = _records(files, dataset.compression, shuffle=shuffle, seed=seed,
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
            steps_per_epoch(dataset, split, batch_size, drop_remainder)))
    return ds, dataset


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


def make_dataset(dataset: str | os.PathLike | Dataset, split: str = "train", *, batch_size: int,
                 target: str = "noise", shuffle: bool = True, shuffle_buffer: int = 2048, seed: int | None = None,
                 repeat: bool = False, drop_remainder: bool = False, deterministic: bool = False,
                 cycle_length: int | None = None, loss_weighting: str = "none", keys: Sequence[str] | None = None,
                 model_io: Callable[[dict[str, tf.Tensor]], Any] | None = None) -> tf.data.Dataset:
    """Batches (model input, target) for training or evaluation, both float32 [B, frames, bins, 1].

    With `loss_weighting="magnitude"` each element is (input, target, weights [B, frames, bins]),
    the per-bin sample weights Keras applies to the loss (see `trainer.targets.tf_loss_weight`).

    Args:
        dataset: directory (or gs:// URL) holding dataset_info.json and the shards, or its open `Dataset`.
        split: "train", "valid" or "test".
        batch_size: examples per batch (the global batch under a distribution strategy).
        target: "noise", "mask" or "psa" (see `trainer.targets`).
        shuffle: shuffle shard order and examples (through a buffer of `shuffle_buffer` examples).
        seed: seeds both shuffles; with `deterministic=True` the order is then reproducible.
        repeat: repeat forever (training with a fixed number of steps per epoch).
        drop_remainder: drop the last partial batch, so every batch has a static size (TPU).
        deterministic: keep the interleave and parallel maps in order (tests); slower.
        cycle_length: shards read concurrently (default: min(16, number of shards)).
        loss_weighting: "none" or "magnitude" (see above).
        keys, model_io: for the other model families (`trainer.families`): the record features to
            parse, and a TensorFlow function from the dict of parsed batch tensors to the model's
            (inputs, targets); they replace `target` and `loss_weighting`.
    """
    check_target(target)
    check_loss_weighting(loss_weighting)
    ds, dataset = _batched_records(dataset, split, batch_size, shuffle=shuffle,
                                   shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
                                   drop_remainder=drop_remainder, deterministic=deterministic,
                                   cycle_length=cycle_length)
    config = dataset.config

    if model_io is None:
        keys, model_io = target_keys(target), target_model_io(config, target, loss_weighting)
    elif keys is None:
        raise ValueError("make_dataset(): model_io needs the record keys it reads. Received: keys=None")

    def to_model_io(serialized):
        return model_io(parse_batch(serialized, config, keys=keys))

    ds = ds.map(to_model_io, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return _with_options(ds.prefetch(AUTOTUNE), deterministic)


def raw_batches(dataset: str | os.PathLike | Dataset, split: str = "train", *, batch_size: int = 32,
                shuffle: bool = False, shuffle_buffer: int = 2048, seed: int | None = None,
                drop_remainder: bool = False, deterministic: bool = True,
                cycle_length: int | None = None) -> tf.data.Dataset:
    """Batches of every parsed feature, for tests and inspection (one pass, no shuffle by default).

    Each element is a dict: the four spectrograms as `config.dtype` [B, frames, bins], the
    metadata of `METADATA_FEATURES` [B] (strings as bytes), `schema_version` [B] and `shape` [B, 2].
    """
    ds, dataset = _batched_records(dataset, split, batch_size, shuffle=shuffle,
                                   shuffle_buffer=shuffle_buffer, seed=seed, repeat=False,
                                   drop_remainder=drop_remainder, deterministic=deterministic,
                                   cycle_length=cycle_length)
    config = dataset.config
    keys = (*SPECTROGRAM_KEYS, *METADATA_FEATURES)
    ds = ds.map(lambda s: parse_batch(s, config, keys=keys), num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
    return _with_options(ds.prefetch(AUTOTUNE), deterministic)
