"""Small, real spectrogram datasets for tests and benchmarks, written the way the dataset job does.

Each example is derived from audio made on the spot: a "voice" (a gliding harmonic tone with a
syllable-like envelope) and a noise (white, brown-ish or a hum), mixed at a drawn SNR, then turned
into magnitude/phase spectrograms with the toolkit's own STFT. Examples are encoded with
`tfrecord_schema.schema.encode`, written by `ShardWriter` into TFDS-named shards, and described by a
`dataset_info.json` in the documented layout, so the trainer reads them exactly as it would read
the Beam job's output.

    from beam_pipelines.testing import SMALL_CONFIG, write_dataset
    dataset = write_dataset(tmp_path / "ds", config=SMALL_CONFIG, splits={"train": 16, "valid": 8})
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zlib
from typing import Any, Iterator, Mapping

import numpy as np

import tfrecord_schema.schema as schema_module
from beam_pipelines import synthetic
from mixing.augmentation import NO_AUGMENTATION
from mixing.levels import active_level, rms
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.dataset_info import DatasetInfo, SplitInfo, shard_name
from tfrecord_schema.schema import SCHEMA_VERSION, encode
from tfrecord_schema.shard_writer import ShardWriter
from tfrecord_schema.sources import Segment, SourcesInfo, SourceStore, encode_segment, from_pcm16, to_pcm16
from tfrecord_schema.spectrogram import magnitude_phase

# 32 frames x 32 bins (64 ms windows at 8 kHz): big enough for a depth-3 U-Net, small enough that
# a few epochs take seconds on two CPU cores.
SMALL_CONFIG = SpectrogramConfig(window_samples=512, n_fft=63, hop_length=16)

NOISE_CLASSES = synthetic.SIMPLE_NOISE_KINDS
_SPEAKERS = 3  # speaker ids speaker-0..2, assigned round-robin
SNR_RANGE_DB = (-5.0, 15.0)


def _rng(seed: int, example_id: str) -> np.random.Generator:
    # Seeded from (global seed, stable example key), as the dataset job does.
    return np.random.default_rng([seed, zlib.crc32(example_id.encode("utf-8"))])


# The names other tests import; the synthesizers live in beam_pipelines.synthetic.


def make_example(config: SpectrogramConfig, split: str, index: int, seed: int = 0) -> dict[str, Any]:
    """One schema-complete example (four spectrograms [frames, bins] and all metadata)."""
    example_id = f"{split}-{index}"
    rng = _rng(seed, example_id)
    n, sr = config.window_samples, config.sample_rate
    voice = synthetic.chirp(rng, n, sr)
    kind = NOISE_CLASSES[int(rng.integers(len(NOISE_CLASSES)))]
    noise = synthetic.noise(rng, n, sr, kind)
    target_snr = rng.uniform(*SNR_RANGE_DB)
    noise_level = 10.0 ** (-target_snr / 20.0)
    gain = 10.0 ** (rng.uniform(-30.0, -10.0) / 20.0)  # keeps the signal level, not peak-normalised
    clean = gain * voice
    noise = gain * noise_level * noise
    noisy = clean + noise
    snr_db = 10.0 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2))
    noisy_mag, noisy_phase = magnitude_phase(noisy, config)
    clean_mag, clean_phase = magnitude_phase(clean, config)
    return {
        "noisy_magnitude": noisy_mag, "noisy_phase": noisy_phase,
        "clean_magnitude": clean_mag, "clean_phase": clean_phase,
        "example_id": example_id, "split": split,
        "voice_file": f"synthetic/voice-{index % 7}.wav", "voice_offset": int(rng.integers(0, 10 * sr)),
        "speaker_id": f"speaker-{index % _SPEAKERS}",
        "noise_file": f"synthetic/{kind}.wav", "noise_offset": int(rng.integers(0, 10 * sr)),
        "noise_class": kind, "noise_level": float(noise_level), "snr_db": float(snr_db), "gain": float(gain),
        **NO_AUGMENTATION,
    }


@contextlib.contextmanager
def _record_schema_version(version: int | None) -> Iterator[None]:
    """Writes records that claim another schema version (to test that readers refuse them)."""
    if version is None:
        yield
        return
    saved = schema_module.SCHEMA_VERSION
    schema_module.SCHEMA_VERSION = version
    try:
        yield
    finally:
        schema_module.SCHEMA_VERSION = saved


def write_dataset(directory: str | os.PathLike, *, config: SpectrogramConfig = SMALL_CONFIG,
                  splits: Mapping[str, int] | None = None, num_shards: int = 2, compression: str = "",
                  seed: int = 0, info_schema_version: int = SCHEMA_VERSION,
                  record_schema_version: int | None = None, index: bool = True) -> Dataset:
    """Writes a dataset directory (shards + dataset_info.json); returns it as a `Dataset`.

    Examples are dealt round-robin over `num_shards` shards per split (fewer when a split is
    smaller). `info_schema_version` / `record_schema_version` write data that claims another
    schema, for the refusal tests. Uncompressed shards get their record index
    (`tfrecord_schema.shard_index`), listed in dataset_info.json, unless `index=False` (a dataset
    as built before indexes existed).
    """
    splits = dict(splits or {"train": 16, "valid": 8})
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    info_splits: dict[str, SplitInfo] = {}
    with _record_schema_version(record_schema_version):
        for split, count in splits.items():
            shards = max(1, min(num_shards, count))
            writers = [ShardWriter(directory, shard_name(split, i, shards), compression) for i in range(shards)]
            try:
                for number in range(count):
                    writers[number % shards].write(encode(make_example(config, split, number, seed), config))
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            entries = [writer.close() for writer in writers]
            if not index:  # as built before indexes existed
                for entry in entries:
                    if entry.index:
                        os.remove(os.path.join(directory, entry.index))
                entries = [dataclasses.replace(e, index=None, index_bytes=None) for e in entries]
            info_splits[split] = SplitInfo(split, tuple(entries))
    info = DatasetInfo(
        schema_version=info_schema_version,
        spectrogram=config,
        compression=compression,
        seed=seed,
        splits=info_splits,
        histograms={},
        # In the dataset job's layout, listing the speakers and noise classes make_example uses.
        sources={"voice_dir": "synthetic harmonic chirps", "noise_dir": "synthetic noise",
                 "voices": [{"file": f"synthetic/{split}/speaker-{k}.wav", "speaker_id": f"speaker-{k}",
                             "split": split} for split in splits for k in range(_SPEAKERS)],
                 "noises": [{"file": f"synthetic/{kind}.wav", "noise_class": kind, "split": split}
                            for split in splits for kind in NOISE_CLASSES]},
        rejects={},
        arguments={"snr_db_range": list(SNR_RANGE_DB), "gain_db_range": [-30.0, -10.0],
                   "num_examples": sum(splits.values()), "seed": seed},
    )
    info.write(directory)
    return Dataset(directory, info)


def read_raw_records(dataset: Dataset, split: str) -> list[bytes]:
    """Every serialized record of a split, shard by shard, read without TensorFlow."""
    return list(dataset.records(split))


def write_source_store(directory: str | os.PathLike, *, sample_rate: int = 8000,
                       speakers: Mapping[str, int] | None = None, noises_per_class: int = 2,
                       noise_classes: tuple[str, ...] = NOISE_CLASSES, seconds: tuple[float, float] = (1.0, 2.0),
                       seed: int = 0) -> SourceStore:
    """Writes a source store (one shard per split + dataset_info.json, "kind": "sources") from audio
    made on the spot; returns it opened.

    `speakers` gives each split's number of speakers (default {"train": 3, "valid": 2}); each speaker
    has two utterances of `seconds` (LOW, HIGH) seconds of synthetic speech, and each split
    `noises_per_class` noise files per class. Every sample goes through 16-bit PCM (as a 16-bit file
    at the store's rate would), and segments are encoded with `tfrecord_schema.sources.encode_segment`,
    written by `ShardWriter` into TFDS-named shards and described by `SourcesInfo`, as the source
    store job writes them.
    """
    speakers = dict(speakers or {"train": 3, "valid": 2})
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits, contents = {}, {}
    for split, count in speakers.items():
        segments: list[tuple[Segment, np.ndarray]] = []
        for k in range(count):
            speaker = f"{split}-speaker-{k}"
            for utterance in range(2):
                audio = synthetic.speech(rng, int(rng.uniform(*seconds) * sample_rate), sample_rate,
                                         rng.uniform(95.0, 230.0))
                samples = from_pcm16(to_pcm16(0.5 * audio / np.max(np.abs(audio))))
                level = 20.0 * np.log10(max(active_level(samples, sample_rate)[0], 1e-10))
                segments.append((Segment("voice", f"{speaker}/{utterance}.wav", speaker, split, len(samples),
                                         sample_rate, utterance=str(utterance), active_level_dbfs=float(level)),
                                 samples))
        for kind in noise_classes:
            for number in range(noises_per_class):
                audio = synthetic.noise(rng, int(rng.uniform(*seconds) * sample_rate), sample_rate, kind)
                samples = from_pcm16(to_pcm16(0.3 * audio / np.max(np.abs(audio))))
                level = 20.0 * np.log10(max(rms(samples), 1e-10))
                segments.append((Segment("noise", f"{kind}_{split}_{number}.wav", kind, split, len(samples),
                                         sample_rate, utterance=f"{kind}_{split}_{number}",
                                         active_level_dbfs=float(level)), samples))
        writer = ShardWriter(directory, shard_name(split, 0, 1))
        for segment, samples in segments:
            writer.write(encode_segment(samples, segment))
        splits[split] = SplitInfo(split, (writer.close(len(segments)),))
        contents[split] = {role: {"segments": sum(s.role == role for s, _ in segments),
                                  "hours": sum(s.seconds for s, _ in segments if s.role == role) / 3600.0}
                           for role in ("voice", "noise")}
    SourcesInfo(sample_rate=sample_rate, splits=splits, contents=contents,
                arguments={"seed": seed, "sample_rate": sample_rate}).write(directory)
    return SourceStore.open(directory)
