"""The TFRecord container format, framed and unframed here only: each record is its length
(uint64 little-endian), the masked CRC-32C of those 8 bytes, the payload and the payload's masked
CRC-32C; a GZIP file compresses that whole stream.

Files written here are read by `tf.data.TFRecordDataset` and vice versa. CRC-32C comes from
`google-crc32c` (hardware accelerated); Python's own fallback would be about 100x slower.

    frame(payload)                      # one framed record
    unframe(framed)                     # the payload of one framed record read at its offset
    frames(stream, payloads=False)      # (framed length, payload) of every record of a stream
    read_records(f, compression)        # payloads of a shard file, both CRCs checked
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from typing import BinaryIO, Iterator

import google_crc32c

COMPRESSIONS = ("", "GZIP")
HEADER_BYTES = 12  # 8-byte length + 4-byte masked CRC of it
FRAMING_BYTES = 16  # header + 4-byte masked CRC of the payload


class FramingError(ValueError):
    """A framed record read at its offset is not one. `problem`: "size" (its length field disagrees
    with the bytes read), "length CRC" or "data CRC"; `length`: the length field."""

    def __init__(self, problem: str, length: int) -> None:
        super().__init__(f"{problem} mismatch ({length}-byte record)")
        self.problem, self.length = problem, length


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record))


def _length(header: bytes | memoryview, check_crc: bool) -> int | None:
    """The payload length a 12-byte header gives; None when its CRC does not match (checked with `check_crc`)."""
    (length,) = struct.unpack_from("<Q", header, 0)
    if check_crc and struct.unpack_from("<I", header, 8)[0] != _masked_crc(bytes(header[:8])):
        return None
    return length


def unframe(framed: bytes | memoryview, check_crc: bool = True) -> bytes:
    """The payload of exactly one framed record (as a shard index locates it). Raises `FramingError`
    when the bytes are not that record: a length field that does not fit them, or a CRC mismatch."""
    (length,) = struct.unpack_from("<Q", framed, 0)
    if length + FRAMING_BYTES != len(framed):
        raise FramingError("size", length)
    if _length(framed, check_crc) is None:
        raise FramingError("length CRC", length)
    payload = bytes(framed[HEADER_BYTES: HEADER_BYTES + length])
    if check_crc and struct.unpack_from("<I", framed, HEADER_BYTES + length)[0] != _masked_crc(payload):
        raise FramingError("data CRC", length)
    return payload


def frames(stream: BinaryIO, *, payloads: bool = True, check_crc: bool = True,
           size: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(framed length, payload) of every record of an uncompressed TFRecord stream, in order.

    Without `payloads` only the headers are read and the payloads seeked over (payload None, no
    CRC read): how a shard index is built. `size`: the stream's length in bytes, to refuse a record
    that claims to run past it. Raises ValueError naming the record (and its byte offset) for a
    truncated header or record, and with `check_crc` for either CRC mismatch.
    """
    index = pos = 0
    while True:
        header = stream.read(HEADER_BYTES)
        if not header:
            return
        if len(header) < HEADER_BYTES:
            raise ValueError(f"truncated TFRecord header at byte {pos} (record {index})")
        length = _length(header, check_crc)
        if length is None:
            raise ValueError(f"corrupt length CRC at record {index}")
        if size is not None and pos + length + FRAMING_BYTES > size:
            raise ValueError(f"record {index} at byte {pos} claims {length} bytes, past the end ({size} bytes)")
        data = None
        if payloads:
            data, footer = stream.read(length), stream.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"truncated record {index}")
            if check_crc and struct.unpack("<I", footer)[0] != _masked_crc(data):
                raise ValueError(f"corrupt data CRC at record {index}")
        else:
            stream.seek(length + 4, os.SEEK_CUR)
        yield length + FRAMING_BYTES, data
        pos += length + FRAMING_BYTES
        index += 1


def framed_lengths(data: bytes | memoryview) -> list[int]:
    """Framed length of every record of an uncompressed TFRecord byte string (headers only; CRCs
    are not checked). Raises ValueError when the bytes do not tile into whole records."""
    return [n for n, _ in frames(io.BytesIO(data), payloads=False, check_crc=False, size=len(data))]


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
    """Yields the payloads of a TFRecord stream, checking both CRCs of every record; errors name the stream."""
    stream = gzip.GzipFile(fileobj=fileobj, mode="rb") if compression == "GZIP" else fileobj
    try:
        for _, payload in frames(stream):
            yield payload
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
