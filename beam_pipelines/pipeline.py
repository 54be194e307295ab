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
the dataset grows. `launcher.run_dataset` plans the job (`planning`) and runs this graph.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
import uuid
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines import audio as audio_lib
from beam_pipelines import generation as gen
from beam_pipelines import runners
from beam_pipelines.options import DatasetOptions
from beam_pipelines.planning import ChunkSpec, Plan, WorkItem
from mixing import augmentation as aug
from mixing import draw
from mixing.levels import active_level, is_silent, rms
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


class DecodeSource(beam.DoFn):
    """Decodes one input file into one record: {"kind": "source", ...} (an `draw.Source`, its samples
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
        return {"kind": SOURCE, **draw.Source(role=self.role, file=entry["file"], group=entry["group"],
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
        elif self.role == "rir":
            if not np.any(samples):
                raise audio_lib.AudioError("silent", f"{path}: the room impulse response is all zeros")
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
        self.cache = draw.SourceCache(lambda key: gen.load_npy(audio_lib.read_bytes(key)), self.opts.cache_bytes)
        self.examples = Metrics.counter(NAMESPACE, "examples_written")
        self.silent = Metrics.counter(NAMESPACE, "silent_voice_windows_skipped")
        self._tables: dict[str, draw.SplitSources | None] = {}

    def process(self, spec: ChunkSpec, sources: Sequence[dict]):
        runners.stop_if_launcher_gone(self.launcher, not_written(self.build_dir))
        if spec.split not in self._tables:
            try:
                self._tables[spec.split] = draw.SplitSources([draw.Source(**s) for s in sources], spec.split,
                                                           self.opts.config.window_samples)
            except draw.NoUsableSources:
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
        runners.stop_if_launcher_gone(self.launcher, not_written(self.output))
        (split, shard, num_shards), parts = element
        parts = sorted(parts, key=lambda p: p["chunk"])
        if [p["chunk"] for p in parts] != list(range(parts[0]["num_chunks"])):
            raise RuntimeError(f"shard {split} {shard}: chunks {[p['chunk'] for p in parts]} are incomplete")
        name = shard_name(split, shard, num_shards)
        path = paths.join(self.output, name)
        stats = gen.ChunkStats.merge([p["stats"] for p in parts])
        if paths.isfile(path):
            entry = written_shard(self.output, name, stats["count"], self.compression)
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


def written_shard(output: str, name: str, count: int, compression: str) -> ShardInfo:
    """The entry of shard `name` of `output`, already written by an earlier attempt (a retried bundle,
    or an interrupted run of the same build resumed): a shard appears only when whole. Uncompressed
    shards get a record index, written before the shard, so a shard that exists has its index, except
    one left by a build from before indexes existed (indexed here)."""
    entry = ShardInfo(name, count, paths.size(paths.join(output, name)))
    if compression:
        return entry
    if not paths.isfile(paths.join(output, shard_index.index_name(name))):
        return shard_writer.index_shard(output, entry)
    return dataclasses.replace(entry, index=shard_index.index_name(name), index_bytes=count * shard_index.ENTRY_BYTES)


def check_sources(_, sources: list[dict], rejects: list[dict], counts: dict[str, int],
                  planned: str = "{n} examples planned") -> list[str]:
    """One message for each split that needs examples (`counts`) but kept no usable voice or noise
    file, naming the rejected files of that split and why. `planned`: what the split needs, in words."""
    problems = []
    for split, n in counts.items():
        for role, fix in (("voice", "add speakers"), ("noise", "add noise files")):
            if not n or any(s["split"] == split and s["role"] == role for s in sources):
                continue
            mine = sorted((r for r in rejects if r["split"] == split and r["role"] == role), key=lambda r: r["file"])
            named = "; ".join(f"{r['file']}: {r['reason']}" for r in mine[:5])
            more = f"; and {len(mine) - 5} more" if len(mine) > 5 else ""
            problems.append(f"No usable {role} file in split {split!r} ({planned.format(n=n)}): every {role} file "
                            f"assigned to it was rejected ({named}{more}). Fix or replace those files, {fix}, or "
                            "change the split fractions.")
    return problems


def finalize(_, shards: list[dict], sources: list[dict], rejects: list[dict], problems: list[str],
             opts: DatasetOptions, plan: Plan, arguments: dict, build_dir: str, started: float,
             launcher: str | None = None) -> dict:
    """Writes rejects.jsonl, splits.json and (last, atomically) dataset_info.json into `build_dir`;
    removes scratch. When the sources check found problems, writes them instead of dataset_info.json."""
    runners.stop_if_launcher_gone(launcher, not_written(build_dir))
    work_dir = paths.join(build_dir, WORK_DIR)
    if wrote_problems(build_dir, problems):
        return {}
    rejects, reasons = write_inputs_record(build_dir, rejects, plan)

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


def wrote_problems(build_dir: str, problems: list[str]) -> bool:
    """Writes the sources check's `problems` (when any) for the launcher to raise; True when it did."""
    if problems:
        paths.write_atomic(paths.join(build_dir, PROBLEMS_FILE), json.dumps(problems).encode())
    return bool(problems)


