"""`speech-enhance predict --runner ...`: the Beam pipeline gives the outputs of `predict` (to float
rounding), with the same skipping, failures.jsonl and no-overwrite guarantees, on FnApiRunner with
two worker processes and on Beam's DaskRunner (a local dask.distributed cluster). The files reach
the pipeline through a job manifest in the output folder, gone once the run ends, even when the
output folder lies inside the input folder; a run killed part way leaves one that the next run
removes, and that run finishes the job."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from beam_pipelines.testing import SMALL_CONFIG
from predictor.beam_predict import run_predict
from predictor.predict_options import PredictOptions
from predictor.job_manifest import MANIFEST_NAME, JobManifest
from predictor.output_folder import plan_jobs
from predictor.predict_stages import WindowModelHandler
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from tfrecord_schema import paths
from trainer.model import build_unet
from trainer.model_dir import save_model_dir

MANIFEST_PREFIX = f".{MANIFEST_NAME}."  # `paths.temporary_name` of OUTPUT/predict-jobs: .predict-jobs.PID-XXXXXXXX.tmp

BATCH = 4
# (relative path, rate, channels, samples, subtype): windows of SMALL_CONFIG are 512 samples at 8 kHz.
FILES = [("a.wav", 8000, 1, 10_000, "FLOAT"),
         ("sub/b.wav", 16000, 2, 14_001, "FLOAT"),  # above the model's rate: the high band is kept
         ("c.wav", 8000, 1, 300, "FLOAT"),  # shorter than one window
         ("sub/deeper/e.flac", 22050, 1, 9_000, "PCM_16")]
GOOD = [rel for rel, *_ in FILES]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    keras.utils.set_random_seed(0)
    # Random weights: the output depends on every input frame, so a misplaced window would show.
    model = build_unet(SMALL_CONFIG, base_filters=4, depth=3)
    return save_model_dir(model, str(tmp_path_factory.mktemp("model")), config=SMALL_CONFIG, target="mask")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for rel, rate, channels, n, subtype in FILES:
        t = np.arange(n) / rate
        x = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
        if channels == 2:
            x = np.stack([x, 0.5 * x + 0.05 * rng.standard_normal(n)], axis=1)
        os.makedirs(os.path.dirname(str(root / rel)), exist_ok=True)
        soundfile.write(str(root / rel), x.astype(np.float32), rate, subtype=subtype)
    (root / "d.wav").write_bytes(b"RIFF, but not really" * 20)  # unreadable
    soundfile.write(str(root / "f.wav"), np.zeros(1, np.float32), 48000)  # no sample at all at 8 kHz
    return str(root)


@pytest.fixture(scope="module")
def reference(model_dir, inputs, tmp_path_factory):
    """`predict`'s outputs: the single-process path."""
    out = str(tmp_path_factory.mktemp("reference"))
    summary = enhance_files(Enhancer.from_model_dir(model_dir, batch_size=BATCH, workers=0), inputs, out)
    assert summary.written == len(GOOD) and len(summary.failures) == 2
    return out


def failures(output_dir):
    with open(os.path.join(output_dir, "failures.jsonl")) as f:
        return sorted((os.path.basename(r["input"]), r["reason"]) for r in map(json.loads, f))


def assert_same_outputs(got, expected, rels=GOOD):
    for rel in rels:
        y, rate = soundfile.read(os.path.join(got, rel), dtype="float32", always_2d=True)
        x, expected_rate = soundfile.read(os.path.join(expected, rel), dtype="float32", always_2d=True)
        assert rate == expected_rate and y.shape == x.shape, rel
        assert soundfile.info(os.path.join(got, rel)).subtype == soundfile.info(os.path.join(expected, rel)).subtype
        np.testing.assert_allclose(y, x, atol=1e-6, err_msg=rel)
    assert failures(got) == failures(expected) == [("d.wav", "unreadable"), ("f.wav", "too_short")]


def predict(*args):
    return speech_enhance.main(["predict", *map(str, args)])


@pytest.fixture
def manifests(monkeypatch):
    """(folder, text of each shard) of the job manifests written while the test runs, in order."""
    written = []
    write = JobManifest.write

    def spy(self, jobs):
        shards = write(self, jobs)
        written.append((self.folder, [paths.read_text(path) for path, _ in shards]))
        return shards

    monkeypatch.setattr(JobManifest, "write", spy)
    return written


def manifest_jobs(contents):
    return sorted(json.loads(line)["rel"] for text in contents for line in text.splitlines())


