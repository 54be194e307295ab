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

import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import SCHEMA_VERSION, check_schema_version

INFO_FILE = "dataset_info.json"
# The split names, in the order the job assigns and writes them.
SPLITS = ("train", "valid", "test")
_REQUIRED = ("schema_version", "spectrogram", "splits")


def shard_name(split: str, index: int, count: int) -> str:
    """TFDS-style shard file name, e.g. `train.tfrecord-00003-of-00016`."""
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset directory holds: spectrogram config, schema version, splits and their shards,
    seed, build arguments, sources, rejects and statistics.

    Optional fields left as None are not written. Keys this version does not know are kept in
    `extra` and written back after the known ones.
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

    def shard_files(self, directory: str, split: str) -> list[str]:
        """Paths (local or gs://) of a split's shards in `directory`, in order."""
        return shard_files(self, directory, split)


def parse_dataset_info(text: str, where: str = INFO_FILE) -> dict[str, Any]:
    """The checked dict of a `dataset_info.json`'s text (`DatasetInfo.from_json(...).to_dict()`)."""
    return DatasetInfo.from_json(text, where).to_dict()


def spectrogram_config(info: DatasetInfo | Mapping[str, Any]) -> SpectrogramConfig:
    """The SpectrogramConfig of a DatasetInfo or of its dict."""
    if isinstance(info, DatasetInfo):
        return info.spectrogram
    return SpectrogramConfig.from_dict(info["spectrogram"])


def shard_files(info: DatasetInfo | Mapping[str, Any], dataset_dir: str, split: str) -> list[str]:
    """Absolute paths (local or gs://) of a split's shards, in order; `info` is a DatasetInfo or its dict."""
    splits = info.splits if isinstance(info, DatasetInfo) else info["splits"]
    if split not in splits:
        raise ValueError(f"The dataset in {dataset_dir} has no split {split!r}. It has: {sorted(splits)}")
    base = dataset_dir.rstrip("/")
    return [f"{base}/{shard['file']}" for shard in splits[split]["shards"]]


def index_files(info: DatasetInfo | Mapping[str, Any], dataset_dir: str, split: str) -> list[str | None]:
    """Absolute paths of a split's shard indexes, in shard order; None for a shard listed without one."""
    splits = info.splits if isinstance(info, DatasetInfo) else info["splits"]
    if split not in splits:
        raise ValueError(f"The dataset in {dataset_dir} has no split {split!r}. It has: {sorted(splits)}")
    base = dataset_dir.rstrip("/")
    return [f"{base}/{shard['index']}" if shard.get("index") else None for shard in splits[split]["shards"]]


def shard_sizes(info: DatasetInfo | Mapping[str, Any], dataset_dir: str,
                splits: Sequence[str]) -> list[tuple[str, dict[str, Any], str, int | None]]:
    """(split, shard entry, path, size on disk in bytes or None when missing) of every shard of
    `splits`, in order. Sizes are read in parallel: on gs:// each one is a request."""
    table = info.splits if isinstance(info, DatasetInfo) else info["splits"]
    shards = [(split, entry, path) for split in splits
              for entry, path in zip(table[split]["shards"], shard_files(info, dataset_dir, split))]

    def size(path: str) -> int | None:
        try:
            return paths.size(path)
        except FileNotFoundError:
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        sizes = list(pool.map(size, [path for _, _, path in shards]))
    return [(split, entry, path, actual) for (split, entry, path), actual in zip(shards, sizes)]
