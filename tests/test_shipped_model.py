"""The models shipped in the package: they load and describe themselves; `predict` without `--model`
uses the 16 kHz one for input at 16 kHz and above and the 8 kHz one otherwise, `--model shipped:8k|16k`
forces one, and both denoise real speech in real noise that they never saw in training."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile

import speech_enhance
from mixing.levels import active_level, blend, is_silent
from predictor import audio_io
from predictor.enhance import PRETRAINED_16K_DIR, PRETRAINED_DIR, default_shipped_model, resolve_model_dir
from predictor.evaluation.metrics import si_sdr_improvement
from tfrecord_schema.config import SpectrogramConfig
from trainer.model_dir import load_model_dir, save_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
# The split the shipped model was trained with (scripts/shared_data_split.py wrote it): every noise
# file of classes.tsv that splits.json does not give to training or validation was held out.
SPLIT_DIR = os.path.join(REPO, "scripts", "shared_split")
RATE = 8000
NUM_MIXTURES = 20
SECONDS = 3.0
SNRS_DB = np.linspace(-5.0, 5.0, NUM_MIXTURES)  # active-speech SNR, as the dataset job mixes
MIN_MEAN_SI_SDR_IMPROVEMENT_DB = 4.0

needs_shared_data = pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED_DATA, "speech", "librispeech", "test-other")),
    reason=f"needs the shared recordings at {os.path.normpath(SHARED_DATA)} (LibriSpeech test-other and the "
           "held-out noise files, see its README.md); they are not part of the repository")


def test_shipped_model_loads_and_describes_its_training():
    model, info = load_model_dir(PRETRAINED_DIR)
    assert info["target"] in ("noise", "mask")
    assert info["config"].shape == (128, 128)
    assert model.count_params() == 4_365_845
    assert info["training_data"]["num_examples"]["train"] >= 40_000
    assert os.path.getsize(os.path.join(PRETRAINED_DIR, "model.keras")) < 18_000_000  # float32 weights, 17.7 MB
    assert os.path.isfile(os.path.join(PRETRAINED_DIR, "MODEL_CARD.md"))


def test_shipped_16k_model_is_the_same_network_at_16k():
    model, info = load_model_dir(resolve_model_dir("shipped:16k"))
    assert resolve_model_dir("shipped:8k") == PRETRAINED_DIR and resolve_model_dir("shipped:16k") == PRETRAINED_16K_DIR
    assert info["config"] == SpectrogramConfig.for_sample_rate(16000)
    assert info["config"].shape == (128, 256)
    # The 8 kHz model's network (fully convolutional), as a complex mask: three channels in and out.
    assert info["target"] == "cmask" and model.count_params() == 4_367_595
    assert info["training_data"]["num_examples"]["train"] >= 40_000
    assert os.path.getsize(os.path.join(PRETRAINED_16K_DIR, "model.keras")) < 18_000_000
    assert os.path.isfile(os.path.join(PRETRAINED_16K_DIR, "MODEL_CARD.md"))


def test_the_default_model_follows_the_input_rate(tmp_path):
    rng = np.random.default_rng(0)
    for name, rate in (("a.wav", 16000), ("sub/b.flac", 44100)):
        os.makedirs(os.path.dirname(tmp_path / "wide" / name), exist_ok=True)
        soundfile.write(tmp_path / "wide" / name, 0.1 * rng.standard_normal(rate // 2), rate)
    name, reason = default_shipped_model(str(tmp_path / "wide"))
    assert name == "shipped:16k" and "1 at 16000 Hz, 1 at 44100 Hz" in reason
    soundfile.write(tmp_path / "wide" / "c.wav", 0.1 * rng.standard_normal(4000), 8000)
    name, reason = default_shipped_model(str(tmp_path / "wide"))
    assert name == "shipped:8k" and "1 at 8000 Hz" in reason and "not all at 16000 Hz" in reason
    name, _ = default_shipped_model(str(tmp_path / "wide" / "a.wav"))  # one file
    assert name == "shipped:16k"
    (tmp_path / "wide" / "broken.wav").write_bytes(b"RIFF not audio")  # left to the run, which reports it
    assert default_shipped_model(str(tmp_path / "wide" / "sub"))[0] == "shipped:16k"


def test_predict_without_model_runs_the_16k_model_on_16k_input(tmp_path, caplog):
    rng = np.random.default_rng(1)
    os.makedirs(tmp_path / "in")
    soundfile.write(tmp_path / "in" / "x.wav", 0.1 * rng.standard_normal(24000).astype(np.float32), 16000)
    with caplog.at_level("INFO", logger="predictor.cli"):
        assert speech_enhance.main(["predict", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "a")]) == 0
    assert "no --model: shipped:16k (input files 1 at 16000 Hz" in caplog.text
    assert speech_enhance.main(["predict", "--model", "shipped:16k", "--input", str(tmp_path / "in"),
                                "--output", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(soundfile.read(tmp_path / "a" / "x.wav")[0], soundfile.read(tmp_path / "b" / "x.wav")[0])


def heldout_noise_files() -> list[str]:
    """Paths of the noise files held out of the shipped model's training and validation."""
    with open(os.path.join(SPLIT_DIR, "splits.json"), encoding="utf-8") as f:
        seen = set(json.load(f)["noises"])
    with open(os.path.join(SPLIT_DIR, "classes.tsv"), encoding="utf-8", newline="") as f:
        listed = [row[0] for row in csv.reader(f, delimiter="\t")][1:]
    heldout = sorted(set(listed) - seen)
    assert len(heldout) == 14, heldout  # docs/results.md: 14 files in 8 classes
    return [os.path.join(SHARED_DATA, "noise", rel) for rel in heldout]


