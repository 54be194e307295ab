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
    index_dataset("data/demo")                  # indexes an existing dataset, updates dataset_info.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import struct
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from tfrecord_schema import paths
from tfrecord_schema.dataset_info import INFO_FILE, DatasetInfo, shard_files

LOG = logging.getLogger(__name__)
INDEX_SUFFIX = ".index"
INDEX_DTYPE = np.dtype("<u8")
ENTRY_BYTES = 2 * INDEX_DTYPE.itemsize  # one (offset, length) pair
FRAMING_BYTES = 16  # 8-byte length + 4-byte length CRC + 4-byte data CRC


def index_name(shard_file: str) -> str:
    """The index file's name (or path) for a shard's name (or path)."""
    return shard_file + INDEX_SUFFIX


def record_lengths(data: bytes | memoryview) -> list[int]:
    """Framed length of every record of an uncompressed TFRecord byte string (headers only; CRCs
    are not checked). Raises ValueError when the bytes do not tile into whole records."""
    view = memoryview(data)
    lengths, pos, end = [], 0, len(view)
    while pos < end:
        if end - pos < 12:
            raise ValueError(f"truncated TFRecord header at byte {pos} (record {len(lengths)})")
        (payload,) = struct.unpack_from("<Q", view, pos)
        framed = payload + FRAMING_BYTES
        if pos + framed > end:
            raise ValueError(f"record {len(lengths)} at byte {pos} claims {payload} bytes, past the end ({end} bytes)")
        lengths.append(framed)
        pos += framed
    return lengths


def index_from_lengths(lengths: Iterable[int], start: int = 0) -> np.ndarray:
    """[N, 2] uint64 (offset, length) of records of `lengths` laid end to end from byte `start`."""
    lengths = np.asarray(list(lengths), dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64) + np.uint64(start) \
        if lengths.size else np.zeros(0, np.uint64)
    return np.stack([offsets, lengths], axis=1).astype(INDEX_DTYPE) if lengths.size else np.zeros((0, 2), INDEX_DTYPE)


def build_index(data: bytes | memoryview) -> np.ndarray:
    """The index of a whole uncompressed shard held in memory."""
    return index_from_lengths(record_lengths(data))


def scan_index(fileobj: BinaryIO) -> np.ndarray:
    """The index of an uncompressed shard read from an open file, reading headers and seeking over
    payloads (a remote file is streamed once when its reader cannot seek cheaply)."""
    lengths, pos = [], 0
    while True:
        header = fileobj.read(12)
        if not header:
            break
        if len(header) < 12:
            raise ValueError(f"truncated TFRecord header at byte {pos} (record {len(lengths)})")
        (payload,) = struct.unpack("<Q", header[:8])
        fileobj.seek(payload + 4, os.SEEK_CUR)
        lengths.append(payload + FRAMING_BYTES)
        pos += payload + FRAMING_BYTES
    return index_from_lengths(lengths)


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


def shard_mismatch(shard_path: str, shard: dict[str, Any], dataset_dir: str, actual_size: int) -> str | None:
    """Why the shard file at `shard_path` is not the one dataset_info.json's entry `shard` describes
    (its size differs: replaced, swapped with another shard, cut short or extended), or None."""
    expected = shard.get("num_bytes")
    if expected is None or int(expected) == actual_size:
        return None
    return (f"{shard_path}: {actual_size} bytes, dataset_info.json says {int(expected)}: this is not the shard the "
            "dataset was built with (replaced, swapped with another shard, cut short or extended). No index can "
            "fix that: restore the shard as built, or build the dataset again; "
            f"`speech-enhance inspect --verify {dataset_dir}` checks every shard.")


def read_index(dataset_dir: str, shard: dict[str, Any]) -> np.ndarray:
    """The index of one shard entry of dataset_info.json. Raises ValueError when the dataset lists no
    index for it, FileNotFoundError when the file is missing, ValueError when its size differs."""
    if not shard.get("index"):
        raise ValueError(f"{dataset_dir}: shard {shard['file']} has no index in dataset_info.json. "
                         f"Write them with `speech-enhance index {dataset_dir}`.")
    path = paths.join(dataset_dir, shard["index"])
    if not paths.isfile(path):
        raise FileNotFoundError(f"{path}: the index listed in dataset_info.json is missing. Rewrite it with "
                                f"`speech-enhance index {dataset_dir}`.")
    data = paths.read_bytes(path)
    if shard.get("index_bytes") is not None and len(data) != int(shard["index_bytes"]):
        raise ValueError(f"{path}: {len(data)} bytes, dataset_info.json says {shard['index_bytes']}: the index is "
                         f"damaged. Rewrite it with `speech-enhance index {dataset_dir}`.")
    return from_bytes(data, path)


