"""`predict` on long files: streamed in blocks with bounded memory, the same output as the whole file
at once, progress within a file; files too short to resample; temporaries of killed runs; --workers."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import soundfile

import speech_enhance
from predictor import audio_io
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from test_predict_windows import CONFIG, frame_model, speech_like
from test_predictor import constant_model
from trainer.model_dir import save_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory):
    return save_model_dir(constant_model(CONFIG), str(tmp_path_factory.mktemp("identity")), config=CONFIG,
                          target="noise")


def long_file(path, seconds: float, rate: int, channels: int = 1, subtype: str = "FLOAT") -> np.ndarray:
    """Writes speech-like audio (a different take per channel) and returns it, float32 [samples, channels]."""
    n = int(round(seconds * rate))
    x = np.stack([(0.8 - 0.3 * c) * speech_like(n, rate, seed=c) for c in range(channels)], axis=1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, x, rate, subtype=subtype)
    return x


def whole_file_path(enhancer: Enhancer, x: np.ndarray, rate: int) -> np.ndarray:
    """What `predict` did before streaming: the whole file resampled, enhanced and resampled back at once."""
    y = enhancer.enhance(audio_io.resample(x, rate, enhancer.sample_rate))
    return audio_io.fit_length(audio_io.resample(y, enhancer.sample_rate, rate), x.shape[0])


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 1), (48000, 2)], ids=["8k-mono", "44k-mono", "48k-stereo"])
def test_streamed_file_equals_the_whole_file_path(tmp_path, rate, channels):
    # A model whose output depends on its input and on the frame's place in its window: a block
    # boundary that lost, repeated or shifted a sample, a frame or a window would show.
    enhancer = Enhancer(frame_model(CONFIG, slope=0.6), CONFIG, "mask", batch_size=8)
    x = long_file(str(tmp_path / "in" / "long.wav"), 75.0, rate, channels)
    # high_band="drop": the model's band alone, as the whole-file path gives it (tests/test_predict_high_band.py
    # streams the kept high band).
    summary = enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"), block_seconds=3.7,
                            high_band="drop")
    assert (summary.written, summary.failures) == (1, [])
    y, out_rate = soundfile.read(tmp_path / "out" / "long.wav", dtype="float32", always_2d=True)
    assert out_rate == rate and y.shape == x.shape
    expected = whole_file_path(enhancer, x, rate)
    assert np.sqrt(np.mean((expected - x) ** 2)) > 0.1 * np.sqrt(np.mean(x ** 2))  # it did change the audio
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_downmix_and_model_rate_stream_like_the_whole_file(tmp_path):
    enhancer = Enhancer(frame_model(CONFIG, slope=0.6), CONFIG, "mask", batch_size=8, overlap=0.25)
    x = long_file(str(tmp_path / "in" / "long.wav"), 40.0, 22050, 2)
    enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"), block_seconds=2.9, downmix=True,
                  keep_model_rate=True)
    y, rate = soundfile.read(tmp_path / "out" / "long.wav", dtype="float32")
    mono = audio_io.resample(x.mean(axis=1, keepdims=True), 22050, CONFIG.sample_rate)
    expected = audio_io.fit_length(enhancer.enhance(mono)[:, 0], int(round(x.shape[0] * 8000 / 22050)))
    assert rate == CONFIG.sample_rate and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, atol=1e-5)


def traced_peak(fn) -> int:
    """Peak bytes that Python and numpy allocated while `fn` ran (all threads)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file_length(tmp_path):
    # Holding a whole file's spectrograms costs about 1.2 MB per second of audio (430 MB more for the
    # 8-minute file than for the 2-minute one); streamed, both need a few blocks in flight: 20-30 MB at
    # 16 kHz with the high band kept, the peak depending on how far the reader runs ahead of the model
    # (measured 29.2, 29.4 and 29.7 MB for 2, 8 and 16 minutes in one run, 19.9 MB for 2 in another).
    enhancer = Enhancer(lambda x: np.tanh(x), CONFIG, "mask", batch_size=8, workers=1)
    peaks = {}
    for seconds in (120, 480):
        long_file(str(tmp_path / f"in{seconds}" / "long.wav"), seconds, 16000, subtype="PCM_16")
        peaks[seconds] = traced_peak(lambda: enhance_files(enhancer, str(tmp_path / f"in{seconds}"),
                                                           str(tmp_path / f"out{seconds}")))
    assert peaks[480] < peaks[120] + 15e6, peaks
    assert peaks[480] < 50e6, peaks


def test_progress_is_logged_within_a_long_file(tmp_path, caplog):
    enhancer = Enhancer(lambda x: np.zeros(x.shape[:-1], np.float32), CONFIG, "noise", batch_size=8)
    long_file(str(tmp_path / "in" / "long.wav"), 60.0, 8000)
    with caplog.at_level("INFO", logger="predictor.folders"):
        enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"), progress_interval=0.0)
    within = [r.getMessage() for r in caplog.records if "long.wav: " in r.getMessage()]
    assert len(within) >= 3, within  # 60 s in blocks of 10 s
    seconds = [float(re.search(r"long\.wav: ([\d.]+) of 60\.0 s written", m).group(1)) for m in within]
    assert seconds == sorted(seconds) and any(0 < s < 60 for s in seconds)
    assert "real-time factor n/a" not in within[-1]  # the seconds done so far count


