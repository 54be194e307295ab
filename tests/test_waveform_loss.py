"""The waveform losses: the in-graph inverse STFT equals the writer's, the losses equal the metrics,
and a U-Net trained on them exports a mask model the predictor runs."""

import numpy as np
import pytest

from beam_pipelines.testing import SMALL_CONFIG, write_dataset
from predictor.evaluation import metrics
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft
from trainer.config import LOSSES, TrainConfig
from trainer.targets import loss_weight, model_target
from trainer.waveform_loss import (CAP_DB, MIX_WEIGHT, WAVEFORM_LOSSES, InverseStft, si_sdr_db, snr_db,
                                   waveform_loss, waveform_metric)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

EVEN_CONFIG = SpectrogramConfig(window_samples=512, n_fft=64, hop_length=16)


def _np(x):
    return np.asarray(x)


@pytest.mark.parametrize("config", [SMALL_CONFIG, SpectrogramConfig(), EVEN_CONFIG],
                         ids=["small-odd-fft", "default-8k", "even-fft"])
def test_inverse_stft_equals_the_writers_istft(config):
    rng = np.random.default_rng(0)
    shape = (3, *config.shape)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    expected = istft(spectrum, config, config.window_samples)
    got = _np(InverseStft(config)(spectrum.real, spectrum.imag))
    assert got.shape == (3, config.window_samples)
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())
    # And it inverts the writer's STFT.
    signal = rng.standard_normal((2, config.window_samples)).astype(np.float32)
    spec = stft(signal, config)
    np.testing.assert_allclose(_np(InverseStft(config)(spec.real, spec.imag)), signal, atol=1e-4)


def test_snr_and_si_sdr_equal_the_evaluation_metrics_up_to_the_cap():
    rng = np.random.default_rng(1)
    clean = rng.standard_normal((4, 800)).astype(np.float32)
    estimate = (0.7 * clean + 0.2 * rng.standard_normal((4, 800)) + 0.05).astype(np.float32)
    cap = 10.0 ** (-CAP_DB / 10.0)

    def capped(db):
        return -10.0 * np.log10(10.0 ** (-db / 10.0) + cap)

    expected_snr = [capped(metrics.snr_db(c, e)) for c, e in zip(clean, estimate)]
    expected_si_sdr = [capped(metrics.si_sdr(c, e)) for c, e in zip(clean, estimate)]
    np.testing.assert_allclose(_np(snr_db(clean, estimate)), expected_snr, atol=1e-3)
    np.testing.assert_allclose(_np(si_sdr_db(clean, estimate)), expected_si_sdr, atol=1e-3)
    # SI-SDR ignores the level, SNR does not; a perfect estimate reaches the 30 dB cap.
    np.testing.assert_allclose(_np(si_sdr_db(clean, 3.0 * estimate)), expected_si_sdr, atol=1e-3)
    assert np.all(_np(snr_db(clean, 3.0 * estimate)) < np.array(expected_snr) - 3)
    np.testing.assert_allclose(_np(snr_db(clean, clean)), CAP_DB, atol=1e-3)


def _packed(noisy, clean):
    return np.stack([noisy.real, noisy.imag, clean.real, clean.imag], axis=-1).astype(np.float32)


@pytest.mark.parametrize("kind", ["snr", "si-sdr"])
def test_the_loss_scores_the_waveform_the_predictor_would_make(kind):
    config = SMALL_CONFIG
    rng = np.random.default_rng(2)
    clean_wave = rng.standard_normal((2, config.window_samples)).astype(np.float32)
    noise_wave = 0.5 * rng.standard_normal((2, config.window_samples)).astype(np.float32)
    clean, noisy = stft(clean_wave, config), stft(clean_wave + noise_wave, config)
    ratio = np.abs(clean) / np.abs(noisy) * np.cos(np.angle(clean) - np.angle(noisy))
    gain = np.clip(ratio, 0.0, 1.0)  # the phase-sensitive gain
    loss = waveform_loss(kind, config)
    y_true = _packed(noisy, clean)
    as_output = (2.0 * gain - 1.0)[..., None].astype(np.float32)
    enhanced = istft(gain * noisy, config, config.window_samples)
    measure = snr_db if kind == "snr" else si_sdr_db
    np.testing.assert_allclose(_np(loss(y_true, as_output)), -_np(measure(clean_wave, enhanced)), atol=1e-3)
    # A better gain scores a lower loss than passing the noisy input through or halving it.
    ones, halves = np.ones_like(as_output), np.zeros_like(as_output)
    assert np.all(_np(loss(y_true, as_output)) < _np(loss(y_true, ones)))
    assert np.all(_np(loss(y_true, as_output)) < _np(loss(y_true, halves)))
    metric = waveform_metric(kind, config)
    np.testing.assert_allclose(_np(metric(y_true, as_output)), -_np(loss(y_true, as_output)), atol=1e-5)


