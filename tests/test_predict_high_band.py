"""`predict` above the model's rate: the band the model does not see is kept, gained by the model's mask
in the top of its band (`predictor.high_band`), or dropped; streaming; the model's rate unchanged."""

import os

import numpy as np
import pytest
import soundfile
from test_predict_windows import CONFIG, frame_model, speech_like
from test_predictor import constant_model

import speech_enhance
from predictor import audio_io
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from predictor.high_band import HighBandGain
from predictor.high_band import Crossover
from tfrecord_schema.config import SpectrogramConfig
from trainer.model_dir import save_model_dir

FLOOR = HighBandGain().floor


def constant(value: float):
    """A model that outputs `value` everywhere (numpy: [B, frames, bins, 1])."""
    return lambda x: np.full(x.shape, value, np.float32)


def wideband(n: int, rate: int, seed: int = 0) -> np.ndarray:
    """Speech-like harmonics plus white noise over the whole band, float32 [n]."""
    rng = np.random.default_rng(seed)
    return (speech_like(n, rate, seed) + 0.03 * rng.standard_normal(n)).astype(np.float32)


def write(path, x, rate) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, x, rate, subtype="FLOAT")


def run(tmp_path, enhancer, x, rate, name="out", **kwargs) -> np.ndarray:
    src = tmp_path / "in"
    if not (src / "a.wav").exists():
        write(str(src / "a.wav"), x, rate)
    summary = enhance_files(enhancer, str(src), str(tmp_path / name), **kwargs)
    assert (summary.written, summary.failures) == (1, [])
    y, out_rate = soundfile.read(tmp_path / name / "a.wav", dtype="float32")
    assert out_rate == rate and y.shape == x.shape
    return y


def high_band(x: np.ndarray, rate: int, model_rate: int = 8000) -> np.ndarray:
    return x - audio_io.fit_length(audio_io.resample(audio_io.resample(x, rate, model_rate), model_rate, rate), len(x))


