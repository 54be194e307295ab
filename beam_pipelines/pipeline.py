"""The dataset job: an Apache Beam pipeline that blends voices with noise and writes TFRecord shards.

Stages (each a labelled transform):
    DecodeVoices / DecodeNoises   read, downmix, resample, check; cache samples; one record per input,
                                  its `kind` "source" (usable) or "reject" (with a reason)
    WriteChunks                   generate the examples of each chunk into a part file
    AssembleShards                concatenate a shard's parts in order, write it atomically, with its
                                  record index (tfrecord_schema.shard_index) when uncompressed
    CheckSources                  name every split left without a usable voice or noise file
    Finalize                      dataset_info.json, splits.json, rejects.jsonl; remove scratch files

The graph uses only what every Beam runner supports (docs/dataset.md lists it): one output per
transform (a `kind` field, never tagged outputs), a single leaf (Finalize takes everything else as
side inputs), side-input producers that may run more than once (DecodeSource remembers what it
decoded), and counts taken from the data (dataset_info.json), not from Beam metrics. It runs locally
on FnApiRunner (multi-process), on Beam's DaskRunner (a dask.distributed cluster) and on Dataflow
(`--runner DataflowRunner --project ... --region ... --temp_location gs://... --setup_file ./setup.py`).
Only small records travel between stages; audio goes through scratch files, so memory stays flat as
the dataset grows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
import uuid
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines import audio as audio_lib
from beam_pipelines import augmentation as aug
from beam_pipelines import generation as gen
from beam_pipelines import output_layout as layout
from beam_pipelines import runners
from beam_pipelines import splits as splits_lib
from beam_pipelines.mixing import active_level, is_silent, rms
from tfrecord_schema import paths, shard_index, shard_writer
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import SPLITS, DatasetInfo, ShardInfo, SplitInfo, shard_name
from tfrecord_schema.records import RecordWriter
from tfrecord_schema.malloc import tune_malloc

LOG = logging.getLogger(__name__)
NAMESPACE = "speech_enhance.dataset"
WORK_DIR = "_work"
REJECTS_FILE = "rejects.jsonl"
SPLITS_FILE = "splits.json"
PROBLEMS_FILE = "_problems.json"
SOURCE, REJECT = "source", "reject"  # the kinds of DecodeSource's records
MIN_NOISE_SECONDS = 0.1
NOISE_SILENCE_RMS = 1e-4  # -80 dBFS


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """Everything the job needs besides Beam's own options.

    `voice_dir` and `noise_dir` are a folder each, or several (a tuple): e.g. LibriSpeech and another
    read-speech corpus. With several, files are named `TAG/relative path` and speaker ids `TAG:id`,
    TAG being the folder's base name, so that speakers of different corpora never merge.
    """

    voice_dir: str | tuple[str, ...]
    noise_dir: str | tuple[str, ...]
    output: str
    num_examples: int
    config: SpectrogramConfig = SpectrogramConfig()
    mix: gen.MixOptions = gen.MixOptions()
    augment: aug.AugmentOptions = aug.AugmentOptions()
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    splits_file: str | None = None
    noise_classes_file: str | None = None
    max_shard_bytes: int = 200 << 20
    chunk_size: int = 100
    compression: str = ""
    write_audio: tuple[str, ...] = ()
    overwrite: bool = False
    cache_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        for name in ("voice_dir", "noise_dir"):
            value = getattr(self, name)
            if not isinstance(value, str):
                value = tuple(str(v) for v in value)
                if not value:
                    raise ValueError(f"{name} needs at least one folder. Received: {name}=()")
                if len(set(value)) < len(value):
                    raise ValueError(f"{name} names a folder more than once. Received: {name}={value!r}")
                # One folder is given as itself: the same names, ids and dataset_info as ever.
                object.__setattr__(self, name, value[0] if len(value) == 1 else value)
        if self.num_examples <= 0:
            raise ValueError(f"num_examples must be positive. Received: num_examples={self.num_examples}")
        if self.max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive. Received: max_shard_bytes={self.max_shard_bytes}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive. Received: chunk_size={self.chunk_size}")
        self.augment.check_sample_rate(self.config.sample_rate)
        quietest = self.config.quietest_loudness_dbfs
        if self.mix.loudness_range_dbfs[0] < quietest:
            lo, hi = self.mix.loudness_range_dbfs
            raise ValueError(f"--loudness-dbfs {lo:g}:{hi:g} is too quiet for {self.config.dtype} spectrograms: below "
                             f"{quietest:.1f} dBFS the magnitudes underflow the store (all zeros, or below the "
                             f"{self.config.log_floor_db:g} dB floor the model clips to). Use LOW >= {quietest:.1f}, "
                             "e.g. -35:-15.")
        _check_distinct_folders({"voice_dir": self.voice_dirs, "noise_dir": self.noise_dirs})
        for split in self.write_audio:
            if split not in SPLITS:
                raise ValueError(f"write_audio takes split names from {SPLITS}. Received: write_audio={self.write_audio!r}")

    @property
    def voice_dirs(self) -> tuple[str, ...]:
        return (self.voice_dir,) if isinstance(self.voice_dir, str) else self.voice_dir

    @property
    def noise_dirs(self) -> tuple[str, ...]:
        return (self.noise_dir,) if isinstance(self.noise_dir, str) else self.noise_dir


def _check_distinct_folders(folders: dict[str, Sequence[str]]) -> None:
    """Refuses input folders that overlap: one folder under two spellings (`vox`, `vox/`, relative and
    absolute, a symbolic link), a folder and one of its subfolders, or a folder given both as voice and
    noise. Their files would be read twice: counted twice, listed in two splits, drawn more often."""
    given = [(name, folder) for name, values in folders.items() for folder in values]
    for i, (name_a, a) in enumerate(given):
        for name_b, b in given[i + 1:]:
            if layout.same_or_inside(a, b) and layout.same_or_inside(b, a):
                what = "the same folder"
            elif layout.same_or_inside(a, b) or layout.same_or_inside(b, a):
                what = "a folder and a folder inside it"
            else:
                continue
            cross = name_a != name_b
            raise ValueError(f"{name_a}={a!r} and {name_b}={b!r} are {what}: its files would be read twice"
                             f"{' (as voice and as noise)' if cross else ''}. Give each folder once"
                             f"{', and keep voice and noise folders apart' if cross else ''}.")


# --- planning (in the launcher, before any worker starts) ----------------------------------------

@dataclasses.dataclass
class Plan:
    voices: list[dict]  # {"file", "path", "group", "split"}
    noises: list[dict]
    work: list[gen.WorkItem]  # grows with the number of shards, not of examples
    counts: dict[str, int]
    classes_source: str | list[str]
    # "voice:NAME" / "noise:NAME" -> [size in bytes, modification time in ns] of every input file listed
    identities: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def num_chunks(self) -> int:
        return sum(item.chunk_hi - item.chunk_lo for item in self.work)

    def fingerprint(self, opts: "DatasetOptions") -> str:
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
            role = "voice" if flag == "--voice-dir" else "noise"
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

    counts = gen.split_counts(opts.num_examples, opts.split_fractions)
    for split, n in counts.items():
        if n and not any(s == split for s in voice_split.values()):
            raise ValueError(f"Split {split!r} needs {n} examples but has no speaker: {len(set(speakers.values()))} "
                             "speakers cannot cover three splits. Add speakers, or set --split-fractions.")
        if n and not any(s == split for s in noise_split.values()):
            raise ValueError(f"Split {split!r} needs {n} examples but has no noise file: add noise files, "
                             "or set --split-fractions.")
    work = gen.plan_work(counts, opts.config, opts.max_shard_bytes, opts.chunk_size)
    voices = [{"file": f, "path": file_paths[f], "group": speakers[f], "split": voice_split[f]}
              for f in voice_files if voice_split.get(f)]
    noises = [{"file": f, "path": file_paths[f], "group": classes[f], "split": noise_split[f]}
              for f in noise_files if noise_split.get(f)]
    identities = {"voice:" + f: v for f, v in voice_identities.items()}
    identities.update({"noise:" + f: v for f, v in noise_identities.items()})
    return Plan(voices, noises, work, counts, classes_source, identities)


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


# --- Beam stages --------------------------------------------------------------------------------

class DecodeSource(beam.DoFn):
    """Decodes one input file into one record: {"kind": "source", ...} (an `gen.Source`, its samples
    cached as .npy in the scratch folder) or {"kind": "reject", role, file, split, reason, message}.

    Idempotent: the record is also written beside the samples, and a second call for the same file
    returns it without decoding again. Runners may call it more than once per file: DaskRunner
    recomputes a side input's producers for each consumer, and any runner retries failed bundles.
    """

    def __init__(self, role: str, work_dir: str, config: SpectrogramConfig) -> None:
        self.role, self.work_dir, self.config = role, work_dir, config

    def setup(self) -> None:
        # Live progress where the runner reports metrics (Dataflow's UI); the counts of record are
        # taken from the data by Finalize.
        self.decoded = Metrics.counter(NAMESPACE, f"{self.role}_files_decoded")

    def process(self, entry: dict):
        path = entry["path"]
        stem = paths.join(self.work_dir, "audio", f"{self.role}-{uuid.uuid5(uuid.NAMESPACE_URL, path).hex}")
        done = stem + ".json"
        if paths.isfile(done):
            yield json.loads(paths.read_bytes(done))
            return
        record = self._decode(entry, path, stem + ".npy")
        paths.write_atomic(done, json.dumps(record, sort_keys=True).encode())
        yield record

    def _decode(self, entry: dict, path: str, key: str) -> dict:
        try:
            try:
                data = audio_lib.read_bytes(path)
            except Exception as err:  # filesystem errors vary by backend
                raise audio_lib.AudioError("unreadable", f"{path}: cannot read ({type(err).__name__}: {err})") from err
            samples, info = audio_lib.decode_audio(data, path, self.config.sample_rate)
            self._check(samples, path)
        except audio_lib.AudioError as err:
            Metrics.counter(NAMESPACE, f"rejected_{err.reason}").inc()
            return {"kind": REJECT, "role": self.role, "file": entry["file"], "split": entry["split"],
                    "reason": err.reason, "message": str(err)}
        paths.write_atomic(key, gen.dump_npy(samples))
        self.decoded.inc()
        return {"kind": SOURCE, **gen.Source(role=self.role, file=entry["file"], group=entry["group"],
                                            split=entry["split"], num_samples=int(samples.shape[0]),
                                            key=key).to_dict()}

    def _check(self, samples: np.ndarray, path: str) -> None:
        seconds = samples.shape[0] / self.config.sample_rate
        if self.role == "voice":
            if samples.shape[0] < self.config.window_samples:
                raise audio_lib.AudioError("too_short", f"{path}: {seconds:.3f} s of voice is shorter than one "
                                           f"window ({self.config.window_seconds:.3f} s)")
            level, active = active_level(samples, self.config.sample_rate)
            if is_silent(level, active):
                raise audio_lib.AudioError("silent", f"{path}: no speech activity found (active level "
                                           f"{20 * np.log10(max(level, 1e-12)):.1f} dBFS, {active:.0%} active)")
        else:
            if seconds < MIN_NOISE_SECONDS:
                raise audio_lib.AudioError("too_short", f"{path}: {seconds:.3f} s of noise is shorter than "
                                           f"{MIN_NOISE_SECONDS} s")
            if rms(samples) < NOISE_SILENCE_RMS:
                raise audio_lib.AudioError("silent", f"{path}: the noise is silent (RMS below -80 dBFS)")


class WriteChunk(beam.DoFn):
    """Generates one chunk of examples into a part file in the scratch folder.

    `launcher` (Beam's DaskRunner): the launcher's Dask client name; a chunk is not started once the
    launcher has left the scheduler (`runners.launcher_gone`)."""

    def __init__(self, opts: DatasetOptions, work_dir: str, build_dir: str, launcher: str | None = None) -> None:
        self.opts, self.work_dir, self.build_dir, self.launcher = opts, work_dir, build_dir, launcher

    def setup(self) -> None:
        tune_malloc()
        self.cache = gen.SourceCache(lambda key: gen.load_npy(audio_lib.read_bytes(key)), self.opts.cache_bytes)
        self.examples = Metrics.counter(NAMESPACE, "examples_written")
        self.silent = Metrics.counter(NAMESPACE, "silent_voice_windows_skipped")
        self._tables: dict[str, gen.SplitSources | None] = {}

    def process(self, spec: gen.ChunkSpec, sources: Sequence[dict]):
        runners.stop_if_launcher_gone(self.launcher, _not_written(self.build_dir))
        if spec.split not in self._tables:
            try:
                self._tables[spec.split] = gen.SplitSources([gen.Source(**s) for s in sources], spec.split,
                                                           self.opts.config.window_samples)
            except gen.NoUsableSources:
                self._tables[spec.split] = None  # named, with its rejects, by CheckSources
        table = self._tables[spec.split]
        if table is None:
            return
        part = paths.join(self.work_dir, "parts", f"{spec.shard_file}.part-{spec.chunk:05d}")
        done = part + ".json"
        if paths.isfile(done):
            # Finished by an earlier, interrupted run of the same build (or a retried bundle): parts
            # are deterministic and the record is written last, so the part (or its shard) is whole.
            yield (spec.split, spec.shard, spec.num_shards), {**json.loads(paths.read_bytes(done)), "reused": True}
            return
        keep_audio = spec.split in self.opts.write_audio
        result = gen.generate_chunk(spec, table, self.cache, self.opts.mix, self.opts.config, keep_audio=keep_audio,
                                    augment=self.opts.augment)
        buf = io.BytesIO()
        with RecordWriter(buf, self.opts.compression) as writer:
            for record in result.records:
                writer.write(record)
        paths.write_atomic(part, buf.getvalue())
        if keep_audio:
            self._write_audio(spec.split, result.audio)
        self.examples.inc(len(result.records))
        self.silent.inc(result.silent_windows_skipped)
        summary = {"chunk": spec.chunk, "num_chunks": spec.num_chunks, "part": part,
                   "stats": gen.ChunkStats.of_chunk(result.snr_db, result.levels, result.silent_windows_skipped,
                                                    result.augmentation)}
        paths.write_atomic(done, json.dumps(summary).encode())
        yield (spec.split, spec.shard, spec.num_shards), {**summary, "reused": False}

    def _write_audio(self, split: str, items: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
        import soundfile

        for example_id, mixture, clean in items:
            for kind, signal in (("noisy", mixture), ("clean", clean)):
                buf = io.BytesIO()
                soundfile.write(buf, signal, self.opts.config.sample_rate, format="WAV", subtype="FLOAT")
                paths.write_atomic(paths.join(self.build_dir, "audio", split, kind, f"{example_id}.wav"),
                                   _without_peak_time(buf.getvalue()))


def _without_peak_time(wav: bytes) -> bytes:
    """A float WAV from libsndfile with the time stamp of its PEAK chunk zeroed: the same audio gives
    the same bytes on every run."""
    at = wav.find(b"PEAK", 12, 256)
    if at < 0:
        return wav
    return wav[:at + 12] + bytes(4) + wav[at + 16:]  # "PEAK", size, version, then the time stamp


class AssembleShard(beam.DoFn):
    """Concatenates a shard's part files in chunk order into the final shard (TFRecord framing and
    GZIP members both concatenate), written under a temporary name and renamed."""

    def __init__(self, output: str, compression: str = "", launcher: str | None = None) -> None:
        self.output, self.compression, self.launcher = output, compression, launcher

    def process(self, element):
        runners.stop_if_launcher_gone(self.launcher, _not_written(self.output))
        (split, shard, num_shards), parts = element
        parts = sorted(parts, key=lambda p: p["chunk"])
        if [p["chunk"] for p in parts] != list(range(parts[0]["num_chunks"])):
            raise RuntimeError(f"shard {split} {shard}: chunks {[p['chunk'] for p in parts]} are incomplete")
        name = shard_name(split, shard, num_shards)
        path = paths.join(self.output, name)
        stats = gen.ChunkStats.merge([p["stats"] for p in parts])
        if paths.isfile(path):
            # Written by an earlier attempt (a retried bundle, or an interrupted run of the same build
            # resumed): a shard appears only when whole. Uncompressed shards get a record index, written
            # before the shard, so a shard that exists has its index, except one left by a build from
            # before indexes existed.
            entry = ShardInfo(name, stats["count"], paths.size(path))
            if not self.compression:
                index = paths.join(self.output, shard_index.index_name(name))
                entry = shard_writer.index_shard(self.output, entry) if not paths.isfile(index) else \
                    dataclasses.replace(entry, index=shard_index.index_name(name),
                                        index_bytes=stats["count"] * shard_index.ENTRY_BYTES)
            paths.delete_files([p["part"] for p in parts if paths.isfile(p["part"])])
        else:
            writer = shard_writer.ShardWriter(self.output, name, self.compression)
            try:
                for p in parts:
                    writer.write_framed(paths.read_bytes(p["part"]))
                entry = writer.close(stats["count"])
            except BaseException:
                writer.abort()
                raise
            paths.delete_files([p["part"] for p in parts])
        Metrics.counter(NAMESPACE, "shards_written").inc()
        LOG.info("wrote %s (%d examples, %.1f MiB)", name, stats["count"], entry.num_bytes / 2**20)
        yield {"split": split, "shard": shard, "entry": entry, "stats": stats,
               "chunks_reused": sum(1 for p in parts if p["reused"])}


def check_sources(_, sources: list[dict], rejects: list[dict], counts: dict[str, int]) -> list[str]:
    """One message for each split that needs examples but kept no usable voice or noise file, naming
    the rejected files of that split and why."""
    problems = []
    for split, n in counts.items():
        for role, fix in (("voice", "add speakers"), ("noise", "add noise files")):
            if not n or any(s["split"] == split and s["role"] == role for s in sources):
                continue
            mine = sorted((r for r in rejects if r["split"] == split and r["role"] == role), key=lambda r: r["file"])
            named = "; ".join(f"{r['file']}: {r['reason']}" for r in mine[:5])
            more = f"; and {len(mine) - 5} more" if len(mine) > 5 else ""
            problems.append(f"No usable {role} file in split {split!r} ({n} examples planned): every {role} file "
                            f"assigned to it was rejected ({named}{more}). Fix or replace those files, {fix}, or "
                            "change the split fractions.")
    return problems


def finalize(_, shards: list[dict], sources: list[dict], rejects: list[dict], problems: list[str],
             opts: DatasetOptions, plan: Plan, arguments: dict, build_dir: str, started: float,
             launcher: str | None = None) -> dict:
    """Writes rejects.jsonl, splits.json and (last, atomically) dataset_info.json into `build_dir`;
    removes scratch. When the sources check found problems, writes them instead of dataset_info.json."""
    runners.stop_if_launcher_gone(launcher, _not_written(build_dir))
    work_dir = paths.join(build_dir, WORK_DIR)
    rejects = sorted(rejects, key=lambda r: (r["role"], r["file"]))
    if problems:
        paths.write_atomic(paths.join(build_dir, PROBLEMS_FILE), json.dumps(problems).encode())
        return {}
    paths.write_atomic(paths.join(build_dir, REJECTS_FILE),
                  "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    split_map = {"voices": {v["file"]: v["split"] for v in plan.voices},
                 "noises": {n["file"]: n["split"] for n in plan.noises}}
    paths.write_atomic(paths.join(build_dir, SPLITS_FILE), json.dumps(split_map, indent=1, sort_keys=True).encode())

    splits_info: dict[str, SplitInfo] = {}
    snr_hist, level_hist = {}, {}
    for split in SPLITS:
        mine = sorted((s for s in shards if s["split"] == split), key=lambda s: s["shard"])
        if not mine:
            continue
        stats = gen.ChunkStats.merge([s["stats"] for s in mine])
        snr_hist[split] = stats["snr_hist"]
        level_hist[split] = stats["level_hist"]
        splits_info[split] = SplitInfo(split, tuple(s["entry"] for s in mine), extra={"snr_db": {
            "min": stats["snr_min"], "mean": gen.ChunkStats.mean_snr(stats), "max": stats["snr_max"]}})
    usable = {role: sorted((s for s in sources if s["role"] == role), key=lambda s: s["file"])
              for role in ("voice", "noise")}
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[f"{r['role']}:{r['reason']}"] = reasons.get(f"{r['role']}:{r['reason']}", 0) + 1
    rate = opts.config.sample_rate
    info = DatasetInfo(
        name=paths.basename(opts.output),
        spectrogram=opts.config,
        compression=opts.compression,
        seed=opts.mix.seed,
        arguments=arguments,
        splits=splits_info,
        histograms={"snr_db": {"edges": gen.SNR_EDGES, "counts": snr_hist},
                    "noise_level": {"edges": gen.LEVEL_EDGES, "counts": level_hist}},
        augmentation=aug.summary(opts.augment, aug.merge_stats(
            [s["stats"]["augment"] for s in sorted(shards, key=lambda s: (s["split"], s["shard"]))])),
        silent_voice_windows_skipped=int(sum(s["stats"]["silent_skipped"] for s in shards)),
        sources={
            "voice_dir": opts.voice_dir, "noise_dir": opts.noise_dir, "noise_classes": plan.classes_source,
            "voices": [{"file": s["file"], "speaker_id": s["group"], "split": s["split"],
                        "seconds": round(s["num_samples"] / rate, 3)} for s in usable["voice"]],
            "noises": [{"file": s["file"], "noise_class": s["group"], "split": s["split"],
                        "seconds": round(s["num_samples"] / rate, 3)} for s in usable["noise"]],
        },
        rejects={"count": len(rejects), "by_reason": reasons, "file": REJECTS_FILE},
        build_seconds=round(time.time() - started, 2),
        chunks_reused=int(sum(s["chunks_reused"] for s in shards)),
    )
    info.write(build_dir)
    paths.delete_tree(work_dir)
    return info.to_dict()


def _not_written(build_dir: str) -> str:
    return f"nothing more is written into {build_dir}; run the same command again to resume"


def expand_work(item: gen.WorkItem) -> list[gen.ChunkSpec]:
    return item.chunks()


def select(record: dict, kind: str):
    """`record` without its `kind` field when it is of `kind` (a FlatMap: one output, split by kind)."""
    if record["kind"] == kind:
        yield {k: v for k, v in record.items() if k != "kind"}


def build_pipeline(p: beam.Pipeline, opts: DatasetOptions, plan: Plan, arguments: dict, started: float,
                   build_dir: str, launcher: str | None = None):
    """The job's graph; everything it writes goes under `build_dir`. Returns the leaf (Finalize's
    output), on which every other stage depends: a runner that runs only what the last transform
    needs (Beam's DaskRunner) still runs everything. `launcher`: on DaskRunner, the launcher's Dask
    client name; the writing stages stop once it has left (`runners.launcher_gone`)."""
    work_dir = paths.join(build_dir, WORK_DIR)
    decoded = []
    for role, entries in (("voice", plan.voices), ("noise", plan.noises)):
        label = "Voices" if role == "voice" else "Noises"
        decoded.append(
            p
            | f"List{label}" >> beam.Create(entries)
            | f"Spread{label}" >> beam.Reshuffle()
            | f"Decode{label}" >> beam.ParDo(DecodeSource(role, work_dir, opts.config)))
    inputs = decoded | "AllInputs" >> beam.Flatten()
    sources = inputs | "Sources" >> beam.FlatMap(select, SOURCE)
    rejects = inputs | "Rejects" >> beam.FlatMap(select, REJECT)
    shards = (
        p
        | "ListWork" >> beam.Create(plan.work)
        | "SpreadWork" >> beam.Reshuffle()
        | "ExpandChunks" >> beam.FlatMap(expand_work)
        | "WriteChunks" >> beam.ParDo(WriteChunk(opts, work_dir, build_dir, launcher),
                                             sources=beam.pvalue.AsList(sources))
        | "GroupByShard" >> beam.GroupByKey()
        | "AssembleShards" >> beam.ParDo(AssembleShard(build_dir, opts.compression, launcher)))
    problems = (
        p
        | "StartCheck" >> beam.Create([None])
        | "CheckSources" >> beam.FlatMap(check_sources, sources=beam.pvalue.AsList(sources),
                                         rejects=beam.pvalue.AsList(rejects), counts=plan.counts))
    # Applied last: DaskRunner computes the last transform of the graph (and what it depends on) only.
    return (
        p
        | "Start" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize, shards=beam.pvalue.AsList(shards), sources=beam.pvalue.AsList(sources),
                                 rejects=beam.pvalue.AsList(rejects), problems=beam.pvalue.AsList(problems),
                                 opts=opts, plan=plan, arguments=arguments, build_dir=build_dir, started=started,
                                 launcher=launcher))


@contextlib.contextmanager
def _beam_errors_unlogged():
    """Beam logs a failing bundle's traceback as an error and then raises it: the error that ends
    the job is reported once, by the caller (one line for a full disk or Ctrl-C, the traceback for a
    bug). With --verbose (apache_beam at DEBUG) everything is logged."""
    logger = logging.getLogger("apache_beam")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _interrupted(err: BaseException) -> bool:
    """True for Ctrl-C: a KeyboardInterrupt here, or one in a Beam worker (re-raised in the launcher as
    a RuntimeError naming it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, KeyboardInterrupt) or (isinstance(err, RuntimeError) and
                                                  str(err).startswith("KeyboardInterrupt")):
            return True
        err = err.__cause__ or err.__context__
    return False


def run_dataset(opts: DatasetOptions, beam_args: Sequence[str] = (), workers: int | None = None,
                arguments: dict | None = None, assume_yes: bool = False, break_lock: bool = False) -> dict:
    """Builds the dataset described by `opts`; returns its dataset_info (also written to disk).

    The job writes into a sibling build folder (`OUTPUT.incomplete`); only a finished dataset replaces
    what `opts.output` held, so a failed or killed build leaves an existing dataset as it was.
    `assume_yes` accepts an estimated size larger than the free space of a local output.

    One build of an output runs at a time: it holds `OUTPUT.incomplete.lock` (pid, host, start time,
    command) from before the output is checked until it ends, however it ends. A second build of the
    same output is refused with the first one named; a lock left by a process of this host that no
    longer runs is taken over, and `break_lock` takes over any lock (a holder on a crashed machine).
    """
    started = time.time()
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be a positive number of local processes (None: one per core). "
                         f"Received: workers={workers!r}")
    inputs = {"voice_dir": opts.voice_dirs, "noise_dir": opts.noise_dirs}
    layout.check_output(opts.output, opts.overwrite, inputs=inputs)
    estimate = layout.estimate_bytes(opts.num_examples, opts.config, opts.split_fractions, opts.write_audio,
                                     opts.compression)
    layout.check_space(opts.output, estimate, assume_yes)
    if runners.is_dask(beam_args):
        runners.require_dask()
    lock = layout.build_lock(opts.output)
    try:
        lock.acquire(break_lock=break_lock)
    except paths.LockHeld:
        raise
    except OSError as err:
        if layout.is_no_space(err):
            raise layout.no_space(opts.output, lock.path, resumes=False) from err
        raise PermissionError(f"output={opts.output!r}: cannot create the build lock {lock.path} ({err}).") from err
    try:
        # Again, now that no other build of this output can start or finish meanwhile.
        layout.check_output(opts.output, opts.overwrite, inputs=inputs)
        return _build(opts, beam_args, workers or os.cpu_count() or 1, arguments or {}, estimate, started)
    finally:
        lock.release()


