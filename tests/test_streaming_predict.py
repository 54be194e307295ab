"""Streaming models in the predictor: the engine streamed in blocks of any size equals one call over the
whole signal and the core over all frames; the ONNX export run frame by frame equals the Keras core;
`predict` runs a streaming model directory and its export, in threads and in file processes."""

import json
import os

import keras
import numpy as np
import onnxruntime
import pytest
import soundfile

import speech_enhance
from predictor.export import export_onnx
from predictor.stream_models import StreamingEnhancer, keras_step
from predictor.streaming import (StreamAnalysis, StreamGeometry, StreamRunner, StreamSynthesis, StreamTrack,
                                 as_complex)
from test_predict_windows import CONFIG, frame_model, speech_like
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.stream_stft import StreamSettings
from trainer.model_dir import save_model_dir
from trainer.streaming_crn import StreamingCrn

RATE = 16000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    keras.utils.set_random_seed(3)
    net = StreamingCrn(StreamSettings.for_sample_rate(RATE), "small")
    core = net.core_model()
    directory = str(tmp_path_factory.mktemp("stream"))
    save_model_dir(core, directory, config=SpectrogramConfig.for_sample_rate(RATE), target="mask",
                   model_args={"architecture": "stream-crn", "stream_size": "small"}, streaming=net.describe(core))
    onnx_dir = str(tmp_path_factory.mktemp("onnx"))
    export_onnx(directory, onnx_dir)
    geometry = StreamGeometry.from_dict(net.describe(core))
    return {"net": net, "core": core, "dir": directory, "onnx": onnx_dir, "geometry": geometry}


def _stream(runner, x, sizes):
    """x [n, channels] through analysis, model and synthesis in blocks of `sizes` (cycled)."""
    g = runner.geometry
    analysis, track, synthesis = StreamAnalysis(g, x.shape[1]), StreamTrack("k", g), StreamSynthesis(g)
    states, out, at, i = g.initial_states(x.shape[1]), [], 0, 0
    while True:
        frames = analysis.feed(x[at: at + sizes[i % len(sizes)]]) if at < len(x) else analysis.close()
        at, i = at + sizes[i % len(sizes)], i + 1
        if frames is None:
            continue
        ready = track.add_frames(frames)
        if ready:
            y, states = runner.run(np.stack([track.window(c, k) for _, c, k in ready]), states)
            for (_, c, k), yc in zip(ready, y):
                track.add(c, k, yc)
        out.append(synthesis.push(track.take_joined()))
        if frames.layout is not None:
            return np.concatenate(out)


def test_model_json_gives_the_family_its_settings_back(model):
    settings, g = model["net"].settings, model["geometry"]
    assert g.stft == settings and g.config.num_bins == settings.bins
    assert g.state_shapes == tuple(model["net"].state_shapes()) and len(g.state_shapes) > 0


@pytest.mark.parametrize("change,problem", [({"hop_length": 200}, "hop is half its n_fft"),
                                            ({"window": "hann"}, "window 'hann' is not 'sqrt-hann-periodic'"),
                                            ({"n_fft": None}, "n_fft"), ({"state_shapes": 3}, "not iterable")])
def test_a_bad_streaming_entry_names_model_json(model, change, problem):
    entry = {key: value for key, value in {**model["net"].describe(model["core"]), **change}.items()
             if value is not None}  # None: the key left out
    with pytest.raises(ValueError, match=f"^/m/model.json: its \"streaming\" entry .*{problem}"):
        StreamGeometry.from_dict(entry, "/m/model.json")


@pytest.mark.parametrize("length", [1, 100, 257, 4001, 16000 + 77])
def test_streamed_in_any_blocks_equals_the_whole_signal(model, length):
    runner = StreamRunner(keras_step(model["core"]), model["geometry"], frames_per_call=7)
    rng = np.random.default_rng(length)
    x = rng.normal(0, 0.3, (length, 2)).astype(np.float32)
    whole = runner.enhance(x)
    assert whole.shape == x.shape
    for sizes in ([1], [3, 255, 1, 700], list(rng.integers(1, 600, 20)), [length]):
        np.testing.assert_allclose(_stream(runner, x, [int(s) for s in sizes]), whole, atol=2e-5)