def band_level(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(np.sqrt(spectrum[(freqs >= lo) & (freqs < hi)].sum()))


def test_crossover_is_complementary_and_streams():
    rate, n = 44100, 44100 * 3 + 17
    x = wideband(n, rate)[:, None]
    crossover = Crossover(rate, 8000, 1)
    blocks = [crossover.process(x[i: i + 10007], last=i + 10007 >= n) for i in range(0, n, 10007)]
    low = np.concatenate([b[0] for b in blocks])
    high = np.concatenate([b[1] for b in blocks])
    np.testing.assert_allclose(low, audio_io.resample(x, rate, 8000), atol=1e-6)
    assert high.shape == x.shape
    up = audio_io.fit_length(audio_io.resample(low, 8000, rate), n)
    np.testing.assert_allclose(up + high, x, atol=1e-6)
    # No hole and no bump at the crossover: low + high of a tone at 3.8 kHz, in the filter's transition, is the tone.
    t = np.arange(n) / rate
    tone = (0.5 * np.sin(2 * np.pi * 3800 * t)).astype(np.float32)[:, None]
    tone_low, tone_high = Crossover(rate, 8000, 1).process(tone, last=True)
    middle = slice(rate, 2 * rate)
    assert 0.2 < np.std(tone_high[middle]) / np.std(tone[middle]) < 0.8  # really in the transition
    both = audio_io.fit_length(audio_io.resample(tone_low, 8000, rate), n) + tone_high
    np.testing.assert_allclose(both[middle], tone[middle], atol=1e-5)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_model_that_changes_nothing_gives_back_the_whole_band(tmp_path, rate):
    x = wideband(rate * 5, rate)
    assert band_level(high_band(x, rate), rate, 5000, 8000) > 0.1 * band_level(x, rate, 0, 4000)
    enhancer = Enhancer(constant(1.0), CONFIG, "mask", batch_size=8)  # mask 1
    y = run(tmp_path, enhancer, x, rate, block_seconds=1.3)
    np.testing.assert_allclose(y, x, atol=2e-5)
    dropped = run(tmp_path, enhancer, x, rate, name="drop", high_band="drop")
    assert band_level(dropped, rate, 5000, 8000) < 1e-3 * band_level(x, rate, 5000, 8000)


def test_a_model_that_removes_everything_leaves_the_high_band_at_the_floor(tmp_path):
    rate = 44100
    x = wideband(rate * 4, rate)
    y = run(tmp_path, Enhancer(constant(-1.0), CONFIG, "mask", batch_size=8), x, rate)  # mask 0
    np.testing.assert_allclose(y, FLOOR * high_band(x, rate), atol=1e-6)
    assert band_level(y, rate, 0, 3500) < 1e-3 * band_level(x, rate, 0, 3500)


def test_a_16k_model_keeps_the_band_above_8k(tmp_path):
    # The band's edge follows the model's rate: a 16 kHz model (as `--model shipped:16k`) sees 0-8 kHz.
    rate = 44100
    x = wideband(rate * 4, rate)
    config = SpectrogramConfig.for_sample_rate(16000)
    unchanged = run(tmp_path, Enhancer(constant(1.0), config, "mask", batch_size=8), x, rate)
    np.testing.assert_allclose(unchanged, x, atol=2e-5)
    y = run(tmp_path, Enhancer(constant(-1.0), config, "mask", batch_size=8), x, rate, name="zero")
    np.testing.assert_allclose(y, FLOOR * high_band(x, rate, 16000), atol=1e-6)
    assert band_level(y, rate, 0, 7500) < 1e-3 * band_level(x, rate, 0, 7500)
    assert band_level(y, rate, 9000, 20000) > 0.5 * FLOOR * band_level(x, rate, 9000, 20000)


def test_the_high_band_follows_the_models_mask_frame_by_frame(tmp_path):
    # A mask of 1 in the first half of the file and 0 in the second: the high band's gain is 1,
    # then the floor, switching within the smoothing's reach of the middle.
    rate, seconds = 16000, 6.0
    x = wideband(int(rate * seconds), rate)
    switch = CONFIG.frames_for(int(8000 * seconds)) // 2  # the middle frame (no padding at 0 % overlap)
    windows_run = []

    def model(features):  # one window per call, in order
        frames = len(windows_run) * CONFIG.num_frames + np.arange(CONFIG.num_frames)
        windows_run.append(1)
        return np.where(frames >= switch, -1.0, 1.0)[None, :, None, None] * np.ones(features.shape, np.float32)

    enhancer = Enhancer(model, CONFIG, "mask", batch_size=1, overlap=0.0, workers=0)
    y = run(tmp_path, enhancer, x, rate, high_band="keep")
    h = high_band(x, rate)
    # Frame f is centred on sample f * hop at 8 kHz; the smoothing reaches 30 ms either side.
    middle = int(round(switch * CONFIG.hop_length * rate / 8000))
    margin = int(0.045 * rate)
    first, second = slice(rate // 2, middle - margin), slice(middle + margin, 5 * rate)
    np.testing.assert_allclose(y[first], x[first], atol=2e-5)
    np.testing.assert_allclose(y[second], FLOOR * h[second], atol=1e-5)


def test_a_tone_above_the_models_band_survives_with_keep_only(tmp_path):
    rate = 16000
    n = rate * 3
    t = np.arange(n) / rate
    x = (0.1 * np.sin(2 * np.pi * 500 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    enhancer = Enhancer(constant(0.0), CONFIG, "noise", batch_size=8)  # the identity denoiser
    kept = run(tmp_path, enhancer, x, rate, name="keep")
    dropped = run(tmp_path, enhancer, x, rate, name="drop", high_band="drop")
    level = band_level(x, rate, 5900, 6100)
    assert abs(band_level(kept, rate, 5900, 6100) / level - 1) < 1e-3
    assert band_level(dropped, rate, 5900, 6100) < 1e-4 * level
    # The CLI says the same with --high-band.
    model_dir = save_model_dir(constant_model(CONFIG), str(tmp_path / "identity"), config=CONFIG, target="noise")
    for mode, expected in (("keep", kept), ("drop", dropped)):
        args = ["--high-band", mode]
        code = speech_enhance.main(["predict", "--model", model_dir, "--input", str(tmp_path / "in"),
                                    "--output", str(tmp_path / f"cli-{mode}"), *args])
        assert code == 0
        y, _ = soundfile.read(tmp_path / f"cli-{mode}" / "a.wav", dtype="float32")
        np.testing.assert_allclose(y, expected, atol=2e-5)


@pytest.mark.parametrize("rate,channels", [(44100, 1), (48000, 2)], ids=["44k-mono", "48k-stereo"])
def test_streamed_high_band_equals_one_block(tmp_path, rate, channels):
    # A model whose output depends on its input and on the frame's place in its window, so the
    # high band's gain changes along the file: a block boundary that shifted it would show.
    enhancer = Enhancer(frame_model(CONFIG, slope=0.6), CONFIG, "mask", batch_size=8)
    n = int(rate * 40.0)
    x = np.stack([(0.8 - 0.3 * c) * wideband(n, rate, seed=c) for c in range(channels)], axis=1)
    write(str(tmp_path / "in" / "a.wav"), x, rate)
    enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "streamed"), block_seconds=3.7)
    enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "whole"), block_seconds=60.0)
    streamed, _ = soundfile.read(tmp_path / "streamed" / "a.wav", dtype="float32", always_2d=True)
    whole, _ = soundfile.read(tmp_path / "whole" / "a.wav", dtype="float32", always_2d=True)
    assert streamed.shape == x.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    kept = band_level(streamed[:, 0], rate, 5000, 8000) / band_level(x[:, 0], rate, 5000, 8000)
    assert FLOOR < kept < 0.99  # gained, neither dropped nor untouched