def load_mono(path: str, rate: int) -> np.ndarray:
    audio = audio_io.read_audio(path)
    return audio_io.resample(audio.samples.mean(axis=1), audio.sample_rate, rate)


def heldout_mixtures(seed: int = 0, rate: int = RATE) -> list[tuple[np.ndarray, np.ndarray]]:
    """NUM_MIXTURES (clean, noisy) pairs of SECONDS at `rate` from held-out speakers and noise files.

    Voices from LibriSpeech test-other (speakers the model never heard), mixed with
    `mixing.levels.blend` (the dataset job's mixing) at SNRS_DB, from one seeded generator.
    """
    rng = np.random.default_rng(seed)
    voice_root = os.path.join(SHARED_DATA, "speech", "librispeech", "test-other")
    _, voices = audio_io.find_audio_files(voice_root)
    noises = heldout_noise_files()
    n = int(SECONDS * rate)
    mixtures = []
    for snr in SNRS_DB:
        while True:  # a segment with speech in it
            voice = load_mono(os.path.join(voice_root, voices[rng.integers(len(voices))]), rate)
            if voice.size < n:
                continue
            offset = int(rng.integers(voice.size - n + 1))
            segment = voice[offset: offset + n]
            level, active = active_level(segment, rate)
            if not is_silent(level, active):
                break
        noise = load_mono(noises[rng.integers(len(noises))], rate)
        noise = np.tile(noise, -(-n // noise.size))
        offset = int(rng.integers(noise.size - n + 1))
        mixed = blend(segment, noise[offset: offset + n], level=10.0 ** (-snr / 20.0), loudness_dbfs=-25.0,
                      voice_level=level)
        mixtures.append((mixed.clean, mixed.mixture))
    return mixtures


def mean_si_sdr_improvement(tmp_path, model_args: list[str], rate: int = RATE) -> float:
    """Mean SI-SDR improvement (dB) of `speech-enhance predict [model_args]` over `heldout_mixtures()`
    at `rate`."""
    mixtures = heldout_mixtures(rate=rate)
    os.makedirs(tmp_path / "noisy")
    for i, (_, noisy) in enumerate(mixtures):
        soundfile.write(tmp_path / "noisy" / f"{i:02d}.wav", noisy, rate, subtype="FLOAT")
    code = speech_enhance.main(["predict", *model_args, "--input", str(tmp_path / "noisy"),
                                "--output", str(tmp_path / "enhanced")])
    assert code == 0
    improvements = []
    for i, (clean, noisy) in enumerate(mixtures):
        enhanced, written_rate = soundfile.read(tmp_path / "enhanced" / f"{i:02d}.wav", dtype="float32")
        assert written_rate == rate and enhanced.shape == noisy.shape
        improvements.append(si_sdr_improvement(clean, enhanced, noisy))
    return float(np.mean(improvements))


@needs_shared_data
def test_predict_without_model_argument_improves_heldout_speech_in_heldout_noise(tmp_path):
    improvement = mean_si_sdr_improvement(tmp_path, [])  # no --model: the shipped one, as a user runs it
    print(f"shipped model: mean SI-SDR improvement {improvement:.2f} dB over {NUM_MIXTURES} held-out mixtures")
    assert improvement >= MIN_MEAN_SI_SDR_IMPROVEMENT_DB


@needs_shared_data
def test_predict_with_the_16k_model_improves_heldout_16k_speech_in_heldout_noise(tmp_path):
    improvement = mean_si_sdr_improvement(tmp_path, ["--model", "shipped:16k"], rate=16000)
    print(f"shipped 16 kHz model: mean SI-SDR improvement {improvement:.2f} dB over {NUM_MIXTURES} held-out mixtures")
    assert improvement >= MIN_MEAN_SI_SDR_IMPROVEMENT_DB


@needs_shared_data
def test_the_quality_check_fails_a_model_that_does_nothing(tmp_path):
    import keras

    config = SpectrogramConfig()
    inputs = keras.Input((*config.shape, 1))
    outputs = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", activation="tanh")(inputs)  # outputs 0
    identity = save_model_dir(keras.Model(inputs, outputs), str(tmp_path / "identity"), config=config,
                              target="noise")
    assert abs(mean_si_sdr_improvement(tmp_path / "run", ["--model", identity])) < 0.1
