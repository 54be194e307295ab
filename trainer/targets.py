"""Model input features and training targets from magnitudes, and their inverse for enhancement.

Everything here is fixed by `SpectrogramConfig` (floor, offsets, scales), so the level of the
signal survives: no per-window peak normalisation. Two implementations of the same formulas: numpy
(the predictor, evaluation) and TensorFlow (inside tf.data graphs); a test checks they agree.

Targets (the model ends in tanh, so every target lies in [-1, 1]):
    noise: (noisy_db - clean_db) / target_scale_db, clipped; enhanced_db = noisy_db - scale * out.
    mask:  2 * clip(|clean| / |noisy|, 0, 1) - 1;           enhanced = |noisy| * (out + 1) / 2.
    psa:   2 * clip(|clean| / |noisy| * cos(clean_phase - noisy_phase), 0, 1) - 1; enhanced as mask.
           The phase-sensitive mask (Erdogan et al., ICASSP 2015): with the noisy phase kept, the
           real gain that brings |noisy| e^{i noisy_phase} closest to the clean complex spectrum,
           so it is what the SI-SDR of the output rewards; where noise and speech are out of phase
           it asks for less than the magnitude ratio does.
    cmask: a complex mask, the one target that changes the phase. The model sees the noisy phase
           (input channels: the scaled log magnitude, cos and sin of the noisy phase) and outputs
           three channels (g, c, s): a gain coded as for "mask" and a rotation of the noisy phase by
           atan2(s, 1 + c), so an output of zeros in c and s keeps the noisy phase, and a rotation
           stays within +-90 degrees. enhanced = noisy * (g + 1) / 2 * e^{i atan2(s, 1 + c)}.
           There is no per-bin target to regress: it is trained with a loss on the waveform
           (trainer/waveform_loss.py), which scores exactly that enhanced spectrum.

Every model input and output carries a channel axis last: [..., frames, bins, channels]
(`input_channels(target)`, `output_channels(target)`: 1 and 1, or 3 and 3 for "cmask").
"""

from __future__ import annotations

import numpy as np

from tfrecord_schema.config import SpectrogramConfig

TARGETS = ("noise", "mask", "psa", "cmask")
# Targets whose formula needs the phases of the noisy and the clean spectrograms.
PHASE_TARGETS = ("psa",)
# Targets whose model sees the noisy phase and changes it; they are trained on the waveform only.
COMPLEX_TARGETS = ("cmask",)
# How training weighs the time-frequency bins in the loss. "magnitude": in proportion to the noisy
# magnitude (normalised to a mean of 1 per example), so errors where the signal is loud count most,
# as in a signal-approximation loss; "none": every bin alike (the reference's choice).
LOSS_WEIGHTINGS = ("none", "magnitude")
_EPS = 1e-12


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}. Received: target={target!r}")
    return target


def input_channels(target: str) -> int:
    """Channels per time-frequency bin of the model's input for `target`."""
    return 3 if check_target(target) in COMPLEX_TARGETS else 1


def output_channels(target: str) -> int:
    """Channels per time-frequency bin of the model's output for `target`."""
    return 3 if check_target(target) in COMPLEX_TARGETS else 1


def target_spectrograms(target: str) -> tuple[str, ...]:
    """The record spectrograms the inputs and targets of `target` are made from."""
    check_target(target)
    phases = ("noisy_phase", "clean_phase") if target in PHASE_TARGETS + COMPLEX_TARGETS else ()
    return ("noisy_magnitude", "clean_magnitude", *phases)


def _check_regressed(target: str) -> None:
    if target in COMPLEX_TARGETS:
        raise ValueError(f"target {target!r} has no per-bin target to regress: train it with a loss on the "
                         "waveform (loss='snr', 'si-sdr' or 'si-sdr+huber')")


def _check_phases(target: str, noisy_phase, clean_phase) -> None:
    if target in PHASE_TARGETS and (noisy_phase is None or clean_phase is None):
        raise ValueError(f"target {target!r} needs noisy_phase and clean_phase")


# --- numpy ---------------------------------------------------------------------------------