@contextlib.contextmanager
def _writing(path: str, dataset_dir: str) -> Iterator[None]:
    """Tells a read-only or forbidden dataset folder in one line (PermissionError) while writing `path`."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise PermissionError(
            f"{path}: cannot write ({os.strerror(err.errno)}): `speech-enhance index` writes the SHARD.index files "
            f"and dataset_info.json into the dataset folder {dataset_dir}. Copy the dataset to a writable place and "
            "index the copy, or read this one without indexes (the tf.data pipeline of `train --backend "
            "tensorflow` or `jax` needs none).") from err


def index_dataset(dataset_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Writes the index of every shard of an existing (uncompressed) dataset and lists them in its
    dataset_info.json (rewritten atomically, last). Shards already indexed are checked against
    their index and kept, unless `overwrite`. Returns the new dataset_info dict.

    Every shard is checked against dataset_info.json before it is indexed: a shard whose size or
    record count differs from its entry (replaced, swapped with another, truncated, with bytes
    appended) is refused by name, as an index of it would only hide the damage from the readers.

    Raises ValueError for a GZIP dataset (no random access into a gzip stream) and for a shard whose
    records do not match dataset_info.json.
    """
    dataset_dir = os.fspath(dataset_dir)
    info = DatasetInfo.read(dataset_dir)
    if info.compression:
        raise ValueError(f"{dataset_dir} is {info.compression}-compressed: its shards cannot be read at record "
                         "offsets, so they get no index. Rebuild it with compression='' (--compression none).")
    splits = {name: dict(entry) for name, entry in info.splits.items()}
    written = 0
    for split, entry in splits.items():
        shards = []
        for shard, path in zip(entry["shards"], shard_files(info, dataset_dir, split)):
            shard = dict(shard)
            name = index_name(shard["file"])
            index_path = paths.join(dataset_dir, name)
            if not paths.isfile(path):
                raise FileNotFoundError(f"{path}: the shard listed in dataset_info.json is missing. Restore it, "
                                        "or build the dataset again.")
            size = paths.size(path)
            mismatch = shard_mismatch(path, shard, dataset_dir, size)
            if mismatch:
                raise ValueError(mismatch)
            index = None
            if not overwrite and paths.isfile(index_path):
                try:
                    index = from_bytes(paths.read_bytes(index_path), index_path)
                    if check_index(index, size, shard.get("num_examples"), index_path):
                        index = None
                except ValueError:
                    index = None
            if index is None:
                with paths.open_read(path) as f:
                    try:
                        index = scan_index(f)
                    except ValueError as err:  # scan_index knows bytes, not files: name the shard
                        raise ValueError(f"{path}: {err}: the shard is damaged. Check it with "
                                         f"`speech-enhance inspect --verify {dataset_dir}`.") from err
                problems = check_index(index, size, shard.get("num_examples"), path)
                if problems:
                    raise ValueError("; ".join(problems) + ". Check it with `speech-enhance inspect --verify "
                                     f"{dataset_dir}`.")
                with _writing(index_path, dataset_dir):
                    paths.write_atomic(index_path, to_bytes(index))
                written += 1
            shard["index"], shard["index_bytes"] = name, len(index) * ENTRY_BYTES
            shards.append(shard)
        entry["shards"] = shards
    new = dataclasses.replace(info, splits=splits)
    if written or new.to_dict() != info.to_dict():
        with _writing(paths.join(dataset_dir, INFO_FILE), dataset_dir):
            new.write(dataset_dir)
    else:  # already indexed: nothing to write (so an indexed dataset on a read-only disk passes)
        LOG.info("%s: every shard already has a matching index", dataset_dir)
    LOG.info("indexed %s: %d index file(s) written", dataset_dir, written)
    return new.to_dict()
