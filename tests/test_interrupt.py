"""Interrupted runs: every command stops within seconds of Ctrl-C (SIGINT to its process group, as a
terminal sends it) with rc 130 and one line on stderr, leaves none of its own temporaries, and the same
command resumes; a model that raises, a killed worker and a killed launcher stop `predict` cleanly too."""

import glob
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import soundfile

from beam_pipelines.testing import write_dataset
from dataset_fixtures import make_corpus
from test_predict_windows import CONFIG, frame_model
from trainer.model_dir import save_model_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO_ROOT}
EXIT_SECONDS = 5.0  # from SIGINT to the process's exit


def _write_noise(path, seconds, rate=8000, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32)
    soundfile.write(path, x, rate, subtype="PCM_16")


def _temporaries(folder):
    """Files named the way the commands name their temporaries (`paths.temporary_name`: `.NAME.PID-XXXXXXXX.tmp`)."""
    names = [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files]
    return [n for n in names if n.endswith(".tmp")]


def _run_and_interrupt(args, busy, cwd, timeout_s=120.0):
    """Starts `speech-enhance ARGS` in a process group of its own, waits until `busy(stderr so far)` holds, sends the
    group SIGINT; returns (return code, seconds from SIGINT to exit, stderr printed after SIGINT)."""
    proc = subprocess.Popen([sys.executable, "-m", "speech_enhance", *args], cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and not busy(b"".join(lines).decode()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"ended before it could be interrupted: {b''.join(lines).decode()[-3000:]}"
        assert busy(b"".join(lines).decode()), "never got busy"
        before = len(lines)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elapsed = time.monotonic() - sent
        reader.join(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, elapsed, b"".join(lines[before:]).decode(errors="replace"), b"".join(lines).decode()


def _rerun(args, cwd):
    result = subprocess.run([sys.executable, "-m", "speech_enhance", *args], cwd=cwd, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_dir(frame_model(CONFIG, slope=0.6), str(tmp_path_factory.mktemp("model")), config=CONFIG,
                          target="mask")


def _predict_case(tmp, model_dir, extra):
    for i in range(2):
        _write_noise(os.path.join(tmp, "in", f"f{i}.wav"), 90.0, seed=i)
    out = os.path.join(tmp, "out")
    # Progress lines only at the end: none may come between SIGINT and the one line.
    args = ["predict", "--model", model_dir, "--input", "in", "--output", "out", "--progress-interval", "600", *extra]

    def busy(stderr):  # a file is being written
        return bool(glob.glob(os.path.join(out, ".*.tmp")))

    def check_resumed(result):
        assert sorted(os.listdir(out)) == ["f0.wav", "f1.wav"]
        for i in range(2):
            assert soundfile.info(os.path.join(out, f"f{i}.wav")).frames == 90 * 8000

    return args, busy, check_resumed


def _dataset_case(tmp, model_dir, extra):
    voice_dir, noise_dir = make_corpus(os.path.join(tmp, "corpus"), speakers=5, utterances=1)
    parts = os.path.join(tmp, "ds.incomplete", "_work", "parts")
    args = ["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", "ds", "--num-examples", "200",
            "--chunk-size", "2", *extra]

    def busy(stderr):  # chunks are being written
        return os.path.isdir(parts) and sum(n.endswith(".json") for n in os.listdir(parts)) >= 2

    def check_resumed(result):
        assert "chunks reused from an interrupted run" in result.stderr
        assert not os.path.exists(os.path.join(tmp, "ds.incomplete"))

    return args, busy, check_resumed


def _train_case(tmp, model_dir, extra):
    write_dataset(os.path.join(tmp, "data"), splits={"train": 32, "valid": 8})
    args = ["train", "--dataset", "data", "--model-dir", "model", "--base-filters", "4", "--depth", "3",
            "--batch-size", "4", "--steps-per-epoch", "2", "--validation-steps", "1", "--epochs", "50"]
    backup = os.path.join(tmp, "model", "training")

    def busy(stderr):  # the first epoch's backup is there
        return bool([f for f in glob.glob(os.path.join(backup, "backup", "**"), recursive=True) if os.path.isfile(f)])

    def check_kept(result):  # no rerun (a resume is tested in test_trainer_train.py): what it resumes from is kept
        assert busy("") and os.path.isfile(os.path.join(backup, "run.json"))

    return args, busy, check_kept


def _index_case(tmp, model_dir, extra):
    write_dataset(os.path.join(tmp, "data"), splits={"train": 600}, num_shards=600, index=False)

    def busy(stderr):
        return bool(glob.glob(os.path.join(tmp, "data", "*.index")))

    def check_resumed(result):
        assert len(glob.glob(os.path.join(tmp, "data", "*.index"))) == 600

    return ["index", "data"], busy, check_resumed


# case: (set-up, extra flags, whether to rerun). `predict --workers 0` (the threaded path's code without
# threads), a train resume (tests/test_train_model_dir.py) and evaluate (which starts over) were checked
# by hand; the runs here keep the test under about a minute and a half.
CASES = {
    "predict": (_predict_case, [], True),
    "predict-file-processes": (_predict_case, ["--file-processes", "2"], True),
    "dataset": (_dataset_case, ["--workers", "2"], True),
    "index": (_index_case, [], True),
    "train": (_train_case, [], False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_stops_the_command_with_one_line_and_the_same_command_resumes(case, model_dir, tmp_path):
    make, extra, rerun = CASES[case]
    args, busy, check_resumed = make(str(tmp_path), model_dir, extra)
    code, elapsed, after, stderr = _run_and_interrupt(args, busy, str(tmp_path))
    assert code == 130, stderr[-3000:]
    assert elapsed < EXIT_SECONDS, f"took {elapsed:.1f} s to exit after SIGINT"
    assert "Traceback" not in stderr and "Error" not in after, after[-3000:]
    command = args[0]
    assert after.strip().splitlines()[-1].startswith(f"speech-enhance {command}: interrupted; "), after
    # One line after SIGINT, no log lines of a shutdown. Known exception, not ours to print: a local
    # Beam worker process stopped by the launcher sometimes ends with its C++ runtime's line
    # "terminate called without an active exception" (seen once in three full runs, dataset case);
    # it is counted out here and named in docs/dataset.md.
    lines = [line for line in after.splitlines() if line != "terminate called without an active exception"]
    assert len(lines) == 1, after
    assert _temporaries(str(tmp_path)) == []
    check_resumed(_rerun(args, str(tmp_path)) if rerun else None)


def test_a_model_that_raises_in_the_threaded_path_ends_the_program_and_leaves_no_temporary(tmp_path):
    # The exception reaches the top of the program with its traceback (which keeps `enhance_files`'s
    # frames alive): the interpreter must still exit, and the partial output must be gone.
    _write_noise(str(tmp_path / "in" / "a.wav"), 60.0)
    script = textwrap.dedent("""
        import numpy as np
        from predictor.enhance import Enhancer
        from predictor.folders import enhance_files
        from tfrecord_schema.config import SpectrogramConfig

        calls = 0

        def model(x):
            global calls
            calls += 1
            if calls == 20:  # some blocks of the file are written by then
                raise ValueError("the model failed")
            return np.ones(x.shape[:-1], np.float32)

        enhancer = Enhancer(model, SpectrogramConfig(), "mask", batch_size=4, workers=2)
        enhance_files(enhancer, "in", "out", block_seconds=0.5)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the program did not exit after the model raised (the reader threads kept it alive)")
    assert proc.returncode == 1 and "ValueError: the model failed" in stderr, stderr[-2000:]
    assert os.listdir(tmp_path / "out") == []  # the partial output's temporary was removed


def test_file_processes_are_no_more_than_the_files(model_dir, tmp_path, caplog):
    import speech_enhance

    _write_noise(str(tmp_path / "in" / "a.wav"), 1.0)
    with caplog.at_level("INFO", logger="predictor.file_processes"):
        code = speech_enhance.main(["predict", "--model", model_dir, "--input", str(tmp_path / "in"), "--output",
                                    str(tmp_path / "out"), "--file-processes", "4"])
    assert code == 0 and os.listdir(tmp_path / "out") == ["a.wav"]
    assert [r.getMessage() for r in caplog.records if "file processes ready" in r.getMessage()][0].startswith(
        "1 file processes ready")


def _children(pid):
    """The processes `pid` started with multiprocessing's spawn (the file processes)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [int(p) for p in f.read().split()]
    out = []
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(child)
        except FileNotFoundError:
            pass
    return out


def test_a_killed_file_process_is_one_error_line_and_a_rerun_finishes(model_dir, tmp_path):
    for i in range(3):
        _write_noise(str(tmp_path / "in" / f"f{i}.wav"), 20.0, seed=i)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "speech_enhance", "predict", "--model", model_dir, "--input", "in", "--output", "out",
            "--file-processes", "2"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not glob.glob(str(out / ".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert proc.poll() is None and workers, "the run ended before a file process could be killed"
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("speech-enhance predict: error: file process ") and "killed by signal 9" in last, last
    assert _temporaries(str(tmp_path)) == []
    _rerun(args[3:], str(tmp_path))
    assert sorted(os.listdir(out)) == [f"f{i}.wav" for i in range(3)]


def _nested_job_runs(dask_scheduler) -> bool:
    """Whether a task computes part of a job through a worker's client (Beam's DaskRunner does for side
    inputs): from then on the job's tasks are wanted whatever becomes of the launcher's own futures."""
    return any(str(cs.client_key).startswith("Client-worker-")
               for ts in dask_scheduler.tasks.values() for cs in (ts.who_wants or ()))


def _busy_tasks(dask_scheduler) -> int:
    return sum(ts.state in ("processing", "waiting", "no-worker", "queued") for ts in dask_scheduler.tasks.values())


def test_a_killed_launcher_leaves_no_job_writing_on_an_external_dask_cluster(model_dir, tmp_path):
    pytest.importorskip("distributed", reason="DaskRunner needs dask.distributed: pip install -e '.[dask]'")
    import dask
    from distributed import Client, LocalCluster

    for i in range(12):
        _write_noise(str(tmp_path / "in" / f"f{i:02d}.wav"), 60.0, seed=i)
    out = tmp_path / "out"
    # The cluster runs here, outside the launcher's process, as an external cluster would.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        # Absolute paths: the cluster's workers do not run in the launcher's folder.
        args = ["predict", "--model", model_dir, "--input", str(tmp_path / "in"), "--output", str(out), "--runner",
                "dask", "--dask-address", cluster.scheduler_address]
        proc = subprocess.Popen([sys.executable, "-m", "speech_enhance", *args], cwd=tmp_path, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and not client.run_on_scheduler(_nested_job_runs):
                assert time.monotonic() < deadline, "the job never started on the cluster"
                time.sleep(0.2)
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert not [f for f in os.listdir(out) if f.endswith(".wav")]  # killed before any output
            proc.kill()  # SIGKILL: no cleanup of its own can run
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        deadline, idle = time.monotonic() + 120, 0
        while idle < 3 and time.monotonic() < deadline:  # until the cluster has had nothing to do for a while
            idle = idle + 1 if client.run_on_scheduler(_busy_tasks) == 0 else 0
            time.sleep(1.0)
        assert idle >= 3, "the cluster still runs the job of a launcher killed 2 minutes ago"
        assert not [f for f in os.listdir(out) if f.endswith(".wav")], "the job wrote on after its launcher was killed"
        # The next run removes the killed run's manifest and does the work.
        _rerun(args, str(tmp_path))
    assert sorted(os.listdir(out)) == [f"f{i:02d}.wav" for i in range(12)]
