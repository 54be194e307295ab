"""The source store: shards of source segments (clean speech, noise, room impulse responses) as 16-bit
PCM, mixed into examples on the fly (`mixing.on_the_fly`) instead of being mixed once by the job.

    store = SourceStore.open("data/sources")       # reads and checks dataset_info.json ("kind": "sources")
    store.sample_rate                              # Hz, of every segment
    store.segments("train")                        # [Segment]: metadata of every segment, no audio
    store.audio(segment)                           # float32 [samples] of one segment (its shard is read once)

One record is one segment: a whole usable input file, decoded, mixed down to mono, resampled to the
store's rate and quantised to 16 bits (`to_pcm16`; a 16-bit file at the store's rate is stored
exactly), with its metadata (`SEGMENT_FEATURES`). A segment's samples read back as `pcm16 / 32768`,
as soundfile reads a 16-bit file, so mixing from the store and mixing from the files agree.

The store is the second kind of `tfrecord_schema.dataset.ShardedStore`: the same info file name, split
and shard entries, indexes, size checks, `verify`, `records` and fingerprint as the spectrogram
`Dataset`; `open_store` opens either kind from its info file's "kind".
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Mapping

import numpy as np

from tfrecord_schema import paths, wire
from tfrecord_schema.dataset import Dataset, ShardedStore
from tfrecord_schema.dataset_info import INFO_FILE, SOURCES_KIND, SPLITS, SplitInfo

KIND = SOURCES_KIND
SOURCES_SCHEMA_VERSION = 1
RATES = (8000, 16000, 24000, 32000, 48000)  # Hz a source store may hold
ROLES = ("voice", "noise", "rir")
PCM_SCALE = 32768.0  # full scale of 16-bit PCM, as soundfile reads it

# name -> kind; "bytes" values are UTF-8 strings except "pcm16" (little-endian int16 samples).
SEGMENT_FEATURES: dict[str, str] = {
    "pcm16": "bytes",
    "num_samples": "int",
    "sample_rate": "int",  # Hz
    "role": "bytes",  # voice | noise | rir
    "corpus": "bytes",  # the input folder's tag (its base name); "" for a single folder
    "file": "bytes",  # path relative to its input folder (TAG/path with several folders, as the dataset job names it)
    "group": "bytes",  # speaker id (voices), noise class (noises), "rir" (room impulse responses)
    "utterance": "bytes",  # the file's name without folder and extension
    "split": "bytes",  # train | valid | test
    "offset": "int",  # first sample of the segment in the file, at `sample_rate`
    "active_level_dbfs": "float",  # voices: active speech level (mixing.levels.active_level); others: RMS level
    "schema_version": "int",
}


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment's metadata, and where its record is: (shard file, record number)."""

    role: str
    file: str
    group: str
    split: str
    num_samples: int
    sample_rate: int
    corpus: str = ""
    utterance: str = ""
    offset: int = 0
    active_level_dbfs: float = 0.0
    shard: str = ""
    record: int = 0

    @property
    def key(self) -> str:
        """Where the segment's samples are: "SHARD#RECORD"."""
        return f"{self.shard}#{self.record}"

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 samples (full scale 1.0) -> int16, rounded to the nearest step and clipped."""
    return np.clip(np.rint(np.asarray(samples, np.float64) * PCM_SCALE), -32768, 32767).astype("<i2")


def from_pcm16(data: bytes | np.ndarray) -> np.ndarray:
    """16-bit PCM (bytes or int16) -> float32 samples, `pcm / 32768` as soundfile reads them."""
    pcm = np.frombuffer(data, "<i2") if isinstance(data, (bytes, bytearray, memoryview)) else data
    return pcm.astype(np.float32) / np.float32(PCM_SCALE)


def encode_segment(samples: np.ndarray, segment: Segment) -> bytes:
    """One record: `samples` (float32 [samples], quantised by `to_pcm16`) and `segment`'s metadata."""
    if samples.ndim != 1 or samples.shape[0] != segment.num_samples:
        raise ValueError(f"encode_segment(): {segment.file} has {samples.shape} samples, its segment says "
                         f"num_samples={segment.num_samples}")
    if segment.role not in ROLES:
        raise ValueError(f"encode_segment(): role must be one of {ROLES}. Received: role={segment.role!r}")
    values = {"pcm16": to_pcm16(samples).tobytes(), "schema_version": SOURCES_SCHEMA_VERSION,
              **{k: getattr(segment, k) for k in SEGMENT_FEATURES if k not in ("pcm16", "schema_version")}}
    features = {}
    for key, kind in SEGMENT_FEATURES.items():
        value = values[key]
        if kind == "bytes":
            value = value if key == "pcm16" else str(value).encode("utf-8")
        features[key] = wire.feature(kind, [value])
    return wire.message(features)


def decode_segment(record: bytes, shard: str = "", number: int = 0) -> tuple[Segment, bytes]:
    """(the segment's metadata, its 16-bit PCM bytes) from one record. ValueError when the record is
    not a source segment of this schema version or its samples do not match its count."""
    raw = wire.parse_message(record)
    version = raw.get("schema_version", [None])[0]
    if version != SOURCES_SCHEMA_VERSION:
        raise ValueError(f"record {number}: source segment schema version {version!r}, this toolkit reads "
                         f"{SOURCES_SCHEMA_VERSION}")
    missing = [k for k in SEGMENT_FEATURES if k not in raw]
    if missing:
        raise ValueError(f"record {number}: not a source segment (missing {missing})")
    values = {k: (raw[k][0].decode("utf-8") if kind == "bytes" and k != "pcm16" else raw[k][0])
              for k, kind in SEGMENT_FEATURES.items()}
    pcm = values.pop("pcm16")
    values.pop("schema_version")
    segment = Segment(**values, shard=shard, record=number)
    if len(pcm) != 2 * segment.num_samples:
        raise ValueError(f"record {number} ({segment.file}): {len(pcm)} bytes of samples, not 2 x "
                         f"{segment.num_samples}")
    return segment, pcm