def test_whole_signal_is_the_core_over_all_frames(model):
    g, core = model["geometry"], model["core"]
    x = speech_like(12345, RATE, seed=1)
    y = StreamRunner(keras_step(core), g, frames_per_call=100).enhance(x[:, None])[:, 0]
    # The STFT written out: n_fft - hop zeros in front, zeros to flush, sqrt-Hann frames, rfft.
    hop, n_fft = g.hop_length, g.n_fft
    frames = g.frames_for(len(x))
    padded = np.zeros((frames + 1) * hop, np.float32)
    padded[hop: hop + len(x)] = x
    w = StreamSettings.for_sample_rate(RATE).window()
    spec = np.fft.rfft(np.stack([padded[t * hop: t * hop + n_fft] * w for t in range(frames)]), axis=-1)
    spectra = np.stack([spec.real, spec.imag], -1)[None].astype(np.float32)
    enhanced = as_complex(keras.ops.convert_to_numpy(core([spectra, *model["net"].initial_states(1)])[0]))[0]
    ola = np.zeros((frames + 1) * hop)
    for t, frame in enumerate(np.fft.irfft(enhanced, n=n_fft, axis=-1) * w):
        ola[t * hop: t * hop + n_fft] += frame
    np.testing.assert_allclose(y, ola[hop: hop + len(x)], atol=2e-5)
    assert np.std(y) > 0.01  # the random model passes something through


def test_onnx_frame_by_frame_equals_the_keras_core(model):
    info = json.load(open(os.path.join(model["onnx"], "model.json")))
    assert info["inputs"][0] == "spectra" and info["outputs"][:2] == ["enhanced", "state_out_0"]
    assert info["streaming"]["state_shapes"] == model["net"].describe(model["core"])["state_shapes"]
    session = onnxruntime.InferenceSession(os.path.join(model["onnx"], "model.onnx"))
    spectra = np.random.default_rng(0).normal(0, 1, (1, 40, model["geometry"].config.num_bins, 2)).astype(np.float32)
    expected, expected_states = keras_step(model["core"])(spectra, model["net"].initial_states(1))
    states, out = model["net"].initial_states(1), []
    for t in range(spectra.shape[1]):
        y, *states = session.run(info["outputs"], dict(zip(info["inputs"], [spectra[:, t: t + 1], *states])))
        out.append(y)
    np.testing.assert_allclose(np.concatenate(out, axis=1), expected, atol=1e-4)
    for got, want in zip(states, expected_states):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_predict_runs_the_model_dir_and_its_onnx_export(model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    n = int(2.7 * 44100)
    x = np.stack([speech_like(n, 44100, seed=5), 0.5 * speech_like(n, 44100, seed=6)], axis=1)
    x += 0.05 * np.sin(2 * np.pi * 12000 * np.arange(n) / 44100)[:, None]  # above the model's band
    soundfile.write(src / "stereo.wav", x, 44100, subtype="FLOAT")
    soundfile.write(src / "short.wav", x[:300, :1], 44100, subtype="FLOAT")
    outputs = {}
    for name, directory, processes in [("keras", model["dir"], "0"), ("keras2", model["dir"], "2"),
                                       ("onnx", model["onnx"], "2")]:
        code = speech_enhance.main(["predict", "--model", directory, "--input", str(src), "--output",
                                    str(tmp_path / name), "--file-processes", processes])
        assert code == 0
        outputs[name] = {rel: soundfile.read(tmp_path / name / rel, dtype="float32", always_2d=True)
                         for rel in ("stereo.wav", "short.wav")}
    for rel, length in (("stereo.wav", n), ("short.wav", 300)):
        y, rate = outputs["keras"][rel]
        assert rate == 44100 and y.shape == (length, 2 if rel == "stereo.wav" else 1)
        np.testing.assert_allclose(outputs["keras2"][rel][0], y, atol=1e-5)
        np.testing.assert_allclose(outputs["onnx"][rel][0], y, atol=1e-3)
    assert StreamingEnhancer.from_model_dir(model["onnx"]).describe_run().startswith("streaming")
    spectrum = np.abs(np.fft.rfft(outputs["keras"]["stereo.wav"][0][:, 0]))
    band = np.fft.rfftfreq(n, 1 / 44100)
    assert spectrum[(band > 11900) & (band < 12100)].max() > 0  # the high band is kept


def test_export_refuses_a_windowed_model(tmp_path, capsys):
    directory = save_model_dir(frame_model(CONFIG, slope=0.6), str(tmp_path / "unet"), config=CONFIG, target="mask")
    code = speech_enhance.main(["export", "--format", "onnx", directory, str(tmp_path / "out")])
    assert code == 2
    assert "not a streaming one" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
