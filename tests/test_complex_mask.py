"""The complex mask ("cmask"): its phase features, its formula in training and in prediction, the
config's rules, and a U-Net trained on it run by every predictor path."""

import numpy as np
import pytest

from beam_pipelines.testing import SMALL_CONFIG, write_dataset
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft
from trainer.config import TrainConfig
from trainer.model import PhaseDeltas, build_unet
from trainer.targets import enhance_spectrum, input_channels, model_features, model_target, output_channels, rotation
from trainer.waveform_loss import si_sdr_db, waveform_loss

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _np(x):
    return np.asarray(x)


def _phase_deltas(signal, config, frames):
    spectrum = stft(signal, config)[:frames]
    x = model_features(np.abs(spectrum), np.angle(spectrum), "cmask", config)
    return _np(PhaseDeltas(config.n_fft, config.hop_length)(x[None]))[0]


def test_phase_deltas_ignore_where_a_window_starts_and_a_tones_phase_and_are_zero_for_tones_and_centred_pulses():
    config = SpectrogramConfig()
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(40 * config.hop_length).astype(np.float32)
    hop = config.hop_length
    a = _phase_deltas(signal, config, 30)
    b = _phase_deltas(signal[3 * hop:], config, 27)  # the same signal, three frames later
    assert a.shape == (30, config.num_bins, 5)
    # Away from the edge frames (the STFT pads the signal's start), shifted frames give equal features.
    np.testing.assert_allclose(a[6:25, 1:], b[3:22, 1:], atol=2e-3)
    # A steady tone at the centre of bin k: no frequency deviation in bin k (cos 1, sin 0), whatever
    # its starting phase, while the absolute phase of bin k turns with the starting phase.
    k = 20
    t = np.arange(30 * hop)
    tones = [np.cos(2 * np.pi * k / config.n_fft * t + start).astype(np.float32) for start in (0.0, 2.0)]
    deltas = [_phase_deltas(tone, config, 25) for tone in tones]
    for d in deltas:
        np.testing.assert_allclose(d[5:20, k, 1], 1.0, atol=1e-4)
        np.testing.assert_allclose(d[5:20, k, 2], 0.0, atol=1e-4)
    bins = [stft(tone, config)[5:20, k] for tone in tones]
    np.testing.assert_allclose(np.angle(bins[1] * np.conj(bins[0])), 2.0, atol=1e-3)
    # A pulse at a frame's centre: no group-delay deviation across bins (cos 1, sin 0) in that frame.
    pulse = np.zeros(30 * hop, np.float32)
    pulse[10 * hop] = 1.0
    deltas = _phase_deltas(pulse, config, 25)
    np.testing.assert_allclose(deltas[10, 1:, 3], 1.0, atol=1e-4)
    np.testing.assert_allclose(deltas[10, 1:, 4], 0.0, atol=1e-4)
    # The first frame and the lowest bin carry no deviation; channel 0 is the log magnitude.
    np.testing.assert_array_equal(deltas[0, :, 1:3], [[1.0, 0.0]] * config.num_bins)
    np.testing.assert_array_equal(deltas[:, 0, 3:5], [[1.0, 0.0]] * 25)


def _mixture(config, seed=2, n=2):
    rng = np.random.default_rng(seed)
    clean_wave = rng.standard_normal((n, config.window_samples)).astype(np.float32)
    noise_wave = rng.standard_normal((n, config.window_samples)).astype(np.float32)
    return clean_wave, stft(clean_wave, config), stft(clean_wave + noise_wave, config)


def _ideal_cmask(clean, noisy, config, r=0.9):
    """The output that asks for the clean magnitude (clipped to the noisy one) and the clean phase
    (clipped to +-90 degrees of the noisy one), within the output's range."""
    gain = model_target(np.abs(noisy), np.abs(clean), "mask", config)
    turn = np.clip(np.angle(clean * np.conj(noisy)), -np.pi / 2 + 0.01, np.pi / 2 - 0.01)
    return np.stack([gain, r * np.cos(turn) - 1.0, r * np.sin(turn)], axis=-1).astype(np.float32)


