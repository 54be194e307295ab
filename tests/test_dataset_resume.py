"""A dataset build killed part way resumes from what it finished, and gives the same bytes."""

import json
import logging
import os
import shutil
import sys

import speech_enhance
from dataset_fixtures import kill_build_when, make_corpus


def test_a_killed_build_is_resumed_reusing_its_finished_chunks(tmp_path):
    voice_dir, noise_dir = make_corpus(str(tmp_path / "corpus"), speakers=5, utterances=1)
    args = ["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--num-examples", "300",
            "--chunk-size", "2", "--shard-size-mb", "4", "--workers", "1"]
    assert speech_enhance.main(args + ["--output", str(tmp_path / "reference")]) == 0

    out, build = tmp_path / "ds", tmp_path / "ds.incomplete"
    parts = build / "_work" / "parts"
    kill_build_when([sys.executable, "-m", "speech_enhance", *args, "--output", str(out)],
                    lambda: parts.is_dir() and sum(name.endswith(".json") for name in os.listdir(parts)) >= 20)
    finished = sum(name.endswith(".json") for name in os.listdir(build / "_work" / "parts"))
    assert not out.exists() and finished < 150

    assert speech_enhance.main(args + ["--output", str(out)]) == 0
    with open(out / "dataset_info.json") as f:
        info = json.load(f)
    assert info["chunks_reused"] >= finished
    with open(tmp_path / "reference" / "dataset_info.json") as f:
        reference = json.load(f)
    assert reference["chunks_reused"] == 0
    assert info["splits"] == reference["splits"] and info["histograms"] == reference["histograms"]
    for split in info["splits"].values():
        for shard in split["shards"]:
            with open(out / shard["file"], "rb") as a, open(tmp_path / "reference" / shard["file"], "rb") as b:
                assert a.read() == b.read(), shard["file"]
    assert sorted(os.listdir(tmp_path)) == ["corpus", "ds", "reference"]


def test_a_build_left_with_other_arguments_is_not_reused(tmp_path):
    voice_dir, noise_dir = make_corpus(str(tmp_path / "corpus"), speakers=5, utterances=1)
    args = ["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--num-examples", "40", "--workers", "1",
            "--output", str(tmp_path / "ds")]
    assert speech_enhance.main(args + ["--seed", "1"]) == 0
    # Leave a finished build of seed 1 as if it had been killed just before its move into place.
    os.rename(tmp_path / "ds", tmp_path / "ds.incomplete")
    (tmp_path / "ds.incomplete" / "_BUILDING.json").write_text(json.dumps({"fingerprint": "another build"}))
    assert speech_enhance.main(args + ["--seed", "2"]) == 0
    with open(tmp_path / "ds" / "dataset_info.json") as f:
        info = json.load(f)
    assert info["seed"] == 2 and info["chunks_reused"] == 0


def test_a_resumed_build_starts_over_when_inputs_were_replaced_under_the_same_names(tmp_path, caplog):
    voice_dir, noise_dir = make_corpus(str(tmp_path / "corpus"), speakers=5, utterances=1)
    # Other recordings under the same names (make_corpus names files by speaker and utterance).
    other_voices, _ = make_corpus(str(tmp_path / "other"), speakers=5, utterances=1, seed=8)
    args = ["dataset", "--noise-dir", noise_dir, "--num-examples", "200", "--chunk-size", "2", "--shard-size-mb", "4",
            "--workers", "1"]
    out, build = tmp_path / "ds", tmp_path / "ds.incomplete"
    parts = build / "_work" / "parts"
    kill_build_when([sys.executable, "-m", "speech_enhance", *args, "--voice-dir", voice_dir, "--output", str(out)],
                    lambda: parts.is_dir() and sum(name.endswith(".json") for name in os.listdir(parts)) >= 10)
    assert not out.exists()
    replaced = []
    for base, _, names in os.walk(other_voices):
        for name in names:
            target = os.path.join(voice_dir, os.path.relpath(os.path.join(base, name), other_voices))
            shutil.copyfile(os.path.join(base, name), target)
            replaced.append(target)
    assert len(replaced) == 5

    with caplog.at_level(logging.INFO, logger="beam_pipelines"):
        assert speech_enhance.main(args + ["--voice-dir", voice_dir, "--output", str(out)]) == 0
    assert "input files have changed since (5 changed (size or modification time)" in caplog.text
    with open(out / "dataset_info.json") as f:
        info = json.load(f)
    assert info["chunks_reused"] == 0
    # Byte for byte the dataset a fresh build of the new recordings gives.
    assert speech_enhance.main(args + ["--voice-dir", other_voices, "--output", str(tmp_path / "fresh")]) == 0
    with open(tmp_path / "fresh" / "dataset_info.json") as f:
        fresh = json.load(f)
    assert info["sources"]["voices"] == fresh["sources"]["voices"]
    for split in info["splits"].values():
        for shard in split["shards"]:
            with open(out / shard["file"], "rb") as a, open(tmp_path / "fresh" / shard["file"], "rb") as b:
                assert a.read() == b.read(), shard["file"]
