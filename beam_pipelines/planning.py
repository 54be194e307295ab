"""Planning the dataset job, in the launcher before any worker starts: the split of inputs and
examples, the work items, and the size the dataset will take, for the job's `DatasetOptions`
(`beam_pipelines.options`).

    make_plan -> Plan            the inputs listed and assigned to splits (speakers and noise files
                                 never cross splits), the examples per split (`split_counts`) and
                                 the work (`plan_work`: shards cut into chunks, handed out as
                                 `WorkItem`s that expand into `ChunkSpec`s on the workers)
    estimate_bytes               the finished dataset's size, from the same per-example sizing
                                 (`bytes_per_example`) that sizes the shards
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from typing import Sequence

from beam_pipelines import audio as audio_lib
from beam_pipelines import splits as splits_lib
from beam_pipelines.options import SOURCES, DatasetOptions
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import SPLITS, shard_name

LOG = logging.getLogger(__name__)
METADATA_BYTES = 1000  # serialized metadata and framing per record, for shard sizing (babble lists up to 6+ files)
# --- sizing ---------------------------------------------------------------------------------------

def bytes_per_example(config: SpectrogramConfig) -> int:
    """Bytes of one record in an uncompressed shard: four spectrograms (magnitude and phase of the
    mixture and of the clean voice) and METADATA_BYTES; sizes the shards and the estimate."""
    frames, bins = config.shape
    return 4 * frames * bins * config.bytes_per_value + METADATA_BYTES


def split_counts(num_examples: int, fractions: Sequence[float]) -> dict[str, int]:
    """Examples per split: rounded shares of `num_examples`, test takes the remainder."""
    train = int(round(num_examples * fractions[0]))
    valid = int(round(num_examples * fractions[1]))
    return {"train": train, "valid": valid, "test": max(0, num_examples - train - valid)}


def estimate_bytes(num_examples: int, config: SpectrogramConfig, split_fractions: tuple[float, float, float],
                   write_audio: tuple[str, ...], compression: str) -> int:
    """Bytes the finished dataset will take: shards (uncompressed size, an upper bound with GZIP) plus
    the wav pairs of `write_audio` splits (float32)."""
    total = num_examples * bytes_per_example(config)
    counts = split_counts(num_examples, split_fractions)
    total += sum(counts.get(s, 0) for s in write_audio) * 2 * (config.window_samples * 4 + 44)
    return int(total)


# --- work items -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ChunkSpec:
    """`count` consecutive examples of a split, starting at example index `start`, that form part
    `chunk` of shard `shard` (of `num_shards`)."""

    split: str
    shard: int
    num_shards: int
    chunk: int
    num_chunks: int
    start: int
    count: int

    @property
    def shard_file(self) -> str:
        return shard_name(self.split, self.shard, self.num_shards)


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """Chunks `chunk_lo` to `chunk_hi` (exclusive) of one shard: the unit the launcher hands out.

    The shard holds `count` examples of `split` from example index `start`, cut into `num_chunks`
    chunks of at most `chunk_size`; `chunks()` expands the item on a worker, so the launcher never
    holds one record per chunk.
    """

    split: str
    shard: int
    num_shards: int
    start: int
    count: int
    chunk_size: int
    chunk_lo: int
    chunk_hi: int

    @property
    def num_chunks(self) -> int:
        return max(1, math.ceil(self.count / self.chunk_size))

    def chunks(self) -> list[ChunkSpec]:
        n = self.num_chunks
        base, extra = divmod(self.count, n)
        return [ChunkSpec(self.split, self.shard, self.num_shards, c, n,
                          self.start + c * base + min(c, extra), base + (1 if c < extra else 0))
                for c in range(self.chunk_lo, self.chunk_hi)]


# Work items the launcher hands out at most; above it, an item covers several chunks of a shard.
MAX_WORK_ITEMS = 20_000


def plan_work(counts: dict[str, int], config: SpectrogramConfig, max_shard_bytes: int, chunk_size: int,
              max_items: int = MAX_WORK_ITEMS) -> list[WorkItem]:
    """Shards of at most `max_shard_bytes`, as even as possible, each cut into chunks of at most
    `chunk_size` examples (the unit of parallel work), handed out as at most about `max_items` work
    items: one chunk each for up to `max_items` chunks, else runs of consecutive chunks of a shard.
    The size of the plan grows with the number of shards, not of examples."""
    if max_shard_bytes <= 0 or chunk_size <= 0:
        raise ValueError(f"shard size and chunk size must be positive. Received: {max_shard_bytes}, {chunk_size}")
    per_shard = max(1, max_shard_bytes // bytes_per_example(config))
    shards = []
    for split in SPLITS:
        n = counts.get(split, 0)
        if n == 0:
            continue
        num_shards = math.ceil(n / per_shard)
        base, extra = divmod(n, num_shards)
        start = 0
        for shard in range(num_shards):
            size = base + (1 if shard < extra else 0)
            shards.append((split, shard, num_shards, start, size))
            start += size
    total_chunks = sum(max(1, math.ceil(size / chunk_size)) for *_, size in shards)
    per_item = max(1, math.ceil(total_chunks / max_items))
    items = []
    for split, shard, num_shards, start, size in shards:
        num_chunks = max(1, math.ceil(size / chunk_size))
        for lo in range(0, num_chunks, per_item):
            items.append(WorkItem(split, shard, num_shards, start, size, chunk_size, lo, min(lo + per_item, num_chunks)))
    return items


def plan_chunks(counts: dict[str, int], config: SpectrogramConfig, max_shard_bytes: int,
                chunk_size: int) -> list[ChunkSpec]:
    """Every chunk of `plan_work`, in order (for small plans and tests)."""
    return [spec for item in plan_work(counts, config, max_shard_bytes, chunk_size) for spec in item.chunks()]


# --- the plan ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    voices: list[dict]  # {"file", "path", "group", "split"}
    noises: list[dict]
    work: list[WorkItem]  # grows with the number of shards, not of examples
    counts: dict[str, int]
    classes_source: str | list[str]
    # "voice:NAME" / "noise:NAME" / "rir:NAME" -> [size in bytes, modification time in ns] of every input file listed
    identities: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    rirs: list[dict] = dataclasses.field(default_factory=list)  # a source store's room impulse responses

    @property
    def num_chunks(self) -> int:
        return sum(item.chunk_hi - item.chunk_lo for item in self.work)

    def fingerprint(self, opts: DatasetOptions) -> str:
        """Everything the shards' bytes depend on: a build folder left with another fingerprint is
        not resumed.

        That includes each input file's content identity, its size and modification time (ns): a
        file replaced under the same name (another recording copied over it) changes them, so a
        resumed build never reuses audio decoded from the old file. Size and time cost one stat
        per file (one listing on a bucket), where a hash would read the whole corpus; they are what
        rsync and make trust, and a rewrite that keeps both (`cp -p` of a file of the same size) is
        the case they miss."""
        content = {"options": {k: v for k, v in dataclasses.asdict(opts).items()
                               if k not in ("output", "overwrite", "cache_bytes")},
                   "voices": self.voices, "noises": self.noises, "counts": self.counts,
                   "identities": self.identities}
        if self.rirs:
            content["rirs"] = self.rirs
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def corpus_tags(folders: Sequence[str]) -> list[str]:
    """One name per input folder, to keep files and speakers of several corpora apart: "" for a
    single folder (names as they always were), else the folder's base name (`train-clean-100`),
    numbered when two folders share one (`speech-1`, `speech-2`)."""
    if len(folders) == 1:
        return [""]
    names = [paths.basename(f) or f"corpus{i}" for i, f in enumerate(folders)]
    return [name if names.count(name) == 1 else f"{name}-{names[:i + 1].count(name)}" for i, name in enumerate(names)]


def _list_inputs(folders: Sequence[str], flag: str) -> tuple[list[tuple[str, str, str, str]], dict[str, list[int]]]:
    """(name, path, folder, path relative to folder) of every audio file of every folder, and each
    name's identity [size in bytes, modification time in ns]; a folder without audio is an error
    that names it."""
    found, identities = [], {}
    for tag, folder in zip(corpus_tags(folders), folders):
        files = audio_lib.list_audio_identities(folder)
        if not files:
            role = {"--voice-dir": "voice", "--noise-dir": "noise"}.get(flag, "room impulse response")
            raise ValueError(f"No {role} audio (wav, flac, ogg) found under {flag} {folder!r}.")
        for rel, identity in files.items():
            name = f"{tag}/{rel}" if tag else rel
            found.append((name, paths.join(folder, rel), folder, rel))
            identities[name] = list(identity)
    return found, identities


def _class_table(opts: DatasetOptions, noise_dir: str) -> tuple[dict[str, str], str]:
    if opts.noise_classes_file:
        if not paths.isfile(opts.noise_classes_file):
            raise FileNotFoundError(f"--noise-classes file not found: {opts.noise_classes_file!r}")
        return splits_lib.read_class_table(paths.read_text(opts.noise_classes_file)), opts.noise_classes_file
    return splits_lib.find_class_table(noise_dir) or ({}, "parent folder")


def make_plan(opts: DatasetOptions) -> Plan:
    """Lists the inputs, assigns speakers and noise files to splits and cuts the work into chunks.

    Fails at once, with the folder named, when a voice or noise folder holds no audio file.
    """
    voice_inputs, voice_identities = _list_inputs(opts.voice_dirs, "--voice-dir")
    noise_inputs, noise_identities = _list_inputs(opts.noise_dirs, "--noise-dir")
    tags = dict(zip(opts.voice_dirs, corpus_tags(opts.voice_dirs)))
    tables = {folder: _class_table(opts, folder) for folder in opts.noise_dirs}
    classes_source = [tables[f][1] for f in opts.noise_dirs]
    if len(classes_source) == 1:
        classes_source = classes_source[0]
    voice_files = [name for name, *_ in voice_inputs]
    noise_files = [name for name, *_ in noise_inputs]
    file_paths = {name: path for name, path, *_ in voice_inputs + noise_inputs}
    speakers = {name: (f"{tags[folder]}:" if tags[folder] else "") + splits_lib.speaker_of(rel)
                for name, _, folder, rel in voice_inputs}
    classes = {name: splits_lib.noise_class_of(rel, tables[folder][0]) for name, _, folder, rel in noise_inputs}
    if opts.splits_file:
        given = json.loads(paths.read_text(opts.splits_file))
        voice_split, noise_split = _given_splits(given, voice_files, noise_files, opts.splits_file)
    else:
        speaker_split = splits_lib.assign_groups(speakers.values(), opts.split_fractions, salt="voice")
        voice_split = {f: speaker_split[speakers[f]] for f in voice_files}
        noise_split = splits_lib.assign_groups(noise_files, opts.split_fractions, salt="noise", strata=classes)

    if opts.kind == SOURCES:  # a store holds sources for every split with a share; no examples are planned
        counts = {split: int(share > 0) for split, share in zip(SPLITS, opts.split_fractions)}
    else:
        counts = split_counts(opts.num_examples, opts.split_fractions)
    for split, n in counts.items():
        needs = "needs sources" if opts.kind == SOURCES else f"needs {n} examples"
        if n and not any(s == split for s in voice_split.values()):
            raise ValueError(f"Split {split!r} {needs} but has no speaker: {len(set(speakers.values()))} "
                             "speakers cannot cover three splits. Add speakers, or set --split-fractions.")
        if n and not any(s == split for s in noise_split.values()):
            raise ValueError(f"Split {split!r} {needs} but has no noise file: add noise files, "
                             "or set --split-fractions.")
    work = [] if opts.kind == SOURCES else plan_work(counts, opts.config, opts.max_shard_bytes, opts.chunk_size)
    voices = [{"file": f, "path": file_paths[f], "group": speakers[f], "split": voice_split[f]}
              for f in voice_files if voice_split.get(f)]
    noises = [{"file": f, "path": file_paths[f], "group": classes[f], "split": noise_split[f]}
              for f in noise_files if noise_split.get(f)]
    identities = {"voice:" + f: v for f, v in voice_identities.items()}
    identities.update({"noise:" + f: v for f, v in noise_identities.items()})
    rirs = _plan_rirs(opts, given if opts.splits_file else None, identities)
    return Plan(voices, noises, work, counts, classes_source, identities, rirs)


def _plan_rirs(opts: DatasetOptions, given: dict | None, identities: dict[str, list[int]]) -> list[dict]:
    """The room impulse responses of `opts.rir_dirs` assigned to splits by file, as noise files are (from
    the splits file's "rirs" when it has them); adds their identities ("rir:NAME") to `identities`."""
    if not opts.rir_dirs:
        return []
    inputs, found = _list_inputs(opts.rir_dirs, "--rir-dir")
    files = [name for name, *_ in inputs]
    if given is not None and "rirs" in given:
        split_of = {f: given["rirs"][f] for f in files if f in given["rirs"]}
    else:
        split_of = splits_lib.assign_groups(files, opts.split_fractions, salt="rir")
    identities.update({"rir:" + f: v for f, v in found.items()})
    return [{"file": name, "path": path, "group": "rir", "split": split_of[name]}
            for name, path, *_ in inputs if split_of.get(name)]


def _given_splits(given: dict, voice_files: list[str], noise_files: list[str], where: str):
    """Splits from a file in the format this job writes (splits.json): {"voices": {file: split}, "noises": {...}}."""
    if not isinstance(given, dict) or "voices" not in given or "noises" not in given:
        raise ValueError(f"{where}: a splits file holds {{\"voices\": {{file: split}}, \"noises\": {{file: split}}}}, "
                         "as written by this job into splits.json")
    for role in ("voices", "noises"):
        bad = sorted({s for s in given[role].values() if s not in SPLITS})
        if bad:
            raise ValueError(f"{where}: unknown split names {bad} under {role!r}; use {SPLITS}")
    voice_split = {f: given["voices"][f] for f in voice_files if f in given["voices"]}
    noise_split = {f: given["noises"][f] for f in noise_files if f in given["noises"]}
    LOG.info("splits from %s: %d of %d voice files and %d of %d noise files listed", where,
             len(voice_split), len(voice_files), len(noise_split), len(noise_files))
    return voice_split, noise_split