def test_the_models_rate_and_keep_model_rate_are_unchanged(tmp_path):
    enhancer = Enhancer(frame_model(CONFIG, slope=0.6), CONFIG, "mask", batch_size=8)
    x = wideband(8000 * 5, 8000)
    keep = run(tmp_path, enhancer, x, 8000, name="keep")
    drop = run(tmp_path / "d", enhancer, x, 8000, name="drop", high_band="drop")
    assert np.array_equal(keep, drop)
    np.testing.assert_allclose(keep, enhancer.enhance(x), atol=1e-6)
    # At the model's rate on output, the high band has nowhere to go: the same as before.
    x = wideband(22050 * 3, 22050)
    write(str(tmp_path / "k" / "in" / "a.wav"), x, 22050)
    for mode in ("keep", "drop"):
        enhance_files(enhancer, str(tmp_path / "k" / "in"), str(tmp_path / "k" / mode), keep_model_rate=True,
                      high_band=mode)
    a, _ = soundfile.read(tmp_path / "k" / "keep" / "a.wav", dtype="float32")
    b, _ = soundfile.read(tmp_path / "k" / "drop" / "a.wav", dtype="float32")
    assert np.array_equal(a, b)


def test_a_bad_high_band_is_refused_naming_the_flag(tmp_path, capsys):
    enhancer = Enhancer(constant(1.0), CONFIG, "mask", batch_size=8)
    write(str(tmp_path / "in" / "a.wav"), wideband(16000, 16000), 16000)
    with pytest.raises(ValueError, match=r"high_band must be one of \('keep', 'drop'\).*Received: high_band='lo'"):
        enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"), high_band="lo")
    with pytest.raises(ValueError, match=r"floor_db must be <= 0 dB\. Received: floor_db=3"):
        HighBandGain(floor_db=3)
    with pytest.raises(SystemExit):
        speech_enhance.main(["predict", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                             "--high-band", "lo"])
    assert "--high-band: invalid choice: 'lo'" in capsys.readouterr().err
