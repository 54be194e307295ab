"""Baselines, evaluation items, and the evaluation end to end on a model trained here."""

import json
import os

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from mixing.levels import PEAK_LIMIT
from beam_pipelines.splits import noise_classes
from predictor.evaluation import baselines, metrics
from predictor.evaluation.items import make_mixtures, paired_items
from predictor.evaluation.options import EvaluateOptions
from predictor.evaluation.run import run_evaluation
from predictor.evaluation.scoring import aggregate, noise_kind
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import hann_window, stft
from trainer.model_dir import save_model_dir
from trainer.targets import model_input, model_target
from beam_pipelines.synthetic import chirp as synth_voice
from beam_pipelines.synthetic import noise as synth_noise
from beam_pipelines.testing import make_example

CONFIG = SpectrogramConfig()
RATE = CONFIG.sample_rate


def mixture(seconds=4.0, snr=0.0, kind="white", seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    clean = 0.1 * synth_voice(rng, n, RATE)
    noise = synth_noise(rng, n, RATE, kind)
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr / 10))
    return clean, (clean + noise).astype(np.float32)


def test_oracle_beats_the_noisy_input():
    clean, noisy = mixture(snr=0.0)
    oracle = baselines.oracle(noisy, clean, CONFIG)
    assert oracle.shape == noisy.shape
    assert metrics.si_sdr(clean, oracle) > metrics.si_sdr(clean, noisy) + 5.0


@pytest.mark.parametrize("method", ["minimum_statistics", "quietest"])
def test_noise_estimates_find_the_level_of_white_noise(method):
    sigma = 0.05
    noise = sigma * np.random.default_rng(0).standard_normal(5 * RATE).astype(np.float32)
    power = np.abs(stft(noise, CONFIG)).astype(np.float64) ** 2
    expected = sigma**2 * np.sum(hann_window(CONFIG.n_fft).astype(np.float64) ** 2)
    estimate = baselines.noise_power(power, CONFIG, method)
    assert estimate.shape == power.shape
    error_db = 10 * np.log10(np.median(estimate[:, 5:-5]) / expected)
    assert abs(error_db) < 2.0


def test_classical_baselines_improve_stationary_noise():
    clean, noisy = mixture(snr=0.0)
    before = metrics.si_sdr(clean, noisy)
    for name, fn in [("spectral subtraction", lambda x: baselines.spectral_subtraction(x, CONFIG)),
                     ("wiener", lambda x: baselines.wiener_filter(x, CONFIG)),
                     ("noisereduce", lambda x: baselines.spectral_gating(x, RATE, stationary=True))]:
        out = fn(noisy)
        assert out.shape == noisy.shape and out.dtype == np.float32, name
        assert metrics.si_sdr(clean, out) > before + 2.0, name
    assert baselines.spectral_gating(noisy, RATE, stationary=False).shape == noisy.shape