def write_inputs_record(build_dir: str, rejects: list[dict], plan: Plan) -> tuple[list[dict], dict[str, int]]:
    """Writes rejects.jsonl (sorted by role and file) and splits.json (every planned input's split)
    into `build_dir`; returns (the sorted rejects, their counts by "role:reason")."""
    rejects = sorted(rejects, key=lambda r: (r["role"], r["file"]))
    paths.write_atomic(paths.join(build_dir, REJECTS_FILE),
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    split_map = {"voices": {v["file"]: v["split"] for v in plan.voices},
                 "noises": {n["file"]: n["split"] for n in plan.noises}}
    if plan.rirs:
        split_map["rirs"] = {r["file"]: r["split"] for r in plan.rirs}
    paths.write_atomic(paths.join(build_dir, SPLITS_FILE), json.dumps(split_map, indent=1, sort_keys=True).encode())
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[f"{r['role']}:{r['reason']}"] = reasons.get(f"{r['role']}:{r['reason']}", 0) + 1
    return rejects, reasons


def not_written(build_dir: str) -> str:
    return f"nothing more is written into {build_dir}; run the same command again to resume"


def expand_work(item: WorkItem) -> list[ChunkSpec]:
    return item.chunks()


def select(record: dict, kind: str):
    """`record` without its `kind` field when it is of `kind` (a FlatMap: one output, split by kind)."""
    if record["kind"] == kind:
        yield {k: v for k, v in record.items() if k != "kind"}


def decode_inputs(p: beam.Pipeline, plan: Plan, work_dir: str, config: SpectrogramConfig):
    """The stages that list and decode the plan's voices, noises and room impulse responses (none:
    no stage); returns (the usable sources, the rejects), two PCollections of small records."""
    decoded = []
    for role, label, entries in (("voice", "Voices", plan.voices), ("noise", "Noises", plan.noises),
                                 ("rir", "Rirs", plan.rirs)):
        if not entries:  # no room impulse responses given: no empty Create, which not every runner takes
            continue
        decoded.append(
            p
            | f"List{label}" >> beam.Create(entries)
            | f"Spread{label}" >> beam.Reshuffle()
            | f"Decode{label}" >> beam.ParDo(DecodeSource(role, work_dir, config)))
    inputs = decoded | "AllInputs" >> beam.Flatten()
    return inputs | "Sources" >> beam.FlatMap(select, SOURCE), inputs | "Rejects" >> beam.FlatMap(select, REJECT)


def build_pipeline(p: beam.Pipeline, opts: DatasetOptions, plan: Plan, arguments: dict, started: float,
                   build_dir: str, launcher: str | None = None):
    """The job's graph; everything it writes goes under `build_dir`. Returns the leaf (Finalize's
    output), on which every other stage depends: a runner that runs only what the last transform
    needs (Beam's DaskRunner) still runs everything. `launcher`: on DaskRunner, the launcher's Dask
    client name; the writing stages stop once it has left (`runners.launcher_gone`)."""
    work_dir = paths.join(build_dir, WORK_DIR)
    sources, rejects = decode_inputs(p, plan, work_dir, opts.config)
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
