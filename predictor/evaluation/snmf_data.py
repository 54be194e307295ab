"""Training frames for the sparse-NMF baseline: magnitude frames from folders of audio, or the
clean and noise spectrograms of a dataset directory's split (read without TensorFlow).

Frames quieter than SILENT_FRAME_DB below their file's loudest are dropped; reading stops once
`max_frames` frames are collected, each subsampled with a seeded `numpy.random.Generator`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np

from beam_pipelines.audio import list_audio
from predictor import audio_io
from predictor.evaluation.nmf import check_positive_int
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.spectrogram import stft

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAMES = 20000
# Frames quieter than this relative to the loudest frame of their file (speech pauses, digital
# silence) carry no spectral shape and are not used for learning.
SILENT_FRAME_DB = -50.0


def _voiced_frames(magnitude: np.ndarray) -> np.ndarray:
    """The frames [n, bins] of `magnitude` louder than SILENT_FRAME_DB below its loudest frame."""
    energy = np.sum(np.square(magnitude, dtype=np.float64), axis=1)
    if energy.size == 0 or energy.max() <= 0:
        return magnitude[:0]
    return magnitude[energy > energy.max() * 10.0 ** (SILENT_FRAME_DB / 10.0)]


def _subsample(frames: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if frames.shape[0] <= count:
        return frames
    return frames[np.sort(rng.choice(frames.shape[0], size=count, replace=False))]


def magnitudes_from_folder(folder: str, config: SpectrogramConfig, *, max_frames: int = DEFAULT_MAX_FRAMES,
                           seed: int = 0, argument: str = "folder") -> np.ndarray:
    """Magnitude frames [n <= max_frames, bins] (float32) of the audio files below `folder`.

    Files (wav/flac/ogg, listed recursively through `tfrecord_schema.paths`, local or gs://) are
    read in an order shuffled by a generator seeded with `seed`, downmixed, resampled to
    `config.sample_rate` and turned into magnitudes with the shared STFT. Near-silent frames are
    dropped; each file gives at most 2 * max_frames / (number of files) random frames, so many
    files contribute, and reading stops once `max_frames` are collected. `argument` names the
    folder in errors (e.g. "speech_dir").
    """
    check_positive_int("max_frames", max_frames)
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"{argument} must be a folder path. Received: {argument}={folder!r}")
    if not paths.is_remote(folder) and not paths.exists_folder(folder):
        raise FileNotFoundError(f"{argument} must be an existing folder of audio files. Received: "
                                f"{argument}={folder!r}")
    files = list_audio(folder)
    if not files:
        raise FileNotFoundError(f"{argument} holds no wav/flac/ogg files to learn from. Received: "
                                f"{argument}={folder!r}")
    rng = np.random.default_rng([seed, len(files)])
    per_file = max(1, math.ceil(2 * max_frames / len(files)))
    collected, total, used = [], 0, 0
    for index in rng.permutation(len(files)):
        path = paths.join(folder, files[index])
        try:
            audio = audio_io.read_audio(path)
        except (audio_io.AudioError, ValueError, OSError) as err:
            logger.warning("snmf: skipping %s, which cannot be read: %s", path, err)
            continue
        mono = audio_io.resample(audio.samples.mean(axis=1), audio.sample_rate, config.sample_rate)
        if mono.shape[0] == 0:
            continue
        frames = _subsample(_voiced_frames(np.abs(stft(mono, config))), per_file, rng)
        if frames.shape[0]:
            collected.append(frames)
            total += frames.shape[0]
            used += 1
        if total >= max_frames:
            break
    if not total:
        raise ValueError(f"{argument} holds only silent or unreadable audio: no frame to learn from. Received: "
                         f"{argument}={folder!r}")
    out = _subsample(np.concatenate(collected), max_frames, rng)
    logger.info("snmf: %d frames from %d of %d files in %s", out.shape[0], used, len(files), folder)
    return out


def _dataset_records(dataset: Dataset, split: str, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    from tfrecord_schema.schema import decode

    shards = dataset.shard_paths(split)
    for index in rng.permutation(len(shards)):
        for record in dataset.shard_records(shards[index]):
            yield decode(record)


def magnitudes_from_dataset(dataset_dir: str, split: str = "train", *, max_frames: int = DEFAULT_MAX_FRAMES,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, SpectrogramConfig]:
    """(clean frames [n, bins], noise frames [m, bins], the dataset's SpectrogramConfig) from TFRecord shards.

    Records of `split` are read in numpy (`tfrecord_schema.records` + `schema.decode`, no
    TensorFlow), shards in an order shuffled with `seed`, and only until both `max_frames` budgets
    are met. The noise magnitude is |noisy - clean| of the complex spectrograms
    (noisy_mag e^{j noisy_phase} - clean_mag e^{j clean_phase}). Near-silent frames are dropped.
    """
    check_positive_int("max_frames", max_frames)
    if not isinstance(dataset_dir, str) or not dataset_dir:
        raise ValueError(f"dataset_dir must be a dataset directory. Received: dataset_dir={dataset_dir!r}")
    dataset = Dataset.open(dataset_dir)
    config = dataset.config
    rng = np.random.default_rng([seed, 1])
    clean_parts, noise_parts, clean_total, noise_total, records = [], [], 0, 0, 0
    for example in _dataset_records(dataset, split, rng):
        records += 1
        clean_mag = example["clean_magnitude"].astype(np.float32)
        noisy = example["noisy_magnitude"].astype(np.float32) * np.exp(1j * example["noisy_phase"].astype(np.float32))
        clean = clean_mag * np.exp(1j * example["clean_phase"].astype(np.float32))
        noise_mag = np.abs(noisy - clean).astype(np.float32)
        if clean_total < max_frames:
            frames = _voiced_frames(clean_mag)
            clean_parts.append(frames)
            clean_total += frames.shape[0]
        if noise_total < max_frames:
            frames = _voiced_frames(noise_mag)
            noise_parts.append(frames)
            noise_total += frames.shape[0]
        if clean_total >= max_frames and noise_total >= max_frames:
            break
    if not records:
        raise ValueError(f"The {split!r} split of dataset_dir holds no records. Received: dataset_dir={dataset_dir!r}")
    if not clean_total or not noise_total:
        raise ValueError(f"The {split!r} split of dataset_dir holds only silent clean or noise spectrograms. "
                         f"Received: dataset_dir={dataset_dir!r}")
    clean = _subsample(np.concatenate(clean_parts), max_frames, rng)
    noise = _subsample(np.concatenate(noise_parts), max_frames, rng)
    logger.info("snmf: %d clean and %d noise frames from %d records of %s (%s)", clean.shape[0], noise.shape[0],
                records, dataset_dir, split)
    return clean, noise, config
