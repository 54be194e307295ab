import librosa
import numpy as np
import pytest

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import from_magnitude_phase, istft, magnitude_phase, stft


def chirp(n, rate=8000):
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * (100 * t + 900 * t ** 2)) + 0.01 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def test_reference_geometry():
    config = SpectrogramConfig()
    assert (config.sample_rate, config.window_samples, config.n_fft, config.hop_length) == (8000, 8064, 255, 63)
    assert config.shape == (128, 128)
    wide = SpectrogramConfig.for_sample_rate(16000)
    assert (wide.window_samples, wide.n_fft, wide.hop_length, wide.shape) == (16128, 511, 126, (128, 256))
    assert SpectrogramConfig.from_dict(wide.to_dict()) == wide


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="multiples of 8000 Hz only.*sample_rate=44100"):
        SpectrogramConfig.for_sample_rate(44100)
    with pytest.raises(ValueError, match="hop_length must not exceed n_fft"):
        SpectrogramConfig(hop_length=300)
    with pytest.raises(ValueError, match="dtype must be one of"):
        SpectrogramConfig(dtype="int8")
    with pytest.raises(ValueError, match="Unknown SpectrogramConfig keys \\['bogus'\\]"):
        SpectrogramConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("rate", [8000, 16000])
def test_stft_matches_librosa(rate):
    config = SpectrogramConfig.for_sample_rate(rate)
    x = chirp(config.window_samples, rate)
    ours = stft(x, config)
    ref = librosa.stft(x, n_fft=config.n_fft, hop_length=config.hop_length, center=True, pad_mode="constant").T
    assert ours.shape == ref.shape == config.shape
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < 1e-5


@pytest.mark.parametrize("length", [300, 8064, 12347])
def test_istft_matches_librosa_and_inverts(length):
    config = SpectrogramConfig()
    x = chirp(length)
    spec = stft(x, config)
    y = istft(spec, config, length)
    ref = librosa.istft(spec.T, n_fft=config.n_fft, hop_length=config.hop_length, length=length)
    assert np.max(np.abs(y - x)) < 1e-5
    assert np.max(np.abs(y - ref)) < 1e-5
    mag, phase = magnitude_phase(x, config)
    np.testing.assert_allclose(from_magnitude_phase(mag, phase, config, length), x, atol=1e-5)


def test_batched_equals_single():
    config = SpectrogramConfig()
    xs = np.stack([chirp(8064), chirp(8064)[::-1].copy()])
    batched = stft(xs, config)
    np.testing.assert_allclose(batched[1], stft(xs[1], config), atol=1e-6)