def test_reference_recipe_loses_the_level_and_drops_the_tail():
    def identity(x):  # the noise target with zero output leaves the magnitude as it is
        return np.zeros(x.shape, np.float32)

    n = CONFIG.window_samples
    _, x = mixture(seconds=3.5 * n / RATE)
    recipe = baselines.ReferenceRecipe(identity, CONFIG, "noise")
    y = recipe.enhance(x)
    assert y.shape == x.shape
    assert not np.any(y[3 * n:])  # the tail that does not fill a window is dropped
    for w in range(3):  # each window: peak-normalised (peak bin = 1.0), times 10
        window = x[w * n: (w + 1) * n]
        peak = np.abs(stft(window, CONFIG)).max()
        np.testing.assert_allclose(y[w * n: (w + 1) * n], 10.0 * window / peak, atol=1e-4)
    # The level is lost: a 40 dB quieter input comes out just as loud.
    np.testing.assert_allclose(recipe.enhance(0.01 * x), y, atol=1e-4)
    padded = baselines.ReferenceRecipe(identity, CONFIG, "noise", tail="pad").enhance(x)
    assert np.any(padded[3 * n:])
    assert not np.any(recipe.enhance(x[: n // 2]))  # shorter than a window: silent, as skipped


def write(path, data, rate):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, data, rate)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Held-out voices (16 kHz flac, so they get resampled) and noises with classes."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(42)
    for i, seconds in enumerate((1.5, 5.0, 6.0)):
        voice = 0.1 * synth_voice(rng, int(seconds * 16000), 16000)
        write(str(root / "voices" / f"speaker{i}" / f"utt{i}.flac"), voice, 16000)
    for name, kind, seconds in (("hum.wav", "hum", 3.0), ("white.wav", "white", 1.0),
                                ("traffic/rumble.wav", "brown", 4.0), ("loose.wav", "white", 2.0)):
        write(str(root / "noises" / name), 0.05 * synth_noise(rng, int(seconds * RATE), RATE, kind), RATE)
    (root / "noises" / "classes.tsv").write_text("file\tclass\nhum.wav\thum\nwhite.wav\thiss\n")
    return root


def test_noise_classes_from_tsv_then_folder_then_unknown(corpus):
    files = ["hum.wav", "white.wav", "traffic/rumble.wav", "loose.wav"]
    classes = noise_classes(str(corpus / "noises"), files)
    assert classes == {"hum.wav": "hum", "white.wav": "hiss", "traffic/rumble.wav": "traffic", "loose.wav": "unknown"}


def test_esc50_categories_label_the_mixtures(tmp_path):
    """An ESC-50-style folder (audio/*.wav, meta/esc50.csv) gets its categories, as in the dataset job."""
    rng = np.random.default_rng(7)
    write(str(tmp_path / "voices" / "a.wav"), 0.1 * synth_voice(rng, 2 * RATE, RATE), RATE)
    for name, kind in (("1-100032-A-0.wav", "white"), ("1-17367-A-10.wav", "brown")):
        write(str(tmp_path / "ESC-50" / "audio" / name), 0.05 * synth_noise(rng, RATE, RATE, kind), RATE)
    (tmp_path / "ESC-50" / "meta").mkdir()
    (tmp_path / "ESC-50" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n1-17367-A-10.wav,1,10,rain,True,17367,A\n")
    files = ["audio/1-100032-A-0.wav", "audio/1-17367-A-10.wav"]
    assert noise_classes(str(tmp_path / "ESC-50"), files) == dict(zip(files, ["dog", "rain"]))
    items = make_mixtures(str(tmp_path / "voices"), str(tmp_path / "ESC-50"), snrs=(0.0,), num_mixtures=6,
                          duration=1.5, sample_rate=RATE)
    assert {it.noise_class for it in items} == {"dog", "rain"}
    for it in items:
        assert it.noise_class == {"audio/1-100032-A-0.wav": "dog", "audio/1-17367-A-10.wav": "rain"}[
            it.source["noise_file"]]


def test_mixtures_are_deterministic_and_at_the_asked_snr(corpus):
    kwargs = dict(snrs=(-5.0, 5.0), num_mixtures=4, duration=2.0, sample_rate=RATE, seed=3)
    items = make_mixtures(str(corpus / "voices"), str(corpus / "noises"), **kwargs)
    again = make_mixtures(str(corpus / "voices"), str(corpus / "noises"), **kwargs)
    assert [it.item_id for it in items] == [f"snr{s:+g}-{i:04d}" for s in (-5, 5) for i in range(4)]
    for a, b in zip(items, again):
        np.testing.assert_array_equal(a.noisy, b.noisy)
        assert a.source == b.source
    for it in items:
        assert it.snr_db == pytest.approx(it.snr_bin, abs=0.01)
        assert it.noisy.shape == it.clean.shape and it.noisy.shape[0] <= 2 * RATE
        assert np.max(np.abs(it.noisy)) <= PEAK_LIMIT + 1e-6
        assert it.noise_class in {"hum", "hiss", "traffic", "unknown"}
    other = make_mixtures(str(corpus / "voices"), str(corpus / "noises"), **{**kwargs, "seed": 4})
    assert any(not np.array_equal(a.noisy, b.noisy) for a, b in zip(items, other))


def test_paired_items_match_by_relative_path(tmp_path):
    for i, snr in enumerate((-4.0, 11.0)):
        clean, noisy = mixture(seconds=1.5, snr=snr, seed=i)  # items shorter than a window (1.008 s) are skipped
        write(str(tmp_path / "clean" / "set" / f"{i}.flac"), clean, RATE)
        write(str(tmp_path / "noisy" / "set" / f"{i}.wav"), noisy, RATE)
    write(str(tmp_path / "noisy" / "orphan.wav"), clean, RATE)
    items = paired_items(str(tmp_path / "noisy"), str(tmp_path / "clean"), sample_rate=RATE)
    assert [(it.item_id, it.snr_bin, it.noise_class) for it in items] == [
        ("set/0", -5.0, "set"), ("set/1", 10.0, "set")]
    assert items[0].snr_db == pytest.approx(-4.0, abs=0.05)
    results = run_evaluation(EvaluateOptions(output_dir=str(tmp_path / "report"), noisy_dir=str(tmp_path / "noisy"),
                                             clean_dir=str(tmp_path / "clean"), systems=["noisy", "oracle"],
                                             with_pesq=False))
    overall = results["aggregates"]["overall"]
    assert overall["oracle"]["si_sdr"] > overall["noisy"]["si_sdr"]
    assert overall["noisy"]["si_sdri"] == pytest.approx(0.0, abs=1e-9)


def test_evaluate_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="either noisy_dir and clean_dir .* or voice_dir and noise_dir .*"
                                         "Received: noisy_dir='a', clean_dir=None"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), noisy_dir="a", voice_dir="b"))
    with pytest.raises(ValueError, match="systems must name systems of this evaluation; \\['nope'\\]"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), noisy_dir="a", clean_dir="b", systems=["nope"]))