def test_fnapi_with_two_workers_equals_predict_and_resumes(model_dir, inputs, reference, tmp_path, capsys,
                                                           manifests):
    out = tmp_path / "out"
    rc = predict("--model", model_dir, "--input", inputs, "--output", out, "--batch-size", BATCH,
                 "--runner", "fnapi", "--workers", 2)
    assert rc == 1  # failures were listed
    assert "4 written, 0 skipped (output exists), 2 failed of 6 files" in capsys.readouterr().out
    assert_same_outputs(str(out), reference)
    assert not [n for n in os.listdir(out) if ".tmp" in n or n.startswith(".")]  # the manifest is gone
    [(folder, contents)] = manifests
    assert os.path.dirname(folder) == str(out) and os.path.basename(folder).startswith(MANIFEST_PREFIX)
    assert len(contents) == 6  # one shard per file, up to 16
    assert manifest_jobs(contents) == sorted(GOOD + ["d.wav", "f.wav"])

    # A rerun skips what exists and never overwrites it without --overwrite.
    marker = np.full(100, 0.25, np.float32)
    soundfile.write(str(out / "a.wav"), marker, 8000, subtype="FLOAT")
    os.remove(out / "c.wav")
    summary = run_predict(PredictOptions(source=inputs, output_dir=str(out),
                                         model_dir=model_dir, batch_size=BATCH, workers=1))
    assert (summary.total, summary.skipped, summary.written, len(summary.failures)) == (6, 3, 1, 2)
    np.testing.assert_array_equal(soundfile.read(str(out / "a.wav"), dtype="float32")[0], marker)
    assert_same_outputs(str(out), reference, rels=["c.wav"])

    summary = run_predict(PredictOptions(source=inputs, output_dir=str(out),
                                         model_dir=model_dir, batch_size=BATCH, workers=1, overwrite=True))
    assert (summary.skipped, summary.written) == (0, 4)
    assert_same_outputs(str(out), reference)
    # The rerun's manifest held the one file to redo; every manifest is gone.
    assert manifest_jobs(manifests[1][1]) == ["c.wav", "d.wav", "f.wav"]
    assert len(manifests) == 3 and not any(os.path.exists(folder) for folder, _ in manifests)


def test_output_inside_the_input_folder_and_manifest_names_never_collide(model_dir, inputs, reference, tmp_path,
                                                                        manifests):
    # Input folder = the output's parent: the output (and the manifest in it) is never read as input.
    source = tmp_path / "in"
    shutil.copytree(inputs, source)
    out = source / "denoised"
    summary = run_predict(PredictOptions(source=str(source), output_dir=str(out),
                                         model_dir=model_dir, batch_size=BATCH, workers=1))
    assert (summary.total, summary.written, len(summary.failures)) == (6, 4, 2)
    assert_same_outputs(str(out), reference)
    again = run_predict(PredictOptions(source=str(source), output_dir=str(out),
                                       model_dir=model_dir, batch_size=BATCH, workers=1))
    assert (again.total, again.skipped, again.written) == (6, 4, 0)  # outputs never became inputs
    assert manifest_jobs(manifests[1][1]) == ["d.wav", "f.wav"]
    assert sorted(os.listdir(source)) == sorted(os.listdir(inputs) + ["denoised"])
    assert not [n for n in os.listdir(out) if n.startswith(".")]

    # An input folder named like a manifest is an input like any other, its output beside the manifest.
    source = tmp_path / "in2"
    shutil.copytree(inputs, source)
    odd = source / f"{MANIFEST_PREFIX}1-0123abcd.tmp"
    odd.mkdir()
    shutil.copy(source / "a.wav", odd / "a.wav")
    out2 = tmp_path / "out2"
    summary = run_predict(PredictOptions(source=str(source), output_dir=str(out2),
                                         model_dir=model_dir, batch_size=BATCH, workers=1))
    assert (summary.total, summary.written) == (7, 5)
    np.testing.assert_allclose(soundfile.read(str(out2 / odd.name / "a.wav"), dtype="float32")[0],
                               soundfile.read(os.path.join(reference, "a.wav"), dtype="float32")[0], atol=1e-6)
    assert sorted(n for n in os.listdir(out2) if n.startswith(".")) == [odd.name]
    # ... and a manifest that the outputs would fall in is refused before anything is written.
    jobs, _ = plan_jobs(str(source), str(tmp_path / "out3"))
    with pytest.raises(ValueError, match=r"would fall in the job manifest's folder .*Rename the input folder"):
        JobManifest(str(tmp_path / "out3"), name=odd.name).write(jobs)
    assert not os.path.exists(tmp_path / "out3")


