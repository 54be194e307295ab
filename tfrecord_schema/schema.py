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

SCHEMA_VERSION = 3
# Schema versions whose records and datasets are read: version 3 added metadata keys only
# (`ADDED_IN_3`); a version 2 record reads as one of version 3 with those keys at their defaults.
READ_SCHEMA_VERSIONS = (2, 3)
# Schema versions whose records a trained model's inputs can come from: versions 2 and 3 added
# augmentation metadata only, the spectrogram features a model reads are those of version 1. Model
# directories (trainer.model_dir) accept these.
MODEL_SCHEMA_VERSIONS = (1, 2, 3)

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
    # Schema 3 (mixing.augmentation): the defaults (ADDED_IN_3) mean "none".
    "rir_file": "bytes",  # the recorded impulse response of a reverberant voice (--rir-dir); "" = simulated or none
    "noise_count": "int",  # noise files summed as the noise (noise_file names them all, "+"-joined); 1 = one
    "clip_level_db": "float",  # the mixture clipped this far below its peak (dB, < 0); 0 = not clipped
    "telephone": "int",  # 1 = the mixture band-limited to 300-3400 Hz; 0 = none
    "codec": "bytes",  # "ulaw" | "alaw": 8-bit companding of the mixture after the telephone band; "" = none
    "gain_db": "float",  # gain of mixture and clean target together after blending (dB); 0 = none
    "mixture_tilt_db_per_octave": "float",  # spectral tilt of the mixture around 1 kHz; 0 = none
}
# The keys schema 3 added, with the values a version 2 record reads as.
ADDED_IN_3: dict[str, Any] = {"rir_file": "", "noise_count": 1, "clip_level_db": 0.0, "telephone": 0, "codec": "",
                              "gain_db": 0.0, "mixture_tilt_db_per_octave": 0.0}
FIXED_FEATURES: dict[str, str] = {"schema_version": "int", "shape": "int"}


class SchemaVersionError(ValueError):
    """Raised when records or a dataset were written with a schema this code does not read."""


def check_schema_version(version: Any, where: str, accepted: tuple[int, ...] | None = None) -> None:
    """Refuse data written under another schema, saying what to do. `accepted`: the versions that
    may be read, READ_SCHEMA_VERSIONS by default (model directories pass MODEL_SCHEMA_VERSIONS)."""
    accepted = READ_SCHEMA_VERSIONS if accepted is None else tuple(accepted)
    if version not in accepted:
        reads = f"version {accepted[0]}" if len(accepted) == 1 else \
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

    The dtype of the spectrograms is recovered from their byte length and shape. A record of
    schema 2 gets the keys schema 3 added at their defaults (`ADDED_IN_3`); "schema_version" stays
    the record's.
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
        if key not in raw and version == 2 and key in ADDED_IN_3:
            out[key] = ADDED_IN_3[key]
            continue
        value = raw[key][0]
        out[key] = value.decode("utf-8") if kind == "bytes" else value
    return out


def tf_feature_spec() -> dict[str, Any]:
    """`tf.io.parse_example` spec for a batch of serialized examples (imports TensorFlow). The keys
    schema 3 added have defaults (`ADDED_IN_3`), so records of schema 2 parse too."""
    import tensorflow as tf

    kinds = {"bytes": tf.string, "int": tf.int64, "float": tf.float32}
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in SPECTROGRAM_KEYS}
    spec.update({key: tf.io.FixedLenFeature([], kinds[kind], default_value=ADDED_IN_3.get(key))
                 for key, kind in METADATA_FEATURES.items()})
    spec["schema_version"] = tf.io.FixedLenFeature([], tf.int64)
    spec["shape"] = tf.io.FixedLenFeature([2], tf.int64)
    return spec