def _build(opts: DatasetOptions, beam_args: Sequence[str], workers: int, arguments: dict, estimate: int,
           started: float) -> dict:
    plan = make_plan(opts)
    LOG.info("%d voice files, %d noise files; %s examples in %d chunks, about %s", len(plan.voices),
             len(plan.noises), plan.counts, plan.num_chunks, paths.format_bytes(estimate))
    build_dir = layout.start_build(opts.output, plan.fingerprint(opts), inputs=plan.identities)
    try:
        # On an external Dask cluster the job's tasks outlive a killed launcher: they ask for it by
        # its client name before writing, so a killed build does not go on writing into a folder
        # that the next run (which takes over the dead launcher's lock) resumes.
        beam_args, launcher = runners.dask_client_name(beam_args)
        with _beam_errors_unlogged():
            runners.run_pipeline(lambda p: build_pipeline(p, opts, plan, arguments, started, build_dir, launcher),
                                 beam_args, workers)
        problems_path = paths.join(build_dir, PROBLEMS_FILE)
        if paths.isfile(problems_path):
            raise ValueError("\n".join(json.loads(paths.read_bytes(problems_path))))
    except BaseException as err:
        if _interrupted(err):
            # Ctrl-C reaches the workers too (a terminal signals the whole process group): the
            # launcher may see their KeyboardInterrupt as a RuntimeError before its own.
            # `speech-enhance` says so in its one line; no other line while the command stops.
            LOG.debug("interrupted: the same command resumes the build, reusing what %s holds", build_dir)
            if isinstance(err, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt() from err
        if layout.is_no_space(err):
            # The finished chunks stay valid: keep them for the rerun once space is freed.
            raise layout.no_space(opts.output, build_dir) from None
        # Nothing of a failed build is worth keeping, and the old dataset (if any) was not touched.
        paths.delete_tree(build_dir)
        raise
    try:
        layout.replace_with_build(build_dir, opts.output)
    except OSError as err:
        if layout.is_no_space(err):
            raise layout.no_space(opts.output, build_dir) from None
        raise
    info = DatasetInfo.read(opts.output).to_dict()
    # Counts from dataset_info.json, not from Beam metrics (which not every runner reports).
    LOG.info("dataset written to %s in %.1f s: %s; %d inputs rejected%s%s", opts.output, time.time() - started,
             {k: v["num_examples"] for k, v in info["splits"].items()}, info["rejects"]["count"],
             f" {info['rejects']['by_reason']}" if info["rejects"]["count"] else "",
             f"; {info['chunks_reused']} of {plan.num_chunks} chunks reused from an interrupted run"
             if info.get("chunks_reused") else "")
    return info
