"""`predict --file-processes N`: the file side in worker processes gives the threaded path's outputs,
reports bad files, resumes, refuses bad values and stops cleanly on KeyboardInterrupt."""

import json
import logging
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import soundfile

import speech_enhance
from predictor.enhance import PRETRAINED_DIR, Enhancer
from predictor.folders import enhance_files
from predictor.file_processes import FileProcesses
from test_predict_windows import CONFIG, frame_model, speech_like
from trainer.model_dir import save_model_dir

# (relative path, seconds, rate, channels): shorter than a window, several blocks long, stereo, above
# the model's rate (the high band is kept and mixed back on the writing side), flac.
FILES = [("a/short.wav", 0.6, 8000, 1), ("a/long.wav", 12.3, 16000, 1), ("b/stereo.wav", 4.2, 22050, 2),
         ("b/wide.wav", 6.1, 44100, 1), ("c/plain.flac", 3.3, 8000, 1)]
BLOCK_SECONDS = 2.3  # several blocks per file, so streaming across messages is exercised


def write_folder(folder, files=FILES):
    inputs = {}
    for i, (rel, seconds, rate, channels) in enumerate(files):
        n = int(round(seconds * rate))
        x = np.stack([(0.8 - 0.3 * c) * speech_like(n, rate, seed=10 * i + c) for c in range(channels)], axis=1)
        # Something above 4 kHz for the high band: a 6 kHz tone in the wide file.
        if rate > 16000:
            x += 0.05 * np.sin(2 * np.pi * 6000 * np.arange(n) / rate)[:, None]
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        soundfile.write(path, x, rate, subtype="FLOAT" if rel.endswith(".wav") else "PCM_24")
        inputs[rel] = x
    return inputs


