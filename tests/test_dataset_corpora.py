"""Several voice and noise folders in one dataset: speakers of different corpora never merge."""

import json
import os

import pytest

import speech_enhance
from beam_pipelines.options import DatasetOptions
from beam_pipelines.planning import corpus_tags
from dataset_fixtures import add_bad_inputs, make_corpus
from tfrecord_schema.schema import decode
from tfrecord_schema.records import read_records


def records(output, info):
    out = []
    for split in info["splits"].values():
        for shard in split["shards"]:
            with open(os.path.join(output, shard["file"]), "rb") as f:
                out += [decode(r) for r in read_records(f, info["compression"])]
    return out


def test_two_corpora_keep_their_speakers_apart(tmp_path):
    # Both corpora hold speakers 200..204 under folders of the same name, "voices".
    voices_a, noises_a = make_corpus(str(tmp_path / "a"), speakers=5, utterances=1, noises_per_kind=1, seed=1)
    voices_b, noises_b = make_corpus(str(tmp_path / "b"), speakers=5, utterances=1, noises_per_kind=1, seed=2)
    bad = add_bad_inputs(voices_b, noises_b)
    out = tmp_path / "ds"
    rc = speech_enhance.main(["dataset", "--voice-dir", voices_a, "--voice-dir", voices_b, "--noise-dir", noises_a,
                              "--noise-dir", noises_b, "--output", str(out), "--num-examples", "30",
                              "--workers", "1"])
    assert rc == 0
    with open(out / "dataset_info.json") as f:
        info = json.load(f)
    assert info["sources"]["voice_dir"] == [voices_a, voices_b]
    assert info["sources"]["noise_classes"] == [os.path.join(noises_a, "classes.tsv"),
                                                os.path.join(noises_b, "classes.tsv")]
    speakers = {v["speaker_id"] for v in info["sources"]["voices"]}
    assert speakers == {f"voices-{c}:{200 + s}" for c in (1, 2) for s in range(5)}
    assert {v["file"].split("/")[0] for v in info["sources"]["voices"]} == {"voices-1", "voices-2"}
    assert {n["noise_class"] for n in info["sources"]["noises"]} == {"clock", "alarm", "vacuum", "traffic"}
    # Rejects are named as the files are: with their folder's tag.
    with open(out / "rejects.jsonl") as f:
        rejected = {json.loads(line)["file"] for line in f}
    tagged = {(f"voices-2/{rel}" if role == "voice" else f"noises-2/{rel}") for rel, (role, _) in bad.items()}
    assert rejected == tagged
    # Every speaker, including the two 200s, lives in one split only; records name the tagged files.
    split_of = {}
    for r in records(out, info):
        assert split_of.setdefault(r["speaker_id"], r["split"]) == r["split"]
        assert r["voice_file"].startswith(("voices-1/", "voices-2/"))
        assert r["noise_file"].startswith(("noises-1/", "noises-2/"))
    with open(out / "splits.json") as f:
        split_files = json.load(f)["voices"]
    assert set(split_files) == {v["file"] for v in info["sources"]["voices"]} | {
        name for name in rejected if name.startswith("voices-")}


def test_folder_tags_and_options():
    assert corpus_tags(["/d/LibriSpeech/train-clean-100"]) == [""]
    assert corpus_tags(["/d/LibriSpeech/train-clean-100", "gs://b/dns-8k/"]) == ["train-clean-100", "dns-8k"]
    assert corpus_tags(["/a/speech", "/b/speech", "/c/other"]) == ["speech-1", "speech-2", "other"]
    # One folder is kept as itself: the same file names, speaker ids and dataset_info as ever.
    assert DatasetOptions(voice_dir=["/v"], noise_dir="/n", output="/o", num_examples=1).voice_dir == "/v"
    opts = DatasetOptions(voice_dir=["/v", "/w"], noise_dir="/n", output="/o", num_examples=1)
    assert opts.voice_dir == ("/v", "/w") and opts.voice_dirs == ("/v", "/w") and opts.noise_dirs == ("/n",)
    with pytest.raises(ValueError, match="voice_dir names a folder more than once"):
        DatasetOptions(voice_dir=["/v", "/v"], noise_dir="/n", output="/o", num_examples=1)


def test_an_empty_folder_among_several_is_named(tmp_path, capsys):
    voices, noises = make_corpus(str(tmp_path / "a"), speakers=4, utterances=1, noises_per_kind=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = speech_enhance.main(["dataset", "--voice-dir", voices, "--voice-dir", str(empty), "--noise-dir", noises,
                              "--output", str(tmp_path / "ds"), "--num-examples", "6", "--workers", "1"])
    assert rc == 2
    assert f"No voice audio (wav, flac, ogg) found under --voice-dir {str(empty)!r}" in capsys.readouterr().err
