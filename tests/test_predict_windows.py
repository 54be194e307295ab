"""Windows and overlap-add checked with real Keras models whose output depends on their input in time.

A model whose output ignores its input cannot tell where a window was placed or how windows were
crossfaded. The models here compute out[t, k] = tanh(gain * x[t, k] + bias + slope * position(t)),
with x the model's input (the scaled log magnitude) at frame t of the window and position(t) running
from -0.5 at the window's first frame to 0.5 at its last:

* with slope 0 the output of a frame depends on that frame's input only, so overlap-add must give
  exactly the same operation applied to the whole signal's spectrogram at once, whatever the
  windows: a window taken from the wrong frames, a missing or doubled window, or weights that do
  not sum to one show up;
* with a slope the windows over a frame disagree, so the result is the crossfade-weighted mean of
  their outputs; it is checked against the documented windowing written out plainly here (windows
  every hop frames after `W - hop` frames of silence, raised-cosine ramps).

Each check runs on a signal in memory (`Enhancer.enhance`) and on a file streamed in small blocks
(`enhance_files`), through a model directory that declares its target as `speech-enhance train`
writes it.
"""

import keras
import numpy as np
import pytest
import soundfile

from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft
from trainer.model_dir import save_model_dir
from trainer.targets import enhance_magnitude, model_input

CONFIG = SpectrogramConfig()
GAIN, BIAS = 2.0, -1.0  # loud bins (input near 1) get near 1, quiet ones (near 0) near -0.8


def frame_model(config: SpectrogramConfig, slope: float = 0.0) -> keras.Model:
    """out[t, k] = tanh(GAIN * x[t, k] + BIAS + slope * (t / (frames - 1) - 0.5)), for every bin k.

    A Dense layer over the time axis with kernel GAIN * identity and a bias that rises along the
    window: made of standard layers only, so it saves and loads like any trained model.
    """
    frames = config.num_frames
    inputs = keras.Input((*config.shape, 1))
    x = keras.layers.Permute((2, 3, 1))(inputs)  # [B, bins, 1, frames]: time last, for the Dense
    dense = keras.layers.Dense(frames, activation="tanh")
    x = dense(x)
    outputs = keras.layers.Permute((3, 1, 2))(x)  # back to [B, frames, bins, 1]
    model = keras.Model(inputs, outputs)
    position = np.arange(frames) / (frames - 1) - 0.5
    dense.set_weights([GAIN * np.eye(frames, dtype=np.float32), (BIAS + slope * position).astype(np.float32)])
    return model


def model_output(features: np.ndarray, slope: float, positions: np.ndarray) -> np.ndarray:
    """What `frame_model` gives for `features` [frames, bins] at window positions `positions` [frames]."""
    position = positions / (CONFIG.num_frames - 1) - 0.5
    return np.tanh(GAIN * features + BIAS + slope * position[:, None])


