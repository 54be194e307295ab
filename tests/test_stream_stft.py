"""The streaming family's STFT (tfrecord_schema/stream_stft.py): its numbers at each rate, a window that
reconstructs perfectly at its hop, model.json's entry read back and checked, and no Keras or other
framework imported by it or by the predictor's file processes that build it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tfrecord_schema.stream_stft import StreamSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_settings_at_each_rate():
    assert StreamSettings.for_sample_rate(16000) == StreamSettings(16000, 512, 256)
    assert StreamSettings.for_sample_rate(8000) == StreamSettings(8000, 256, 128)
    assert StreamSettings.for_sample_rate(44100) == StreamSettings(44100, 1412, 706)
    assert StreamSettings.for_sample_rate(16000).bins == 257
    assert StreamSettings.for_sample_rate(16000).latency_ms == 32.0
    with pytest.raises(ValueError, match="sample_rate must be an integer >= 4000 Hz. Received: sample_rate=100"):
        StreamSettings.for_sample_rate(100)
    with pytest.raises(ValueError, match="hop is half its n_fft. Received: n_fft=512, hop_length=128"):
        StreamSettings(16000, 512, 128)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_the_window_reconstructs_perfectly_at_its_hop(rate):
    settings = StreamSettings.for_sample_rate(rate)
    window, hop = settings.window(), settings.hop_length
    assert window.shape == (settings.n_fft,) and window[0] == 0.0
    np.testing.assert_allclose(window[:hop] ** 2 + window[hop:] ** 2, 1.0, atol=1e-12)
    np.testing.assert_allclose(window[1:hop], window[:hop:-1], atol=1e-12)  # periodic: symmetric about n_fft / 2


def test_the_model_json_entry_round_trips_and_is_checked():
    settings = StreamSettings.for_sample_rate(8000)
    entry = settings.to_dict()
    assert entry == {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "window": "sqrt-hann-periodic",
                     "latency_ms": 32.0}
    assert StreamSettings.from_dict({**entry, "size": "small", "state_shapes": [[2, 3]]}) == settings
    assert StreamSettings.from_dict({k: v for k, v in entry.items() if k != "window"}) == settings
    with pytest.raises(ValueError, match="window 'hann' is not 'sqrt-hann-periodic'"):
        StreamSettings.from_dict({**entry, "window": "hann"})
    with pytest.raises(ValueError, match="hop is half its n_fft"):
        StreamSettings.from_dict({**entry, "hop_length": 100})


def test_the_file_processes_import_no_framework():
    code = ("import sys, predictor.file_worker, tfrecord_schema.stream_stft; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
