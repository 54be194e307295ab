"""Sparse NMF baseline: the updates, the normalisation, enhancement quality, files, data sources, evaluation."""

import json
import os

import numpy as np
import pytest
import soundfile

import speech_enhance
import tfrecord_schema.schema
from beam_pipelines import synthetic
from beam_pipelines.testing import SMALL_CONFIG, make_example, write_dataset
from predictor.evaluation import metrics, nmf, snmf_data
from predictor.evaluation.options import EvaluateOptions
from predictor.evaluation.run import run_evaluation
from predictor.evaluation.snmf import SparseNMF
from predictor.evaluation.systems import snmf_system
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft

CONFIG = SpectrogramConfig()  # 8 kHz, 128 bins
RATE = CONFIG.sample_rate


def voice(seed, seconds):
    """Harmonic chirps under a syllable envelope (the dataset tests' voice), a new f0 each second."""
    rng = np.random.default_rng(seed)
    return np.concatenate([synthetic.chirp(rng, RATE, RATE) for _ in range(int(seconds))]).astype(np.float32)


def white(seed, seconds):
    return synthetic.noise(np.random.default_rng(seed), int(seconds * RATE), RATE, "white")


def magnitudes(signal):
    return np.abs(stft(signal, CONFIG))


@pytest.fixture(scope="module")
def model():
    """Dictionaries learnt from 6 s of chirps and 6 s of white noise (seeds unlike the test mixtures')."""
    return SparseNMF(CONFIG, atoms=16, sparsity=1.0, fit_iterations=80, enhance_iterations=60).fit(
        magnitudes(voice(1, 6)), magnitudes(white(2, 6)))


def mixture(snr_db=0.0, seconds=3.0):
    clean = 0.1 * voice(11, seconds)
    noise = white(12, seconds)
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    return clean, (clean + noise).astype(np.float32)


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_multiplicative_updates_decrease_the_cost(beta):
    v = magnitudes(voice(3, 2)).T.astype(np.float64)
    v /= v.mean()
    w, h, costs = nmf.learn_dictionary(v, 12, sparsity=0.5, beta=beta, iterations=40, cost_every=1,
                                        rng=np.random.default_rng(0))
    values = np.array([c for _, c in costs])
    assert [i for i, _ in costs] == list(range(41))
    assert values[-1] < 0.5 * values[0]
    # Non-increasing at every step, up to rounding (the W update for the normalised W is heuristic).
    assert np.all(np.diff(values) <= 1e-6 * np.abs(values[:-1])), np.diff(values).max()
    assert values[-1] == pytest.approx(nmf.snmf_cost(v, w, h, 0.5, beta))
    # With W fixed, the H updates alone decrease the same cost too.
    previous = nmf.snmf_cost(v, w, nmf.solve_activations(v, w, sparsity=0.5, beta=beta, iterations=1), 0.5, beta)
    later = nmf.snmf_cost(v, w, nmf.solve_activations(v, w, sparsity=0.5, beta=beta, iterations=30), 0.5, beta)
    assert later < previous


def test_beta_divergence_matches_its_definitions():
    rng = np.random.default_rng(0)
    v, lam = rng.uniform(0.1, 2.0, (5, 7)), rng.uniform(0.1, 2.0, (5, 7))
    assert nmf.beta_divergence(v, lam, 2.0) == pytest.approx(0.5 * np.sum((v - lam) ** 2))
    assert nmf.beta_divergence(v, lam, 1.0) == pytest.approx(np.sum(v * np.log(v / lam) - v + lam))
    assert nmf.beta_divergence(v, lam, 0.0) == pytest.approx(np.sum(v / lam - np.log(v / lam) - 1))
    assert nmf.beta_divergence(v, v, 1.0) == pytest.approx(0.0, abs=1e-9)


