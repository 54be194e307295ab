"""A source store build (`speech-enhance dataset --kind sources`) under interruption, as a spectrogram
build: killed (SIGKILL) while it decodes or while it writes shards, the same command resumes it and
writes the bytes of an uninterrupted build; a second build of the same output is refused while the
first runs; a rerun after inputs were replaced under the same names starts over."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import speech_enhance
from beam_pipelines.cli import unknown_beam_args
from conftest import REPO_ROOT
from dataset_fixtures import kill_build_when, make_corpus, read_tree

SHARD = re.compile(r"^(?:train|valid|test)\.tfrecord-\d{5}-of-\d{5}$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 voices and 8 noises: decoding them takes long enough (seconds) to be caught part way."""
    return make_corpus(str(tmp_path_factory.mktemp("corpus")), speakers=30, utterances=2)


def command(voice_dir: str, noise_dir: str, output) -> list[str]:
    return ["dataset", "--kind", "sources", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output",
            str(output), "--shard-size-mb", "0.1", "--workers", "1"]


def subprocess_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "speech_enhance", *args]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted build of `corpus`, as a folder named "store" (the info names its store)."""
    output = tmp_path_factory.mktemp("reference") / "store"
    assert speech_enhance.main(command(*corpus, output)) == 0
    return output


def comparable(folder) -> dict[str, bytes]:
    """The files of a store, its info without the build's time, command line and input folders."""
    out = read_tree(folder)
    info = json.loads(out.pop("dataset_info.json"))
    del info["build_seconds"], info["arguments"], info["sources"]
    out["dataset_info.json"] = json.dumps(info, sort_keys=True).encode()
    return out


def decoded(build) -> int:
    """The decode records in a build folder's scratch (one per input file decoded)."""
    folder = build / "_work" / "audio"
    return sum(name.endswith(".json") for name in os.listdir(folder)) if folder.is_dir() else 0


def shards(build) -> dict[str, int]:
    """{shard: modification time (ns)} of the whole shards in a build folder."""
    if not build.is_dir():
        return {}
    return {name: os.stat(build / name).st_mtime_ns for name in os.listdir(build) if SHARD.match(name)}


@pytest.mark.parametrize("stage", ["decoding", "writing shards"])
def test_a_killed_build_is_resumed_and_equals_an_uninterrupted_one(corpus, reference, stage, tmp_path, caplog):
    out, build = tmp_path / "store", tmp_path / "store.incomplete"
    ready = (lambda: decoded(build) >= 8) if stage == "decoding" else (lambda: len(shards(build)) >= 1)
    kill_build_when(subprocess_command(command(*corpus, out)), ready)
    assert not out.exists() and (build / "_BUILDING.json").is_file()
    left = shards(build)
    total = sum(1 for name in os.listdir(reference) if SHARD.match(name))
    if stage == "decoding":
        assert not left and 8 <= decoded(build) < 68
    else:
        assert 1 <= len(left) < total

    with caplog.at_level(logging.INFO, logger="beam_pipelines"):
        assert speech_enhance.main(command(*corpus, out)) == 0
    assert "resuming the interrupted build" in caplog.text
    assert comparable(out) == comparable(reference)
    # The shards finished before the kill were kept, not written again.
    assert {name: os.stat(out / name).st_mtime_ns for name in left} == left
    assert sorted(os.listdir(tmp_path)) == ["store"]  # no lock, no build folder left


def test_a_second_build_of_the_same_output_is_refused_naming_the_first(corpus, tmp_path, capsys):
    out, build = tmp_path / "store", tmp_path / "store.incomplete"
    unknown_beam_args([])  # Beam imported here first, so that the second build is refused in a moment
    first = subprocess.Popen(subprocess_command(command(*corpus, out)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT},
                             start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and first.poll() is None and decoded(build) < 2:
            time.sleep(0.02)
        assert first.poll() is None, f"the build ended first: {first.stderr.read()[-2000:]}"
        for extra in ([], ["--sample-rate", "8000"]):  # the same arguments, and other ones
            assert speech_enhance.main(command(*corpus, out) + extra) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"pid {first.pid} on host {socket.gethostname()}, started " in err, err
            assert "store.incomplete.lock" in err and "--break-lock" in err, err
            assert first.poll() is None and build.is_dir()  # the live build was left alone
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert json.loads((out / "dataset_info.json").read_text())["kind"] == "sources"
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_a_resumed_build_starts_over_when_inputs_were_replaced_under_the_same_names(corpus, tmp_path, caplog):
    voice_dir, noise_dir = str(tmp_path / "voices"), corpus[1]
    shutil.copytree(corpus[0], voice_dir)
    # Other recordings under the same names (make_corpus names files by speaker and utterance).
    other_voices, _ = make_corpus(str(tmp_path / "other"), speakers=30, utterances=2, seed=8)
    out, build = tmp_path / "store", tmp_path / "store.incomplete"
    kill_build_when(subprocess_command(command(voice_dir, noise_dir, out)), lambda: decoded(build) >= 8)
    assert not out.exists()
    for speaker in os.listdir(other_voices):
        shutil.rmtree(os.path.join(voice_dir, speaker))
        shutil.copytree(os.path.join(other_voices, speaker), os.path.join(voice_dir, speaker))

    with caplog.at_level(logging.INFO, logger="beam_pipelines"):
        assert speech_enhance.main(command(voice_dir, noise_dir, out)) == 0
    assert "input files have changed since (60 changed (size or modification time)" in caplog.text
    assert "resuming the interrupted build" not in caplog.text
    # Byte for byte the store a fresh build of the new recordings gives (in a folder of the same name).
    fresh = tmp_path / "fresh" / "store"
    assert speech_enhance.main(command(other_voices, noise_dir, fresh)) == 0
    assert comparable(out) == comparable(fresh)
