"""Shard index files: where each record of a TFRecord shard starts, for random access without TensorFlow.

Beside each uncompressed shard `train.tfrecord-00000-of-00004` the dataset job writes
`train.tfrecord-00000-of-00004.index`, listed in dataset_info.json as the shard entry's "index"
(its file name) and "index_bytes" (its size). The format, fixed here only:

    little-endian uint64 pairs, one per record, in record order, nothing else:
        offset   byte offset of the record's framing (its 8-byte length) in the shard
        length   bytes of the whole framed record: 8 (length) + 4 (CRC) + payload + 4 (CRC)

so a shard of N records has a 16 * N byte index, records tile the shard (offset[i+1] =
offset[i] + length[i], the last one ends at the shard's size), and `numpy.fromfile(path, "<u8")
.reshape(-1, 2)` reads it. The pairs are the (offset, length) of PyPI `tfrecord`'s text index,
in binary. GZIP shards have no index (a gzip stream has no random access).

    index = build_index(shard_bytes)            # [N, 2] uint64 from a shard's bytes

The framing itself is `tfrecord_schema.records`'; `tfrecord_schema.shard_writer` writes indexes
beside new shards and into existing datasets (`index_dataset`).
"""

from __future__ import annotations

from typing import BinaryIO, Iterable

import numpy as np

from tfrecord_schema.records import FRAMING_BYTES, framed_lengths, frames

INDEX_SUFFIX = ".index"
INDEX_DTYPE = np.dtype("<u8")
ENTRY_BYTES = 2 * INDEX_DTYPE.itemsize  # one (offset, length) pair


def index_name(shard_file: str) -> str:
    """The index file's name (or path) for a shard's name (or path)."""
    return shard_file + INDEX_SUFFIX


def index_from_lengths(lengths: Iterable[int], start: int = 0) -> np.ndarray:
    """[N, 2] uint64 (offset, length) of records of `lengths` laid end to end from byte `start`."""
    lengths = np.asarray(list(lengths), dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64) + np.uint64(start) \
        if lengths.size else np.zeros(0, np.uint64)
    return np.stack([offsets, lengths], axis=1).astype(INDEX_DTYPE) if lengths.size else np.zeros((0, 2), INDEX_DTYPE)


def build_index(data: bytes | memoryview) -> np.ndarray:
    """The index of a whole uncompressed shard held in memory."""
    return index_from_lengths(framed_lengths(data))


def scan_index(fileobj: BinaryIO) -> np.ndarray:
    """The index of an uncompressed shard read from an open file, reading headers and seeking over
    payloads (a remote file is streamed once when its reader cannot seek cheaply)."""
    return index_from_lengths(n for n, _ in frames(fileobj, payloads=False, check_crc=False))


def to_bytes(index: np.ndarray) -> bytes:
    return np.ascontiguousarray(index, dtype=INDEX_DTYPE).tobytes()


def from_bytes(data: bytes, where: str = "index") -> np.ndarray:
    """[N, 2] uint64 from an index file's bytes; ValueError when its size is not whole entries."""
    if len(data) % ENTRY_BYTES:
        raise ValueError(f"{where}: {len(data)} bytes is not a whole number of {ENTRY_BYTES}-byte (offset, length) "
                         "entries: the index is damaged. Rewrite it with `speech-enhance index DATASET`.")
    return np.frombuffer(data, INDEX_DTYPE).reshape(-1, 2)


def check_index(index: np.ndarray, shard_size: int, num_examples: int | None, where: str) -> list[str]:
    """Problems of an index against its shard's size and record count (no record is read): entries
    must tile the shard exactly."""
    problems = []
    if num_examples is not None and len(index) != num_examples:
        problems.append(f"{where}: {len(index)} entries, dataset_info.json says {num_examples} records")
    if len(index):
        offsets, lengths = index[:, 0].astype(np.int64), index[:, 1].astype(np.int64)
        if offsets[0] != 0 or np.any(offsets[1:] != offsets[:-1] + lengths[:-1]) or np.any(lengths < FRAMING_BYTES):
            problems.append(f"{where}: offsets do not follow one another record after record")
        elif offsets[-1] + lengths[-1] != shard_size:
            problems.append(f"{where}: records end at byte {offsets[-1] + lengths[-1]}, the shard has {shard_size}")
    elif shard_size:
        problems.append(f"{where}: empty, but the shard holds {shard_size} bytes")
    return problems
