"""Evaluation survives bad items: degenerate pairs are skipped by name, failing metrics are listed.

Every test uses real audio files (written with soundfile), real Keras models saved as model
directories, and the library or the installed command line.
"""

import json
import logging
import os

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from predictor.evaluation import metrics
from predictor.evaluation.items import paired_items
from predictor.evaluation.options import EvaluateOptions
from predictor.evaluation.run import run_evaluation
from predictor.evaluation.scoring import evaluate
from predictor.evaluation.systems import baseline_systems
from tfrecord_schema.config import SpectrogramConfig
from trainer.model_dir import save_model_dir
from beam_pipelines.synthetic import chirp as synth_voice
from beam_pipelines.synthetic import noise as synth_noise

CONFIG = SpectrogramConfig()
RATE = CONFIG.sample_rate

# Keras 3 on TensorFlow converts tensors with np.array(x), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def write(path, data, rate=RATE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, data, rate, subtype="FLOAT")


def mixture(seconds, snr, seed):
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    clean = 0.1 * synth_voice(rng, n, RATE)
    noise = synth_noise(rng, n, RATE, "white")
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
    return clean, (clean + noise).astype(np.float32)


def constant_model_dir(directory, target, output):
    """A real one-layer Keras model whose tanh output is `output` everywhere, saved as a model directory.

    With the noise target and output 0 it leaves the magnitude as it is; with the mask target and
    output -1 it mutes everything (a collapsed model, as a too-high learning rate can produce).
    """
    inputs = keras.Input((*CONFIG.shape, 1))
    bias = float(np.arctanh(output)) if abs(output) < 1 else 20.0 * np.sign(output)
    outputs = keras.layers.Conv2D(1, 1, activation="tanh", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(bias))(inputs)
    return save_model_dir(keras.Model(inputs, outputs), directory, config=CONFIG, target=target)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Two good pairs and three degenerate ones: a clean file much shorter than its noisy twin, a
    silent clean file, and a noisy file identical to its clean file."""
    root = tmp_path_factory.mktemp("pairs")
    for name, snr, seed in (("good-a", 0.0, 1), ("good-b", 10.0, 2)):
        clean, noisy = mixture(2.0, snr, seed)
        write(str(root / "clean" / f"{name}.wav"), clean)
        write(str(root / "noisy" / f"{name}.wav"), noisy)
    clean, noisy = mixture(2.0, 5.0, 3)
    write(str(root / "clean" / "short.wav"), clean[: int(0.3 * RATE)])
    write(str(root / "noisy" / "short.wav"), noisy)
    write(str(root / "clean" / "silent.wav"), np.zeros(2 * RATE, np.float32))
    write(str(root / "noisy" / "silent.wav"), 0.01 * synth_noise(np.random.default_rng(4), 2 * RATE, RATE, "white"))
    clean, _ = mixture(2.0, 5.0, 5)
    write(str(root / "clean" / "same.wav"), clean)
    write(str(root / "noisy" / "same.wav"), clean)
    return root


def test_degenerate_pairs_are_skipped_by_name_and_the_rest_is_scored(pairs, tmp_path, caplog):
    model_dir = constant_model_dir(str(tmp_path / "identity"), "noise", 0.0)
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING, logger="predictor"):
        # The reference recipe returns silence for the 0.3 s item, which made PESQ raise and lost the run.
        results = run_evaluation(EvaluateOptions(
            output_dir=str(out), models={"tiny": model_dir}, noisy_dir=str(pairs / "noisy"),
            clean_dir=str(pairs / "clean"), systems=["noisy", "tiny", "tiny-reference-recipe", "oracle"],
            with_stoi=False, num_examples=1))

    assert [r["id"] for r in results["items"]] == ["good-a", "good-b"] and results["num_items"] == 2
    reasons = {s["id"]: s["reason"] for s in results["skipped"]}
    assert sorted(reasons) == ["same", "short", "silent"] and results["num_skipped"] == 3
    assert reasons["short"].startswith("0.300 s long, shorter than one model window (1.008 s)")
    assert "its noisy file (2.000 s) and clean file (0.300 s)" in reasons["short"]
    assert reasons["silent"].startswith("the clean reference is silent")
    assert reasons["same"].startswith("the noisy input is (nearly) identical to the clean reference (input SNR")
    for name in ("short", "silent", "same"):  # each warning names the item's files
        assert f"skipping item {name} (noisy {name}.wav, clean {name}.wav): {reasons[name]}" in caplog.text

    # Means are over the good items only: the identical pair would have put SI-SDRi near -200 dB.
    overall = results["aggregates"]["overall"]
    assert results["failures"] == []
    assert all(overall[s]["count"] == 2 for s in ("noisy", "tiny", "oracle"))
    assert overall["noisy"]["si_sdri"] == pytest.approx(0.0, abs=1e-9)
    assert -5.0 < overall["tiny"]["si_sdri"] < 5.0 and overall["oracle"]["si_sdri"] > 3.0
    assert all(np.isfinite(overall[s]["pesq"]) for s in ("noisy", "tiny", "tiny-reference-recipe", "oracle"))

    written = json.loads((out / "results.json").read_text())
    assert {s["id"]: s["reason"] for s in written["skipped"]} == reasons
    report = (out / "results.md").read_text()
    assert "3 more items were skipped" in report and "## Skipped items" in report
    assert "| short | noisy short.wav, clean short.wav | 0.300 s long" in report


def test_a_metric_that_fails_on_one_system_is_listed_and_the_run_completes(pairs, tmp_path, capsys, caplog):
    muted = constant_model_dir(str(tmp_path / "muted"), "mask", -1.0)
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING, logger="predictor"):
        code = speech_enhance.main([
            "evaluate", "--model", f"muted={muted}", "--noisy-dir", str(pairs / "noisy"), "--clean-dir",
            str(pairs / "clean"), "--systems", "noisy", "muted", "--no-reference-recipe", "--no-stoi",
            "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 items skipped, 2 metric values not computed" in printed and "results.md" in printed

    results = json.loads((out / "results.json").read_text())
    # PESQ cannot score a silent estimate (the library raises); that costs the number, not the run.
    assert [(f["id"], f["system"], f["metric"]) for f in results["failures"]] == [
        ("good-a", "muted", "pesq"), ("good-b", "muted", "pesq")]
    assert all(f["error"].startswith("ValueError: ") for f in results["failures"])
    assert "muted on item good-a (noisy good-a.wav, clean good-a.wav): pesq could not be computed" in caplog.text
    overall = results["aggregates"]["overall"]
    assert overall["muted"]["pesq"] is None and overall["muted"]["si_sdr"] is not None
    assert 1.0 < overall["noisy"]["pesq"] < 4.6
    item = results["items"][0]
    assert item["failures"] == {"muted": {"pesq": results["failures"][0]["error"]}}
    report = (out / "results.md").read_text()
    assert "## Metric failures" in report and "| good-a | muted | pesq | ValueError: " in report


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 3 s voice, a 0.5 s voice (shorter than a model window) and a noise file."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    write(str(root / "voices" / "long.wav"), 0.1 * synth_voice(rng, 3 * RATE, RATE))
    write(str(root / "voices" / "short.wav"), 0.1 * synth_voice(rng, RATE // 2, RATE))
    write(str(root / "noises" / "hiss.wav"), 0.05 * synth_noise(rng, 3 * RATE, RATE, "white"))
    return root


def test_mixtures_shorter_than_a_window_are_refused_or_skipped(corpus, tmp_path, caplog):
    common = dict(voice_dir=str(corpus / "voices"), noise_dir=str(corpus / "noises"), systems=["noisy", "oracle"],
                  snrs=(0.0,), with_pesq=False, with_stoi=False)
    with pytest.raises(ValueError, match=r"duration must be at least one model window, 1\.008 s at "
                                         r"8000 Hz.*Received: duration=0\.5\. Use duration=1\.01 or more"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path / "a"), duration=0.5, **common))
    assert not os.path.exists(tmp_path / "a")

    with caplog.at_level(logging.WARNING, logger="predictor"):
        results = run_evaluation(EvaluateOptions(output_dir=str(tmp_path / "b"), duration=2.0, num_mixtures=6, seed=1,
                                                 **common))
    skipped = results["skipped"]
    assert skipped and results["num_items"] == 6 - len(skipped) > 0
    assert all(s["source"]["voice_file"] == "short.wav" and s["reason"].startswith("0.500 s long") for s in skipped)
    assert all(r["source"]["voice_file"] == "long.wav" for r in results["items"])
    assert f"skipping item {skipped[0]['id']} (voice short.wav, noise hiss.wav): 0.500 s long" in caplog.text


def test_when_every_item_is_degenerate_the_error_names_them(pairs, tmp_path):
    items = paired_items(str(pairs / "noisy"), str(pairs / "clean"), sample_rate=RATE)
    bad = [it for it in items if not it.item_id.startswith("good")]
    systems = baseline_systems(CONFIG)[:1]
    with pytest.raises(ValueError, match=r"All 3 items were skipped, so there is nothing to score, e.g. same: the "
                                         r"noisy input is \(nearly\) identical"):
        evaluate(bad, systems, RATE, with_pesq=False, with_stoi=False, min_samples=CONFIG.window_samples)


def test_stoi_is_nan_rather_than_a_fake_score_when_there_is_too_little_speech():
    s = 0.1 * synth_voice(np.random.default_rng(0), RATE // 4, RATE)  # 0.25 s: fewer than 30 STOI frames
    assert np.isnan(metrics.stoi_score(s, s, RATE))
    errors = {}
    scores = metrics.score(s, np.zeros_like(s), s, RATE, errors=errors)
    assert np.isnan(scores["pesq"]) and np.isnan(scores["stoi"]) and set(errors) <= {"pesq"}
    with pytest.raises(ValueError, match="same length"):
        metrics.score(s, s[:-1], s, RATE, with_pesq=False)
    errors = {}
    assert np.isnan(metrics.score(s, s[:-1], s, RATE, errors=errors)["si_sdr"])
    assert errors["si_sdr"].startswith("ValueError: metrics take two 1-D signals of the same length")


def test_an_unreadable_noisy_file_is_skipped_and_listed_by_the_command(tmp_path, capsys):
    """A noisy file with a NaN sample and a text file named .wav cost their items, not the run (the
    AudioError used to be re-raised with one argument, a TypeError that lost the whole report)."""
    root = tmp_path / "pairs"
    for name, snr, seed in (("good-a", 0.0, 1), ("good-b", 10.0, 2), ("nan", 5.0, 3), ("text", 5.0, 4)):
        clean, noisy = mixture(2.0, snr, seed)
        write(str(root / "clean" / f"{name}.wav"), clean)
        if name == "nan":
            noisy[100] = np.nan
        if name == "text":
            (root / "noisy" / "text.wav").write_text("not audio\n")
        else:
            write(str(root / "noisy" / f"{name}.wav"), noisy)
    model_dir = constant_model_dir(str(tmp_path / "identity"), "noise", 0.0)
    out = tmp_path / "report"
    code = speech_enhance.main([
        "evaluate", "--model", f"tiny={model_dir}", "--noisy-dir", str(root / "noisy"), "--clean-dir",
        str(root / "clean"), "--systems", "noisy", "tiny", "--no-reference-recipe", "--no-pesq", "--no-stoi",
        "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 items skipped" in captured.out
    results = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in results["items"]] == ["good-a", "good-b"]
    reasons = {s["id"]: s["reason"] for s in results["skipped"]}
    assert sorted(reasons) == ["nan", "text"]
    assert reasons["nan"].startswith("cannot be read: ") and "nan.wav" in reasons["nan"]
    assert "NaN or infinite samples" in reasons["nan"]
    assert reasons["text"].startswith("cannot be read: ") and "text.wav: cannot decode audio" in reasons["text"]
    report = (out / "results.md").read_text()
    assert "| text | noisy text.wav, clean text.wav | cannot be read: " in report


def test_a_library_error_of_any_signature_is_renamed_to_flags_keeping_its_type():
    from beam_pipelines.audio import AudioError
    from predictor.evaluation.cli import FLAGS
    from tfrecord_schema.options import with_flags

    err = AudioError("not_finite", "noisy_dir holds x.wav: the audio holds NaN or infinite samples")
    renamed = with_flags(err, FLAGS)
    assert type(renamed) is AudioError and renamed.reason == "not_finite"
    assert str(renamed) == "--noisy-dir holds x.wav: the audio holds NaN or infinite samples"
    missing = with_flags(FileNotFoundError("clean_dir='x' does not exist"), FLAGS)
    assert type(missing) is FileNotFoundError and str(missing) == "--clean-dir 'x' does not exist"
