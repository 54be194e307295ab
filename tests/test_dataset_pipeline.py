"""The dataset job end to end on tiny folders, on Beam's real FnApiRunner."""

import json
import os

import numpy as np
import pytest

from beam_pipelines.launcher import run_dataset
from beam_pipelines.options import DatasetOptions
from mixing.options import MixOptions
from dataset_fixtures import add_bad_inputs, make_corpus
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import decode
from tfrecord_schema.dataset_info import SPLITS
from tfrecord_schema.records import read_records
from tfrecord_schema.spectrogram import from_magnitude_phase

SHARD = int(0.6 * 2**20)  # a few examples per shard, so splits have several shards


def options(voice_dir, noise_dir, output, **kw):
    kw.setdefault("num_examples", 40)
    kw.setdefault("max_shard_bytes", SHARD)
    kw.setdefault("chunk_size", 3)
    return DatasetOptions(voice_dir=str(voice_dir), noise_dir=str(noise_dir), output=str(output), **kw)


def read_split(output, info, split):
    records = []
    for shard in info["splits"][split]["shards"]:
        with open(os.path.join(output, shard["file"]), "rb") as f:
            records.extend(decode(r) for r in read_records(f, info["compression"]))
    return records


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    voice_dir, noise_dir = make_corpus(str(root))
    bad = add_bad_inputs(voice_dir, noise_dir)
    return voice_dir, noise_dir, bad


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    voice_dir, noise_dir, _ = corpus
    out = str(tmp_path_factory.mktemp("one") / "ds")
    info = run_dataset(options(voice_dir, noise_dir, out, write_audio=("test",)), workers=1).info.to_dict()
    return out, info


def test_counts_shards_and_info(built):
    out, info = built
    assert {k: v["num_examples"] for k, v in info["splits"].items()} == {"train": 32, "valid": 4, "test": 4}
    train_files = [s["file"] for s in info["splits"]["train"]["shards"]]
    assert train_files == [f"train.tfrecord-{i:05d}-of-{len(train_files):05d}" for i in range(len(train_files))]
    assert len(train_files) > 1
    for split, s in info["splits"].items():
        records = read_split(out, info, split)
        assert len(records) == s["num_examples"]
        assert sorted(r["example_id"] for r in records) == [f"{split}-{i:08d}" for i in range(s["num_examples"])]
        for shard in s["shards"]:
            assert os.path.getsize(os.path.join(out, shard["file"])) == shard["num_bytes"] <= SHARD
    assert not [f for f in os.listdir(out) if "incomplete" in f or paths.final_name(f) or f == "_work"]
    assert info["seed"] == 0 and info["schema_version"] == 3
    assert sum(sum(c) for c in info["histograms"]["snr_db"]["counts"].values()) == 40
    assert len(os.listdir(os.path.join(out, "audio", "test", "noisy"))) == 4


def test_bad_inputs_are_rejected_with_reasons_while_the_job_finishes(corpus, built):
    _, _, bad = corpus
    out, info = built
    with open(os.path.join(out, "rejects.jsonl")) as f:
        rejects = [json.loads(line) for line in f]
    got = {r["file"]: (r["role"], r["reason"]) for r in rejects}
    assert got == bad
    assert all(r["file"] in r["message"] for r in rejects)
    assert info["rejects"]["count"] == len(bad)
    used = {v["file"] for v in info["sources"]["voices"]} | {n["file"] for n in info["sources"]["noises"]}
    assert not used & set(bad)


def test_speakers_and_noise_files_are_disjoint_across_splits(built):
    out, info = built
    speakers, noises = {}, {}
    for split in info["splits"]:
        for r in read_split(out, info, split):
            speakers.setdefault(r["speaker_id"], set()).add(split)
            noises.setdefault(r["noise_file"], set()).add(split)
            assert r["split"] == split
    assert all(len(s) == 1 for s in speakers.values())
    assert all(len(s) == 1 for s in noises.values())
    with open(os.path.join(out, "splits.json")) as f:
        written = json.load(f)
    assert {written["voices"][v["file"]] for v in info["sources"]["voices"]} == set(SPLITS)


