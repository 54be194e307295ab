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
from predictor import audio_io, output_folder
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from test_predict_windows import CONFIG, speech_like
from test_predictor import constant_model
from tfrecord_schema import paths
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
    audio writes, and the files the output folder's checks and the path layer open for writing (`only`:
    those whose name holds it)."""
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
    monkeypatch.setattr(output_folder, "open", fake_open, raising=False)
    monkeypatch.setattr(paths, "open", fake_open, raising=False)


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


def test_a_full_disk_stops_the_run_at_the_first_failed_write(identity_dir, tmp_path, monkeypatch, capsys):
    # Four 20 s float files (640 kB each) into 256 kB: the first write that fails fails for every file.
    for i in range(4):
        write(tmp_path / "in" / f"f{i}.wav", 20.0, seed=i)
    out = tmp_path / "full"
    with small_disk(out, monkeypatch):
        # No threads (workers=0), so that the count below does not depend on their timing.
        enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8, workers=0)
        with pytest.raises(OSError, match=r"f0\.wav: cannot write \(No space left on device\): "
                                          r"the run stopped after 1 of 4 files"):
            enhance_files(enhancer, str(tmp_path / "in"), str(out))
        # The model stopped within the first file instead of running all four (about 42 windows each).
        assert enhancer.windows_run < 42
        assert files_below(out) == []
        # With threads (the default) the same, through the command.
        code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(tmp_path / "in"),
                                    "--output", str(out)])
        assert code == 2
        one_line_error(capsys, "No space left on device", "the run stopped", "run the same command again")
        assert files_below(out) == []  # no output, no temporary


def test_the_list_of_failures_on_a_full_disk_is_one_line_and_leaves_no_temporary(identity_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    src, out = tmp_path / "in", tmp_path / "disk" / "out"
    # Its 16-bit output is 8192 bytes: exactly the space left, so the output fits and the list does not.
    os.makedirs(src)
    soundfile.write(str(src / "good.wav"), 0.1 * speech_like(4074, 8000), 8000, subtype="PCM_16")
    (src / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    with small_disk(tmp_path / "disk", monkeypatch, free_bytes=8192, only=output_folder.FAILURES_FILE):
        code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(src), "--output", str(out)])
        assert code == 2
        one_line_error(capsys, "1 written, 0 skipped, 1 failed of 2 files", "failures.jsonl",
                       "No space left on device")
        assert files_below(out) == ["good.wav"]  # and no .failures.jsonl.PID.tmp


def test_a_read_only_output_is_refused_before_the_model_runs(identity_dir, tmp_path, monkeypatch, capsys):
    write(tmp_path / "in" / "a.wav", 2.0)
    ro = tmp_path / "ro"
    with read_only(ro, monkeypatch):
        enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8)
        with pytest.raises(OSError, match="Read-only file system"):
            enhance_files(enhancer, str(tmp_path / "in"), str(ro / "out"))
        assert enhancer.windows_run == 0
        for runner in ([], ["--runner", "fnapi", "--workers", "1"]):  # --runner wrote its job manifest there
            code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(tmp_path / "in"),
                                        "--output", str(ro / "out"), *runner])
            assert code == 2
            one_line_error(capsys, f"{ro / 'out'}: cannot write there (Read-only file system)")
        assert files_below(ro) == []


def test_a_file_whose_write_fails_leaves_the_model_at_once(identity_dir, tmp_path):
    # out/sub is a file, so the 60 s file's output cannot be written; the other file can.
    write(tmp_path / "in" / "sub" / "long.wav", 60.0)
    write(tmp_path / "in" / "short.wav", 1.0)
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "sub").write_bytes(b"not a folder")
    enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8, workers=0)
    summary = enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"))
    assert summary.written == 1 and [f["reason"] for f in summary.failures] == ["unwritable"]
    # A 60 s file is about 120 windows; it stopped going through the model at its first failed write.
    assert enhancer.windows_run < 40
    assert "long.wav: cannot write (File exists)" in summary.failures[0]["message"]  # the system's words
    assert files_below(tmp_path / "out") == ["failures.jsonl", "short.wav", "sub"]


def test_an_output_that_is_no_folder_is_refused_up_front(identity_dir, tmp_path, monkeypatch, capsys):
    write(tmp_path / "in" / "a.wav", 2.0)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file")
    enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8)
    with pytest.raises(ValueError, match="output_dir must be a folder, but it is a file"):
        enhance_files(enhancer, str(tmp_path / "in"), str(a_file))
    assert enhancer.windows_run == 0  # found before any file went through the model
    for runner in ([], ["--runner", "fnapi", "--workers", "1"]):
        code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(tmp_path / "in"),
                                    "--output", str(a_file / "out"), *runner])
        assert code == 2
        one_line_error(capsys, "--output must be a folder", "which is a file")


def test_an_empty_output_is_refused(identity_dir, tmp_path, monkeypatch, capsys):
    # It would be the current folder.
    write(tmp_path / "in" / "a.wav", 1.0)
    work = tmp_path / "cwd"
    os.makedirs(work)
    monkeypatch.chdir(work)
    code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(tmp_path / "in"), "--output", ""])
    assert code == 2
    one_line_error(capsys, "--output must name a folder")
    assert os.listdir(work) == []


def test_a_later_run_keeps_the_failures_of_files_it_did_not_retry(identity_dir, tmp_path):
    out = str(tmp_path / "out")
    enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8)
    for name in ("a", "b"):
        write(tmp_path / name / f"{name}_good.wav", 1.0)
        (tmp_path / name / f"{name}_bad.wav").write_bytes(b"")

    def listed():
        with open(os.path.join(out, "failures.jsonl")) as f:
            return sorted(os.path.basename(json.loads(line)["input"]) for line in f)

    enhance_files(enhancer, str(tmp_path / "a"), out)
    assert listed() == ["a_bad.wav"]
    summary = enhance_files(enhancer, str(tmp_path / "b"), out)  # other inputs: a_bad.wav was not retried
    assert [os.path.basename(f["input"]) for f in summary.failures] == ["b_bad.wav"]
    assert listed() == ["a_bad.wav", "b_bad.wav"]
    write(tmp_path / "a" / "a_bad.wav", 1.0)  # repaired, then retried: its entry goes, b's stays
    enhance_files(enhancer, str(tmp_path / "a"), out)
    assert listed() == ["b_bad.wav"]
    write(tmp_path / "b" / "b_bad.wav", 1.0)
    enhance_files(enhancer, str(tmp_path / "b"), out)
    assert not os.path.exists(os.path.join(out, "failures.jsonl"))


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_a_bad_progress_interval_is_refused(identity_dir, tmp_path, capsys, value):
    write(tmp_path / "in" / "a.wav", 1.0)
    code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(tmp_path / "in"),
                                "--output", str(tmp_path / "out"), f"--progress-interval={value}"])
    assert code == 2
    one_line_error(capsys, "--progress-interval must be a finite number of seconds >= 0", value)
    assert not os.path.exists(tmp_path / "out")


def test_the_duplicate_output_message_names_its_cause(identity_dir, tmp_path):
    enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8)
    write(tmp_path / "fmt" / "y.flac", 1.0, subtype="PCM_16")
    write(tmp_path / "fmt" / "y.wav", 1.0)
    [clash] = enhance_files(enhancer, str(tmp_path / "fmt"), str(tmp_path / "out1"), output_format="wav").failures
    assert clash["reason"] == "duplicate output"
    assert "--format wav gives both that name" in clash["message"] and "y.flac" in clash["message"]
    write(tmp_path / "case" / "z.wav", 1.0)
    soundfile.write(str(tmp_path / "case" / "z.WAV"), speech_like(8000, 8000), 8000, format="WAV")
    [clash] = enhance_files(enhancer, str(tmp_path / "case"), str(tmp_path / "out2")).failures
    assert "lower case" in clash["message"] and "--format" not in clash["message"]


def test_an_unknown_shipped_model_lists_the_shipped_ones(tmp_path, capsys):
    write(tmp_path / "in" / "a.wav", 1.0)
    code = speech_enhance.main(["predict", "--model", "shipped:32k", "--input", str(tmp_path / "in"),
                                "--output", str(tmp_path / "out")])
    assert code == 2
    err = one_line_error(capsys, "--model 'shipped:32k' is no shipped model", "shipped:8k, shipped:16k")
    assert "model.json" not in err
