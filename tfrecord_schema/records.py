"""TFRecord container framing (length, masked CRC-32C, payload, masked CRC-32C), optional GZIP.

Files written here are read by `tf.data.TFRecordDataset` and vice versa. CRC-32C comes from
`google-crc32c` (hardware accelerated); Python's own fallback would be about 100x slower.
"""

from __future__ import annotations

import gzip
import struct
from typing import BinaryIO, Iterator

import google_crc32c

COMPRESSIONS = ("", "GZIP")


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record))


class RecordWriter:
    """Writes framed records to an open binary file object; GZIP compresses the whole stream."""

    def __init__(self, fileobj: BinaryIO, compression: str = "") -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}. Received: compression={compression!r}")
        self._raw = fileobj
        self._out = gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=6, mtime=0) if compression else fileobj
        self.records = 0

    def write(self, record: bytes) -> None:
        self._out.write(frame(record))
        self.records += 1

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(fileobj: BinaryIO, compression: str = "", name: str = "<stream>") -> Iterator[bytes]:
    """Yields the payloads of a TFRecord stream, checking both CRCs of every record."""
    stream = gzip.GzipFile(fileobj=fileobj, mode="rb") if compression == "GZIP" else fileobj
    index = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError(f"{name}: truncated TFRecord header at record {index}")
        (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if crc != _masked_crc(header[:8]):
            raise ValueError(f"{name}: corrupt length CRC at record {index}")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise ValueError(f"{name}: truncated record {index}")
        if struct.unpack("<I", footer)[0] != _masked_crc(data):
            raise ValueError(f"{name}: corrupt data CRC at record {index}")
        yield data
        index += 1