def read(path):
    return soundfile.read(path, dtype="float32", always_2d=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # Output depends on the input and on the frame's place in its window (see test_predict_windows).
    return save_model_dir(frame_model(CONFIG, slope=0.6), str(tmp_path_factory.mktemp("frame")), config=CONFIG,
                          target="mask")


@pytest.fixture(scope="module")
def both_paths(model_dir, tmp_path_factory):
    """The same folder (with a corrupt file) through threads (library) and 2 processes (the CLI)."""
    root = tmp_path_factory.mktemp("paths")
    src = str(root / "in")
    inputs = write_folder(src)
    with open(os.path.join(src, "b", "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    threads = Enhancer.from_model_dir(model_dir, batch_size=8)
    threaded = enhance_files(threads, src, str(root / "threads"), block_seconds=BLOCK_SECONDS)
    logger = logging.getLogger("predictor.file_processes")
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        code = speech_enhance.main(["predict", "--model", model_dir, "--input", src, "--output",
                                    str(root / "processes"), "--batch-size", "8", "--file-processes", "2"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return {"root": root, "inputs": inputs, "threaded": threaded, "code": code,
            "messages": [r.getMessage() for r in records]}


def test_processes_give_the_threaded_outputs(both_paths):
    root, inputs = both_paths["root"], both_paths["inputs"]
    assert both_paths["threaded"].written == len(FILES)
    for rel, x in inputs.items():
        y_threads, rate_threads = read(root / "threads" / rel)
        y_processes, rate_processes = read(root / "processes" / rel)
        assert rate_processes == rate_threads and y_processes.shape == y_threads.shape == x.shape, rel
        # The model did change the audio, so equal outputs mean equal work.
        assert np.sqrt(np.mean((y_threads - x) ** 2)) > 0.05 * np.sqrt(np.mean(x ** 2)), rel
        np.testing.assert_allclose(y_processes, y_threads, atol=1e-6, err_msg=rel)
    # The high band was kept on the processes' writing side: the 6 kHz tone is in the output.
    y, rate = read(root / "processes" / "b/wide.wav")
    spectrum = np.abs(np.fft.rfft(y[:, 0]))
    freqs = np.fft.rfftfreq(y.shape[0], 1 / rate)
    assert spectrum[np.abs(freqs - 6000) < 5].max() > 100 * np.median(spectrum[(freqs > 5000) & (freqs < 7000)])


def test_corrupt_file_is_reported_and_the_others_written(both_paths):
    root = both_paths["root"]
    assert both_paths["code"] == 1
    failures = [json.loads(line) for line in (root / "processes" / "failures.jsonl").read_text().splitlines()]
    assert [(os.path.basename(f["input"]), f["reason"]) for f in failures] == [("corrupt.wav", "unreadable")]
    written = sorted(os.path.relpath(os.path.join(d, f), root / "processes")
                     for d, _, files in os.walk(root / "processes") for f in files)
    # Every other file written, and no temporary left behind.
    assert written == sorted([rel for rel, *_ in FILES] + ["failures.jsonl"])


def test_workers_load_no_machine_learning_framework(both_paths):
    ready = [m for m in both_paths["messages"] if "ready; machine-learning modules loaded" in m]
    assert len(ready) == 2 and all(m.endswith("loaded: none") for m in ready), ready
    assert multiprocessing.active_children() == []


def test_rerun_skips_finished_outputs(model_dir, tmp_path):
    src, out = str(tmp_path / "in"), tmp_path / "out"
    write_folder(src, FILES[:3])
    # A file that fails part way through, after some of its windows went to the model: NaN at 9 s.
    x = speech_like(10 * 8000, 8000, seed=5)
    x[9 * 8000] = np.nan
    soundfile.write(os.path.join(src, "z-nan.wav"), x, 8000, subtype="FLOAT")
    enhancer = Enhancer.from_model_dir(model_dir, batch_size=8)
    with FileProcesses(2) as processes:  # started once, used by both runs
        first = enhance_files(enhancer, src, str(out), file_processes=processes, block_seconds=BLOCK_SECONDS)
        assert (first.written, first.skipped) == (3, 0)
        assert [(os.path.basename(f["input"]), f["reason"]) for f in first.failures] == [("z-nan.wav", "not_finite")]
        windows_all = enhancer.windows_run
        mtimes = {rel: os.stat(out / rel).st_mtime_ns for rel, *_ in FILES[:3]}
        os.remove(out / "a/long.wav")  # as if the first run had been stopped before it
        second = enhance_files(enhancer, src, str(out), file_processes=processes, block_seconds=BLOCK_SECONDS)
    assert (second.written, second.skipped, len(second.failures)) == (1, 2, 1)
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names)
    assert written == sorted([rel for rel, *_ in FILES[:3]] + ["failures.jsonl"])  # no temporary, no NaN output
    assert multiprocessing.active_children() == []
    windows_again = enhancer.windows_run - windows_all
    assert 0 < windows_again < windows_all  # only long.wav (and the NaN file's first blocks) went through the model
    for rel in ("a/short.wav", "b/stereo.wav"):
        assert os.stat(out / rel).st_mtime_ns == mtimes[rel]
    assert read(out / "a/long.wav")[0].shape[0] == int(round(12.3 * 16000))


def test_bad_values_are_refused(model_dir, tmp_path, capsys):
    src = str(tmp_path / "in")
    write_folder(src, FILES[:1])
    enhancer = Enhancer.from_model_dir(model_dir, batch_size=8)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"file_processes must be an integer >= 0.*Received: file_processes="):
            enhance_files(enhancer, src, str(tmp_path / "out"), file_processes=bad)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="processes must be a positive integer. Received: processes=0"):
        FileProcesses(0)
    processes = FileProcesses(1)
    processes.close()
    with pytest.raises(ValueError, match="file_processes was stopped"):
        enhance_files(enhancer, src, str(tmp_path / "out"), file_processes=processes)
    code = speech_enhance.main(["predict", "--model", model_dir, "--input", src, "--output", str(tmp_path / "o"),
                                "--file-processes", "-2"])
    err = capsys.readouterr().err
    assert code == 2 and "--file-processes must be an integer >= 0" in err and "Received: --file-processes -2" in err
    code = speech_enhance.main(["predict", "--model", model_dir, "--input", src, "--output", str(tmp_path / "o"),
                                "--file-processes", "2", "--runner", "fnapi"])
    assert code == 2 and "--file-processes works without --runner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speech_enhance.main(["predict", "--input", src, "--output", str(tmp_path / "o"), "--file-processes", "two"])
    assert "invalid int value: 'two'" in capsys.readouterr().err


def _at_first_output(out, action) -> threading.Thread:
    """A started thread that calls `action` once the first finished output appears in `out` (within 60 s)."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.is_dir() and any(not f.startswith(".") for f in os.listdir(out)):
                action()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_keyboard_interrupt_stops_the_workers_and_leaves_no_temporaries(tmp_path):
    # The shipped model, so that there is work left when the first output appears.
    src, out = str(tmp_path / "in"), tmp_path / "out"
    files = [(f"f{i:02d}.wav", 4.0, 8000, 1) for i in range(16)]
    write_folder(src, files)
    enhancer = Enhancer.from_model_dir(PRETRAINED_DIR, batch_size=8)
    interrupter = _at_first_output(out, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        enhance_files(enhancer, src, str(out), file_processes=2)
    interrupter.join()
    assert multiprocessing.active_children() == []  # every worker stopped and was joined
    left = os.listdir(out)
    assert not [f for f in left if f.startswith(".")]  # the workers removed their temporaries
    assert 1 <= len(left) < len(files)
    for name in left:  # what has its final name is complete
        assert read(out / name)[0].shape == (32000, 1)
    rerun = enhance_files(enhancer, src, str(out), file_processes=2)
    assert (rerun.written, rerun.skipped, rerun.failures) == (len(files) - len(left), len(left), [])


def test_a_worker_killed_mid_run_stops_the_run_and_a_rerun_finishes(tmp_path):
    src, out = str(tmp_path / "in"), tmp_path / "out"
    files = [(f"f{i:02d}.wav", 4.0, 8000, 1) for i in range(16)]
    write_folder(src, files)
    enhancer = Enhancer.from_model_dir(PRETRAINED_DIR, batch_size=8)
    killer = _at_first_output(out, lambda: os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL))
    with pytest.raises(RuntimeError, match=r"file process \d \(pid \d+\) ended unexpectedly: killed by signal 9"):
        enhance_files(enhancer, src, str(out), file_processes=2)
    killer.join()
    assert multiprocessing.active_children() == []  # the other worker was stopped too
    rerun = enhance_files(enhancer, src, str(out), file_processes=2)
    assert rerun.written + rerun.skipped == len(files) and rerun.written > 0 and rerun.failures == []
    assert sorted(os.listdir(out)) == sorted(name for name, *_ in files)  # the killed worker's temporary removed
