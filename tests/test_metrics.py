"""Metrics on cases with known answers."""

import numpy as np
import pytest

from predictor.evaluation import metrics
from beam_pipelines.synthetic import chirp as synth_voice


def voice(rate, seconds=3.0, seed=0):
    return 0.1 * synth_voice(np.random.default_rng(seed), int(seconds * rate), rate)


def white(n, seed=1):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def at_snr(clean, noise, snr_db):
    noise = noise * np.sqrt(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2)
                            / 10 ** (snr_db / 10))
    return (clean + noise).astype(np.float32)


def test_si_sdr_is_scale_invariant_and_high_for_a_copy():
    s = voice(8000)
    assert metrics.si_sdr(s, s) > 100.0
    assert metrics.si_sdr(s, 0.01 * s) > 100.0
    noisy = at_snr(s, white(s.size), 5.0)
    assert metrics.si_sdr(s, 3.0 * noisy) == pytest.approx(metrics.si_sdr(s, noisy), abs=1e-6)
    assert metrics.si_sdr(s, noisy) == pytest.approx(metrics.si_sdr(7.0 * s, noisy), abs=1e-6)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0])
def test_si_sdr_of_signal_plus_noise_is_the_snr(snr):
    s = voice(8000, seconds=4.0)
    s = s - s.mean()
    n = white(s.size).astype(np.float64)
    n -= n.mean()
    n -= np.dot(n, s) / np.dot(s, s) * s  # orthogonal to s: SI-SDR is then exactly the SNR
    noisy = at_snr(s, n.astype(np.float32), snr)
    assert metrics.si_sdr(s, noisy) == pytest.approx(snr, abs=1e-3)
    # Plain white noise is nearly orthogonal to speech: within a few hundredths of a dB.
    assert metrics.si_sdr(s, at_snr(s, white(s.size, seed=3), snr)) == pytest.approx(snr, abs=0.1)
    assert metrics.snr_db(s, noisy) == pytest.approx(snr, abs=1e-3)


def test_si_sdr_improvement_and_edge_cases():
    s = voice(8000)
    noisy = at_snr(s, white(s.size), 0.0)
    assert metrics.si_sdr_improvement(s, noisy, noisy) == pytest.approx(0.0, abs=1e-9)
    assert metrics.si_sdr_improvement(s, s, noisy) > 90.0
    assert np.isnan(metrics.si_sdr(np.zeros(100), np.ones(100)))
    with pytest.raises(ValueError, match="same length.*reference shape=\\(100,\\), estimate shape=\\(99,\\)"):
        metrics.si_sdr(np.ones(100), np.ones(99))


@pytest.mark.parametrize("rate, top", [(8000, 4.5), (16000, 4.64)])
def test_pesq_is_maximal_for_identical_signals_and_lower_with_noise(rate, top):
    s = voice(rate)
    assert metrics.pesq_mode(rate) == {8000: "nb", 16000: "wb"}[rate]
    identical = metrics.pesq_score(s, s, rate)
    assert identical == pytest.approx(top, abs=0.06)
    noisy = metrics.pesq_score(s, at_snr(s, white(s.size), 10.0), rate)
    assert 1.0 <= noisy < identical - 1.0


def test_pesq_refuses_other_rates_and_returns_nan_without_speech():
    with pytest.raises(ValueError, match="8000 Hz .* 16000 Hz .*sample_rate=44100"):
        metrics.pesq_score(np.ones(44100), np.ones(44100), 44100)
    assert np.isnan(metrics.pesq_score(np.zeros(16000), np.zeros(16000), 8000))


def test_stoi_is_one_for_identical_signals_and_lower_with_noise():
    s = voice(8000)
    assert metrics.stoi_score(s, s, 8000) == pytest.approx(1.0, abs=1e-6)
    noisy = metrics.stoi_score(s, at_snr(s, white(s.size), 0.0), 8000)
    very_noisy = metrics.stoi_score(s, at_snr(s, white(s.size), -10.0), 8000)
    assert 1.0 > noisy > very_noisy


def test_score_gives_every_metric():
    s = voice(8000)
    noisy = at_snr(s, white(s.size), 5.0)
    scores = metrics.score(s, noisy, noisy, 8000)
    assert set(scores) == {"si_sdr", "si_sdri", "pesq", "stoi"}
    assert scores["si_sdri"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(metrics.score(s, noisy, noisy, 8000, with_pesq=False)["pesq"])
