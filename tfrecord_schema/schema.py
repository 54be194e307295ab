"""What one TFRecord example holds, declared once, with `encode()` and `decode()` beside it.

Each example is a `tf.train.Example` protocol buffer. The four spectrograms (magnitude and phase
of the noisy mixture and of the clean voice) are stored as raw little-endian bytes of the
configured dtype, with their shape, so a reader can parse a whole batch with one
`tf.io.parse_example` and one `tf.io.decode_raw` per key. The rest is metadata.

The protocol buffer is written and read by hand in `tfrecord_schema.wire` (its format is small and
stable), so the dataset job and `inspect` need no TensorFlow; the tests check both directions against
TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tfrecord_schema import wire
from tfrecord_schema.config import SpectrogramConfig

SCHEMA_VERSION = 2
# Schema versions whose records a trained model's inputs can come from: version 2 added augmentation
# metadata only, the spectrogram features a model reads are those of version 1. Model directories
# (trainer.model_dir) accept these; datasets and records must be of SCHEMA_VERSION.
MODEL_SCHEMA_VERSIONS = (1, 2)

SPECTROGRAM_KEYS = ("noisy_magnitude", "noisy_phase", "clean_magnitude", "clean_phase")

# name -> kind; "bytes" values are UTF-8 strings.
METADATA_FEATURES: dict[str, str] = {
    "example_id": "bytes",  # "<split>-<index>", stable for a given seed and arguments
    "split": "bytes",  # train | valid | test
    "voice_file": "bytes",  # path relative to --voice-dir
    "voice_offset": "int",  # first sample of the window, at the config's sample rate
    "speaker_id": "bytes",
    "noise_file": "bytes",  # path relative to --noise-dir
    "noise_offset": "int",  # first sample of the noise window (wraps for short noises)
    "noise_class": "bytes",
    "noise_level": "float",  # noise RMS / voice active-speech level, before loudness scaling
    "snr_db": "float",  # 10 log10(sum clean^2 / sum noise^2) over the written window
    "gain": "float",  # factor applied to both voice and noise for loudness, never clipping
    # Augmentation (schema 2; mixing.augmentation). The defaults mean "none".
    "rt60": "float",  # s, measured on the room response of the voice; 0 = dry
    "early_reflections_ms": "float",  # ms of reflections after the direct path kept in the clean target; 0 = dry
    "babble_talkers": "int",  # other speakers summed as the noise (noise_class "babble"); 0 = recorded noise
    "speed_factor": "float",  # voice played this much faster (tempo and pitch); 1 = none
    "noise_tilt_db_per_octave": "float",  # spectral tilt of the noise around 1 kHz; 0 = none
    "noise_lowpass_hz": "float",  # low-pass cut-off of the noise; 0 = none
}
FIXED_FEATURES: dict[str, str] = {"schema_version": "int", "shape": "int"}


class SchemaVersionError(ValueError):
    """Raised when records or a dataset were written with a schema this code does not read."""


def check_schema_version(version: Any, where: str, accepted: tuple[int, ...] | None = None) -> None:
    """Refuse data written under another schema, saying what to do. `accepted`: the versions that
    may be read, SCHEMA_VERSION alone by default (model directories pass MODEL_SCHEMA_VERSIONS)."""
    accepted = (SCHEMA_VERSION,) if accepted is None else tuple(accepted)
    if version not in accepted:
        reads = f"version {SCHEMA_VERSION}" if accepted == (SCHEMA_VERSION,) else \
            f"versions {', '.join(str(v) for v in accepted)}"
        raise SchemaVersionError(
            f"{where} was written with TFRecord schema version {version!r}, but this toolkit reads "
            f"{reads}. Rebuild the dataset with `speech-enhance dataset`, or install "
            "the toolkit version that wrote it.")


def encode(example: Mapping[str, Any], config: SpectrogramConfig) -> bytes:
    """Serialises one example (the four spectrograms [frames, bins] and all metadata) to bytes.

    Spectrograms are cast to `config.dtype`; every key of `METADATA_FEATURES` is required.
    """
    missing = [k for k in (*SPECTROGRAM_KEYS, *METADATA_FEATURES) if k not in example]
    if missing:
        raise ValueError(f"encode() needs every schema key; missing: {missing}")
    dtype = np.dtype(config.dtype).newbyteorder("<")
    features: dict[str, bytes] = {}
    for key in SPECTROGRAM_KEYS:
        array = np.asarray(example[key])
        if array.shape != config.shape:
            raise ValueError(f"encode(): {key} must have shape {config.shape} (frames, bins). Received: shape={array.shape}")
        features[key] = wire.feature("bytes", [array.astype(dtype, copy=False).tobytes()])
    for key, kind in METADATA_FEATURES.items():
        value = example[key]
        if kind == "bytes":
            features[key] = wire.feature("bytes", [str(value).encode("utf-8")])
        else:
            features[key] = wire.feature(kind, [value])
    features["schema_version"] = wire.feature("int", [SCHEMA_VERSION])
    features["shape"] = wire.feature("int", list(config.shape))
    return wire.message(features)


def decode(serialized: bytes) -> dict[str, Any]:
    """Parses bytes written by `encode()` back into a dict of numpy arrays and Python scalars.

    The dtype of the spectrograms is recovered from their byte length and shape.
    """
    raw = wire.parse_message(serialized)
    version = raw.get("schema_version", [None])[0]
    check_schema_version(version, "This record")
    shape = tuple(raw["shape"])
    out: dict[str, Any] = {"schema_version": version}
    count = int(np.prod(shape))
    for key in SPECTROGRAM_KEYS:
        data = raw[key][0]
        width = len(data) // count
        if width not in (2, 4) or width * count != len(data):
            raise ValueError(f"decode(): {key} holds {len(data)} bytes, not {count} float16/float32 values of shape {shape}")
        out[key] = np.frombuffer(data, "<f2" if width == 2 else "<f4").reshape(shape)
    for key, kind in METADATA_FEATURES.items():
        value = raw[key][0]
        out[key] = value.decode("utf-8") if kind == "bytes" else value
    return out


def tf_feature_spec() -> dict[str, Any]:
    """`tf.io.parse_example` spec for a batch of serialized examples (imports TensorFlow)."""
    import tensorflow as tf

    kinds = {"bytes": tf.string, "int": tf.int64, "float": tf.float32}
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in SPECTROGRAM_KEYS}
    spec.update({key: tf.io.FixedLenFeature([], kinds[kind]) for key, kind in METADATA_FEATURES.items()})
    spec["schema_version"] = tf.io.FixedLenFeature([], tf.int64)
    spec["shape"] = tf.io.FixedLenFeature([2], tf.int64)
    return spec
