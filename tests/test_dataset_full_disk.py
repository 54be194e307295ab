"""A dataset build that fills its disk ends with one line that says so, keeps what it finished, and
resumes once space is freed."""

import errno
import os
import subprocess
import sys

import pytest

import speech_enhance
from conftest import REPO_ROOT
from dataset_fixtures import make_corpus, small_filesystem
from tfrecord_schema import paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(str(root), speakers=5, utterances=1, noises_per_kind=2)


def test_a_full_disk_ends_the_build_with_one_line_and_the_rerun_resumes(corpus, tmp_path, capsys, monkeypatch):
    voice_dir, noise_dir = corpus
    disk = tmp_path / "disk"
    out = disk / "ds"
    args = ["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(out), "--num-examples",
            "24", "--workers", "1", "--yes"]
    with small_filesystem(disk, "1m") as mounted:
        if mounted:  # a real full disk: 1 MiB for a dataset of about 3 MiB
            result = subprocess.run([sys.executable, "-m", "speech_enhance", *args], capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": REPO_ROOT}, timeout=120)
            rc, err = result.returncode, result.stderr
        else:  # not root: the same error, injected where the job writes
            real = paths.write_atomic

            def full(path, data):
                if str(disk) in str(path) and str(path).endswith(".npy"):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(path, data)

            monkeypatch.setattr(paths, "write_atomic", full)
            rc, err = speech_enhance.main(args), capsys.readouterr().err
            monkeypatch.setattr(paths, "write_atomic", real)
        assert rc == 2, err
        assert "Traceback" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("speech-enhance dataset: error: --output ") and "no space left on device" in line, line
        assert str(disk / "ds.incomplete") in line and "run the same command again" in line, line
        assert (disk / "ds.incomplete" / "_BUILDING.json").exists()  # kept for the rerun
        assert not (disk / "ds.incomplete.lock").exists()
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        assert speech_enhance.main(args) == 0
        names = [os.path.join(b, f) for b, _, fs in os.walk(disk) for f in fs]
        assert not [n for n in names if ".incomplete" in n or n.endswith(".lock")], names
        assert os.path.isfile(out / "dataset_info.json")