def speech_like(n: int, rate: int = 8000, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch in 4 Hz syllables, plus quiet noise: loud and quiet bins change
    from frame to frame, so a model output that depends on its input differs along the signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    phase = 2 * np.pi * np.cumsum(150 + 50 * np.sin(2 * np.pi * 0.3 * t)) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    return (0.1 * voice + 0.01 * rng.standard_normal(n)).astype(np.float32)


def apply_gain(spectrogram: np.ndarray, output: np.ndarray, target: str) -> np.ndarray:
    """The noisy STFT scaled to the enhanced magnitude that `output` gives for `target`."""
    magnitude = np.abs(spectrogram)
    enhanced = enhance_magnitude(magnitude, output, target, CONFIG)
    return spectrogram * np.divide(enhanced, magnitude, out=np.zeros_like(enhanced), where=magnitude > 0)


def whole_signal_reference(x: np.ndarray, target: str) -> np.ndarray:
    """The frame-wise model (slope 0) applied to the whole signal's spectrogram at once, no windows.

    Whole frames of silence on both sides give the frames over the signal's first and last samples.
    """
    hop, margin = CONFIG.hop_length, 4
    padded = np.concatenate([np.zeros(margin * hop), x, np.zeros(margin * hop)]).astype(np.float32)
    spectrogram = stft(padded, CONFIG)
    output = model_output(model_input(np.abs(spectrogram), CONFIG), 0.0, np.zeros(spectrogram.shape[0]))
    return istft(apply_gain(spectrogram, output, target), CONFIG, padded.size)[margin * hop: margin * hop + x.size]


def overlap_add_reference(x: np.ndarray, target: str, slope: float, overlap: float) -> np.ndarray:
    """The windowing documented in docs/predict.md, written out plainly, for `frame_model(slope)`."""
    W = CONFIG.num_frames
    hop = round(W * (1 - overlap))
    ramp = W - hop
    real_frames = CONFIG.frames_for(x.size)
    if real_frames <= W:
        lead, windows = (W - real_frames) // 2, 1
    else:
        lead, windows = ramp, int(np.ceil((real_frames + 2 * ramp - W) / hop)) + 1
    total = (windows - 1) * hop + W
    padded = np.zeros(total * CONFIG.hop_length, np.float32)
    padded[lead * CONFIG.hop_length: lead * CONFIG.hop_length + x.size] = x
    spectrogram = stft(padded, CONFIG)
    features = model_input(np.abs(spectrogram), CONFIG)
    # Raised-cosine ramps over the `ramp` frames shared with a neighbour, sampled half a frame in.
    weight = np.ones(W)
    rise = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
    weight[:ramp], weight[W - ramp:] = rise, rise[::-1]
    numerator, denominator = np.zeros(features.shape), np.zeros(total)
    for i in range(windows):
        frames = slice(i * hop, i * hop + W)
        numerator[frames] += weight[:, None] * model_output(features[frames], slope, np.arange(W))
        denominator[frames] += weight
    output = numerator / denominator[:, None]
    waveform = istft(apply_gain(spectrogram, output, target), CONFIG, padded.size)
    return waveform[lead * CONFIG.hop_length: lead * CONFIG.hop_length + x.size]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Model directories {(target, slope): dir}; the target comes from the directory, as in `predict`."""
    dirs = {}
    for target in ("mask", "noise"):
        for slope in (0.0, 0.6):
            folder = str(tmp_path_factory.mktemp(f"{target}-{slope}"))
            dirs[target, slope] = save_model_dir(frame_model(CONFIG, slope), folder, config=CONFIG, target=target)
    return dirs


def enhanced(model_dir: str, x: np.ndarray, overlap: float, path: str, tmp_path) -> np.ndarray:
    enhancer = Enhancer.from_model_dir(model_dir, batch_size=8, overlap=overlap)
    if path == "in memory":
        return enhancer.enhance(x)
    (tmp_path / "in").mkdir(parents=True)
    soundfile.write(tmp_path / "in" / "x.wav", x, CONFIG.sample_rate, subtype="FLOAT")
    summary = enhance_files(enhancer, str(tmp_path / "in"), str(tmp_path / "out"), block_seconds=1.3)
    assert (summary.written, summary.failures) == (1, [])
    y, rate = soundfile.read(tmp_path / "out" / "x.wav", dtype="float32")
    assert rate == CONFIG.sample_rate
    return y


# Signal lengths: centred in one window, and several windows (with an odd tail). Both leave at least
# three frames of silence before the signal, as the whole-signal reference has.
LENGTHS = [3001, 8064 * 4 + 333]


@pytest.mark.parametrize("path", ["in memory", "streamed file"])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize("target", ["mask", "noise"])
def test_frame_wise_model_equals_the_operation_on_the_whole_signal(model_dirs, tmp_path, target, overlap, path):
    for n in LENGTHS:
        x = speech_like(n, seed=n)
        y = enhanced(model_dirs[target, 0.0], x, overlap, path, tmp_path / str(n))
        expected = whole_signal_reference(x, target)
        # The model's gain follows the input (it is not one gain for all, which no windowing could
        # get wrong) ...
        alpha = np.dot(expected, x) / np.dot(x, x)
        assert np.sqrt(np.mean((expected - alpha * x) ** 2)) > 0.1 * np.sqrt(np.mean(expected ** 2))
        # ... and overlap-add of its windows gives the same as applying it to all frames at once.
        np.testing.assert_allclose(y, expected, atol=2e-6)


@pytest.mark.parametrize("path", ["in memory", "streamed file"])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize("target", ["mask", "noise"])
def test_windows_disagreeing_are_crossfaded_as_documented(model_dirs, tmp_path, target, overlap, path):
    for n in LENGTHS:
        x = speech_like(n, seed=n + 1)
        y = enhanced(model_dirs[target, 0.6], x, overlap, path, tmp_path / str(n))
        expected = overlap_add_reference(x, target, 0.6, overlap)
        # Where windows meet, their outputs differ enough that another weighting would show.
        assert np.max(np.abs(expected - whole_signal_reference(x, target))) > 1e-3
        np.testing.assert_allclose(y, expected, atol=2e-6)
