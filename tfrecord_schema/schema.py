"""What one TFRecord example holds, declared once, with `encode()` and `decode()` beside it.

Each example is a `tf.train.Example` protocol buffer. The four spectrograms (magnitude and phase
of the noisy mixture and of the clean voice) are stored as raw little-endian bytes of the
configured dtype, with their shape, so a reader can parse a whole batch with one
`tf.io.parse_example` and one `tf.io.decode_raw` per key. The rest is metadata.

The protocol buffer is written and read here by hand (its wire format is small and stable), so the
dataset job and `inspect` need no TensorFlow; the tests check both directions against TensorFlow.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Mapping

import numpy as np

from tfrecord_schema.config import SpectrogramConfig

SCHEMA_VERSION = 1

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
}
FIXED_FEATURES: dict[str, str] = {"schema_version": "int", "shape": "int"}


class SchemaVersionError(ValueError):
    """Raised when records or a dataset were written with a schema this code does not read."""


def check_schema_version(version: Any, where: str) -> None:
    """Refuse data written under another schema, saying what to do."""
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} was written with TFRecord schema version {version!r}, but this toolkit reads "
            f"version {SCHEMA_VERSION}. Rebuild the dataset with `speech-enhance dataset`, or install "
            "the toolkit version that wrote it.")


# --- protocol buffer wire format -------------------------------------------------------------

@functools.lru_cache(maxsize=8192)
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(kind: str, values: list) -> bytes:
    if kind == "bytes":
        inner = b"".join(_field(1, v) for v in values)
        return _field(1, inner)
    if kind == "float":
        return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))
    return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yields (field number, wire type, value) of one message; value is a memoryview for wire type 2."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, buf[pos: pos + length]
            pos += length
        elif wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 5:
            yield number, wire, buf[pos: pos + 4]
            pos += 4
        elif wire == 1:
            yield number, wire, buf[pos: pos + 8]
            pos += 8
        else:
            raise ValueError(f"Not a tf.train.Example: unsupported protobuf wire type {wire}")


def _parse_feature(buf: memoryview) -> list:
    for kind, _, body in _fields(buf):
        values: list = []
        for _, wire, item in _fields(body):
            if kind == 1:
                values.append(bytes(item))
            elif kind == 2:
                values.extend(np.frombuffer(item, "<f4").tolist() if wire == 2 else [struct.unpack("<f", item)[0]])
            elif kind == 3:
                if wire == 0:
                    values.append(item - (1 << 64) if item >= 1 << 63 else item)
                else:
                    p = 0
                    while p < len(item):
                        v, p = _read_varint(item, p)
                        values.append(v - (1 << 64) if v >= 1 << 63 else v)
        return values
    return []


# --- public API ------------------------------------------------------------------------------

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
        features[key] = _feature("bytes", [array.astype(dtype, copy=False).tobytes()])
    for key, kind in METADATA_FEATURES.items():
        value = example[key]
        if kind == "bytes":
            features[key] = _feature("bytes", [str(value).encode("utf-8")])
        else:
            features[key] = _feature(kind, [value])
    features["schema_version"] = _feature("int", [SCHEMA_VERSION])
    features["shape"] = _feature("int", list(config.shape))
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, features[k])) for k in sorted(features))
    return _field(1, entries)


def decode(serialized: bytes) -> dict[str, Any]:
    """Parses bytes written by `encode()` back into a dict of numpy arrays and Python scalars.

    The dtype of the spectrograms is recovered from their byte length and shape.
    """
    raw: dict[str, list] = {}
    for number, _, features in _fields(memoryview(serialized)):
        if number != 1:
            continue
        for _, _, entry in _fields(features):
            key = value = None
            for n, _, item in _fields(entry):
                if n == 1:
                    key = bytes(item).decode("utf-8")
                elif n == 2:
                    value = _parse_feature(item)
            if key is not None:
                raw[key] = value if value is not None else []
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