def test_a_killed_run_leaves_a_manifest_that_the_rerun_removes_and_finishes(model_dir, inputs, reference,
                                                                          tmp_path):
    out = tmp_path / "out"
    code = "import sys, speech_enhance; sys.exit(speech_enhance.main(sys.argv[1:]))"
    run = subprocess.Popen(
        [sys.executable, "-c", code, "predict", "--model", model_dir, "--input", inputs, "--output", str(out),
         "--batch-size", str(BATCH), "--runner", "fnapi", "--workers", "2"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Killed (with its worker processes) as soon as its manifest exists: the pipeline is starting.
        deadline = time.monotonic() + 600  # a guard against a hang, not a measurement
        while run.poll() is None and time.monotonic() < deadline and not (
                out.is_dir() and [n for n in os.listdir(out) if n.startswith(MANIFEST_PREFIX)]):
            try:
                run.wait(0.01)
            except subprocess.TimeoutExpired:
                pass
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    [left] = [n for n in os.listdir(out) if n.startswith(MANIFEST_PREFIX)]
    assert left.startswith(f"{MANIFEST_PREFIX}{run.pid}-")
    # A manifest of a run still going (this process) is kept; a file of that name is not a manifest.
    alive = out / f"{MANIFEST_PREFIX}{os.getpid()}-00000000.tmp"
    alive.mkdir()
    (out / f"{MANIFEST_PREFIX}1-ffffffff.txt").write_text("mine")

    summary = run_predict(PredictOptions(source=inputs, output_dir=str(out),
                                         model_dir=model_dir, batch_size=BATCH, workers=2))
    assert (summary.total, summary.written + summary.skipped, len(summary.failures)) == (6, 4, 2)
    assert_same_outputs(str(out), reference)
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [f"{MANIFEST_PREFIX}1-ffffffff.txt",
                                                                       alive.name]


def test_dask_local_cluster_equals_predict(model_dir, inputs, reference, tmp_path):
    pytest.importorskip("distributed", reason="DaskRunner needs dask.distributed: pip install -e '.[dask]'")
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rc = predict("--model", model_dir, "--input", inputs, "--output", tmp_path / "out", "--batch-size", BATCH,
                 "--runner", "dask", "--workers", 2)
    assert rc == 1
    assert_same_outputs(str(tmp_path / "out"), reference)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".")]  # the manifest is gone
    # multiprocessing's resource tracker lives as long as this process, once something has spawned.
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())]
    assert not left, f"worker processes left running: {[p.cmdline() for p in left]}"


def test_unknown_options_are_refused(model_dir, inputs, tmp_path, capsys):
    common = ["--model", model_dir, "--input", inputs, "--output", tmp_path / "out"]
    assert predict(*common, "--runner", "fnapi", "--no_such_beam_option", "1") == 2
    assert "unknown option(s) --no_such_beam_option" in capsys.readouterr().err
    assert predict(*common, "--project", "p") == 2
    assert "unrecognized arguments: --project (Apache Beam options and --dask-address need --runner)" in \
        capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_model_handler_pads_every_batch_to_one_shape():
    class Recorder:
        shapes = []

        def predict_on_batch(self, x):
            self.shapes.append(x.shape)
            return x * 2.0

    handler = WindowModelHandler("unused", batch_size=4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 4}
    windows = [(f"k{j}", (j % 2, j, np.full((3, 5, 1), j, np.float32))) for j in range(6)]
    model = Recorder()
    out = handler.run_inference(windows, model)
    assert model.shapes == [(4, 3, 5, 1), (4, 3, 5, 1)]
    assert [(k, c, i) for k, (c, i, _) in out] == [(k, c, i) for k, (c, i, _) in windows]
    for (_, (_, _, x)), (_, (_, _, y)) in zip(windows, out):
        np.testing.assert_array_equal(y, 2.0 * x)


def test_a_file_missing_windows_is_listed_not_written(model_dir, inputs, tmp_path):
    # A runner that loses elements (docs/predict.md, Cluster) must not lead to a wrong output.
    from predictor.predict_stages import AnalyseFile, FinishFile, account_for_files
    from predictor.file_stream import FileJob
    from predictor.high_band import HighBandGain

    config = SMALL_CONFIG.to_dict()
    job = FileJob("a.wav", os.path.join(inputs, "a.wav"), str(tmp_path / "a.wav"))
    analyse = AnalyseFile(config, "mask", 0.5, False, 10.0, HighBandGain())
    analyse.setup()
    items = list(analyse.process(job))
    windows = [value for kind, value in items if kind == "window"]
    [(key, state)] = [value for kind, value in items if kind == "file"]
    assert len(windows) > 3 and all(k == key for k, _ in windows)
    finish = FinishFile(config, "mask", 0.5, False, HighBandGain())
    finish.setup()
    outputs = [(c, i, np.zeros_like(w)) for _, (c, i, w) in windows]
    [(kind, failure)] = finish.process((key, {"file": [state], "windows": outputs[:-1]}))
    assert kind == "failure" and failure["reason"] == "lost_by_runner"
    assert f"{len(outputs) - 1} of its {len(outputs)} model windows arrived" in failure["message"]
    [(kind, failure)] = finish.process((key, {"file": [], "windows": outputs}))
    assert kind == "failure" and failure["reason"] == "lost_by_runner"
    assert not os.listdir(tmp_path)
    [(kind, (written_key, seconds))] = finish.process((key, {"file": [state], "windows": outputs[::-1]}))
    assert kind == "written" and written_key == key and seconds == pytest.approx(10_000 / 8000)
    assert soundfile.info(str(tmp_path / "a.wav")).frames == 10_000
    # A file with no result at all (its state and every window lost) is reported, not counted as written.
    [(kind, failure)] = account_for_files((key, {"job": [state.job.source], "result": []}))
    assert kind == "failure" and failure["reason"] == "lost_by_runner" and failure["input"] == state.job.source
    assert "neither its file state nor any of its windows arrived" in failure["message"]
    assert list(account_for_files((key, {"job": [state.job.source], "result": ["written"]}))) == []
    assert list(account_for_files((key, {"job": [state.job.source], "result": ["failure"]}))) == []
