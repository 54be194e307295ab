"""`predict` against a hostile user: a full or read-only output disk, an output that is no folder,
a later run into the same output, bad flag values, clashing outputs, an unknown shipped model.

Full disks are small tmpfs mounts and read-only places read-only bind mounts (we run as root in
CI); where mounting is not allowed, the same errors are injected (`_inject`) so that nothing is
skipped.
"""

import contextlib
import errno
import json
import os
import subprocess

import numpy as np
import pytest
import soundfile

import speech_enhance
from predictor import audio_io, folders
from predictor.enhance import Enhancer, enhance_files
from test_predict_windows import CONFIG, speech_like
from test_predictor import constant_model
from trainer.model_dir import save_model_dir


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory):
    return save_model_dir(constant_model(CONFIG), str(tmp_path_factory.mktemp("identity")), config=CONFIG,
                          target="noise")


def write(path, seconds, rate=8000, subtype="FLOAT", seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(str(path), speech_like(int(seconds * rate), rate, seed=seed), rate, subtype=subtype)
    return str(path)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _inject(monkeypatch, folder, code, only=None):
    """Makes writes below `folder` fail with `code` (ENOSPC, EROFS), where no filesystem can be mounted:
    audio writes, and the files `folders` opens for writing (`only`: those whose name holds it)."""
    folder = os.path.realpath(folder)

    def refused(path):
        path = os.path.realpath(path)
        return path.startswith(folder + os.sep) and (only is None or only in os.path.basename(path))

    real_write, real_open = audio_io.AtomicAudioWriter.write, open

    def write(self, samples):
        if refused(self.path):
            raise OSError(code, os.strerror(code), self.path)
        return real_write(self, samples)

    def fake_open(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and refused(path):
            raise OSError(code, os.strerror(code), path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(audio_io.AtomicAudioWriter, "write", write)
    monkeypatch.setattr(folders, "open", fake_open, raising=False)


@contextlib.contextmanager
def small_disk(folder, monkeypatch, free_bytes=None, only=None):
    """`folder` on a 256 KiB tmpfs; with `free_bytes`, a filler leaves only that much free."""
    os.makedirs(folder)
    if not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)):
        _inject(monkeypatch, folder, errno.ENOSPC, only)
        yield
        return
    try:
        if free_bytes is not None:
            with open(os.path.join(folder, ".filler"), "wb") as f:
                f.write(b"\0" * (256 * 1024 - free_bytes))
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def read_only(folder, monkeypatch):
    """`folder`, an empty folder, read-only."""
    os.makedirs(folder)
    source = str(folder) + "-source"
    os.makedirs(source)
    if not _mount("--bind", "-o", "ro", source, str(folder)):
        _inject(monkeypatch, folder, errno.EROFS)
        yield
        return
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def files_below(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("speech-enhance predict: error: ") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_an_unknown_shipped_model_lists_the_shipped_ones(tmp_path, capsys):
    write(tmp_path / "in" / "a.wav", 1.0)
    code = speech_enhance.main(["predict", "--model", "shipped:32k", "--input", str(tmp_path / "in"),
                                "--output", str(tmp_path / "out")])
    assert code == 2
    err = one_line_error(capsys, "--model 'shipped:32k' is no shipped model", "shipped:8k, shipped:16k")
    assert "model.json" not in err
