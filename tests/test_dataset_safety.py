"""The dataset job never loses a user's files, takes paths literally, and names what is wrong.

Each test here reproduces a defect found by probing the command line as a hostile but realistic user.
"""

import json
import os
import sys
import time

import pytest

import speech_enhance
from beam_pipelines.cli import unknown_beam_args
from beam_pipelines.launcher import run_dataset
from beam_pipelines.options import DatasetOptions
from dataset_fixtures import kill_build_when, make_corpus, read_tree

SHARD = int(0.6 * 2**20)


def options(voice_dir, noise_dir, output, **kw):
    kw.setdefault("num_examples", 12)
    kw.setdefault("max_shard_bytes", SHARD)
    kw.setdefault("chunk_size", 3)
    return DatasetOptions(voice_dir=str(voice_dir), noise_dir=str(noise_dir), output=str(output), **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(str(root), speakers=5, utterances=1, noises_per_kind=2)


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    user = tmp_path / "recordings"
    (user / "audio").mkdir(parents=True)
    (user / "audio" / "take1.wav").write_bytes(b"precious")
    before = read_tree(user)
    rc = speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(user),
                              "--overwrite", "--num-examples", "6", "--workers", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "holds files that are not part of a dataset ('audio/take1.wav')" in err and "--output" in err
    assert read_tree(user) == before


def test_overwrite_refuses_inputs_inside_the_output(corpus, tmp_path):
    voice_dir, noise_dir = corpus
    out = tmp_path / "ds"
    run_dataset(options(voice_dir, noise_dir, out, write_audio=("test",)), workers=1)
    inner_voices = out / "audio" / "test" / "clean"
    before = read_tree(inner_voices)
    assert before
    with pytest.raises(ValueError, match="voice_dir=.* lies inside output="):
        run_dataset(options(inner_voices, noise_dir, out, overwrite=True), workers=1)
    assert read_tree(inner_voices) == before


def test_glob_characters_in_paths_are_literal(corpus, tmp_path):
    voice_dir, noise_dir = corpus
    group = tmp_path / "g"
    sibling = group / "ds1"
    run_dataset(options(voice_dir, noise_dir, sibling), workers=1)
    sibling_files = read_tree(sibling)
    # `ds[1]` as a pattern matches `ds1`: it must not touch it.
    info = run_dataset(options(voice_dir, noise_dir, group / "ds[1]"), workers=1).info.to_dict()
    run_dataset(options(voice_dir, noise_dir, group / "ds[1]", overwrite=True), workers=1)
    assert read_tree(sibling) == sibling_files
    assert info["name"] == "ds[1]"
    assert os.path.isfile(group / "ds[1]" / "dataset_info.json")
    # `*` in the output and `[` in an input folder's name.
    odd_voices = tmp_path / "voices[take 1]"
    os.rename(voice_dir, odd_voices)
    try:
        star = run_dataset(options(odd_voices, noise_dir, tmp_path / "run*x"), workers=1).info.to_dict()
    finally:
        os.rename(odd_voices, voice_dir)
    assert sum(s["num_examples"] for s in star["splits"].values()) == 12
    assert sorted(os.listdir(tmp_path / "run*x"))[0].startswith("dataset_info.json")


def test_failed_rebuild_keeps_the_old_dataset(corpus, tmp_path):
    voice_dir, noise_dir = corpus
    out = tmp_path / "ds"
    run_dataset(options(voice_dir, noise_dir, out), workers=1)
    before = read_tree(out)
    broken = tmp_path / "broken_voices" / "300" / "1"
    broken.mkdir(parents=True)
    for i in range(4):
        (broken / f"300-1-{i:04d}.wav").write_bytes(b"RIFF not really a wav file")
    with pytest.raises(ValueError, match=r"No usable voice file in split 'train'.*300/1/300-1-0000.wav: unreadable"):
        run_dataset(options(tmp_path / "broken_voices", noise_dir, out, overwrite=True,
                            split_fractions=(1.0, 0.0, 0.0)), workers=1)
    assert read_tree(out) == before
    assert sorted(os.listdir(tmp_path)) == ["broken_voices", "ds"]  # no build folder left behind


def test_every_voice_rejected_names_the_files_not_a_missing_rejects_file(corpus, tmp_path):
    _, noise_dir = corpus
    voices = tmp_path / "v" / "301" / "1"
    voices.mkdir(parents=True)
    (voices / "301-1-0000.wav").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        run_dataset(options(tmp_path / "v", noise_dir, tmp_path / "out", split_fractions=(1.0, 0.0, 0.0)), workers=1)
    assert "301/1/301-1-0000.wav: empty" in str(err.value)
    assert "rejects.jsonl" not in str(err.value)
    assert not os.path.exists(tmp_path / "out")


def test_killed_build_leaves_no_temporaries_after_a_rerun(corpus, tmp_path):
    voice_dir, noise_dir = corpus
    out = tmp_path / "ds"
    build = tmp_path / "ds.incomplete"
    cmd = [sys.executable, "-m", "speech_enhance", "dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir,
           "--output", str(out), "--num-examples", "400", "--chunk-size", "2", "--shard-size-mb", "1",
           "--workers", "1"]
    parts = build / "_work" / "parts"
    kill_build_when(cmd, lambda: parts.is_dir() and len(os.listdir(parts)) >= 3)
    assert not out.exists()
    assert build.is_dir()
    run_dataset(options(voice_dir, noise_dir, out, num_examples=20), workers=1)
    names = [os.path.join(b, f) for b, _, fs in os.walk(tmp_path) for f in fs]
    assert not [n for n in names if ".incomplete" in n], names
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_output_that_cannot_be_a_folder_is_refused_before_the_job(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for output, message in ((a_file, "is an existing file, not a folder"), (a_file / "ds", "is a file, not a folder")):
        rc = speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output",
                                  str(output), "--num-examples", "6", "--workers", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "--output" in err
        assert len(err.splitlines()) == 1, err  # one line, no Beam traceback
    assert a_file.read_text() == "x"


def test_misspelled_options_are_errors_and_beam_options_still_work(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    out = tmp_path / "ds"
    rc = speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(out),
                              "--num-exampels", "30", "--sed", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown option(s) --num-exampels --sed" in err
    assert not out.exists()
    assert unknown_beam_args(["--project", "p", "--region", "r", "--temp_location", "gs://b/t",
                              "--setup_file", "./setup.py", "--max_num_workers=4", "--direct_num_workers", "2"]) == []
    rc = speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(out),
                              "--num-examples", "6", "--runner", "FnApiRunner", "--direct_running_mode=in_memory"])
    assert rc == 0
    with open(out / "dataset_info.json") as f:
        assert json.load(f)["arguments"]["beam_args"] == ["--runner", "FnApiRunner", "--direct_running_mode=in_memory"]


def test_absurd_sizes_are_refused_before_planning(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    started = time.time()
    rc = speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output",
                              str(tmp_path / "ds"), "--num-examples", "1000000000"])
    err = capsys.readouterr().err
    assert rc == 2 and "would take about" in err and "--yes" in err
    assert time.time() - started < 30  # nothing was planned: 10 million chunks take minutes and gigabytes
    assert not (tmp_path / "ds").exists()


