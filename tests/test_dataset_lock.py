"""One build of an output at a time: a second build of the same output is refused, naming the first
(pid, host, start time), whatever its arguments; the lock goes when a build ends, however it ends,
and a lock left by a build that is gone is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import speech_enhance
from beam_pipelines.cli import unknown_beam_args
from conftest import REPO_ROOT
from dataset_fixtures import kill_build_when, make_corpus
from tfrecord_schema import locks, paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(str(root), speakers=5, utterances=1, noises_per_kind=2)


def build_args(corpus, out, examples=300):
    voice_dir, noise_dir = corpus
    return ["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(out), "--num-examples",
            str(examples), "--chunk-size", "2", "--shard-size-mb", "4", "--workers", "1"]


def start(args):
    return subprocess.Popen([sys.executable, "-m", "speech_enhance", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT},
                            start_new_session=True)


def wait_for(condition, proc, timeout_s=60.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.02)
    assert proc.poll() is None, f"the build ended first: {proc.stderr.read()[-2000:]}"


def test_a_second_build_of_the_same_output_is_refused_naming_the_first(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    parts = tmp_path / "ds.incomplete" / "_work" / "parts"
    unknown_beam_args([])  # Beam imported here first, so that the second build is refused in a moment
    first = start(build_args(corpus, out, examples=600))
    try:
        wait_for(lambda: parts.is_dir() and len(os.listdir(parts)) >= 2, first)
        for extra in ([], ["--seed", "1"]):  # the same arguments, and other ones
            assert speech_enhance.main(build_args(corpus, out) + extra) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"pid {first.pid} on host {socket.gethostname()}, started " in err, err
            assert "--output" in err and "ds.incomplete.lock" in err and "--break-lock" in err, err
            assert first.poll() is None and parts.is_dir()  # the live build was left alone
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    with open(out / "dataset_info.json") as f:
        assert sum(s["num_examples"] for s in json.load(f)["splits"].values()) == 600
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no lock, no build folder left


def test_a_lock_left_by_a_killed_build_is_taken_over(corpus, tmp_path):
    out = tmp_path / "ds"
    lock = tmp_path / "ds.incomplete.lock"
    kill_build_when([sys.executable, "-m", "speech_enhance", *build_args(corpus, out)], lock.exists)
    assert lock.exists()  # SIGKILL leaves it; its pid no longer runs on this host
    assert speech_enhance.main(build_args(corpus, out, examples=12)) == 0
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_a_lock_of_another_host_needs_break_lock(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    lock = tmp_path / "ds.incomplete.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "worker-7", "started": "2026-01-02 03:04:05 UTC",
                                "command": "speech-enhance dataset", "token": "x"}))
    assert speech_enhance.main(build_args(corpus, out, examples=12)) == 2
    err = capsys.readouterr().err
    assert "pid 4242 on host worker-7, started 2026-01-02 03:04:05 UTC" in err and "--break-lock" in err
    assert lock.exists() and not out.exists()
    assert speech_enhance.main(build_args(corpus, out, examples=12) + ["--break-lock"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_ctrl_c_releases_the_lock(corpus, tmp_path):
    out = tmp_path / "ds"
    lock = tmp_path / "ds.incomplete.lock"
    parts = tmp_path / "ds.incomplete" / "_work" / "parts"
    # The default SIGINT handler, as a terminal gives it (a child of a session leader has it).
    proc = start(build_args(corpus, out))
    try:
        wait_for(lambda: parts.is_dir() and len(os.listdir(parts)) >= 2, proc)
        assert lock.exists()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not lock.exists()
    assert (tmp_path / "ds.incomplete").is_dir()  # kept for the resume


def test_the_lock_on_a_bucket_is_created_only_if_absent(gcs):
    path = gcs.url("locks/ds.incomplete.lock")
    first, second = locks.FileLock(path, "output='gs://b/ds'"), locks.FileLock(path, "output='gs://b/ds'")
    first.acquire()
    with pytest.raises(locks.LockHeld, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
        second.acquire()
    with pytest.raises(FileExistsError):
        locks.create_exclusive(path, b"{}")
    first.release()
    assert not paths.isfile(path)
    second.acquire()
    second.release()