def test_dictionaries_are_normalised_inside_the_cost(model):
    for w in (model.speech_dictionary, model.noise_dictionary):
        assert w.shape == (CONFIG.num_bins, 16) and np.all(w >= 0)
        np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-5)
    # The cost sees only W / ||W||: scaling W's columns changes neither the cost nor the updates,
    # so the L1 penalty cannot be dodged by growing W.
    v = magnitudes(voice(3, 1)).T.astype(np.float64)
    v /= v.mean()
    w, h, _ = nmf.learn_dictionary(v, 8, sparsity=2.0, iterations=20)
    scaled = w * np.arange(1.0, 9.0)
    assert nmf.snmf_cost(v, scaled, h, 2.0, 1.0) == pytest.approx(nmf.snmf_cost(v, w, h, 2.0, 1.0))
    lam = np.maximum(w @ h, nmf.EPS)
    np.testing.assert_allclose(nmf._w_update(v, scaled, h, lam, 1.0), nmf._w_update(v, w, h, lam, 1.0),
                               rtol=1e-9)
    # A heavier L1 weight gives sparser activations (Hoyer's measure, 0 dense .. 1 one-hot per frame).
    def hoyer(h):
        k = h.shape[0]
        ratio = h.sum(axis=0) / np.maximum(np.linalg.norm(h, axis=0), 1e-12)
        return float(np.mean((np.sqrt(k) - ratio) / (np.sqrt(k) - 1)))

    dense = nmf.learn_dictionary(v, 8, sparsity=0.0, iterations=60)[1]
    sparse = nmf.learn_dictionary(v, 8, sparsity=5.0, iterations=60)[1]
    assert hoyer(sparse) > hoyer(dense) + 0.05


def test_enhancement_separates_harmonic_speech_from_white_noise(model):
    clean, noisy = mixture(snr_db=0.0)
    noisy = noisy[:-17]  # a length that is no multiple of the hop
    clean = clean[:-17]
    out = model.enhance(noisy)
    assert out.shape == noisy.shape and out.dtype == np.float32
    improvement = metrics.si_sdr(clean, out) - metrics.si_sdr(clean, noisy)
    assert improvement > 3.0, improvement
    # Frames are solved in blocks; the block size changes nothing.
    blocked = SparseNMF(CONFIG, atoms=16, sparsity=1.0, enhance_iterations=60, block_frames=7)
    blocked.speech_dictionary, blocked.noise_dictionary = model.speech_dictionary, model.noise_dictionary
    np.testing.assert_allclose(blocked.enhance(noisy), out, atol=1e-6)  # float32 rounding
    # The level does not change the mask (the spectrogram is normalised to mean 1 first).
    np.testing.assert_allclose(model.enhance(0.01 * noisy), 0.01 * out, atol=1e-7)
    assert not np.any(model.enhance(np.zeros(RATE, np.float32)))


def test_mask_power_one_is_a_magnitude_ratio(model):
    _, noisy = mixture(snr_db=5.0, seconds=1.0)
    speech, noise = model.activations(magnitudes(noisy))
    ratio = SparseNMF(CONFIG, atoms=16, sparsity=1.0, enhance_iterations=60, mask_power=1.0)
    ratio.speech_dictionary, ratio.noise_dictionary = model.speech_dictionary, model.noise_dictionary
    mask = speech / np.maximum(speech + noise, nmf.EPS)
    expected = istft(stft(noisy, CONFIG) * mask, CONFIG, noisy.shape[0])
    np.testing.assert_allclose(ratio.enhance(noisy), expected, atol=1e-5)
    # The default p = 2 masks harder: further from the magnitude ratio.
    assert np.abs(model.enhance(noisy) - expected).max() > 1e-3


