"""The model families beside the U-Net: BLSTM SCE+MI and DC+MI, the mel autoencoder.

Each family trains on a tiny real dataset with falling loss, exports a model directory that reloads
with identical predictions and that `speech-enhance predict` runs; the losses are checked against
direct numpy computations, k-means against embeddings with a known answer, the mel features of
the input pipeline against those of the exported model.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import keras
import speech_enhance
from beam_pipelines.testing import SMALL_CONFIG, write_dataset
from tfrecord_schema.spectrogram import magnitude_phase
from trainer import blstm, mel_autoencoder
from trainer.config import TrainConfig
from trainer.families import get_family, source_vocabulary
from trainer.input_pipeline import make_dataset
from trainer.model_dir import load_model_dir, save_model_dir
from trainer.targets import model_input
from trainer.train import train

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# Small enough to train in seconds on two cores; SMALL_CONFIG has 32 bins, so 16 mel bands.
TINY = {"blstm_layers": 1, "blstm_units": 16, "embedding_dim": 4, "mel_bands": 16}
FAMILIES = ("blstm-sce", "blstm-dc", "mel-autoencoder")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("families") / "ds"
    write_dataset(directory, splits={"train": 48, "valid": 8})
    return str(directory)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """Each family trained for 4 epochs on the tiny dataset: {architecture: (model_dir, summary)}."""
    out = {}
    for architecture in FAMILIES:
        model_dir = str(tmp_path_factory.mktemp(architecture) / "model")
        summary = train(dataset, model_dir, architecture=architecture, epochs=4, batch_size=8, learning_rate=3e-3,
                        lr_schedule="constant", deterministic=True, tensorboard=False, verbose=0, **TINY)
        out[architecture] = model_dir, summary
    return out


@pytest.mark.parametrize("architecture", FAMILIES)
def test_each_family_trains_with_falling_loss_and_exports_its_heads(trained, architecture):
    model_dir, summary = trained[architecture]
    loss = summary["history"]["loss"]
    assert loss[-1] < loss[0], loss
    info = json.load(open(os.path.join(model_dir, "model.json")))
    assert info["model"]["architecture"] == architecture and info["target"] == "mask"
    if architecture.startswith("blstm"):
        assert info["heads"] == ["mask", "kmeans"]
        assert summary["monitor"] == "val_mask_loss"
        # both losses are logged, so the training can be watched per head
        assert {"mask_loss", "embedding_loss", "val_mask_loss"} <= set(summary["history"])
    else:
        assert "heads" not in info
        assert summary["parameters"] == mel_autoencoder.PARAMETERS


@pytest.mark.parametrize("architecture", FAMILIES)
def test_a_reloaded_model_predicts_exactly_what_it_predicted_before_saving(tmp_path, dataset, architecture):
    config = TrainConfig(architecture=architecture, **TINY)
    family = get_family(architecture)
    info = json.load(open(os.path.join(dataset, "dataset_info.json")))
    keras.utils.set_random_seed(3)
    model = family.inference_model(family.build_training_model(SMALL_CONFIG, config, info), SMALL_CONFIG, config)
    x = np.random.default_rng(0).normal(size=(3, *SMALL_CONFIG.shape, 1)).astype(np.float32)
    before = [np.asarray(y) for y in (model.predict_on_batch(x) if family.heads else [model.predict_on_batch(x)])]
    save_model_dir(model, str(tmp_path / "m"), config=SMALL_CONFIG, target="mask", heads=family.heads,
                   model_args=config.model_args())
    for index, head in enumerate(family.heads or [None]):
        loaded, loaded_info = load_model_dir(str(tmp_path / "m"), head=head)
        after = np.asarray(loaded.predict_on_batch(x))
        np.testing.assert_array_equal(after, before[index])
        assert after.min() >= -1.0 and after.max() <= 1.0
        assert loaded_info.get("head") == head


@pytest.mark.parametrize("architecture, head", [("blstm-sce", None), ("blstm-sce", "kmeans"), ("blstm-dc", "kmeans"),
                                                ("mel-autoencoder", None)])
def test_predict_denoises_a_file_with_each_family_and_head(trained, tmp_path, architecture, head):
    model_dir, _ = trained[architecture]
    rng = np.random.default_rng(1)
    rate, n = SMALL_CONFIG.sample_rate, 3 * SMALL_CONFIG.sample_rate
    t = np.arange(n) / rate
    noisy = 0.1 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    os.makedirs(tmp_path / "in")
    sf.write(tmp_path / "in" / "a.wav", noisy.astype(np.float32), rate)
    argv = ["predict", "--model", model_dir, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert speech_enhance.main(argv + (["--head", head] if head else [])) == 0
    out, out_rate = sf.read(tmp_path / "out" / "a.wav")
    assert out_rate == rate and out.shape == noisy.shape and np.all(np.isfinite(out))
    # a mask never adds energy, and a trained denoiser removes some
    assert 0 < np.sum(out ** 2) < np.sum(noisy ** 2)


def test_asking_for_a_head_the_model_lacks_names_the_heads(trained, tmp_path):
    with pytest.raises(ValueError, match=r"head='clusters' is not a head .* its heads are \['mask', 'kmeans'\]"):
        load_model_dir(trained["blstm-dc"][0], head="clusters")
    with pytest.raises(ValueError, match=r"head='mask' is not a head .* one output and no named heads"):
        load_model_dir(trained["mel-autoencoder"][0], head="mask")


# --- the losses against direct computations --------------------------------------------------------

def test_sce_loss_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    batch, frames, bins, dim, sources = 2, 3, 4, 5, 6
    embeddings = rng.normal(size=(batch, frames, bins, dim)).astype(np.float32)
    vectors = rng.normal(size=(sources, dim)).astype(np.float32)
    ids = np.array([[1, 4], [0, 5]])
    speech = rng.random((batch, frames, bins)) > 0.5
    labels = np.stack([np.where(speech, 1.0, -1.0), np.where(speech, -1.0, 1.0)], axis=-1).astype(np.float32)
    labels[1, ..., 0] = 0.0  # the second example's speaker has no vector: its terms drop out
    logits = blstm.SourceLogits()([embeddings, vectors[ids]])
    got = keras.ops.convert_to_numpy(blstm.sce_loss(labels, logits))
    expected = blstm.numpy_sce_loss(labels, embeddings, vectors, ids)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert expected[0] > 0 and not math.isclose(expected[0], expected[1])


def test_deep_clustering_loss_matches_the_affinity_matrices():
    rng = np.random.default_rng(1)
    batch, frames, bins, dim = 2, 3, 4, 3
    v = rng.normal(size=(batch, frames, bins, dim))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    speech = (rng.random((batch, frames, bins)) > 0.4).astype(np.float64)
    weight = (rng.random((batch, frames, bins)) > 0.2).astype(np.float64)
    y_true = np.stack([speech, 1 - speech, weight], axis=-1).astype(np.float32)
    got = keras.ops.convert_to_numpy(blstm.deep_clustering_loss(y_true, v.astype(np.float32)))
    for b in range(batch):
        keep = weight[b].reshape(-1) > 0
        vb = v[b].reshape(-1, dim)[keep]
        yb = np.stack([speech[b], 1 - speech[b]], -1).reshape(-1, 2)[keep]
        expected = np.sum((vb @ vb.T - yb @ yb.T) ** 2) / keep.sum() ** 2
        np.testing.assert_allclose(got[b], expected, rtol=1e-4)
    # embeddings that are the one-hot labels themselves have zero loss
    perfect = np.concatenate([y_true[..., :2], np.zeros((batch, frames, bins, 1), np.float32)], -1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(blstm.deep_clustering_loss(y_true, perfect)), 0, atol=1e-6)


def test_mask_inference_loss_is_zero_for_the_ideal_mask_and_level_independent():
    rng = np.random.default_rng(2)
    noisy = rng.random((2, 3, 4)).astype(np.float32) + 0.1
    clean = noisy * rng.random((2, 3, 4)).astype(np.float32)
    y_true = np.stack([noisy, clean], -1)
    ideal = (clean / noisy)[..., None]
    assert np.all(keras.ops.convert_to_numpy(blstm.mask_inference_loss(y_true, ideal)) < 1e-4)
    half = np.full_like(ideal, 0.5)
    loud = keras.ops.convert_to_numpy(blstm.mask_inference_loss(100 * y_true, half))
    np.testing.assert_allclose(loud, keras.ops.convert_to_numpy(blstm.mask_inference_loss(y_true, half)), rtol=1e-4)


def test_dominant_source_labels_come_from_the_complex_spectrograms():
    rng = np.random.default_rng(3)
    n = SMALL_CONFIG.window_samples
    clean = rng.standard_normal(n).astype(np.float32)
    noise = 0.7 * rng.standard_normal(n).astype(np.float32)
    x_mag, x_phase = magnitude_phase(clean + noise, SMALL_CONFIG)
    s_mag, s_phase = magnitude_phase(clean, SMALL_CONFIG)
    n_mag, _ = magnitude_phase(noise, SMALL_CONFIG)
    got = blstm.tf_dominant_speech(x_mag[None], x_phase[None], s_mag[None], s_phase[None]).numpy()[0]
    expected = s_mag > n_mag
    # the STFT is linear: noisy - clean is the noise's spectrogram, up to float32 rounding
    assert np.mean(got == expected) > 0.99 and 0.2 < expected.mean() < 0.8


# --- k-means -------------------------------------------------------------------------------------

def test_kmeans_finds_the_clusters_and_names_the_speech_one_from_the_mask_head():
    rng = np.random.default_rng(4)
    frames, bins, dim = 8, 6, 5
    truth = rng.random((frames, bins)) > 0.5
    centres = np.zeros((2, dim))
    centres[0, 0], centres[1, 1] = 1.0, 1.0
    embeddings = centres[np.where(truth, 0, 1)] + 0.1 * rng.normal(size=(frames, bins, dim))
    # a weak, partly wrong mask head: 0.6 on speech bins, 0.4 elsewhere, a fifth of them flipped
    mask = np.where(truth, 0.6, 0.4)
    flip = rng.random((frames, bins)) < 0.2
    mask[flip] = 1.0 - mask[flip]
    layer = blstm.KMeansMask(iterations=5)
    got = keras.ops.convert_to_numpy(layer([embeddings[None].astype(np.float32),
                                            mask[None, ..., None].astype(np.float32)]))
    np.testing.assert_array_equal(got[0, ..., 0], truth.astype(np.float32))
    # the same clusters under a mask head that says the opposite: the names swap, not the clusters
    swapped = keras.ops.convert_to_numpy(layer([embeddings[None].astype(np.float32),
                                                (1.0 - mask)[None, ..., None].astype(np.float32)]))
    np.testing.assert_array_equal(swapped[0, ..., 0], 1.0 - truth.astype(np.float32))


# --- the mel autoencoder ---------------------------------------------------------------------------

def test_mel_autoencoder_keeps_the_published_architecture():
    model = mel_autoencoder.build_autoencoder(16, 128)  # the tutorial's 16 frames x 128 mel bands
    assert model.count_params() == mel_autoencoder.PARAMETERS == 74_497
    assert model.output_shape == (None, 16, 128, 1)


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    for rate, n_fft, bands in ((8000, 255, 64), (16000, 511, 80)):
        np.testing.assert_allclose(mel_autoencoder.mel_filterbank(rate, n_fft, bands),
                                   librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=bands), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="mel_bands=256 is too many for 128 bins at 8000 Hz: 58 mel filters"):
        mel_autoencoder.mel_filterbank(8000, 255, 256)
    spread = mel_autoencoder.mel_to_linear_weights(mel_autoencoder.mel_filterbank(8000, 255, 64))
    np.testing.assert_allclose(spread.sum(axis=0), 1.0, rtol=1e-6)  # every bin, the DC bin too


def test_pipeline_mel_features_equal_the_exported_models(dataset):
    config = TrainConfig(architecture="mel-autoencoder", **TINY)
    info = json.load(open(os.path.join(dataset, "dataset_info.json")))
    family = get_family("mel-autoencoder")
    batch = next(iter(make_dataset(dataset, "valid", batch_size=4, shuffle=False, deterministic=True,
                                   keys=family.keys,
                                   model_io=lambda b: (b["noisy_magnitude"], b["clean_magnitude"]))))
    noisy = batch[0].numpy().astype(np.float32)
    x, y = next(iter(make_dataset(dataset, "valid", batch_size=4, shuffle=False, deterministic=True,
                                  keys=family.keys, model_io=family.model_io(SMALL_CONFIG, config, info))))
    layer = mel_autoencoder.ScaledMel.for_config(SMALL_CONFIG, TINY["mel_bands"])
    in_model = keras.ops.convert_to_numpy(layer(model_input(noisy, SMALL_CONFIG)[..., None]))
    np.testing.assert_allclose(in_model, x.numpy(), atol=1e-4)
    assert 0.0 <= y.numpy().min() and y.numpy().max() <= 1.0 and y.numpy().std() > 0.01
    # the clean mel itself, fed back as the estimate, gives the ratio of clean to noisy mel magnitudes
    to_mask = mel_autoencoder.MelToLinearMask.for_config(SMALL_CONFIG, TINY["mel_bands"])
    mask = keras.ops.convert_to_numpy(to_mask([model_input(noisy, SMALL_CONFIG)[..., None], y.numpy()]))
    assert mask.shape == (4, *SMALL_CONFIG.shape, 1) and 0.0 <= mask.min() and mask.max() <= 1.0 + 1e-6


# --- sources and configuration -------------------------------------------------------------------------

def test_sce_sources_come_from_the_training_split_and_unknown_ones_get_no_label(dataset, tmp_path):
    info = json.load(open(os.path.join(dataset, "dataset_info.json")))
    vocabulary = source_vocabulary(info)
    assert vocabulary[:3] == ["speaker:speaker-0", "speaker:speaker-1", "speaker:speaker-2"]
    assert all(v.startswith("noise:") for v in vocabulary[3:]) and len(vocabulary) > 4
    # a speaker heard only in validation has no vector: its labels are 0, the noise's are not
    info["sources"]["voices"] = [v for v in info["sources"]["voices"] if v["speaker_id"] != "speaker-0"]
    config = TrainConfig(architecture="blstm-sce", **TINY)
    family = get_family("blstm-sce")
    ds = make_dataset(dataset, "valid", batch_size=8, shuffle=False, deterministic=True, keys=family.keys,
                      model_io=family.model_io(SMALL_CONFIG, config, info))
    x, y = next(iter(ds))
    speakers = [m for m in (f"speaker-{i % 3}" for i in range(8))]
    labels = y["embedding"].numpy()
    for i, speaker in enumerate(speakers):
        speech_labelled = np.abs(labels[i, ..., 0]).max()
        assert speech_labelled == (0.0 if speaker == "speaker-0" else 1.0), (i, speaker)
        assert np.abs(labels[i, ..., 1]).min() == 1.0
    assert x["sources"].numpy().min() >= 0  # a missing source gathers a valid vector, masked by its label
    info["sources"] = {}
    with pytest.raises(ValueError, match="needs the speakers and noise classes .* or use --architecture blstm-dc"):
        source_vocabulary(info)


@pytest.mark.parametrize("kwargs, message", [
    ({"mel_bands": 30}, r"mel_bands must be a multiple of 4"),
    ({"blstm_units": 0}, r"blstm_units must be a positive integer. Received: blstm_units=0"),
    ({"embedding_weight": -1.0}, r"embedding_weight must be a number >= 0"),
])
def test_family_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_presets_adapt_to_the_family():
    demo = TrainConfig.from_preset("cpu-demo", architecture="blstm-sce")
    assert (demo.blstm_layers, demo.blstm_units, demo.epochs) == (2, 64, 3)
    gpu = TrainConfig.from_preset("gpu", architecture="blstm-dc")
    assert (gpu.blstm_layers, gpu.blstm_units, gpu.batch_size) == (4, 500, 256)
    assert TrainConfig.from_preset("gpu", architecture="mel-autoencoder").learning_rate == 1e-3
    assert TrainConfig.from_preset("gpu") == TrainConfig.from_preset("gpu", architecture="unet")


def test_lstm_layers_compute_in_float32_under_a_mixed_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        core = blstm.build_core(SMALL_CONFIG, 1, 8, 2)
    finally:
        keras.config.set_dtype_policy(previous)
    lstm = core.get_layer("blstm1_bidirectional")
    assert lstm.compute_dtype == "float32" and lstm.forward_layer.compute_dtype == "float32"
    assert core.get_layer("sqrt_magnitude").compute_dtype == "bfloat16"
    assert tf.float32 == tf.as_dtype(core.get_layer("mask_inference").compute_dtype)
