"""The streaming family (trainer/streaming_crn.py, trainer/stream_family.py): the core gives the same
output over a whole utterance as over its pieces with the state carried, on every backend here; its
STFT in the graph matches numpy and inverts exactly; the hybrid loss matches a direct computation;
it trains from both store kinds and exports its core with model.json's "streaming" entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from beam_pipelines.testing import SMALL_CONFIG, write_dataset, write_source_store
from trainer import stream_family
from trainer.model_dir import load_model_dir
from tfrecord_schema.stream_stft import StreamSettings
from trainer.streaming_crn import SIZES, StreamingCrn, band_matrices
from trainer.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Whole utterance against pieces, on the backend the environment names (run in a fresh process for each).
_PIECES = r"""
import sys
import numpy as np
from tfrecord_schema.stream_stft import StreamSettings
from trainer.streaming_crn import StreamingCrn
import keras
for rate, size in ((16000, "small"), (8000, "large")):
    keras.utils.set_random_seed(1)
    net = StreamingCrn(StreamSettings.for_sample_rate(rate), size)
    core = net.core_model()
    x = np.random.default_rng(0).normal(size=(2, 41, net.settings.bins, 2)).astype("float32")
    whole = keras.ops.convert_to_numpy(core([x, *net.initial_states(2)])[0])
    states, pieces, t = net.initial_states(2), [], 0
    for n in (1, 1, 7, 3, 16, 2, 11):
        out = core([x[:, t:t + n], *states])
        pieces.append(keras.ops.convert_to_numpy(out[0]))
        states = [keras.ops.convert_to_numpy(s) for s in out[1:]]
        t += n
    assert t == 41
    print(rate, size, float(np.abs(np.concatenate(pieces, axis=1) - whole).max()), float(np.abs(whole).max()))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_the_core_gives_the_same_output_whole_and_in_pieces(backend):
    proc = subprocess.run([sys.executable, "-c", _PIECES], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith(("16000", "8000"))]
    assert [line[:2] for line in lines] == [["16000", "small"], ["8000", "large"]], proc.stdout
    for _, _, difference, size_of_output in lines:
        assert float(size_of_output) > 0.1 and float(difference) < 1e-5 * max(1.0, float(size_of_output)), lines


def test_sizes_and_bands():
    counts = {}
    for size in SIZES:
        counts[size] = StreamingCrn(StreamSettings.for_sample_rate(16000), size).core_model().count_params()
    assert 40_000 <= counts["small"] <= 60_000 and 400_000 <= counts["large"] <= 550_000, counts
    pool, spread = band_matrices(257)
    assert pool.shape == (257, 129) and spread.shape == (129, 257)
    np.testing.assert_allclose(pool.sum(axis=0), 1.0, atol=1e-6)  # a band is the mean of its bins
    np.testing.assert_allclose(spread.sum(axis=0), 1.0, atol=1e-6)  # a bin's weights sum to one
    constant = np.ones((3, 129), np.float32)
    np.testing.assert_allclose(constant @ spread, 1.0, atol=1e-6)  # a flat band mask stays flat on the bins


def test_the_graph_stft_matches_numpy_and_overlap_add_inverts_it():
    for rate in (8000, 16000):
        settings = StreamSettings.for_sample_rate(rate)
        n, hop = 1999, settings.hop_length
        x = np.random.default_rng(rate).normal(size=(2, n)).astype(np.float32)
        stft = stream_family.Stft(settings, n)
        got = np.asarray(stft(x))
        padded = np.concatenate([np.zeros((2, settings.n_fft - hop)), x, np.zeros((2, 4 * hop))], axis=1)
        frames = np.stack([padded[:, t * hop: t * hop + settings.n_fft] for t in range(stft.frames)], axis=1)
        expected = np.fft.rfft(frames * settings.window(), axis=-1)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got[..., 0], expected.real, atol=1e-5 * scale)
        np.testing.assert_allclose(got[..., 1], expected.imag, atol=1e-5 * scale)
        back = np.asarray(stream_family.OverlapAdd(settings, n)(got))
        np.testing.assert_allclose(back, x, atol=1e-5)