def test_the_mixed_loss_adds_the_shipped_recipes_weighted_huber_loss():
    config = SMALL_CONFIG
    rng = np.random.default_rng(4)
    clean_wave = rng.standard_normal((3, config.window_samples)).astype(np.float32)
    noise_wave = rng.standard_normal((3, config.window_samples)).astype(np.float32)
    clean, noisy = stft(clean_wave, config), stft(clean_wave + noise_wave, config)
    y_true = _packed(noisy, clean)
    output = np.tanh(rng.standard_normal((3, *config.shape, 1))).astype(np.float32)
    error = np.abs(output[..., 0] - model_target(np.abs(noisy), np.abs(clean), "mask", config))
    huber = np.where(error <= 1.0, 0.5 * error ** 2, error - 0.5)
    expected = (loss_weight(np.abs(noisy)) * huber).mean(axis=(1, 2)) + MIX_WEIGHT * _np(
        waveform_loss("si-sdr", config)(y_true, output))
    np.testing.assert_allclose(_np(waveform_loss("si-sdr+huber", config)(y_true, output)), expected, rtol=1e-4)


def test_the_config_offers_exactly_the_waveform_losses_and_refuses_what_they_cannot_train():
    assert LOSSES == ("huber", *WAVEFORM_LOSSES)
    with pytest.raises(ValueError, match=r"target must be one of \('mask', 'psa', 'cmask'\). Received: target='noise'"):
        TrainConfig(loss="snr", target="noise")
    with pytest.raises(ValueError, match="loss_weighting must be 'none'. Received: loss_weighting='magnitude'"):
        TrainConfig(loss="si-sdr", target="mask", loss_weighting="magnitude")
    with pytest.raises(ValueError, match="the other families have their own loss"):
        TrainConfig(loss="snr", target="mask", architecture="blstm-dc")
    with pytest.raises(ValueError, match=r"loss must be one of \('huber', 'snr', 'si-sdr', 'si-sdr\+huber'\)"):
        TrainConfig(loss="l1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("waveform") / "dataset")
    write_dataset(directory, splits={"train": 32, "valid": 8}, num_shards=2, seed=3)
    return directory


def test_a_unet_trained_on_the_snr_loss_improves_and_enhances(dataset, tmp_path):
    from predictor.enhance import Enhancer
    from trainer.model_dir import load_model_dir
    from trainer.train import train

    model_dir = str(tmp_path / "model")
    summary = train(dataset, model_dir, epochs=4, target="mask", loss="snr", base_filters=4, depth=3,
                    batch_size=8, learning_rate=3e-3, seed=0, deterministic=True, verbose=0)
    history = summary["history"]
    # The loss is the negative SNR in dB: training raises the SNR, and SI-SDR is logged beside it.
    assert history["loss"][-1] < history["loss"][0] - 1.0, history["loss"]
    assert "val_si_sdr" in history and np.all(np.isfinite(history["val_si_sdr"]))
    _, info = load_model_dir(model_dir)
    assert info["target"] == "mask" and info["training"]["loss"] == "snr"
    assert info["training"]["loss_description"].startswith("negative snr of the waveform")
    enhancer = Enhancer.from_model_dir(model_dir, batch_size=2)
    noisy = np.random.default_rng(0).standard_normal(2 * enhancer.sample_rate).astype(np.float32) * 0.1
    enhanced = enhancer.enhance(noisy)
    assert enhanced.shape == noisy.shape and np.all(np.isfinite(enhanced))
