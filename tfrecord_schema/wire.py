"""The protocol buffer wire format of `tf.train.Example`, written and read by hand.

Just what `tfrecord_schema.schema` needs (length-delimited fields, varints, packed floats and
ints), so the dataset job and `inspect` need no TensorFlow; the tests check both directions
against TensorFlow. A Feature is a oneof: 1 bytes_list, 2 float_list, 3 int64_list.
"""

from __future__ import annotations

import functools
import struct

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


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: memoryview):
    """Yields (field number, wire type, value) of one message; value is a memoryview for wire type 2."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = read_varint(buf, pos)
            yield number, wire, buf[pos: pos + length]
            pos += length
        elif wire == 0:
            value, pos = read_varint(buf, pos)
            yield number, wire, value
        elif wire == 5:
            yield number, wire, buf[pos: pos + 4]
            pos += 4
        elif wire == 1:
            yield number, wire, buf[pos: pos + 8]
            pos += 8
        else:
            raise ValueError(f"Not a tf.train.Example: unsupported protobuf wire type {wire}")


def parse_feature(buf: memoryview) -> list:
    for kind, _, body in fields(buf):
        values: list = []
        for _, wire, item in fields(body):
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
                        v, p = read_varint(item, p)
                        values.append(v - (1 << 64) if v >= 1 << 63 else v)
        return values
    return []


def message(features: dict[str, bytes]) -> bytes:
    """A serialized `tf.train.Example` from {key: serialized Feature}, keys in sorted order."""
    entries = b"".join(field(1, field(1, k.encode()) + field(2, features[k])) for k in sorted(features))
    return field(1, entries)


def parse_message(serialized: bytes) -> dict[str, list]:
    """{key: list of values} of a serialized `tf.train.Example`; bytes values stay bytes."""
    raw: dict[str, list] = {}
    for number, _, features in fields(memoryview(serialized)):
        if number != 1:
            continue
        for _, _, entry in fields(features):
            key = value = None
            for n, _, item in fields(entry):
                if n == 1:
                    key = bytes(item).decode("utf-8")
                elif n == 2:
                    value = parse_feature(item)
            if key is not None:
                raw[key] = value if value is not None else []
    return raw