def test_save_and_load_give_identical_output(model, tmp_path):
    path = str(tmp_path / "sub" / "model.npz")
    assert model.save(path) == path
    loaded = SparseNMF.load(path)
    assert loaded.hyper_parameters() == model.hyper_parameters() and loaded.config == model.config
    _, noisy = mixture(snr_db=5.0, seconds=2.0)
    np.testing.assert_array_equal(loaded.enhance(noisy), model.enhance(noisy))
    assert not [f for f in os.listdir(tmp_path / "sub") if f != "model.npz"]  # no temporaries left
    with pytest.raises(FileNotFoundError, match="Received: path=.*missing.npz"):
        SparseNMF.load(str(tmp_path / "missing.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an .npz written by SparseNMF.save"):
        SparseNMF.load(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="no dictionaries yet"):
        SparseNMF(CONFIG).enhance(noisy)


def test_from_dataset_reads_clean_and_noise_frames_without_tensorflow(tmp_path, monkeypatch):
    directory = str(tmp_path / "ds")
    write_dataset(directory, config=SMALL_CONFIG, splits={"train": 6, "valid": 2}, num_shards=2)
    frames_per_record = SMALL_CONFIG.num_frames
    clean, noise, config = snmf_data.magnitudes_from_dataset(directory, "train", max_frames=10_000)
    assert config == SMALL_CONFIG
    # Every frame of the 6 records (none is silent); noise = |noisy - clean| of the complex spectrograms.
    assert clean.shape == noise.shape == (6 * frames_per_record, SMALL_CONFIG.num_bins)
    expected = 0.0
    for i in range(6):
        e = make_example(SMALL_CONFIG, "train", i)
        expected += np.abs(e["noisy_magnitude"] * np.exp(1j * e["noisy_phase"])
                           - e["clean_magnitude"] * np.exp(1j * e["clean_phase"])).sum()
    assert noise.sum() == pytest.approx(expected, rel=2e-3)  # records hold float16
    assert noise.sum() != pytest.approx(clean.sum(), rel=0.05)
    # Only as many records as the frame budget needs are decoded.
    decoded = []
    original = tfrecord_schema.schema.decode
    monkeypatch.setattr(tfrecord_schema.schema, "decode", lambda b: decoded.append(1) or original(b))
    model = SparseNMF.from_dataset(directory, max_frames=frames_per_record + 1, atoms=4, fit_iterations=10)
    assert len(decoded) == 2
    assert model.config == SMALL_CONFIG and model.speech_dictionary.shape == (SMALL_CONFIG.num_bins, 4)
    assert model.training["speech"]["frames"] == model.training["noise"]["frames"] == frames_per_record + 1
    assert model.enhance(np.ones(1000, np.float32)).shape == (1000,)
    with pytest.raises(ValueError, match="another STFT .* Received: dataset_dir="):
        SparseNMF.from_dataset(directory, config=CONFIG, max_frames=10)
    with pytest.raises(FileNotFoundError, match="holds no dataset_info.json"):
        SparseNMF.from_dataset(str(tmp_path / "nothing"))


def write(path, data, rate=RATE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, data, rate)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Evaluation voices and noises, and separate training voices and noises (16 kHz speech: resampled)."""
    root = tmp_path_factory.mktemp("snmf_folders")
    for i in range(2):
        write(str(root / "voices" / f"v{i}.wav"), 0.1 * voice(20 + i, 3), RATE)
        write(str(root / "noises" / f"n{i}.wav"), 0.05 * white(30 + i, 3), RATE)
        rng = np.random.default_rng(40 + i)
        write(str(root / "train_speech" / f"s{i}" / "a.flac"),
              0.1 * np.concatenate([synthetic.chirp(rng, 16000, 16000) for _ in range(3)]), 16000)
        write(str(root / "train_noise" / f"t{i}.wav"), 0.05 * white(50 + i, 3), RATE)
    os.makedirs(root / "empty")
    return root


def test_from_folders_collects_a_seeded_frame_budget(folders):
    frames = snmf_data.magnitudes_from_folder(str(folders / "train_speech"), CONFIG, max_frames=100, seed=3)
    assert frames.shape == (100, CONFIG.num_bins)
    again = snmf_data.magnitudes_from_folder(str(folders / "train_speech"), CONFIG, max_frames=100, seed=3)
    np.testing.assert_array_equal(frames, again)
    everything = snmf_data.magnitudes_from_folder(str(folders / "train_speech"), CONFIG, max_frames=10_000)
    assert 700 < everything.shape[0] <= 2 * CONFIG.frames_for(3 * RATE)  # 2 files of 3 s, silent frames dropped


def test_evaluation_scores_an_snmf_system_and_saves_it(folders, tmp_path):
    common = dict(voice_dir=str(folders / "voices"), noise_dir=str(folders / "noises"), snrs=(0.0,),
                  num_mixtures=2, duration=2.0, sample_rate=RATE, with_pesq=False, with_stoi=False)
    results = run_evaluation(EvaluateOptions(output_dir=str(tmp_path / "a"),
                                             snmf_speech_dir=str(folders / "train_speech"),
                                             snmf_noise_dir=str(folders / "train_noise"), snmf_atoms=8,
                                             snmf_sparsity=0.5, **common))
    names = [s["name"] for s in results["systems"]]
    assert names[-2:] == ["snmf", "oracle"] and names.index("wiener") < names.index("snmf")
    description = results["systems"][names.index("snmf")]["description"]
    assert "8 speech + 8 noise atoms" in description and "sparsity 0.5" in description and "beta 1" in description
    overall = results["aggregates"]["overall"]
    assert overall["snmf"]["si_sdri"] > 3.0, overall["snmf"]
    saved = results["paths"]["snmf"]
    assert saved == str(tmp_path / "a" / "snmf.npz") and SparseNMF.load(saved).atoms == 8
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    assert report["snmf"]["training"]["source"]["speech_dir"] == str(folders / "train_speech")
    # The saved dictionaries repeat the run exactly.
    again = run_evaluation(EvaluateOptions(output_dir=str(tmp_path / "b"), snmf_file=saved, systems=["noisy", "snmf"],
                                           **common))
    assert again["aggregates"]["overall"]["snmf"]["si_sdr"] == overall["snmf"]["si_sdr"]
    assert snmf_system(SparseNMF.load(saved)).name == "snmf"


def test_evaluation_refuses_bad_snmf_arguments(folders, tmp_path):
    common = dict(voice_dir=str(folders / "voices"), noise_dir=str(folders / "noises"), snrs=(0.0,),
                  num_mixtures=1, duration=2.0, sample_rate=RATE, with_pesq=False, with_stoi=False)
    with pytest.raises(FileNotFoundError, match="snmf_speech_dir holds no wav/flac/ogg files.*Received: "
                                                "snmf_speech_dir=.*empty"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), snmf_speech_dir=str(folders / "empty"),
                                       snmf_noise_dir=str(folders / "train_noise"), **common))
    with pytest.raises(ValueError, match="one way to get the SNMF dictionaries, not snmf_speech_dir \\+ "
                                         "snmf_noise_dir and snmf_dataset"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), snmf_speech_dir="a", snmf_noise_dir="b",
                                       snmf_dataset="c", **common))
    with pytest.raises(ValueError, match="snmf_speech_dir and snmf_noise_dir go together"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), snmf_speech_dir="a", **common))
    with pytest.raises(ValueError, match="snmf_noise_dir must not be, contain or lie inside an evaluation folder"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), snmf_speech_dir=str(folders / "train_speech"),
                                       snmf_noise_dir=str(folders / "noises"), **common))
    with pytest.raises(ValueError, match="snmf_atoms must be a positive integer. Received: snmf_atoms=0"):
        run_evaluation(EvaluateOptions(output_dir=str(tmp_path), snmf_speech_dir=str(folders / "train_speech"),
                                       snmf_noise_dir=str(folders / "train_noise"), snmf_atoms=0, **common))
    with pytest.raises(ValueError, match="beta must be a number in \\[0, 2\\].*Received: beta=3"):
        SparseNMF(CONFIG, beta=3)
    with pytest.raises(ValueError, match="speech_magnitudes must be magnitude frames \\[n >= 1, 128\\]"):
        SparseNMF(CONFIG).fit(np.ones((10, 64)), np.ones((10, 128)))


def test_evaluate_command_names_the_snmf_flags(tmp_path, capsys):
    code = speech_enhance.main(["evaluate", "--voice-dir", "a", "--noise-dir", "b", "--snmf-dataset", "d",
                                "--snmf-model", "m.npz", "--output", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "not --snmf-dataset and --snmf-model" in err and "snmf_file" not in err, err


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_w_update_follows_the_gradient_through_the_normalisation(beta):
    """The update's denominator - numerator is the gradient of the cost with respect to W, W-bar
    inside the cost (a "half-baked" update, P - N alone, misses the projection and fails here)."""
    rng = np.random.default_rng(5)
    v = rng.uniform(0.1, 2.0, (6, 9))
    w = rng.uniform(0.2, 1.0, (6, 3)) * np.array([1.0, 2.0, 0.5])  # columns of other norms than 1
    h = rng.uniform(0.2, 1.0, (3, 9))
    lam = nmf.normalise_columns(w) @ h
    _, numerator, denominator = nmf._w_terms(v, w, h, lam, beta)
    analytic = (denominator - numerator) / np.linalg.norm(w, axis=0)
    numeric = np.zeros_like(w)
    step = 1e-6
    for index in np.ndindex(*w.shape):
        up, down = w.copy(), w.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (nmf.snmf_cost(v, up, h, 0.3, beta) - nmf.snmf_cost(v, down, h, 0.3, beta)) / (2 * step)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)
