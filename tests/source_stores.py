"""Source stores for the tests and benchmarks of on-the-fly mixing, made from `beam_pipelines.synthetic`
audio written as 16-bit files at the store's rate (so the store holds them exactly and mixes the
examples the dataset job writes from the same files).

    voice_dir, noise_dir = write_corpus(root, 8000, speakers=8, utterances=3)
    static = run_dataset(DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=..., ...))
    store = write_source_store(root + "/sources", 8000, static_sources(static, voice_dir, noise_dir))
    store = write_source_store(root + "/sources", 8000, folder_sources(voice_dir, noise_dir))   # all "train"
"""

from __future__ import annotations

import json
import os

import numpy as np
import soundfile

from beam_pipelines import synthetic
from beam_pipelines.audio import decode_audio
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.dataset_info import INFO_FILE, shard_name
from tfrecord_schema.shard_writer import ShardWriter
from tfrecord_schema.sources import Segment, SourcesInfo, SourceStore, encode_segment

# (role, file relative to its folder, group, split, folder)
SourceFile = tuple[str, str, str, str, str]


def write_corpus(root: str, rate: int, *, speakers: int = 8, utterances: int = 3, seconds: tuple = (2.0, 4.0),
                 noise_kinds: int = 3, noises_per_kind: int = 3, noise_seconds: tuple = (0.5, 3.0),
                 seed: int = 5) -> tuple[str, str]:
    """(voice folder, noise folder) under `root`: LibriSpeech-style voices SPEAKER/SPEAKER-1-UTT.wav of
    `seconds` (a uniform range) and noises KIND_I.wav with a classes.tsv, all 16-bit PCM at `rate` Hz."""
    rng = np.random.default_rng(seed)
    voice_dir, noise_dir = os.path.join(root, "voices"), os.path.join(root, "noises")
    for s in range(speakers):
        speaker = str(100 + s)
        os.makedirs(os.path.join(voice_dir, speaker), exist_ok=True)
        for u in range(utterances):
            audio = synthetic.speech(rng, int(rng.uniform(*seconds) * rate), rate, rng.uniform(95, 230))
            soundfile.write(os.path.join(voice_dir, speaker, f"{speaker}-1-{u:04d}.wav"),
                            0.5 * audio / np.max(np.abs(audio)), rate, subtype="PCM_16")
    os.makedirs(noise_dir, exist_ok=True)
    rows = ["file\tclass"]
    for kind in synthetic.ENVIRONMENTAL_NOISE_KINDS[:noise_kinds]:
        for i in range(noises_per_kind):
            audio = synthetic.noise(rng, int(rng.uniform(*noise_seconds) * rate), rate, kind)
            soundfile.write(os.path.join(noise_dir, f"{kind}_{i}.wav"), 0.5 * audio / np.max(np.abs(audio)), rate,
                            subtype="PCM_16")
            rows.append(f"{kind}_{i}.wav\t{kind}")
    with open(os.path.join(noise_dir, "classes.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return voice_dir, noise_dir


def static_sources(static: Dataset, voice_dir: str, noise_dir: str) -> list[SourceFile]:
    """The usable files of a dataset the job built from `voice_dir` and `noise_dir`, in its splits."""
    with open(os.path.join(static.directory, INFO_FILE)) as f:
        sources = json.load(f)["sources"]
    return ([("voice", v["file"], v["speaker_id"], v["split"], voice_dir) for v in sources["voices"]] +
            [("noise", n["file"], n["noise_class"], n["split"], noise_dir) for n in sources["noises"]])


def folder_sources(voice_dir: str, noise_dir: str, split: str = "train") -> list[SourceFile]:
    """Every file of `write_corpus`'s folders, in `split` (speaker id: the voice's folder)."""
    voices = [("voice", f"{s}/{f}", s, split, voice_dir) for s in sorted(os.listdir(voice_dir))
              for f in sorted(os.listdir(os.path.join(voice_dir, s)))]
    noises = [("noise", f, f.rsplit("_", 1)[0], split, noise_dir) for f in sorted(os.listdir(noise_dir))
              if f.endswith(".wav")]
    return voices + noises


def write_source_store(directory: str, rate: int, files: list[SourceFile]) -> SourceStore:
    """A source store of `files` (decoded at `rate` Hz as the dataset job decodes them), one shard per split."""
    os.makedirs(directory, exist_ok=True)
    splits = {}
    for split in ("train", "valid", "test"):
        chosen = sorted(f for f in files if f[3] == split)
        if not chosen:
            continue
        writer = ShardWriter(directory, shard_name(split, 0, 1))
        for role, file, group, _, folder in chosen:
            with open(os.path.join(folder, file), "rb") as f:
                samples, _ = decode_audio(f.read(), file, rate)
            writer.write(encode_segment(samples, Segment(role, file, group, split, len(samples), rate)))
        shard = writer.close(len(chosen))
        splits[split] = {"shards": [shard.to_dict()], "num_examples": len(chosen)}
    SourcesInfo(sample_rate=rate, splits=splits).write(directory)
    return SourceStore.open(directory)
