"""Training from a source store: examples mixed on the fly (`mixing.on_the_fly.SourceMixer`) as tf.data.

    plan = plan_sources(store, config, mix, augment)   # the model's STFT, the steps, what the families read
    train_ds = training_batches(plan, model_io, first_step=k, end_step=plan.total_steps(config.epochs))
    val_ds = validation_batches(plan, model_io)        # the same examples every epoch and every run

Training step s (0-based, counted over all epochs) is the batch `EpochPlan.batch_indices(s)` of the
training split, mixed with `MixOptions(seed=TrainConfig.seed)`: a batch depends on its step only,
so a run resumed at step k draws what an uninterrupted run draws from step k on. Validation is the
examples 0 .. validation_steps * batch_size - 1 of the validation split under `VALIDATION_SEED`,
mixed once per run and cached.

Each batch is one `SourceMixer.spectrograms` call in a `tf.numpy_function` (parallel, in order),
giving the record features the static pipeline parses (`config.dtype` [B, frames, bins]
spectrograms, string metadata [B]); the family's `model_io` then makes the model's inputs and
targets from them, as it does for a spectrogram dataset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from mixing.on_the_fly import DEFAULT_CACHE_BYTES, VALIDATION_SEED, EpochPlan, SourceMixer
from mixing.options import AugmentOptions, MixOptions
from mixing.workers import MixingProcesses
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import DatasetInfo
from tfrecord_schema.schema import METADATA_FEATURES, SPECTROGRAM_KEYS
from tfrecord_schema.sources import SourceStore
from trainer.config import STFT_OPTIONS, TrainConfig

logger = logging.getLogger(__name__)

# Mixing runs in Python threads (the GIL allows little more), each with its own mixer and cache.
_PARALLEL_BATCHES = max(1, min(4, os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class MixedPlan:
    """What training from a source store reads: the model's STFT, the mixing, the splits and the steps."""

    store: SourceStore
    spectrogram: SpectrogramConfig
    info: DatasetInfo  # what the model families read: the model's STFT and the sources (no splits)
    mix: MixOptions  # its seed is the training seed
    augment: AugmentOptions
    train_split: str
    validation_split: str | None
    batch_size: int
    steps_per_epoch: int
    validation_steps: int | None

    @property
    def epoch_plan(self) -> EpochPlan:
        return EpochPlan(self.steps_per_epoch, self.batch_size)

    def total_steps(self, epochs: int) -> int:
        return epochs * self.steps_per_epoch

    def options(self) -> dict[str, Any]:
        """The mixing as run.json and model.json record it (JSON values: lists, not tuples)."""
        return json.loads(json.dumps({"mix": dataclasses.asdict(self.mix), "augment": self.augment.to_dict()}))


def model_spectrogram(store: SourceStore, config: TrainConfig) -> SpectrogramConfig:
    """The model's STFT: `SpectrogramConfig.for_sample_rate` at the store's rate, with the STFT
    options of `config` given (`TrainConfig.stft_overrides`) replacing its fields. ValueError when
    `config.sample_rate` is not the store's (the mixer does not resample)."""
    overrides = config.stft_overrides()
    rate = overrides.pop("sample_rate", store.sample_rate)
    if rate != store.sample_rate:
        raise ValueError(
            f"sample_rate={rate}: the source store {store.directory} holds {store.sample_rate} Hz audio, and examples "
            f"are mixed at the store's rate. Leave sample_rate unset (the store's rate), or build a store at {rate} Hz "
            f"(`speech-enhance dataset --kind sources --sample-rate {rate}`).")
    return SpectrogramConfig.for_sample_rate(rate, **overrides)


def refuse_mixing_options(dataset_dir: str, config: TrainConfig, mix: MixOptions | None,
                          augment: AugmentOptions | None) -> None:
    """Refuses the options of a source store on a spectrogram dataset, whose records fix the STFT
    and were mixed when it was built."""
    given = [name for name in STFT_OPTIONS if getattr(config, name) is not None]
    given += [f"{name} ({flags})" for name, flags, value in (
        ("mix", "--noise-level, --snr-db, --loudness-dbfs", mix),
        ("augment", "--augment and the augmentation flags", augment)) if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)}: {dataset_dir!r} is a spectrogram dataset, whose records fix the STFT and were mixed "
            "when it was built; these options are for a source store (`speech-enhance dataset --kind sources`). "
            "Leave them out, or train from a source store.")