def test_evaluate_command_names_its_flags(tmp_path, capsys):
    code = speech_enhance.main(["evaluate", "--noisy-dir", "a", "--voice-dir", "b", "--output", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert ("either --noisy-dir and --clean-dir (paired files) or --voice-dir and --noise-dir" in err
            and "Received: --noisy-dir 'a', --clean-dir none" in err and "noisy_dir" not in err), err


def train_tiny_model(directory):
    """A three-layer conv net fitted for a few epochs on mixtures made like the dataset's."""
    examples = [make_example(CONFIG, "train", i, seed=0) for i in range(32)]
    x = np.stack([model_input(e["noisy_magnitude"], CONFIG) for e in examples])[..., None]
    y = np.stack([model_target(e["noisy_magnitude"], e["clean_magnitude"], "noise", CONFIG)
                  for e in examples])[..., None]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*CONFIG.shape, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    return save_model_dir(model, directory, config=CONFIG, target="noise", training={"epochs": 4})


def test_evaluation_runs_end_to_end_on_a_model_trained_here(corpus, tmp_path, capsys):
    model_dir = train_tiny_model(str(tmp_path / "tiny"))
    out = tmp_path / "report"
    code = speech_enhance.main([
        "evaluate", "--model", f"tiny={model_dir}", "--voice-dir", str(corpus / "voices"),
        "--noise-dir", str(corpus / "noises"), "--snrs", "0", "10", "--num-mixtures", "2", "--duration", "2",
        "--examples", "2", "--save-audio", "--output", str(out)])
    assert code == 0
    systems = ["noisy", "tiny", "tiny-reference-recipe", "spectral-subtraction", "wiener", "noisereduce-stationary",
               "noisereduce-nonstationary", "oracle"]
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["systems"]] == systems
    assert results["snr_bins"] == [0.0, 10.0] and results["pesq_mode"] == "nb" and results["num_items"] == 4
    # Each system's real-time factor: its time over the audio it enhanced, also in results.md.
    audio = sum(item["seconds"] for item in results["items"])
    for s in results["systems"]:
        assert s["real_time_factor"] == pytest.approx(s["seconds"] / audio) and s["real_time_factor"] > 0
    assert f"real-time factor {results['systems'][1]['real_time_factor']:.3f}" in (out / "results.md").read_text()
    assert results["source"]["kind"] == "mixtures" and results["spectrogram"] == CONFIG.to_dict()
    for item in results["items"]:
        assert set(item["scores"]) == set(systems)
        for scores in item["scores"].values():
            assert set(scores) == {"si_sdr", "si_sdri", "pesq", "stoi"}
            assert all(v is None or np.isfinite(v) for v in scores.values())
    for system in systems:
        assert set(results["aggregates"]["by_snr"][system]) == {"0", "10"}
        assert sum(v["count"] for v in results["aggregates"]["by_noise_class"][system].values()) == 4
    assert results["aggregates"]["overall"]["oracle"]["si_sdr"] > results["aggregates"]["overall"]["noisy"]["si_sdr"]
    report = (out / "results.md").read_text()
    for text in systems + ["| 0 |", "| 10 |", "0 dB", "10 dB", "PESQ (nb)"] + results["noise_classes"]:
        assert text in report, text
    for png in ("si_sdri_vs_snr.png", "examples.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert len(os.listdir(out / "audio")) == 2
    assert "## Overall" in capsys.readouterr().out


def test_results_breakdown_agrees_with_the_evaluations_own_aggregates(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import results_breakdown

    out = tmp_path / "report"
    assert speech_enhance.main([
        "evaluate", "--systems", "noisy", "spectral-subtraction", "oracle", "--voice-dir", str(corpus / "voices"),
        "--noise-dir", str(corpus / "noises"), "--snrs", "0", "10", "--num-mixtures", "4", "--duration", "2",
        "--no-pesq", "--no-stoi", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    by_snr = results["aggregates"]["by_snr"]
    left_out = results["items"][0]["noise_class"]
    assert results_breakdown.main([str(out / "results.json"), "--class", left_out, "--snrs", "0", "10",
                                   "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    for name in ("spectral-subtraction", "oracle"):
        row = report["systems"][name]
        np.testing.assert_allclose(row["si_sdri_by_bin"], [by_snr[name][b]["si_sdri"] for b in ("0", "10")], rtol=1e-9)
        kept = [it["scores"][name]["si_sdri"] for it in results["items"] if it["noise_class"] != left_out]
        assert min(kept) <= row["mean_without_class"] <= max(kept)
        counted = sum(v["items"] for v in row["class_by_file"].values())
        assert counted == sum(report["class_items_per_bin"]) == sum(
            it["noise_class"] == left_out for it in results["items"])
    assert results_breakdown.main([str(out / "results.json"), "--class", "no-such-class"]) == 2
    assert "no item of noise class 'no-such-class'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--examples", "-1", "--examples must be an integer >= 0 (items shown in examples.png; 0: none). Received: "
                         "--examples -1"),
    ("--sample-rate", "0", "--sample-rate must be a positive rate in Hz, or None (the models' rate; 8000 Hz without "
                           "models). Received: --sample-rate 0"),
    ("--sample-rate", "-8000", "Received: --sample-rate -8000")])
def test_evaluate_refuses_a_negative_example_count_and_a_rate_of_zero(tmp_path, capsys, flag, value, message):
    # Both were accepted silently: -1 as "all but the last", 0 as "not given".
    code = speech_enhance.main(["evaluate", "--noisy-dir", str(tmp_path / "n"), "--clean-dir", str(tmp_path / "c"),
                                "--systems", "noisy", f"{flag}={value}", "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("speech-enhance evaluate: error: ") and message in err, err
    assert not os.path.exists(tmp_path / "out")


# Noise class names of the held-out noise folders in the shared data (classes.tsv), by the kind they are.
TALKER_CLASSES = ["babble", "babble-crowd", "babble-mall", "babble-party", "babble-restaurant", "cafe",
                  "competing_speech", "crowd", "people_talking", "tv_news", "children_playing", "Cafe_Chatter"]
OTHER_CLASSES = ["street", "train", "car", "factory", "cockpit", "laughter", "cough", "snoring", "dog_bark",
                 "vacuum_cleaner", "unknown", "hu-nonspeech", "speech-commands-background"]


@pytest.mark.parametrize("name", TALKER_CLASSES)
def test_voices_of_other_people_are_talkers(name):
    assert noise_kind(name) == "talkers", name


@pytest.mark.parametrize("name", OTHER_CLASSES)
def test_noise_without_voices_is_other(name):
    assert noise_kind(name) == "other", name


def test_talkers_are_reported_apart_from_other_noise(corpus, tmp_path):
    """by_noise_kind and overall_without_talkers agree with the items; every talker item is counted as one."""
    noises = tmp_path / "noises"
    rng = np.random.default_rng(3)
    for name, kind in (("b.wav", "babble"), ("c.wav", "babble"), ("s.wav", "traffic")):
        write(str(noises / name), 0.05 * synth_noise(rng, 3 * RATE, RATE, kind), RATE)
    (noises / "classes.tsv").write_text("b.wav\tbabble-restaurant\nc.wav\tcompeting_speech\ns.wav\tstreet\n")
    out = tmp_path / "report"
    assert speech_enhance.main([
        "evaluate", "--systems", "noisy", "spectral-subtraction", "--voice-dir", str(corpus / "voices"),
        "--noise-dir", str(noises), "--snrs", "0", "--num-mixtures", "9", "--duration", "2", "--no-pesq",
        "--no-stoi", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    aggregates = results["aggregates"]
    assert results["noise_kinds"] == {"talkers": ["babble-restaurant", "competing_speech"], "other": ["street"]}
    talkers = [it for it in results["items"] if it["noise_class"] != "street"]
    others = [it for it in results["items"] if it["noise_class"] == "street"]
    assert talkers and others, "the draw should hold both kinds"
    for system in ("noisy", "spectral-subtraction"):
        by_kind = aggregates["by_noise_kind"][system]
        assert by_kind["talkers"]["count"] == len(talkers) and by_kind["other"]["count"] == len(others)
        for kind, items in (("talkers", talkers), ("other", others)):
            assert by_kind[kind]["si_sdri"] == pytest.approx(np.mean([it["scores"][system]["si_sdri"] for it in items]))
        assert aggregates["overall_without_talkers"][system] == by_kind["other"]
    report = (out / "results.md").read_text()
    assert "## Talkers and other noise" in report and "talker classes here: babble-restaurant, competing_speech" in report
    assert f"| talkers | noisy | {aggregates['by_noise_kind']['noisy']['talkers']['si_sdr']:.2f}" in report


def test_without_talkers_is_empty_when_every_item_is_talkers():
    records = [{"snr_bin": 0.0, "noise_class": c, "scores": {"noisy": {"si_sdr": v, "si_sdri": 0.0, "pesq": v,
                                                                     "stoi": 0.5}}}
               for c, v in (("babble", 1.0), ("crowd", 3.0))]
    aggregates = aggregate(records, ["noisy"])
    assert aggregates["by_noise_kind"]["noisy"] == {"talkers": {"si_sdr": 2.0, "si_sdri": 0.0, "pesq": 2.0,
                                                                "stoi": 0.5, "count": 2}}
    empty = aggregates["overall_without_talkers"]["noisy"]
    assert empty["count"] == 0 and all(np.isnan(empty[m]) for m in ("si_sdr", "si_sdri", "pesq", "stoi"))


def test_balance_draws_each_corpus_and_noise_group_alike_and_reports_them(tmp_path):
    """One small corpus beside a large one, one noise file beside five: drawn alike with --balance,
    in proportion to their files without it; results carry and aggregate both domains."""
    rng = np.random.default_rng(5)
    for corpus_name, count in (("big", 6), ("small", 1)):
        for i in range(count):
            write(str(tmp_path / "voices" / corpus_name / f"spk{i}" / f"u{i}.wav"),
                  0.1 * synth_voice(rng, 2 * RATE, RATE), RATE)
    for group, count in (("many", 5), ("one", 1)):
        for i in range(count):
            write(str(tmp_path / "noises" / group / f"n{i}.wav"), 0.05 * synth_noise(rng, 2 * RATE, RATE, "white"),
                  RATE)
    counts = {}
    for balance in (False, True):
        items = make_mixtures(str(tmp_path / "voices"), str(tmp_path / "noises"), snrs=(0.0,), num_mixtures=60,
                              duration=1.5, sample_rate=RATE, balance=balance)
        counts[balance] = (sum(it.source["voice_file"].startswith("small/") for it in items),
                           sum(it.source["noise_file"].startswith("one/") for it in items))
    assert all(c < 18 for c in counts[False]), counts   # about 1 in 7 and 1 in 6 of 60
    assert all(18 <= c <= 42 for c in counts[True]), counts  # about half
    out = tmp_path / "report"
    assert speech_enhance.main([
        "evaluate", "--systems", "noisy", "wiener", "--voice-dir", str(tmp_path / "voices"), "--noise-dir",
        str(tmp_path / "noises"), "--snrs", "0", "--num-mixtures", "12", "--duration", "1.5", "--balance",
        "--no-pesq", "--no-stoi", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["source"]["balance"] is True
    for key, field in (("by_voice_corpus", "voice_corpus"), ("by_noise_group", "noise_group")):
        names = [it[field] for it in results["items"]]
        assert set(names) == ({"big", "small"} if field == "voice_corpus" else {"many", "one"})
        for name, row in results["aggregates"][key]["wiener"].items():
            mine = [it["scores"]["wiener"]["si_sdri"] for it in results["items"] if it[field] == name]
            assert row["count"] == len(mine) and row["si_sdri"] == pytest.approx(np.mean(mine))
    report = (out / "results.md").read_text()
    assert "## By speech corpus" in report and "## By noise group" in report