def test_the_hybrid_loss_matches_a_direct_computation():
    from tfrecord_schema.spectrogram import stft as store_stft

    rng = np.random.default_rng(2)
    config = SMALL_CONFIG
    clean = 0.1 * rng.normal(size=(2, config.window_samples))
    enhanced = clean + 0.05 * rng.normal(size=clean.shape)
    spectra = store_stft(clean, config)  # [2, frames, bins] complex
    y_true = np.stack([spectra.real, spectra.imag, spectra.real, spectra.imag], axis=-1).astype(np.float32)
    loss = np.asarray(stream_family.hybrid_loss(config)(y_true, enhanced.astype(np.float32)))

    settings = StreamSettings.for_sample_rate(config.sample_rate)
    stft = stream_family.Stft(settings, config.window_samples)

    def compressed(signal):
        spectrum = np.asarray(stft(signal.astype(np.float32))).astype(np.float64)
        spectrum = spectrum[..., 0] + 1j * spectrum[..., 1]
        magnitude = np.abs(spectrum)
        return magnitude ** 0.3, spectrum * magnitude ** (0.3 - 1.0)

    (cm, cc), (em, ec) = compressed(clean), compressed(enhanced)
    spectrum = np.mean((em - cm) ** 2, axis=(1, 2))
    complex_error = np.mean(np.abs(ec - cc) ** 2 / 2, axis=(1, 2))  # the mean over real and imaginary parts
    c, e = clean - clean.mean(axis=1, keepdims=True), enhanced - enhanced.mean(axis=1, keepdims=True)
    target = np.sum(e * c, axis=1, keepdims=True) / np.sum(c * c, axis=1, keepdims=True) * c
    si_sdr = 10 * np.log10(np.sum(target ** 2, axis=1) / (np.sum((target - e) ** 2, axis=1) + 1e-3 * np.sum(target ** 2, axis=1)))
    np.testing.assert_allclose(loss, 70 * spectrum + 30 * complex_error - 0.1 * si_sdr, rtol=2e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small family trained briefly from a spectrogram dataset: (model_dir, summary, dataset)."""
    root = tmp_path_factory.mktemp("stream")
    dataset = str(root / "ds")
    write_dataset(dataset, splits={"train": 32, "valid": 8})
    model_dir = str(root / "model")
    summary = train(dataset, model_dir, architecture="stream-crn", epochs=3, batch_size=8, learning_rate=3e-3,
                    lr_schedule="constant", deterministic=True, tensorboard=False, verbose=0)
    return model_dir, summary, dataset


def test_the_family_trains_and_exports_its_core_with_the_streaming_entry(trained):
    model_dir, summary, _ = trained
    loss = summary["history"]["loss"]
    assert loss[-1] < loss[0], loss
    assert "val_si_sdr" in summary["history"]
    info = json.load(open(os.path.join(model_dir, "model.json")))
    assert info["model"] == {"architecture": "stream-crn", "stream_size": "small"}
    streaming = info["streaming"]
    net = StreamingCrn(StreamSettings.for_sample_rate(SMALL_CONFIG.sample_rate), "small")
    assert streaming["n_fft"] == 256 and streaming["hop_length"] == 128 and streaming["latency_ms"] == 32.0
    assert streaming["state_shapes"] == [list(s) for s in net.state_shapes()]
    assert streaming["parameters"] == summary["parameters"] == net.core_model().count_params()


def test_the_exported_core_gives_what_the_training_model_gave(trained):
    """The core the predictor gets, run over the family's STFT of a window, equals the training
    model on that window's store spectra: training and inference see the same network."""
    from tfrecord_schema.spectrogram import stft as store_stft
    from trainer.backend import dtype_policy

    model_dir, _, _ = trained
    core, info = load_model_dir(model_dir)
    with dtype_policy("float32"):
        training_model = stream_family.build_training_model(SMALL_CONFIG, "small")
    training_model.get_layer(core.name).set_weights(core.get_weights())
    rng = np.random.default_rng(4)
    window = (0.1 * rng.normal(size=(2, SMALL_CONFIG.window_samples))).astype(np.float32)
    spectra = store_stft(window, SMALL_CONFIG)
    from_training = np.asarray(training_model(np.stack([spectra.real, spectra.imag], axis=-1).astype(np.float32)))

    settings = StreamSettings.from_dict(info["streaming"])
    frames = np.asarray(stream_family.Stft(settings, window.shape[1])(window))
    states = [np.zeros((2, *shape), np.float32) for shape in info["streaming"]["state_shapes"]]
    enhanced = np.asarray(core([frames, *states])[0])
    from_core = np.asarray(stream_family.OverlapAdd(settings, window.shape[1])(enhanced))
    np.testing.assert_allclose(from_training, from_core, atol=1e-4 * np.abs(from_core).max())


def test_the_family_trains_from_a_source_store(tmp_path):
    store = write_source_store(tmp_path / "store", seed=3)
    summary = train(store.directory, str(tmp_path / "model"), architecture="stream-crn", epochs=1, batch_size=4,
                    steps_per_epoch=2, validation_steps=1, window_samples=2048, tensorboard=False, verbose=0)
    assert np.isfinite(summary["history"]["loss"]).all()
    info = json.load(open(tmp_path / "model" / "model.json"))
    assert info["streaming"]["sample_rate"] == 8000 and info["spectrogram"]["window_samples"] == 2048