def test_a_file_too_short_to_resample_is_a_failure_not_an_abort(identity_dir, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    os.makedirs(src)
    soundfile.write(str(src / "good.wav"), speech_like(9000), 8000)
    soundfile.write(str(src / "tiny.wav"), np.full((2, 2), 0.1, np.float32), 44100)  # 2 samples: none at 8 kHz
    code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(src), "--output", str(out)])
    assert code == 1
    assert (out / "good.wav").is_file() and not (out / "tiny.wav").exists()
    [failure] = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert (os.path.basename(failure["input"]), failure["reason"]) == ("tiny.wav", "too_short")
    assert "tiny.wav: 2 sample(s) at 44100 Hz" in failure["message"] and "8000 Hz" in failure["message"]
    assert "1 written, 0 skipped (output exists), 1 failed of 2 files" in capsys.readouterr().out


def test_a_file_that_fails_part_way_leaves_nothing_behind(identity_dir, tmp_path):
    # NaN samples 30 s into a 60 s file: the first blocks are already written when they turn up.
    x = speech_like(60 * 8000)
    x[30 * 8000] = np.nan
    os.makedirs(tmp_path / "in")
    soundfile.write(str(tmp_path / "in" / "bad.wav"), x, 8000, subtype="FLOAT")
    soundfile.write(str(tmp_path / "in" / "good.wav"), speech_like(20000), 8000)
    enhancer = Enhancer.from_model_dir(identity_dir, batch_size=8)
    summary = enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"), block_seconds=5.0)
    assert summary.written == 1 and [f["reason"] for f in summary.failures] == ["not_finite"]
    assert sorted(os.listdir(tmp_path / "out")) == ["failures.jsonl", "good.wav"]


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_temporaries_left_by_killed_runs_are_removed_and_nothing_else(identity_dir, tmp_path):
    out = tmp_path / "out"
    os.makedirs(out / "sub")
    os.makedirs(tmp_path / "in")
    soundfile.write(str(tmp_path / "in" / "a.wav"), speech_like(4000), 8000)
    pid = dead_pid()
    # Temporaries are named .NAME.PID-XXXXXXXX.tmp beside NAME (the killed-run test below checks that
    # against what the writer really leaves); any writer's, whatever NAME.
    stale = [str(out / f".a.wav.{pid}-0123abcd.tmp"), str(out / "sub" / f".b.FLAC.{pid}-0123abcd.tmp"),
             str(out / f".failures.jsonl.{pid}-0123abcd.tmp"), str(out / f".notes.txt.{pid}-0123abcd.tmp")]
    kept = [str(out / f".c.wav.{os.getpid()}-0123abcd.tmp"),  # a run that is still writing (this process)
            str(out / ".a.wav.tmp"), str(out / "notes.tmp"), str(out / f".notes.txt.{pid}.tmp"),
            str(out / f"a.wav.{pid}-0123abcd.tmp"), str(out / "sub" / "keep.wav")]
    for path in stale + kept:
        with open(path, "wb") as f:
            f.write(b"partial")
    code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(tmp_path / "in"),
                                "--output", str(out)])
    assert code == 0
    assert [p for p in stale if os.path.exists(p)] == []
    assert [p for p in kept if not os.path.exists(p)] == []
    assert soundfile.info(str(out / "a.wav")).frames == 4000


def test_a_run_killed_while_writing_is_cleaned_up_by_the_next(identity_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    os.makedirs(src)
    noise = 0.1 * np.random.default_rng(0).standard_normal(1800 * 8000)  # half an hour: it takes a while
    soundfile.write(str(src / "long.wav"), noise.astype(np.float32), 8000, subtype="PCM_16")
    command = [sys.executable, os.path.join(REPO, "speech_enhance.py"), "predict", "--model", identity_dir,
               "--input", str(src), "--output", str(out), "--batch-size", "1"]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (os.path.isdir(out) and any(name.endswith(".tmp") for name in os.listdir(out))):
            assert run.poll() is None and time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.01)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait()
    assert [name for name in os.listdir(out) if name.endswith(".tmp")]  # what a killed run leaves
    assert not (out / "long.wav").exists()  # and never a partial file under the final name
    enhancer = Enhancer.from_model_dir(identity_dir, batch_size=64)
    summary = enhance_files(enhancer, str(src), str(out))
    assert summary.written == 1
    assert os.listdir(out) == ["long.wav"]
    assert soundfile.info(str(out / "long.wav")).frames == 1800 * 8000


def test_workers_help_states_the_cap_the_code_uses(capsys):
    with pytest.raises(SystemExit):
        speech_enhance.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cap = int(re.search(r"--workers WORKERS .*?at most (\d+)", text).group(1))
    # The default on machines with more cores than the cap, and with fewer.
    for cores in (64, 4):
        code = f"import os; os.cpu_count = lambda: {cores}; from predictor import enhance; print(enhance.DEFAULT_WORKERS)"
        child = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        assert int(child.stdout) == min(cap, cores)
