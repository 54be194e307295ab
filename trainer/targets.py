"""Model input features and training targets from magnitudes, and their inverse for enhancement.

Everything here is fixed by `SpectrogramConfig` (floor, offsets, scales), so the level of the
signal survives: no per-window peak normalisation. Two implementations of the same formulas: numpy
(the predictor, evaluation) and TensorFlow (inside tf.data graphs); a test checks they agree.

Targets (the model ends in tanh, so every target lies in [-1, 1]):
    noise: (noisy_db - clean_db) / target_scale_db, clipped; enhanced_db = noisy_db - scale * out.
    mask:  2 * clip(|clean| / |noisy|, 0, 1) - 1;           enhanced = |noisy| * (out + 1) / 2.
"""

from __future__ import annotations

import numpy as np

from tfrecord_schema.config import SpectrogramConfig

TARGETS = ("noise", "mask")
# How training weighs the time-frequency bins in the loss. "magnitude": in proportion to the noisy
# magnitude (normalised to a mean of 1 per example), so errors where the signal is loud count most,
# as in a signal-approximation loss; "none": every bin alike (the reference's choice).
LOSS_WEIGHTINGS = ("none", "magnitude")
_EPS = 1e-12


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}. Received: target={target!r}")
    return target


# --- numpy ---------------------------------------------------------------------------------

def magnitude_db(magnitude: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    floor = 10.0 ** (config.log_floor_db / 20.0)
    return 20.0 * np.log10(np.maximum(np.asarray(magnitude, np.float32), floor))


def model_input(noisy_magnitude: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    """Scaled log magnitude [..., frames, bins] -> float32, the model's input."""
    return ((magnitude_db(noisy_magnitude, config) - config.input_offset_db) / config.input_scale_db).astype(np.float32)


def model_target(noisy_magnitude: np.ndarray, clean_magnitude: np.ndarray, target: str,
                 config: SpectrogramConfig) -> np.ndarray:
    check_target(target)
    if target == "noise":
        t = (magnitude_db(noisy_magnitude, config) - magnitude_db(clean_magnitude, config)) / config.target_scale_db
        return np.clip(t, -1.0, 1.0).astype(np.float32)
    ratio = np.asarray(clean_magnitude, np.float32) / (np.asarray(noisy_magnitude, np.float32) + _EPS)
    return (2.0 * np.clip(ratio, 0.0, 1.0) - 1.0).astype(np.float32)


def loss_weight(noisy_magnitude: np.ndarray) -> np.ndarray:
    """Per-bin loss weights [..., frames, bins]: the noisy magnitude over its mean per example
    (numpy twin of `tf_loss_weight`)."""
    m = np.asarray(noisy_magnitude, np.float32)
    return (m / (m.mean(axis=(-2, -1), keepdims=True) + _EPS)).astype(np.float32)


def enhance_magnitude(noisy_magnitude: np.ndarray, prediction: np.ndarray, target: str,
                      config: SpectrogramConfig) -> np.ndarray:
    """Enhanced magnitude from the noisy magnitude and the model's output (same shape)."""
    check_target(target)
    noisy = np.asarray(noisy_magnitude, np.float32)
    pred = np.asarray(prediction, np.float32)
    if target == "noise":
        db = magnitude_db(noisy, config) - config.target_scale_db * pred
        out = 10.0 ** (db / 20.0)
        # Keep exact silence silent (the floor would otherwise turn zeros into 1e-5).
        return np.where(noisy > 0, out, 0.0).astype(np.float32)
    return (noisy * (pred + 1.0) * 0.5).astype(np.float32)


# --- TensorFlow (graph-safe; used by the tf.data input pipeline) ------------------------------

def tf_model_input(noisy_magnitude, config: SpectrogramConfig):
    db = _tf_db(noisy_magnitude, config)
    return (db - config.input_offset_db) / config.input_scale_db


def tf_model_target(noisy_magnitude, clean_magnitude, target: str, config: SpectrogramConfig):
    import tensorflow as tf

    check_target(target)
    noisy = tf.cast(noisy_magnitude, tf.float32)
    clean = tf.cast(clean_magnitude, tf.float32)
    if target == "noise":
        t = (_tf_db(noisy, config) - _tf_db(clean, config)) / config.target_scale_db
        return tf.clip_by_value(t, -1.0, 1.0)
    return 2.0 * tf.clip_by_value(clean / (noisy + _EPS), 0.0, 1.0) - 1.0


def check_loss_weighting(weighting: str) -> str:
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}. Received: loss_weighting={weighting!r}")
    return weighting


def tf_loss_weight(noisy_magnitude, config: SpectrogramConfig):
    """Per-bin loss weights [..., frames, bins]: the noisy magnitude over its mean per example."""
    import tensorflow as tf

    m = tf.cast(noisy_magnitude, tf.float32)
    return m / (tf.reduce_mean(m, axis=[-2, -1], keepdims=True) + _EPS)


def _tf_db(magnitude, config: SpectrogramConfig):
    import tensorflow as tf

    floor = 10.0 ** (config.log_floor_db / 20.0)
    m = tf.maximum(tf.cast(magnitude, tf.float32), floor)
    return (20.0 / np.log(10.0)) * tf.math.log(m)