def test_recorded_snr_matches_the_written_example(built):
    out, info = built
    config = SpectrogramConfig.from_dict(info["spectrogram"])
    for split in info["splits"]:
        for r in read_split(out, info, split):
            noisy = from_magnitude_phase(r["noisy_magnitude"], r["noisy_phase"], config, config.window_samples)
            clean = from_magnitude_phase(r["clean_magnitude"], r["clean_phase"], config, config.window_samples)
            noise = noisy.astype(np.float64) - clean
            measured = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise ** 2))
            assert abs(measured - r["snr_db"]) < 0.1, (r["example_id"], measured, r["snr_db"])
            assert 0.2 <= r["noise_level"] <= 0.8
            assert np.max(np.abs(noisy)) < 1.0


def test_same_seed_gives_identical_records_with_one_and_two_workers(corpus, built, tmp_path):
    voice_dir, noise_dir, _ = corpus
    out1, info1 = built
    out2 = str(tmp_path / "two")
    info2 = run_dataset(options(voice_dir, noise_dir, out2, write_audio=("test",)), workers=2).info.to_dict()
    files = [s["file"] for split in info1["splits"].values() for s in split["shards"]]
    assert files == [s["file"] for split in info2["splits"].values() for s in split["shards"]]
    for name in files:
        with open(os.path.join(out1, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
            assert a.read() == b.read(), name
    # A different seed gives different examples.
    out3 = str(tmp_path / "other")
    run_dataset(options(voice_dir, noise_dir, out3, num_examples=10, mix=MixOptions(seed=1),
                        max_shard_bytes=8 << 20), workers=1)
    with open(os.path.join(out1, files[0]), "rb") as a, open(os.path.join(out3, "train.tfrecord-00000-of-00001"), "rb") as c:
        assert a.read(1000) != c.read(1000)


def test_snr_range_gzip_and_float32(corpus, tmp_path):
    voice_dir, noise_dir, _ = corpus
    out = str(tmp_path / "snr")
    info = run_dataset(options(voice_dir, noise_dir, out, num_examples=12, compression="GZIP",
                               config=SpectrogramConfig(dtype="float32"),
                               mix=MixOptions(level_range=None, snr_range_db=(-5.0, 15.0))), workers=1).info.to_dict()
    records = read_split(out, info, "train")
    assert records[0]["noisy_magnitude"].dtype == np.float32
    assert all(10 ** (-15 / 20) - 1e-6 <= r["noise_level"] <= 10 ** (5 / 20) + 1e-6 for r in records)


def test_no_usable_input_fails_with_a_clear_error(corpus, tmp_path):
    voice_dir, noise_dir, _ = corpus
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"No voice audio \(wav, flac, ogg\) found under --voice-dir"):
        run_dataset(options(empty, noise_dir, tmp_path / "o1"))
    with pytest.raises(FileNotFoundError, match="Audio folder not found"):
        run_dataset(options(voice_dir, tmp_path / "missing", tmp_path / "o2"))
    only_bad = tmp_path / "bad_voices"
    only_bad.mkdir()
    for i in range(3):
        (only_bad / f"{i}.wav").write_bytes(b"not audio")
    with pytest.raises(Exception, match="No usable voice file in split"):
        run_dataset(options(only_bad, noise_dir, tmp_path / "o3", num_examples=3), workers=1)


def test_existing_dataset_is_not_overwritten_without_flag(corpus, built):
    voice_dir, noise_dir, _ = corpus
    out, _ = built
    with pytest.raises(FileExistsError, match="already holds a dataset. Pass overwrite=True"):
        run_dataset(options(voice_dir, noise_dir, out), workers=1)
