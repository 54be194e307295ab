"""`speech-enhance predict --runner` with a streaming model: whole files spread over the workers
(`EnhanceStreamingFiles`) give `predict`'s outputs without a runner, for a model directory and its
ONNX export, on FnApiRunner and on Beam's DaskRunner (a local dask.distributed cluster), with the
unreadable file in failures.jsonl and its reason."""

import json
import os

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from predictor.beam_predict import run_predict
from predictor.predict_options import PredictOptions
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.stream_stft import StreamSettings
from trainer.model_dir import save_model_dir
from trainer.streaming_crn import StreamingCrn

RATE = 8000
# (relative path, rate, channels, samples): the 16 kHz stereo file keeps its band above 4 kHz.
FILES = [("a.wav", 8000, 1, 12_345), ("sub/b.wav", 16000, 2, 20_001), ("c.wav", 8000, 1, 200)]
GOOD = [rel for rel, *_ in FILES]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A streaming model directory with random weights (the output depends on every frame and on the
    state carried between them) and its ONNX export."""
    keras.utils.set_random_seed(7)
    net = StreamingCrn(StreamSettings.for_sample_rate(RATE), "small")
    core = net.core_model()
    directory = save_model_dir(core, str(tmp_path_factory.mktemp("stream")),
                               config=SpectrogramConfig.for_sample_rate(RATE), target="mask",
                               model_args={"architecture": "stream-crn", "stream_size": "small"},
                               streaming=net.describe(core))
    onnx_dir = str(tmp_path_factory.mktemp("export") / "onnx")
    assert speech_enhance.main(["export", "--format", "onnx", directory, onnx_dir]) == 0
    return {"keras": directory, "onnx": onnx_dir}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    for rel, rate, channels, n in FILES:
        t = np.arange(n) / rate
        x = 0.2 * np.sin(2 * np.pi * 300 * t * (1 + t)) + 0.05 * rng.standard_normal(n)
        if channels == 2:
            x = np.stack([x, 0.5 * x + 0.05 * rng.standard_normal(n)], axis=1)
        os.makedirs(os.path.dirname(str(root / rel)), exist_ok=True)
        soundfile.write(str(root / rel), x.astype(np.float32), rate, subtype="FLOAT")
    (root / "d.wav").write_bytes(b"RIFF, but not really" * 20)  # unreadable
    return str(root)


@pytest.fixture(scope="module")
def predicted(model_dirs, inputs, tmp_path_factory):
    """kind -> the folder of `predict`'s outputs without a runner for that model directory, made once."""
    made = {}

    def outputs(kind):
        if kind not in made:
            made[kind] = tmp_path_factory.mktemp(f"predict-{kind}")
            assert speech_enhance.main(["predict", "--model", model_dirs[kind], "--input", inputs, "--output",
                                        str(made[kind])]) == 1
        return made[kind]
    return outputs


def failures(output_dir):
    with open(os.path.join(output_dir, "failures.jsonl")) as f:
        return [(os.path.basename(r["input"]), r["reason"], r["message"]) for r in map(json.loads, f)]


def assert_runner_equals_predict(runner, model_dir, inputs, expected, output, capsys):
    """Runs `predict --runner RUNNER --workers 2` into `output` and checks it against `expected`,
    `predict`'s outputs without a runner: every file to 1e-5, the same failures.jsonl, no manifest left."""
    capsys.readouterr()
    assert speech_enhance.main(["predict", "--model", model_dir, "--input", inputs, "--output", str(output),
                                "--runner", runner, "--workers", "2"]) == 1
    assert "3 written, 0 skipped (output exists), 1 failed of 4 files" in capsys.readouterr().out
    for rel, rate, channels, n in FILES:
        y, got_rate = soundfile.read(output / rel, dtype="float32", always_2d=True)
        x, _ = soundfile.read(expected / rel, dtype="float32", always_2d=True)
        assert got_rate == rate and y.shape == x.shape == (n, channels), rel
        assert np.abs(x).max() > 0, rel
        np.testing.assert_allclose(y, x, atol=1e-5, err_msg=rel)
    [(name, reason, message)] = failures(output)
    assert failures(expected) == [(name, reason, message)]
    assert (name, reason) == ("d.wav", "unreadable") and "d.wav" in message
    assert not [n for n in os.listdir(output) if ".tmp" in n or n.startswith(".")]  # the job manifest is gone


@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_fnapi_with_two_workers_equals_predict(model_dirs, inputs, predicted, tmp_path, capsys, kind):
    beam = tmp_path / "beam"
    assert_runner_equals_predict("fnapi", model_dirs[kind], inputs, predicted(kind), beam, capsys)

    # A rerun skips what exists; the earlier failure is listed again.
    summary = run_predict(PredictOptions(source=inputs, output_dir=str(beam), model_dir=model_dirs[kind],
                                         workers=1))
    assert (summary.total, summary.skipped, summary.written, len(summary.failures)) == (4, 3, 0, 1)


def test_dask_local_cluster_equals_predict(model_dirs, inputs, predicted, tmp_path, capsys):
    pytest.importorskip("distributed", reason="DaskRunner needs dask.distributed: pip install -e '.[dask]'")
    assert_runner_equals_predict("dask", model_dirs["keras"], inputs, predicted("keras"), tmp_path / "dask", capsys)


def test_a_streaming_model_has_no_heads(model_dirs, inputs, tmp_path):
    with pytest.raises(ValueError, match="head='speech'.*has one output and no heads"):
        run_predict(PredictOptions(source=inputs, output_dir=str(tmp_path), model_dir=model_dirs["keras"],
                                   head="speech", workers=1))
