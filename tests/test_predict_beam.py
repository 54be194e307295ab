"""`speech-enhance predict --runner ...`: the Beam pipeline gives the outputs of `predict` (to float
rounding), with the same skipping, failures.jsonl and no-overwrite guarantees, on FnApiRunner with
two worker processes and on Beam's DaskRunner (a local dask.distributed cluster)."""

import json
import os

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from beam_pipelines.testing import SMALL_CONFIG
from predictor.beam_predict import WindowModelHandler, run_predict
from predictor.enhance import Enhancer, enhance_files
from trainer.model import build_unet
from trainer.model_dir import save_model_dir

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


def test_fnapi_with_two_workers_equals_predict_and_resumes(model_dir, inputs, reference, tmp_path, capsys):
    out = tmp_path / "out"
    rc = predict("--model", model_dir, "--input", inputs, "--output", out, "--batch-size", BATCH,
                 "--runner", "fnapi", "--workers", 2)
    assert rc == 1  # failures were listed
    assert "4 written, 0 skipped (output exists), 2 failed of 6 files" in capsys.readouterr().out
    assert_same_outputs(str(out), reference)
    assert not [n for n in os.listdir(out) if ".tmp" in n or n.startswith(".")]

    # A rerun skips what exists and never overwrites it without --overwrite.
    marker = np.full(100, 0.25, np.float32)
    soundfile.write(str(out / "a.wav"), marker, 8000, subtype="FLOAT")
    os.remove(out / "c.wav")
    summary = run_predict(inputs, str(out), model_dir=model_dir, batch_size=BATCH, workers=1)
    assert (summary.total, summary.skipped, summary.written, len(summary.failures)) == (6, 3, 1, 2)
    np.testing.assert_array_equal(soundfile.read(str(out / "a.wav"), dtype="float32")[0], marker)
    assert_same_outputs(str(out), reference, rels=["c.wav"])

    summary = run_predict(inputs, str(out), model_dir=model_dir, batch_size=BATCH, workers=1, overwrite=True)
    assert (summary.skipped, summary.written) == (0, 4)
    assert_same_outputs(str(out), reference)


def test_dask_local_cluster_equals_predict(model_dir, inputs, reference, tmp_path):
    pytest.importorskip("distributed", reason="DaskRunner needs dask.distributed: pip install -e '.[dask]'")
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rc = predict("--model", model_dir, "--input", inputs, "--output", tmp_path / "out", "--batch-size", BATCH,
                 "--runner", "dask", "--workers", 2)
    assert rc == 1
    assert_same_outputs(str(tmp_path / "out"), reference)
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
    windows = [(f"k{j}", (j % 2, j, np.full((3, 5), j, np.float32))) for j in range(6)]
    model = Recorder()
    out = handler.run_inference(windows, model)
    assert model.shapes == [(4, 3, 5, 1), (4, 3, 5, 1)]
    assert [(k, c, i) for k, (c, i, _) in out] == [(k, c, i) for k, (c, i, _) in windows]
    for (_, (_, _, x)), (_, (_, _, y)) in zip(windows, out):
        np.testing.assert_array_equal(y, 2.0 * x)


def test_a_file_missing_windows_is_listed_not_written(model_dir, inputs, tmp_path):
    # A runner that loses elements (docs/predict.md, Cluster) must not lead to a wrong output.
    from predictor.beam_predict import AnalyseFile, FinishFile
    from predictor.folders import FileJob
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
    [(kind, seconds)] = finish.process((key, {"file": [state], "windows": outputs[::-1]}))
    assert kind == "written" and seconds == pytest.approx(10_000 / 8000)
    assert soundfile.info(str(tmp_path / "a.wav")).frames == 10_000