def test_the_loss_scores_the_waveform_the_predictor_makes_and_the_turn_beats_the_best_real_gain():
    config = SMALL_CONFIG
    clean_wave, clean, noisy = _mixture(config)
    output = _ideal_cmask(clean, noisy, config)
    y_true = np.stack([noisy.real, noisy.imag, clean.real, clean.imag], axis=-1).astype(np.float32)
    loss = waveform_loss("si-sdr", config)
    enhanced = istft(enhance_spectrum(noisy, output, "cmask", config), config, config.window_samples)
    np.testing.assert_allclose(_np(loss(y_true, output)), -_np(si_sdr_db(clean_wave, enhanced)), atol=1e-3)
    # With its phase kept, the same gain is the "mask" output, and the best real gain is the "psa" one.
    mask_only = output[..., :1]
    np.testing.assert_allclose(enhance_spectrum(noisy, output * [1, 0, 0], "cmask", config),
                               enhance_spectrum(noisy, mask_only, "mask", config), rtol=1e-5, atol=1e-6)
    psa = model_target(np.abs(noisy), np.abs(clean), "psa", config, np.angle(noisy), np.angle(clean))[..., None]
    assert np.all(_np(loss(y_true, output)) < _np(loss(y_true, psa)) - 3.0)
    # The turn is exactly atan2(s, 1 + c).
    c, s = output[..., 1], output[..., 2]
    np.testing.assert_allclose(np.angle(rotation(c, s)), np.arctan2(s, 1 + c), atol=1e-5)


def test_the_channels_and_the_config_rules():
    assert (input_channels("cmask"), output_channels("cmask")) == (3, 3)
    assert (input_channels("mask"), output_channels("noise")) == (1, 1)
    model = build_unet(SMALL_CONFIG, base_filters=4, depth=3, target="cmask")
    assert model.input_shape == (None, *SMALL_CONFIG.shape, 3) and model.output_shape == (None, *SMALL_CONFIG.shape, 3)
    assert TrainConfig(target="cmask", loss="si-sdr").target == "cmask"
    with pytest.raises(ValueError, match="target='cmask' .* has no per-bin target for the Huber loss"):
        TrainConfig(target="cmask")
    with pytest.raises(ValueError, match="has no per-bin target to regress"):
        model_target(np.ones((2, 3)), np.ones((2, 3)), "cmask", SMALL_CONFIG)
    with pytest.raises(ValueError, match="needs the noisy phase"):
        model_features(np.ones((2, 3)), None, "cmask", SMALL_CONFIG)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainer.train import train

    dataset = str(tmp_path_factory.mktemp("cmask") / "dataset")
    write_dataset(dataset, splits={"train": 32, "valid": 8}, num_shards=2, seed=5)
    model_dir = str(tmp_path_factory.mktemp("cmask") / "model")
    summary = train(dataset, model_dir, epochs=4, target="cmask", loss="si-sdr", base_filters=4, depth=3,
                    batch_size=8, learning_rate=3e-3, seed=0, deterministic=True, verbose=0)
    return model_dir, summary


def test_a_unet_trained_as_a_complex_mask_improves_and_every_predictor_path_runs_it(trained, tmp_path):
    import soundfile as sf

    from predictor.beam_predict import run_predict
    from predictor.enhance import Enhancer
    from predictor.folders import enhance_files
    from predictor.predict_options import PredictOptions
    from trainer.model_dir import load_model_dir

    model_dir, summary = trained
    history = summary["history"]
    assert history["loss"][-1] < history["loss"][0] - 1.0, history["loss"]
    model, info = load_model_dir(model_dir)
    assert info["target"] == "cmask" and model.input_shape[-1] == 3 and model.output_shape[-1] == 3
    enhancer = Enhancer.from_model_dir(model_dir, batch_size=2, workers=0)
    rate = enhancer.sample_rate
    rng = np.random.default_rng(1)
    signal = (0.1 * rng.standard_normal(3 * rate + 17)).astype(np.float32)
    expected = enhancer.enhance(signal)
    assert expected.shape == signal.shape and np.all(np.isfinite(expected))
    # The model turns the phase: the output is not the noisy phase scaled per bin.
    spectrum, out = stft(signal, SMALL_CONFIG), stft(expected, SMALL_CONFIG)
    loud = np.abs(out) > 0.1 * np.abs(out).max()
    assert np.abs(np.angle(out * np.conj(spectrum)))[loud].mean() > 0.05
    # The folder predictor, in this process and in a file process, and the Beam job give the same.
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sf.write(inputs / "a.wav", signal, rate, subtype="FLOAT")
    for processes in (0, 1):
        folder = str(outputs / str(processes))
        summary = enhance_files(Enhancer.from_model_dir(model_dir, batch_size=2, workers=0), str(inputs), folder,
                                file_processes=processes)
        assert summary.written == 1
    run_predict(PredictOptions(source=str(inputs), output_dir=str(outputs / "beam"),
                               model_dir=model_dir, batch_size=2, workers=1))
    for folder in ("0", "1", "beam"):
        got, _ = sf.read(outputs / folder / "a.wav", dtype="float32")
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=folder)
