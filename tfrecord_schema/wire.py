"""The protocol buffer wire format of `tf.train.Example`, written and read by hand.

Just what `tfrecord_schema.schema` needs (length-delimited fields, varints, packed floats and
ints), so the dataset job and `inspect` need no TensorFlow; the tests check both directions
against TensorFlow. A Feature is a oneof: 1 bytes_list, 2 float_list, 3 int64_list.
"""

from __future__ import annotations

import functools
import struct
from typing import Iterator

import numpy as np


@functools.lru_cache(maxsize=8192)
def varint(value: int) -> bytes:
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


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def feature(kind: str, values: list) -> bytes:
    if kind == "bytes":
        inner = b"".join(field(1, v) for v in values)
        return field(1, inner)
    if kind == "float":
        return field(2, field(1, struct.pack(f"<{len(values)}f", *values)))
    return field(3, field(1, b"".join(varint(int(v)) for v in values)))


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    byte = buf[pos]
    if byte < 0x80:  # the common case: one byte
        return byte, pos + 1
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


_FIXED = {5: 4, 1: 8}  # wire type -> bytes of a fixed32 / fixed64 field


def fields(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field of the message in `buf[start:end]`: the
    bytes of a length-delimited field's payload (wire type 2), of a varint (0) or of a fixed32/64
    (5/1) value. Positions index `buf`, so a caller reads a value without a copy. The one walk over
    the protobuf wire format (`parse_message`, and the readers' batch decoder)."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        tag, pos = read_varint(buf, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = read_varint(buf, pos)
            at = pos
        elif wire == 0:
            at, (_, pos) = pos, read_varint(buf, pos)
            length = pos - at
        elif wire in _FIXED:
            at, length = pos, _FIXED[wire]
        else:
            raise ValueError(f"Not a tf.train.Example: unsupported protobuf wire type {wire}")
        if at + length > end:
            raise ValueError("Not a tf.train.Example: a field runs past the end of the record")
        pos = at + length
        yield tag >> 3, wire, at, pos


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_feature(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> list:
    """The values of the serialized Feature in `buf[start:end]`: bytes, floats or ints."""
    for kind, _, body, body_end in fields(buf, start, end):
        values: list = []
        for _, wire, a, b in fields(buf, body, body_end):
            if kind == 1:
                values.append(bytes(buf[a:b]))
            elif kind == 2:
                values.extend(np.frombuffer(buf, "<f4", (b - a) // 4, a).tolist() if wire == 2
                              else struct.unpack_from("<f", buf, a))
            elif kind == 3:
                if wire == 0:
                    values.append(_int64(read_varint(buf, a)[0]))
                else:
                    while a < b:
                        v, a = read_varint(buf, a)
                        values.append(_int64(v))
        return values
    return []


def entries(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(key start, key end, Feature start, Feature end) of each feature of a serialized
    `tf.train.Example` (Example.features -> Features.feature map entries); -1 for a part an entry lacks."""
    for number, _, start, end in fields(buf):
        if number != 1:  # Example.features
            continue
        for number, _, entry, entry_end in fields(buf, start, end):
            if number != 1:  # Features.feature (a map entry)
                continue
            key = value = (-1, -1)
            for n, _, a, b in fields(buf, entry, entry_end):
                if n == 1:
                    key = (a, b)
                elif n == 2:
                    value = (a, b)
            yield (*key, *value)


def message(features: dict[str, bytes]) -> bytes:
    """A serialized `tf.train.Example` from {key: serialized Feature}, keys in sorted order."""
    entries = b"".join(field(1, field(1, k.encode()) + field(2, features[k])) for k in sorted(features))
    return field(1, entries)


def parse_message(serialized: bytes) -> dict[str, list]:
    """{key: list of values} of a serialized `tf.train.Example`; bytes values stay bytes."""
    raw: dict[str, list] = {}
    for key, key_end, value, value_end in entries(serialized):
        if key >= 0:
            raw[bytes(serialized[key:key_end]).decode("utf-8")] = parse_feature(serialized, value, value_end) \
                if value >= 0 else []
    return raw
