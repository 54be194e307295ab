"""The predictor: windowing and overlap-add, file formats and rates, failures, resume, safety, CLI."""

import json
import logging
import os

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from predictor import enhance, predict_options
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from predictor.overlap_add import crossfade_weights
from tfrecord_schema.config import SpectrogramConfig
from trainer.model_dir import save_model_dir

CONFIG = SpectrogramConfig()


def constant_model(config, value=0.0):
    """Outputs `value` everywhere: zero kernel, bias atanh(value), tanh. value=0 with the noise
    target leaves the magnitude unchanged (the identity denoiser)."""
    inputs = keras.Input((*config.shape, 1))
    outputs = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", activation="tanh",
                                  bias_initializer=keras.initializers.Constant(float(np.arctanh(value))))(inputs)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory):
    return save_model_dir(constant_model(CONFIG), str(tmp_path_factory.mktemp("identity")), config=CONFIG,
                          target="noise")


@pytest.fixture(scope="module")
def identity(identity_dir):
    return Enhancer.from_model_dir(identity_dir, batch_size=4)


def signal(n, rate=8000, seed=0, channels=None, noise=0.01):
    """Two tones (below 3.5 kHz, so an 8 kHz model keeps them) plus a little white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t + 1.0)
    x = x + noise * rng.standard_normal(n)
    if channels:
        x = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def write(path, data, rate, subtype=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, data, rate, subtype=subtype)
    return path


@pytest.mark.parametrize("length", [3001, 8064, 8064 * 4 + 1], ids=["shorter-than-window", "one-window", "long-odd"])
def test_identity_model_gives_back_the_input(identity, tmp_path, length):
    x = signal(length)
    write(str(tmp_path / "in" / "a.wav"), x, 8000, "FLOAT")
    summary = enhance_files(identity, str(tmp_path / "in"), str(tmp_path / "out"))
    assert (summary.written, summary.failures) == (1, [])
    y, rate = soundfile.read(str(tmp_path / "out" / "a.wav"), dtype="float32")
    assert rate == 8000 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=2e-6)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_overlap_add_has_no_seams(overlap):
    # A model that outputs the same value everywhere is a pure gain: any seam, uncovered sample or
    # uneven weighting of the windows would show as a deviation from gain * x.
    value = 0.1
    enhancer = Enhancer(constant_model(CONFIG, value), CONFIG, "noise", batch_size=8, overlap=overlap)
    gain = 10.0 ** (-CONFIG.target_scale_db * value / 20.0)
    for n in (500, 8064 * 5 + 333):
        x = signal(n, seed=n)
        np.testing.assert_allclose(enhancer.enhance(x), gain * x, atol=1e-6)


def test_crossfade_weights_sum_to_one():
    for W, hop in ((128, 64), (128, 96), (128, 100)):
        w = crossfade_weights(W, hop).astype(np.float64)
        total = np.zeros(W * 6)
        for start in range(0, W * 5, hop):
            total[start: start + W] += w
        np.testing.assert_allclose(total[W: 4 * W], 1.0, atol=1e-6)
        assert np.all(w > 0)


def test_level_is_preserved_not_normalised(identity):
    # No fixed gain and no per-window normalisation: a quiet input (-40 dBFS tones) stays as quiet.
    x = 0.01 * signal(20000)
    np.testing.assert_allclose(identity.enhance(x), x, atol=1e-7)


def test_windows_of_several_files_share_batches():
    calls = []

    def model(x):  # counts model calls; outputs zeros (identity with the noise target)
        calls.append(x.shape[0])
        return np.zeros_like(x)

    enhancer = Enhancer(model, CONFIG, "noise", batch_size=8)
    signals = [(i, signal(1000 + 500 * i, seed=i)) for i in range(12)]  # each fits in one window
    out = dict(enhancer.enhance_many(signals))
    assert calls == [8, 4]
    for key, x in signals:
        np.testing.assert_allclose(out[key], x, atol=2e-6)


def test_rates_channels_and_formats(identity, tmp_path):
    src = tmp_path / "in"
    stereo16k = write(str(src / "stereo16k.flac"), signal(16000 * 2 + 7, 16000, channels=2, noise=0.0), 16000, "PCM_24")
    mono22k = write(str(src / "nested" / "mono22k.ogg"), signal(22050, 22050), 22050)
    summary = enhance_files(identity, str(src), str(tmp_path / "out"))
    assert summary.written == 2 and not summary.failures
    x, _ = soundfile.read(stereo16k, dtype="float32")
    y, rate = soundfile.read(str(tmp_path / "out" / "stereo16k.flac"), dtype="float32")
    assert rate == 16000 and y.shape == x.shape
    assert soundfile.info(str(tmp_path / "out" / "stereo16k.flac")).subtype == "PCM_24"
    # 16 kHz -> 8 kHz -> 16 kHz keeps tones below 3.5 kHz; allow for the resampler's edges.
    assert np.max(np.abs(y[400:-400] - x[400:-400])) < 2e-3
    info = soundfile.info(str(tmp_path / "out" / "nested" / "mono22k.ogg"))
    assert (info.samplerate, info.frames, info.channels) == (22050, 22050, 1)

    enhance_files(identity, stereo16k, str(tmp_path / "model-rate"), keep_model_rate=True, downmix=True,
                  output_format="wav")
    y, rate = soundfile.read(str(tmp_path / "model-rate" / "stereo16k.wav"), dtype="float32")
    assert rate == 8000 and y.shape == (16004,)  # round(32007 * 8000 / 16000) samples, mono


def test_bad_files_are_reported_and_the_rest_written_by_the_cli(identity_dir, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write(str(src / "good.wav"), signal(9000), 8000)
    write(str(src / "sub" / "good.flac"), signal(4000), 8000)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    (src / "empty.flac").write_bytes(b"")
    code = speech_enhance.main(["predict", "--model", identity_dir, "--input", str(src), "--output", str(out),
                                "--batch-size", "2"])
    assert code == 1
    assert (out / "good.wav").is_file() and (out / "sub" / "good.flac").is_file()
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted((os.path.basename(f["input"]), f["reason"]) for f in failures) == [
        ("corrupt.wav", "unreadable"), ("empty.flac", "empty")]
    assert "2 written, 0 skipped (output exists), 2 failed of 4 files" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["failures.jsonl", "good.wav", "sub"]  # no temporary files left


def test_rerun_skips_existing_outputs_and_overwrite_redoes_them(identity, tmp_path, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write(str(src / f"f{i}.wav"), signal(5000 + 3000 * i, seed=i), 8000)
    with caplog.at_level(logging.INFO, logger="predictor.folders"):
        first = enhance_files(identity, str(src), str(out))
    assert first.written == 3
    assert any("3/3 files" in r.getMessage() and "real-time factor" in r.getMessage() for r in caplog.records)
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    windows = identity.windows_run
    os.remove(out / "f1.wav")  # as if the first run had been interrupted before f1
    second = enhance_files(identity, str(src), str(out))
    assert (second.written, second.skipped) == (1, 2)
    assert identity.windows_run - windows == 1  # only f1 went through the model
    assert os.stat(out / "f0.wav").st_mtime_ns == mtimes["f0.wav"]
    third = enhance_files(identity, str(src), str(out), overwrite=True)
    assert (third.written, third.skipped) == (3, 0)
    assert os.stat(out / "f0.wav").st_mtime_ns != mtimes["f0.wav"]


def test_never_overwrites_an_input(identity, tmp_path):
    src = tmp_path / "in"
    path = write(str(src / "a.wav"), signal(4000), 8000)
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="output_dir must not be the input folder"):
        enhance_files(identity, str(src), str(src))
    with pytest.raises(ValueError, match="output_dir must not be the input folder"):
        enhance_files(identity, path, str(src), output_format="wav")
    assert open(path, "rb").read() == before
    # An output folder inside the input folder is fine, and its files are never taken as inputs.
    enhance_files(identity, str(src), str(src / "denoised"))
    again = enhance_files(identity, str(src), str(src / "denoised"))
    assert (again.total, again.skipped) == (1, 1)


def test_input_is_literal_and_format_option(identity, tmp_path):
    write(str(tmp_path / "a" / "x.flac"), signal(3000), 8000)
    write(str(tmp_path / "b" / "c" / "y.flac"), signal(3000), 8000)
    write(str(tmp_path / "b" / "y.flac"), signal(3000), 8000)
    write(str(tmp_path / "b" / "y.wav"), signal(3000), 8000)
    # A path is never a pattern: one that names nothing and holds '*', '?' or '[' says so ...
    with pytest.raises(ValueError, match=r"never a glob pattern.*input='.*\*\*/\*\.flac'.*names no file and no folder"):
        enhance_files(identity, str(tmp_path / "*" / "**" / "*.flac"), str(tmp_path / "out"))
    # ... and a folder whose name holds them is that folder.
    literal = tmp_path / "take[1]*"
    write(str(literal / "x.flac"), signal(3000), 8000)
    summary = enhance_files(identity, str(literal), str(tmp_path / "out"), output_format="wav")
    assert summary.written == 1
    assert sorted(os.path.relpath(os.path.join(d, f), tmp_path / "out")
                  for d, _, fs in os.walk(tmp_path / "out") for f in fs) == ["x.wav"]
    clash = enhance_files(identity, str(tmp_path / "b"), str(tmp_path / "out2"), output_format="wav")
    assert [f["reason"] for f in clash.failures] == ["duplicate output"]


def test_bad_arguments_are_refused(identity, tmp_path):
    with pytest.raises(ValueError, match="overlap must be in \\[0, 1\\).*overlap=1.0"):
        Enhancer(lambda x: x, CONFIG, "noise", overlap=1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Enhancer(lambda x: x, CONFIG, "noise", batch_size=0)
    with pytest.raises(FileNotFoundError, match="No .* files match the input: .* is neither a folder nor a file"):
        enhance_files(identity, str(tmp_path / "missing" / "a.wav"), str(tmp_path / "out"))


def test_default_batch_size_follows_the_device(monkeypatch):
    monkeypatch.setattr(enhance, "has_accelerator", lambda: False)
    assert Enhancer(lambda x: x, CONFIG, "noise").batch_size == predict_options.CPU_BATCH_SIZE == 8
    monkeypatch.setattr(enhance, "has_accelerator", lambda: True)
    assert Enhancer(lambda x: x, CONFIG, "noise").batch_size == predict_options.ACCELERATOR_BATCH_SIZE == 64


def test_shipped_model_names_resolve_and_a_missing_one_is_named(tmp_path, monkeypatch):
    assert enhance.resolve_model_dir("shipped:8k") == enhance.resolve_model_dir(None) == enhance.PRETRAINED_DIR
    assert enhance.resolve_model_dir(str(tmp_path)) == str(tmp_path)  # a directory is taken as given
    monkeypatch.setitem(enhance.SHIPPED_MODELS, "shipped:16k", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="model_dir='shipped:16k' names a shipped model.*absent"):
        enhance.resolve_model_dir("shipped:16k")


def test_missing_shipped_model_says_how_to_pass_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(enhance, "PRETRAINED_DIR", str(tmp_path / "pretrained"))
    with pytest.raises(FileNotFoundError, match="No model_dir was given.*does not ship it.*Pass model_dir=DIR"):
        enhance.resolve_model_dir(None)
    code = speech_enhance.main(["predict", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2
    # The command says it with its own flags.
    err = capsys.readouterr().err
    assert "No --model was given" in err and "Pass --model DIR" in err and "model_dir" not in err
