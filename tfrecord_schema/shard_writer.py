"""Writing shards and their record indexes; each writer returns the shard's `ShardInfo`, the entry
dataset_info.json lists, so the entry is made in one place.

    with ShardWriter(directory, shard_name("train", 0, 2), compression) as writer:
        writer.write(record)                       # one serialized record (framed here)
    writer.shard                                   # ShardInfo(file, num_examples, num_bytes, index, index_bytes)
    index_shard(directory, shard)                  # the index of a shard already written
    index_dataset("data/demo")                     # indexes an existing dataset, updates dataset_info.json

A shard appears whole or not at all (written under a temporary name, then renamed); an uncompressed
shard's index (`tfrecord_schema.shard_index`) is written just before it, so a shard that exists has
its index (except one left by a build from before indexes existed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from typing import BinaryIO, Iterator

from tfrecord_schema import paths, shard_index
from tfrecord_schema.dataset import ShardedStore
from tfrecord_schema.dataset_info import INFO_FILE, ShardInfo
from tfrecord_schema.records import FRAMING_BYTES, RecordWriter, framed_lengths
from tfrecord_schema.sources import open_store

LOG = logging.getLogger(__name__)


class _Counted:
    """A write-only file object that counts the bytes written through it. It carries the final
    file's name, which a GZIP stream writes into its header."""

    def __init__(self, out: BinaryIO, name: str) -> None:
        self._out, self.name, self.bytes = out, name, 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


class ShardWriter:
    """Writes the shard `file` of `directory` (local or gs://): records one by one (`write`), or
    already framed bytes such as concatenated part files (`write_framed`; GZIP members concatenate
    too). `close()` writes the index of an uncompressed shard, renames the shard into place and
    sets `shard`, its entry."""

    def __init__(self, directory: str, file: str, compression: str = "") -> None:
        self.directory, self.file, self.compression = directory, file, compression
        self.path = paths.join(directory, file)
        self._raw, self._written = paths.open_write_atomic(self.path)
        self._out = _Counted(self._raw, self.path)
        self._records: RecordWriter | None = None  # made on the first record: a GZIP stream starts with its header
        self._lengths: list[int] = []
        self.shard: ShardInfo | None = None

    def write(self, record: bytes) -> None:
        if self._records is None:
            self._records = RecordWriter(self._out, self.compression)
        self._records.write(record)
        self._lengths.append(len(record) + FRAMING_BYTES)

    def write_framed(self, data: bytes) -> None:
        """Appends framed records (GZIP members when compressed) as they are."""
        if not self.compression:
            self._lengths += framed_lengths(data)
        self._out.write(data)

    def close(self, num_examples: int | None = None) -> ShardInfo:
        """Finishes the shard; returns its entry. `num_examples`: the records of a compressed shard
        written with `write_framed` (counted from the framing otherwise)."""
        if self.shard is not None:
            return self.shard
        if self._records is None and self._out.bytes == 0:
            self._records = RecordWriter(self._out, self.compression)  # no record: an empty stream of its kind
        if self._records is not None:
            self._records.close()
        self._raw.close()
        count = len(self._lengths) if not self.compression or num_examples is None else num_examples
        if num_examples is not None and num_examples != count:
            raise ValueError(f"{self.path}: {count} records written, {num_examples} expected")
        shard = ShardInfo(self.file, count, self._out.bytes)
        if not self.compression:
            shard = _write_index(self.directory, shard, shard_index.index_from_lengths(self._lengths))
        paths.finish_atomic(self._written, self.path)
        self.shard = shard
        return shard

    def abort(self) -> None:
        """Closes and removes what was written (an error while writing)."""
        self._raw.close()
        if self._written != self.path:
            paths.delete_files([self._written])

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _write_index(directory: str, shard: ShardInfo, index) -> ShardInfo:
    data = shard_index.to_bytes(index)
    name = shard_index.index_name(shard.file)
    paths.write_atomic(paths.join(directory, name), data)
    return dataclasses.replace(shard, index=name, index_bytes=len(data))