def _speech_batches(store: SourceStore, split: str, window: int, batch_size: int) -> int:
    """Batches of `window`-sample examples in one pass over `split`'s speech (voices at least a
    window long), at least 1; ValueError when there is no such voice, or no noise."""
    voices = [s.num_samples for s in store.segments(split, "voice") if s.num_samples >= window]
    if not voices or not store.segments(split, "noise"):
        raise ValueError(
            f"The {split!r} split of the source store {store.directory} has {len(voices)} voices of at least one "
            f"window ({window} samples) and {len(store.segments(split, 'noise'))} noises; mixing needs both. "
            "Build the store from more audio, or train with a shorter window_samples.")
    return max(1, sum(voices) // window // batch_size)


def _sources_info(store: SourceStore, spectrogram: SpectrogramConfig, splits: list[str]) -> DatasetInfo:
    """A `DatasetInfo` of the model's STFT listing the voices and noises of `splits` in the dataset job's
    layout, which `trainer.families.source_vocabulary` reads."""
    voices = [{"file": s.file, "speaker_id": s.group, "split": s.split} for split in splits
              for s in store.segments(split, "voice")]
    noises = [{"file": s.file, "noise_class": s.group, "split": s.split} for split in splits
              for s in store.segments(split, "noise")]
    return DatasetInfo(spectrogram=spectrogram, splits={}, sources={"voices": voices, "noises": noises},
                       arguments=store.info.arguments)


def plan_sources(store: SourceStore, config: TrainConfig, mix: MixOptions | None,
                 augment: AugmentOptions | None) -> MixedPlan:
    """Checks `config` against the source store and resolves the model's STFT and the steps.

    Steps per epoch default to one pass over the training split's speech in windows (the sum of its
    voices' samples over the window, in batches); validation steps to one pass over the validation
    split's. A validation split missing from the store (or without voices and noises) is skipped and
    the training loss monitored.
    """
    spectrogram = model_spectrogram(store, config)
    mix = dataclasses.replace(mix or MixOptions(), seed=config.seed)
    augment = augment or AugmentOptions()
    augment.check_sample_rate(store.sample_rate)
    train_split, validation_split = config.train_split, config.validation_split
    if train_split not in store.splits:
        raise ValueError(f"train_split={train_split!r}: the source store {store.directory} has the splits "
                         f"{sorted(store.splits)}.")
    SourceMixer.for_config(store, train_split, mix, spectrogram, augment)  # checks the rate
    steps = config.steps_per_epoch or _speech_batches(store, train_split, spectrogram.window_samples,
                                                      config.batch_size)
    validation_steps = None
    if validation_split is not None and validation_split in store.splits:
        try:
            full = _speech_batches(store, validation_split, spectrogram.window_samples, config.batch_size)
        except ValueError as err:
            logger.warning("%s; monitoring the training loss instead", err)
            validation_split = None
        else:
            validation_steps = config.validation_steps or full
    elif validation_split is not None:
        logger.warning("the source store has no %r split: monitoring the training loss instead", validation_split)
        validation_split = None
    used = [train_split] + ([validation_split] if validation_split else [])
    return MixedPlan(store, spectrogram, _sources_info(store, spectrogram, used), mix, augment, train_split,
                     validation_split, config.batch_size, steps, validation_steps)


class _Mixers(threading.local):
    """One mixer per thread: a mixer's cache of decoded sources is not shared between threads."""

    def __init__(self, plan: MixedPlan, split: str, mix: MixOptions) -> None:
        super().__init__()
        self.mixer = SourceMixer.for_config(plan.store, split, mix, plan.spectrogram, plan.augment,
                                            cache_bytes=DEFAULT_CACHE_BYTES // _PARALLEL_BATCHES)


def mixing_processes(config: TrainConfig) -> int:
    """Worker processes that mix the training batches: `config.mixing_processes`, by default one per
    usable core but one (the training process feeds the accelerator) on hosts of 3 or more cores."""
    if config.mixing_processes is not None:
        return config.mixing_processes
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores - 1 if cores >= 3 else 0


def _features(drawn: dict[str, Any], spectrograms: list[str], metadata: list[str]) -> list[np.ndarray]:
    """A mixed batch as the values of `to_features`: the spectrograms, then metadata strings [B]."""
    strings = [np.array([str(m[k]).encode("utf-8") for m in drawn.get("metadata", [])], dtype=object)
               for k in metadata]
    return [drawn[k] for k in spectrograms] + strings


def _batches(plan: MixedPlan, split: str, mix: MixOptions, first_step: int, end_step: int,
             keys: tuple[str, ...], processes: int = 0) -> tf.data.Dataset:
    """The batches of global steps first_step .. end_step - 1: dicts of the record features `keys`,
    mixed on threads of this process, or in `processes` worker processes (`mixing.workers`)."""
    spectrograms = [k for k in keys if k in SPECTROGRAM_KEYS]
    metadata = [k for k in keys if k in METADATA_FEATURES]
    batch_plan, spectrogram = plan.epoch_plan, plan.spectrogram
    dtype = tf.dtypes.as_dtype(spectrogram.dtype)
    shape = [plan.batch_size, *spectrogram.shape]
    types = [dtype] * len(spectrograms) + [tf.string] * len(metadata)

    def named(values):
        out = {k: tf.ensure_shape(v, shape) for k, v in zip(spectrograms, values)}
        out.update({k: tf.ensure_shape(v, [plan.batch_size]) for k, v in zip(metadata, values[len(spectrograms):])})
        return out

    if processes:
        workers = MixingProcesses(plan.store.directory, split, mix, plan.augment, spectrogram, batch_plan,
                                  spectrograms, processes, metadata=bool(metadata))

        def generate():
            for drawn in workers.batches(first_step, end_step):
                yield tuple(_features(drawn, spectrograms, metadata))

        signature = tuple(tf.TensorSpec(shape if t != tf.string else [plan.batch_size], t) for t in types)
        ds = tf.data.Dataset.from_generator(generate, output_signature=signature).map(lambda *v: named(list(v)))
        return ds.apply(tf.data.experimental.assert_cardinality(end_step - first_step))

    plan.store.segments(split)  # read once here, not by each thread at once
    mixers = _Mixers(plan, split, mix)

    def produce(step):
        drawn = mixers.mixer.spectrograms(batch_plan.batch_indices(int(step)), spectrogram, metadata=bool(metadata),
                                          keys=spectrograms)
        return _features(drawn, spectrograms, metadata)

    def to_features(step):
        return named(tf.numpy_function(produce, [step], types, stateful=False))

    steps = tf.data.Dataset.range(first_step, end_step)
    return steps.map(to_features, num_parallel_calls=_PARALLEL_BATCHES, deterministic=True)


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    # Each batch is drawn whole on this host; a distribution strategy splits it across replicas.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def training_batches(plan: MixedPlan, keys: tuple[str, ...], model_io: Callable, *, first_step: int,
                     end_step: int, processes: int = 0) -> tf.data.Dataset:
    """The model's (inputs, targets) of global steps first_step .. end_step - 1, in order; mixed in
    `processes` worker processes, or on threads of this process (0)."""
    ds = _batches(plan, plan.train_split, plan.mix, first_step, end_step, keys, processes).map(model_io, num_parallel_calls=tf.data.AUTOTUNE,
                                                                       deterministic=True)
    return _with_options(ds.prefetch(tf.data.AUTOTUNE))


def validation_batches(plan: MixedPlan, keys: tuple[str, ...], model_io: Callable) -> tf.data.Dataset | None:
    """The model's (inputs, targets) of the validation batches (None without a validation split): mixed
    on the first pass and kept in memory, so every epoch sees the same examples."""
    if plan.validation_split is None:
        return None
    mix = dataclasses.replace(plan.mix, seed=VALIDATION_SEED)
    ds = _batches(plan, plan.validation_split, mix, 0, plan.validation_steps, keys).cache()
    ds = ds.map(model_io, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_options(ds.prefetch(tf.data.AUTOTUNE))


def training_data_summary(plan: MixedPlan, dataset_dir: str) -> dict[str, Any]:
    """model.json's "training_data" block for a source store."""
    store = plan.store
    return {
        "dataset": dataset_dir,
        "kind": "sources",
        "fingerprint": store.fingerprint(),
        "sample_rate": store.sample_rate,
        "segments": {name: int(store.num_examples(name)) for name in store.splits},
        "contents": store.info.contents,
        "train_split": plan.train_split,
        "validation_split": plan.validation_split,
        "examples_per_epoch": plan.epoch_plan.examples_per_epoch,
        "validation_examples": (plan.validation_steps or 0) * plan.batch_size,
        **plan.options(),
        "arguments": store.info.arguments or {},
    }
