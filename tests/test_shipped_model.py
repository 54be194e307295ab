"""The model shipped in the package: it loads, describes itself, and `predict` uses it by default."""

import json
import os

import numpy as np
import soundfile

import speech_enhance
from predictor.enhance import PRETRAINED_DIR
from trainer.model_dir import load_model_dir


def test_shipped_model_loads_and_describes_its_training():
    model, info = load_model_dir(PRETRAINED_DIR)
    assert info["target"] in ("noise", "mask")
    assert info["config"].shape == (128, 128)
    assert model.count_params() == 1_941_093
    assert info["training_data"]["num_examples"]["train"] >= 40_000
    assert os.path.getsize(os.path.join(PRETRAINED_DIR, "model.keras")) < 9_000_000
    assert os.path.isfile(os.path.join(PRETRAINED_DIR, "MODEL_CARD.md"))


def test_predict_without_model_argument_uses_the_shipped_model(tmp_path):
    rate = 16000
    t = np.arange(int(1.7 * rate)) / rate
    voice = 0.2 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    noisy = (voice + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    (tmp_path / "in").mkdir()
    soundfile.write(tmp_path / "in" / "a.wav", noisy, rate)
    assert speech_enhance.main(["predict", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    out, out_rate = soundfile.read(tmp_path / "out" / "a.wav", dtype="float32")
    assert out_rate == rate and out.shape == noisy.shape
    # Denoising removes energy (the noise) but keeps the level of the voice within a few dB.
    assert 0.3 < np.sqrt(np.mean(out ** 2)) / np.sqrt(np.mean(voice ** 2)) < 1.5
    assert np.sum(out ** 2) < np.sum(noisy ** 2)