def test_inspect_verify_names_truncated_and_corrupt_shards(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    out = tmp_path / "ds"
    info = run_dataset(options(voice_dir, noise_dir, out, num_examples=20), workers=1).info.to_dict()
    assert speech_enhance.main(["inspect", str(out), "--verify", "--examples", "0"]) == 0
    assert "healthy (read all 20 records" in capsys.readouterr().out
    shards = [s for split in info["splits"].values() for s in split["shards"]]
    truncated, flipped = out / shards[0]["file"], out / shards[1]["file"]
    with open(truncated, "r+b") as f:
        f.truncate(shards[0]["num_bytes"] - 100)
    with open(flipped, "r+b") as f:
        f.seek(shards[1]["num_bytes"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    # Without --verify the size check alone finds the truncated shard.
    assert speech_enhance.main(["inspect", str(out), "--examples", "0"]) == 1
    text = capsys.readouterr().out
    assert f"{truncated}: {shards[0]['num_bytes'] - 100} bytes" in text and "truncated" in text
    assert str(flipped) not in text
    assert speech_enhance.main(["inspect", str(out), "--verify", "--examples", "0"]) == 1
    text = capsys.readouterr().out
    assert "DAMAGED: 2 problem(s)" in text
    assert f"{flipped}: corrupt data CRC at record" in text


def test_a_build_folder_stopped_before_its_marker_is_started_over_and_any_other_folder_refused(tmp_path):
    """A build killed between creating its folder and writing its marker leaves only what
    `start_build` writes first: that is removed; a folder holding anything else is never deleted."""
    from beam_pipelines import output_layout as layout
    from tfrecord_schema import paths

    out = str(tmp_path / "ds")
    build = layout.build_dir_for(out)
    os.makedirs(os.path.join(build, "_work"))
    with open(os.path.join(build, "_work", "inputs.json"), "w") as f:
        f.write("{}")
    with open(paths.temporary_name(os.path.join(build, layout.BUILD_MARKER)).replace(str(os.getpid()), "99999999"),
              "w") as f:
        f.write("{")
    assert layout.start_build(out, "fingerprint") == build
    assert sorted(os.listdir(build)) == [layout.BUILD_MARKER]

    other = str(tmp_path / "other")
    os.makedirs(layout.build_dir_for(other))
    with open(os.path.join(layout.build_dir_for(other), "notes.txt"), "w") as f:
        f.write("mine")
    with pytest.raises(FileExistsError, match="was not left by a dataset build"):
        layout.start_build(other, "fingerprint")
    assert os.listdir(layout.build_dir_for(other)) == ["notes.txt"]