def magnitude_db(magnitude: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    floor = 10.0 ** (config.log_floor_db / 20.0)
    return 20.0 * np.log10(np.maximum(np.asarray(magnitude, np.float32), floor))


def model_input(noisy_magnitude: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    """Scaled log magnitude [..., frames, bins] -> float32, the model's input."""
    return ((magnitude_db(noisy_magnitude, config) - config.input_offset_db) / config.input_scale_db).astype(np.float32)


def model_features(noisy_magnitude: np.ndarray, noisy_phase: np.ndarray | None, target: str,
                   config: SpectrogramConfig) -> np.ndarray:
    """The model's input for `target`, float32 [..., frames, bins, input_channels(target)]: the
    scaled log magnitude, then for "cmask" cos and sin of the noisy phase (radians)."""
    x = model_input(noisy_magnitude, config)[..., None]
    if check_target(target) not in COMPLEX_TARGETS:
        return x
    if noisy_phase is None:
        raise ValueError(f"target {target!r} needs the noisy phase as model input")
    phase = np.asarray(noisy_phase, np.float32)
    return np.concatenate([x, np.cos(phase)[..., None], np.sin(phase)[..., None]], axis=-1)


def model_target(noisy_magnitude: np.ndarray, clean_magnitude: np.ndarray, target: str,
                 config: SpectrogramConfig, noisy_phase: np.ndarray | None = None,
                 clean_phase: np.ndarray | None = None) -> np.ndarray:
    """The training target of `target`; "psa" also needs both phases (radians)."""
    check_target(target)
    _check_regressed(target)
    _check_phases(target, noisy_phase, clean_phase)
    if target == "noise":
        t = (magnitude_db(noisy_magnitude, config) - magnitude_db(clean_magnitude, config)) / config.target_scale_db
        return np.clip(t, -1.0, 1.0).astype(np.float32)
    ratio = np.asarray(clean_magnitude, np.float32) / (np.asarray(noisy_magnitude, np.float32) + _EPS)
    if target == "psa":
        ratio = ratio * np.cos(np.asarray(clean_phase, np.float32) - np.asarray(noisy_phase, np.float32))
    return (2.0 * np.clip(ratio, 0.0, 1.0) - 1.0).astype(np.float32)


def loss_weight(noisy_magnitude: np.ndarray) -> np.ndarray:
    """Per-bin loss weights [..., frames, bins]: the noisy magnitude over its mean per example
    (numpy twin of `tf_loss_weight`)."""
    m = np.asarray(noisy_magnitude, np.float32)
    return (m / (m.mean(axis=(-2, -1), keepdims=True) + _EPS)).astype(np.float32)


def enhance_magnitude(noisy_magnitude: np.ndarray, prediction: np.ndarray, target: str,
                      config: SpectrogramConfig) -> np.ndarray:
    """Enhanced magnitude from the noisy magnitude and the model's output channel that sets it
    (channel 0; the same shape: [..., frames, bins]); for "cmask" the magnitude of its gain."""
    check_target(target)
    noisy = np.asarray(noisy_magnitude, np.float32)
    pred = np.asarray(prediction, np.float32)
    if target == "noise":
        db = magnitude_db(noisy, config) - config.target_scale_db * pred
        out = 10.0 ** (db / 20.0)
        # Keep exact silence silent (the floor would otherwise turn zeros into 1e-5).
        return np.where(noisy > 0, out, 0.0).astype(np.float32)
    return (noisy * (pred + 1.0) * 0.5).astype(np.float32)


def enhance_spectrum(noisy: np.ndarray, prediction: np.ndarray, target: str, config: SpectrogramConfig) -> np.ndarray:
    """The enhanced complex spectrum, complex64 [..., frames, bins], from the noisy one and the
    model's output [..., frames, bins, output_channels(target)]: the noisy phase kept, or for
    "cmask" rotated by the output."""
    noisy = np.asarray(noisy, np.complex64)
    pred = np.asarray(prediction, np.float32)
    magnitude = np.abs(noisy)
    enhanced = enhance_magnitude(magnitude, pred[..., 0], target, config)
    # Scaling the complex STFT by enhanced / noisy magnitude keeps the noisy phase exactly.
    gain = np.divide(enhanced, magnitude, out=np.zeros_like(enhanced), where=magnitude > 0)
    out = noisy * gain
    if target in COMPLEX_TARGETS:
        out = out * rotation(pred[..., 1], pred[..., 2])
    return out.astype(np.complex64, copy=False)


def rotation(c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The unit complex numbers e^{i atan2(s, 1 + c)} of a "cmask" output's c and s channels."""
    z = (1.0 + np.asarray(c, np.float32)) + 1j * np.asarray(s, np.float32)
    size = np.abs(z)
    return np.divide(z, size, out=np.ones_like(z), where=size > 0).astype(np.complex64)


# --- TensorFlow (graph-safe; used by the tf.data input pipeline) ------------------------------

def tf_model_input(noisy_magnitude, config: SpectrogramConfig):
    db = _tf_db(noisy_magnitude, config)
    return (db - config.input_offset_db) / config.input_scale_db


def tf_model_features(noisy_magnitude, noisy_phase, target: str, config: SpectrogramConfig):
    """TensorFlow twin of `model_features`: [B, frames, bins, input_channels(target)] float32."""
    import tensorflow as tf

    x = tf_model_input(noisy_magnitude, config)[..., tf.newaxis]
    if check_target(target) not in COMPLEX_TARGETS:
        return x
    phase = tf.cast(noisy_phase, tf.float32)
    return tf.concat([x, tf.cos(phase)[..., tf.newaxis], tf.sin(phase)[..., tf.newaxis]], axis=-1)


def tf_model_target(noisy_magnitude, clean_magnitude, target: str, config: SpectrogramConfig,
                    noisy_phase=None, clean_phase=None):
    import tensorflow as tf

    check_target(target)
    _check_regressed(target)
    _check_phases(target, noisy_phase, clean_phase)
    noisy = tf.cast(noisy_magnitude, tf.float32)
    clean = tf.cast(clean_magnitude, tf.float32)
    if target == "noise":
        t = (_tf_db(noisy, config) - _tf_db(clean, config)) / config.target_scale_db
        return tf.clip_by_value(t, -1.0, 1.0)
    ratio = clean / (noisy + _EPS)
    if target == "psa":
        ratio = ratio * tf.cos(tf.cast(clean_phase, tf.float32) - tf.cast(noisy_phase, tf.float32))
    return 2.0 * tf.clip_by_value(ratio, 0.0, 1.0) - 1.0


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
