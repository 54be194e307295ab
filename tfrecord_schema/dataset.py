"""A dataset directory as one object: its info file, its splits and shards, their checks and records.

    dataset = Dataset.open("data/demo")            # reads and checks dataset_info.json
    dataset.config                                 # the SpectrogramConfig of its records
    dataset.splits["train"].shards[0]              # a ShardInfo: file, num_examples, num_bytes, index
    dataset.num_examples("valid"); dataset.shard_paths("train")
    dataset.check_sizes()                          # cheap: one problem per missing or resized shard
    dataset.verify()                               # reads every record, without TensorFlow
    for record in dataset.records("train"): ...    # serialized records, both CRCs checked
    dataset.fingerprint()                          # what makes the dataset itself, not where it is

Every reader asks this object (TFDS's `DatasetInfo` with its `SplitInfo`s, bound to a directory)
instead of passing dataset_info.json's dict beside the directory; shards are written by
`tfrecord_schema.shard_writer`, which returns each shard's `ShardInfo`.

Kinds of store. `ShardedStore` holds what any directory of TFRecord shards described by an info
file has: open, splits, shards and their paths, indexes, size checks, verification, records and
the fingerprint. `Dataset` is its "spectrogram" kind (the records of `tfrecord_schema.schema`).
A second kind (e.g. a directory of waveform-source shards, with its own info file and record
schema) is a second subclass: it sets `kind`, `info_type` (its info file's class, with `read`,
`to_dict`, `compression` and `splits` in this layout, and a "kind" key written in the file) and
`check_record` (what verification asks of one record), and inherits the rest.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from tfrecord_schema import paths, shard_index
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import INFO_FILE, DatasetInfo, ShardInfo, SplitInfo
from tfrecord_schema.records import FRAMING_BYTES, read_records
from tfrecord_schema.schema import decode

MAGNITUDE_KEYS = ("noisy_magnitude", "clean_magnitude")


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    """Something wrong with one shard or its index; `str()` is "PATH: WHAT"."""

    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclasses.dataclass(frozen=True)
class SizeProblem(ShardProblem):
    """A shard missing (`actual` None) or of another size than its entry says."""

    split: str = ""
    shard: ShardInfo | None = None
    actual: int | None = None

    @property
    def expected(self) -> int:
        return int(self.shard.num_bytes)

    def not_as_built(self, directory: str) -> str:
        """Why the file is not the shard the dataset was built with, for a reader that cannot use it."""
        return (f"{self.path}: {self.actual} bytes, {INFO_FILE} says {self.expected}: this is not the shard the "
                "dataset was built with (replaced, swapped with another shard, cut short or extended). No index can "
                "fix that: restore the shard as built, or build the dataset again; "
                f"`speech-enhance inspect --verify {directory}` checks every shard.")


def _size_problem(split: str, shard: ShardInfo, path: str, actual: int | None) -> SizeProblem | None:
    if actual is None:
        return SizeProblem(path, "missing", split, shard, None)
    if shard.num_bytes is None or actual == int(shard.num_bytes):
        return None
    how = "truncated" if actual < shard.num_bytes else "longer than written"
    return SizeProblem(path, f"{actual} bytes, {INFO_FILE} says {shard.num_bytes} ({how})", split, shard, actual)


def _size(path: str) -> int | None:
    try:
        return paths.size(path)
    except FileNotFoundError:
        return None


class ShardedStore:
    """A directory (local or gs://) of TFRecord shards and the info file that lists them (the parts
    every kind of store shares; see the module docstring)."""

    kind: ClassVar[str] = ""
    info_type: ClassVar[type] = DatasetInfo

    def __init__(self, directory: str | os.PathLike, info: Any) -> None:
        self.directory = os.fspath(directory)
        self.info = info
        self.splits: dict[str, SplitInfo] = {name: SplitInfo.from_dict(name, entry)
                                             for name, entry in info.splits.items()}

    @classmethod
    def open(cls, directory: str | os.PathLike):
        """Reads and checks the info file of `directory` (see `DatasetInfo.read` for the errors)."""
        return cls(directory, cls.info_type.read(directory))

    @property
    def compression(self) -> str:
        return self.info.compression

    def split(self, name: str) -> SplitInfo:
        """The split `name`; ValueError naming the splits there are when it has none."""
        if name not in self.splits:
            raise ValueError(f"The dataset in {self.directory} has no split {name!r}. It has: {sorted(self.splits)}")
        return self.splits[name]

    def num_examples(self, split: str) -> int:
        """Records in `split` according to the info file (0 when the split is absent)."""
        return int(self.splits[split].num_examples) if split in self.splits else 0

    def path(self, file: str) -> str:
        """The path (local or gs://) of a file named relative to the directory."""
        return f"{self.directory.rstrip('/')}/{file}"

    def shard_paths(self, split: str) -> list[str]:
        """Paths (local or gs://) of a split's shards, in order."""
        return [self.path(shard.file) for shard in self.split(split).shards]

    def index_path(self, shard: ShardInfo) -> str | None:
        """The path of a shard's record index; None when the info file lists none."""
        return self.path(shard.index) if shard.index else None

    def read_index(self, shard: ShardInfo) -> np.ndarray:
        """[N, 2] uint64 (offset, length) of a shard's records, from its index file. Raises
        ValueError when none is listed or its size differs from the entry, FileNotFoundError when missing."""
        if not shard.index:
            raise ValueError(f"{self.directory}: shard {shard.file} has no index in {INFO_FILE}. "
                             f"Write them with `speech-enhance index {self.directory}`.")
        path = paths.join(self.directory, shard.index)
        if not paths.isfile(path):
            raise FileNotFoundError(f"{path}: the index listed in {INFO_FILE} is missing. Rewrite it with "
                                    f"`speech-enhance index {self.directory}`.")
        data = paths.read_bytes(path)
        if shard.index_bytes is not None and len(data) != int(shard.index_bytes):
            raise ValueError(f"{path}: {len(data)} bytes, {INFO_FILE} says {shard.index_bytes}: the index is "
                             f"damaged. Rewrite it with `speech-enhance index {self.directory}`.")
        return shard_index.from_bytes(data, path)

    def shards(self, splits: Sequence[str] | None = None) -> list[tuple[str, ShardInfo, str]]:
        """(split, shard, path) of every shard of `splits` (default: all), in order."""
        names = list(self.splits) if splits is None else list(splits)
        return [(split, shard, self.path(shard.file)) for split in names for shard in self.split(split).shards]

    def check_sizes(self, splits: Sequence[str] | None = None) -> list[SizeProblem]:
        """The size check: one problem per shard of `splits` (default: all) that is missing or whose size
        differs from its entry (cheap: no record is read; shards without a recorded size pass). Sizes
        are read in parallel: on gs:// each one is a request. Callers decide whether to raise."""
        found = self.shards(splits)
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            sizes = list(pool.map(_size, [path for _, _, path in found]))
        problems = [_size_problem(split, shard, path, size) for (split, shard, path), size in zip(found, sizes)]
        return [p for p in problems if p is not None]

    def check_size(self, split: str, shard: ShardInfo, size: int | None = None) -> SizeProblem | None:
        """`check_sizes` for one shard; `size`: its size in bytes when already known."""
        path = self.path(shard.file)
        return _size_problem(split, shard, path, _size(path) if size is None else size)

    def shard_records(self, path: str) -> Iterator[bytes]:
        """The serialized records of the shard at `path`, both CRCs checked (ValueError naming the shard)."""
        with paths.open_read(path) as f:
            yield from read_records(f, self.compression, name=path)

    def records(self, split: str) -> Iterator[bytes]:
        """The serialized records of `split`, shard by shard, in order (no TensorFlow)."""
        return itertools.chain.from_iterable(self.shard_records(path) for path in self.shard_paths(split))

    def check_record(self, record: bytes) -> str | None:
        """What is wrong with one record's contents (the kind's schema): None when nothing; raises
        ValueError for a record that cannot be decoded."""
        raise NotImplementedError

    def verify(self, splits: Sequence[str] | None = None) -> tuple[list[ShardProblem], int]:
        """Reads every record of every shard of `splits` (default: all): the sizes, both CRCs, the
        record schema (`check_record`), the per-shard counts, and each shard's record index (when
        listed) against the records as read. The one finder of corrupt shards; no TensorFlow.

        Returns (one problem per damaged shard or index, records read).
        """
        problems: list[ShardProblem] = list(self.check_sizes(splits))
        damaged = {p.path for p in problems}
        records = 0
        for _, shard, path in self.shards(splits):
            if path in damaged:
                continue
            found = self._verify_shard(shard, path)
            if isinstance(found, int):
                records += found
            else:
                problems.extend(found)
        return problems, records

    def _verify_shard(self, shard: ShardInfo, path: str) -> int | list[ShardProblem]:
        """Records of a healthy shard, else its problems."""
        count, lengths, flagged = 0, [], []
        try:
            for record in self.shard_records(path):
                what = self.check_record(record)
                if what is not None:
                    flagged.append(what)
                lengths.append(len(record) + FRAMING_BYTES)
                count += 1
        except (ValueError, OSError, EOFError) as err:
            text = str(err)
            return [ShardProblem(path, text.removeprefix(f"{path}: ") if path in text else f"record {count}: {text}")]
        problems = [ShardProblem(path, self.flagged_records(flagged, count))] if flagged else []
        if count != shard.num_examples:
            problems.append(ShardProblem(path, f"{count} records, {INFO_FILE} says {shard.num_examples}"))
        if shard.index:
            problems.extend(self._check_index(shard, lengths))
        return problems or count

    def flagged_records(self, flagged: list[str], count: int) -> str:
        """The problem of a shard some of whose `count` records `check_record` flagged."""
        return f"{len(flagged)} of {count} records: {flagged[0]}"

    def _check_index(self, shard: ShardInfo, lengths: list[int]) -> list[ShardProblem]:
        """Problems of a shard's index against the framed lengths of the records read from the shard."""
        index_path = self.index_path(shard)
        try:
            index = self.read_index(shard)
        except (ValueError, FileNotFoundError) as err:
            text = str(err)
            return [ShardProblem(index_path, text.removeprefix(f"{index_path}: "))]
        expected = shard_index.index_from_lengths(lengths)
        if index.shape != expected.shape:
            return [ShardProblem(index_path, f"{len(index)} entries, the shard holds {len(expected)} records")]
        wrong = [int(i) for i in (index != expected).any(axis=1).nonzero()[0]]
        if wrong:
            first = wrong[0]
            return [ShardProblem(index_path, (
                f"{len(wrong)} entries do not match the records read (first: record {first}, index says offset "
                f"{int(index[first, 0])} length {int(index[first, 1])}, the shard has offset "
                f"{int(expected[first, 0])} length {int(expected[first, 1])}). Rewrite the index with "
                f"`speech-enhance index --overwrite {self.directory}`."))]
        return []

    def fingerprint(self) -> str:
        """A short hash of what makes the dataset itself, read from its info file.

        It covers the schema, spectrogram config, compression, seed, the build arguments and sources,
        and every split's shard list (file, examples, bytes); not the directory, so a copy of a
        dataset (local or gs://) has the same fingerprint and a rebuilt or different one does not.
        """
        info = self.info.to_dict()
        identity = {
            "schema_version": info.get("schema_version"),
            "spectrogram": info.get("spectrogram"),
            "compression": info.get("compression", ""),
            "seed": info.get("seed"),
            "arguments": info.get("arguments"),
            "sources": info.get("sources"),
            "splits": {split: [[s.get("file"), s.get("num_examples"), s.get("num_bytes")] for s in entry["shards"]]
                       for split, entry in sorted(info["splits"].items())},
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class Dataset(ShardedStore):
    """A spectrogram dataset: shards of `tfrecord_schema.schema` records and its dataset_info.json."""

    kind = "spectrogram"
    info_type = DatasetInfo
    info: DatasetInfo

    @property
    def config(self) -> SpectrogramConfig:
        return self.info.spectrogram

    def check_record(self, record: bytes) -> str | None:
        # Readable records with nothing in them: the mixture level underflowed the store's dtype (a
        # dataset built before `--loudness-dbfs` was checked against it).
        example = decode(record)
        if not all(np.any(example[key]) for key in MAGNITUDE_KEYS):
            return example["example_id"]
        return None

    def flagged_records(self, flagged: list[str], count: int) -> str:
        return (f"{len(flagged)} of {count} examples hold an all-zero magnitude spectrogram (first: {flagged[0]}); "
                f"their audio underflowed {self.config.dtype}. Rebuild with a louder --loudness-dbfs.")

    def examples(self, split: str, count: int) -> list[dict[str, Any]]:
        """The first `count` decoded examples of `split` (fewer when it holds fewer; none when absent)."""
        if split not in self.splits:
            return []
        return [decode(record) for record in itertools.islice(self.records(split), count)]