@dataclasses.dataclass(frozen=True)
class SourcesInfo:
    """The info file of a source store (dataset_info.json with "kind": "sources"): sample rate, splits
    and their shards (a split's `num_examples` counts its segments), per split and role the segments,
    hours and groups, the build's arguments, inputs and rejects."""

    sample_rate: int
    splits: dict[str, Any]
    kind: str = KIND
    schema_version: int = SOURCES_SCHEMA_VERSION
    name: str | None = None
    compression: str = ""
    arguments: dict[str, Any] | None = None
    contents: dict[str, Any] | None = None  # split -> role -> {"segments", "hours", "groups": {group: hours}}
    sources: dict[str, Any] | None = None
    rejects: dict[str, Any] | None = None
    build_seconds: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    _ORDER = ("name", "kind", "schema_version", "sample_rate", "compression", "arguments", "splits", "contents",
              "sources", "rejects", "build_seconds")

    def __post_init__(self) -> None:
        if self.sample_rate not in RATES:
            raise ValueError(f"A source store's sample_rate is one of {RATES} Hz. Received: sample_rate={self.sample_rate!r}")
        object.__setattr__(self, "splits", {name: entry.to_dict() if isinstance(entry, SplitInfo) else entry
                                            for name, entry in self.splits.items()})
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"SourcesInfo.splits names unknown splits {unknown}; split names are {SPLITS}.")

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self._ORDER if getattr(self, key) is not None}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = INFO_FILE) -> "SourcesInfo":
        if not isinstance(values, Mapping) or values.get("kind") != KIND:
            raise ValueError(f"{where} does not describe a source store (no \"kind\": \"{KIND}\"); it was not "
                             "written by `speech-enhance dataset --kind sources`.")
        if values.get("schema_version") != SOURCES_SCHEMA_VERSION:
            raise ValueError(f"{where} was written with source store schema version {values.get('schema_version')!r}, "
                             f"but this toolkit reads version {SOURCES_SCHEMA_VERSION}. Rebuild the store with "
                             "`speech-enhance dataset --kind sources`.")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def write(self, directory: str) -> str:
        path = paths.join(os.fspath(directory), INFO_FILE)
        paths.write_atomic(path, json.dumps(self.to_dict(), indent=1).encode("utf-8"))
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "SourcesInfo":
        return cls.from_dict(read_info(directory), where=paths.join(os.fspath(directory), INFO_FILE))


def read_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON of `directory/dataset_info.json` (FileNotFoundError, ValueError as `DatasetInfo.read`)."""
    directory = os.fspath(directory)
    path = paths.join(directory, INFO_FILE)
    if not paths.isfile(path):
        raise FileNotFoundError(
            f"{directory!r} holds no {INFO_FILE}: it is not a dataset directory (or an unfinished one). Build "
            "one with `speech-enhance dataset --output DIR` (or `make dataset`) and pass that DIR.")
    try:
        return json.loads(paths.read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); was the dataset job interrupted? Rebuild it.") from err


class SourceStore(ShardedStore):
    """A source store: shards of source segments and their info file (see the module docstring)."""

    kind: ClassVar[str] = KIND
    info_type = SourcesInfo
    info: SourcesInfo

    def __init__(self, directory: str | os.PathLike, info: SourcesInfo) -> None:
        super().__init__(directory, info)
        self._segments: dict[str, list[Segment]] = {}
        self._pcm: dict[str, bytes] = {}

    @property
    def sample_rate(self) -> int:
        return int(self.info.sample_rate)

    def check_record(self, record: bytes) -> str | None:
        segment, _ = decode_segment(record)
        if segment.sample_rate != self.sample_rate:
            return f"{segment.file} is at {segment.sample_rate} Hz, the store at {self.sample_rate} Hz"
        return None

    def flagged_records(self, flagged: list[str], count: int) -> str:
        return f"{len(flagged)} of {count} segments are damaged (first: {flagged[0]})"

    def segments(self, split: str, role: str | None = None) -> list[Segment]:
        """Every segment of `split` (of `role` when given), in shard and record order. The first call for
        a split reads its shards once and keeps their samples as 16-bit PCM (2 bytes a sample)."""
        if split not in self._segments:
            self._segments[split] = self._load(split)
        return [s for s in self._segments[split] if role is None or s.role == role]

    def audio(self, segment: Segment) -> np.ndarray:
        """float32 [samples] of `segment` (one of `segments()`)."""
        if segment.split not in self._segments:
            self.segments(segment.split)
        return from_pcm16(self._pcm[segment.key])

    def get(self, key: str) -> np.ndarray:
        """float32 [samples] of the segment whose `key` is given (the mixer's audio source)."""
        return from_pcm16(self._pcm[key])

    def _load(self, split: str) -> list[Segment]:
        found = []
        for shard in self.split(split).shards:
            path = self.path(shard.file)
            for number, record in enumerate(self.shard_records(path)):
                try:
                    segment, pcm = decode_segment(record, shard.file, number)
                except ValueError as err:
                    raise ValueError(f"{path}: {err}. Check the store with `speech-enhance inspect --verify "
                                     f"{self.directory}`.") from err
                self._pcm[segment.key] = pcm
                found.append(segment)
        return found


def open_store(directory: str | os.PathLike) -> ShardedStore:
    """The store in `directory`, of the kind its info file names: a `SourceStore` or a spectrogram `Dataset`."""
    if read_info(directory).get("kind") == KIND:
        return SourceStore.open(directory)
    return Dataset.open(directory)
