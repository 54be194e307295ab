"""`dataset_info.json`: the description a dataset directory carries beside its shards.

`DatasetInfo` is the one object that writes this file and reads it back (TFDS's
`DatasetInfo.write_to_directory` / `read_from_directory`), so its format lives here only.

Layout (keys the readers rely on), in the order they are written:
    {
      "name": "ds",
      "schema_version": 1,
      "spectrogram": {...SpectrogramConfig.to_dict()...},
      "compression": "" | "GZIP",
      "seed": 0,
      "arguments": {...},
      "splits": {"train": {"num_examples": N, "num_bytes": B,
                           "shards": [{"file": "train.tfrecord-00000-of-00002",
                                       "num_examples": n, "num_bytes": b,
                                       "index": "train.tfrecord-00000-of-00002.index",
                                       "index_bytes": 16 * n}, ...],
                           "snr_db": {"min": ..., "mean": ..., "max": ...}},
                 "valid": {...}, "test": {...}},
      "histograms": {...}, "augmentation": {"options": {...}, "counts": {...}, "histograms": {...}},
      "silent_voice_windows_skipped": 0, "sources": {...}, "rejects": {...},
      "build_seconds": 1.2, "chunks_reused": 0
    }
Only `schema_version`, `spectrogram` and `splits` are required. Shard files are named relative to
the dataset directory. "index"/"index_bytes" name each uncompressed shard's record index and its size
(`tfrecord_schema.shard_index` holds the format); datasets built before indexes existed lack them
(`speech-enhance index DATASET` adds them).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import SCHEMA_VERSION, check_schema_version

INFO_FILE = "dataset_info.json"
SOURCES_KIND = "sources"  # the "kind" of a source store's info file (tfrecord_schema.sources), refused here
# The split names, in the order the job assigns and writes them.
SPLITS = ("train", "valid", "test")
_REQUIRED = ("schema_version", "spectrogram", "splits")


def shard_name(split: str, index: int, count: int) -> str:
    """TFDS-style shard file name, e.g. `train.tfrecord-00003-of-00016`."""
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard entry of a split in dataset_info.json: its file name (relative to the dataset
    directory), records, size in bytes, and for an uncompressed shard its record index's file name
    and size (None: not listed, as in a dataset built before indexes existed)."""

    file: str
    num_examples: int
    num_bytes: int | None = None
    index: str | None = None
    index_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry, keys in file order; None fields left out."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ShardInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split of dataset_info.json: its name, shards in order, and the statistics written beside
    them (`extra`, e.g. "snr_db"). `num_examples`/`num_bytes` are the sums over the shards unless given."""

    name: str
    shards: tuple[ShardInfo, ...]
    num_examples: int | None = None
    num_bytes: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(self.shards))
        if self.num_examples is None:
            object.__setattr__(self, "num_examples", sum(s.num_examples for s in self.shards))
        if self.num_bytes is None:
            object.__setattr__(self, "num_bytes", sum(s.num_bytes or 0 for s in self.shards))

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry: {"num_examples", "num_bytes", "shards": [...], **extra}."""
        return {"num_examples": self.num_examples, "num_bytes": self.num_bytes,
                "shards": [s.to_dict() for s in self.shards], **self.extra}

    @classmethod
    def from_dict(cls, name: str, values: Mapping[str, Any]) -> "SplitInfo":
        extra = {k: v for k, v in values.items() if k not in ("num_examples", "num_bytes", "shards")}
        return cls(name, tuple(ShardInfo.from_dict(s) for s in values.get("shards", ())),
                   values.get("num_examples"), values.get("num_bytes"), extra)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset directory holds: spectrogram config, schema version, splits and their shards,
    seed, build arguments, sources, rejects and statistics.

    Optional fields left as None are not written. Keys this version does not know are kept in
    `extra` and written back after the known ones. `splits` holds each split's JSON entry (given
    as a `SplitInfo` or its dict); `tfrecord_schema.dataset.Dataset` reads them as `SplitInfo`s.
    """

    spectrogram: SpectrogramConfig
    splits: dict[str, Any]
    schema_version: int = SCHEMA_VERSION
    name: str | None = None
    compression: str = ""
    seed: int | None = None
    arguments: dict[str, Any] | None = None
    histograms: dict[str, Any] | None = None
    augmentation: dict[str, Any] | None = None
    silent_voice_windows_skipped: int | None = None
    sources: dict[str, Any] | None = None
    rejects: dict[str, Any] | None = None
    build_seconds: float | None = None
    chunks_reused: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # The order of the keys in the file (kept as it always was).
    _ORDER = ("name", "schema_version", "spectrogram", "compression", "seed", "arguments", "splits", "histograms",
              "augmentation", "silent_voice_windows_skipped", "sources", "rejects", "build_seconds", "chunks_reused")

    def __post_init__(self) -> None:
        if not isinstance(self.spectrogram, SpectrogramConfig):
            raise ValueError("DatasetInfo.spectrogram must be a SpectrogramConfig. "
                             f"Received: spectrogram={self.spectrogram!r}")
        if not isinstance(self.splits, Mapping):
            raise ValueError(f"DatasetInfo.splits must be a dict of split name -> entry. Received: splits={self.splits!r}")
        # Entries given as SplitInfo are kept as the JSON they write.
        object.__setattr__(self, "splits", {name: entry.to_dict() if isinstance(entry, SplitInfo) else entry
                                            for name, entry in self.splits.items()})
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"DatasetInfo.splits names unknown splits {unknown}; split names are {SPLITS}.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict, keys in file order; None fields left out."""
        out: dict[str, Any] = {}
        for key in self._ORDER:
            value = getattr(self, key)
            if key == "spectrogram":
                value = value.to_dict()
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = INFO_FILE) -> "DatasetInfo":
        """Checks and parses a dict read from `dataset_info.json`; `where` names it in errors.

        Raises `SchemaVersionError` (a ValueError) for another schema version, ValueError for a
        file this toolkit did not write.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} does not hold a JSON object: it was not written by `speech-enhance dataset`.")
        if values.get("kind") == SOURCES_KIND:
            raise ValueError(
                f"{where} describes a source store (waveform segments, built with `speech-enhance dataset --kind "
                "sources`), not a spectrogram dataset. `speech-enhance train` mixes a source store into examples "
                "on the fly, and `inspect`, `inspect --verify` and `index` take it; in the library, open it with "
                "tfrecord_schema.sources.SourceStore.open or open_store. A reader of spectrogram records needs a "
                "dataset built without --kind sources.")
        for key in _REQUIRED:
            if key not in values:
                raise ValueError(f"{where} has no '{key}' entry: it was not written by `speech-enhance dataset`.")
        check_schema_version(values["schema_version"], where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        fields = {k: v for k, v in values.items() if k in known}
        fields["spectrogram"] = SpectrogramConfig.from_dict(values["spectrogram"])
        return cls(**fields, extra={k: v for k, v in values.items() if k not in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = INFO_FILE) -> "DatasetInfo":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err}); was the dataset job interrupted? Rebuild it.") from err
        return cls.from_dict(values, where)

    def write(self, directory: str) -> str:
        """Writes `directory/dataset_info.json` (local or gs://) atomically; returns its path."""
        path = paths.join(os.fspath(directory), INFO_FILE)
        paths.write_atomic(path, self.to_json().encode("utf-8"))
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "DatasetInfo":
        """Reads and checks `directory/dataset_info.json` (local or gs://).

        Raises FileNotFoundError when the directory holds no dataset_info.json, `SchemaVersionError`
        (a ValueError) when it was written under another schema version, ValueError when it is
        not a dataset_info.json this toolkit wrote.
        """
        directory = os.fspath(directory) if isinstance(directory, os.PathLike) else directory
        if not isinstance(directory, str) or not directory:
            raise ValueError(f"directory must be a non-empty path or gs:// URL. Received: directory={directory!r}")
        path = paths.join(directory, INFO_FILE)
        if not paths.isfile(path):
            raise FileNotFoundError(
                f"{directory!r} holds no {INFO_FILE}: it is not a dataset directory (or an unfinished one). Build "
                "one with `speech-enhance dataset --output DIR` (or `make dataset`) and pass that DIR.")
        return cls.from_json(paths.read_text(path), where=path)