def index_shard(directory: str, shard: ShardInfo) -> ShardInfo:
    """Writes the index of the uncompressed shard `shard` of `directory`, read from the shard's
    headers; returns the entry with it. ValueError when the shard does not tile into records."""
    with paths.open_read(paths.join(directory, shard.file)) as f:
        index = shard_index.scan_index(f)
    return _write_index(directory, shard, index)


def _existing_index(dataset: ShardedStore, shard: ShardInfo, size: int) -> ShardInfo | None:
    """The entry of `shard` with its index, when an index file beside it matches the shard; else None."""
    name = shard_index.index_name(shard.file)
    path = paths.join(dataset.directory, name)
    if not paths.isfile(path):
        return None
    try:
        index = shard_index.from_bytes(paths.read_bytes(path), path)
    except ValueError:
        return None
    if shard_index.check_index(index, size, shard.num_examples, path):
        return None
    return dataclasses.replace(shard, index=name, index_bytes=len(index) * shard_index.ENTRY_BYTES)


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


def _indexed(dataset: ShardedStore, split: str, shard: ShardInfo, overwrite: bool) -> tuple[ShardInfo, bool]:
    """(the entry of `shard` with its index, whether the index was written)."""
    path = dataset.path(shard.file)
    if not paths.isfile(path):
        raise FileNotFoundError(f"{path}: the shard listed in {INFO_FILE} is missing. Restore it, "
                                "or build the dataset again.")
    size = paths.size(path)
    problem = dataset.check_size(split, shard, size)
    if problem is not None:
        raise ValueError(problem.not_as_built(dataset.directory))
    found = None if overwrite else _existing_index(dataset, shard, size)
    if found is not None:
        return found, False
    with paths.open_read(path) as f:
        try:
            index = shard_index.scan_index(f)
        except ValueError as err:  # scan_index knows bytes, not files: name the shard
            raise ValueError(f"{path}: {err}: the shard is damaged. Check it with "
                             f"`speech-enhance inspect --verify {dataset.directory}`.") from err
    problems = shard_index.check_index(index, size, shard.num_examples, path)
    if problems:
        raise ValueError("; ".join(problems) + f". Check it with `speech-enhance inspect --verify {dataset.directory}`.")
    with _writing(paths.join(dataset.directory, shard_index.index_name(shard.file)), dataset.directory):
        return _write_index(dataset.directory, shard, index), True


def index_dataset(dataset_dir: str | os.PathLike, overwrite: bool = False) -> ShardedStore:
    """Writes the index of every shard of an existing (uncompressed) dataset or source store
    (`tfrecord_schema.sources.open_store`) and lists them in its
    dataset_info.json (rewritten atomically, last). Shards already indexed are checked against
    their index and kept, unless `overwrite`. Returns the dataset as now described.

    Every shard is checked against dataset_info.json before it is indexed: a shard whose size or
    record count differs from its entry (replaced, swapped with another, truncated, with bytes
    appended) is refused by name, as an index of it would only hide the damage from the readers.

    Raises ValueError for a GZIP dataset (no random access into a gzip stream) and for a shard whose
    records do not match dataset_info.json.
    """
    dataset = open_store(dataset_dir)
    if dataset.compression:
        raise ValueError(f"{dataset.directory} is {dataset.compression}-compressed: its shards cannot be read at "
                         "record offsets, so they get no index. Rebuild it with compression='' (--compression none).")
    splits, written = {}, 0
    for name, split in dataset.splits.items():
        shards = []
        for shard in split.shards:
            entry, wrote = _indexed(dataset, name, shard, overwrite)
            shards.append(entry)
            written += wrote
        splits[name] = dataclasses.replace(split, shards=tuple(shards)).to_dict()
    info = dataclasses.replace(dataset.info, splits=splits)
    if written or info.to_dict() != dataset.info.to_dict():
        with _writing(paths.join(dataset.directory, INFO_FILE), dataset.directory):
            info.write(dataset.directory)
    else:  # already indexed: nothing to write (so an indexed dataset on a read-only disk passes)
        LOG.info("%s: every shard already has a matching index", dataset.directory)
    LOG.info("indexed %s: %d index file(s) written", dataset.directory, written)
    return type(dataset)(dataset.directory, info)
