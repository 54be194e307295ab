"""The dataset job's second kind (`--kind sources`): a source store of 16-bit waveform segments, one
per usable input file, which the trainer mixes into examples on the fly (`tfrecord_schema.sources`).

Stages (each a labelled transform):
    DecodeVoices / DecodeNoises / DecodeRirs   `pipeline.DecodeSource`, as for a spectrogram dataset:
                                  the same decoding, checks, rejects and scratch files
    PlanShards                    per split, its usable sources sorted by (role, file), cut in that
                                  order into shards of at most --shard-size-mb (`cut_shards`)
    WriteShards                   one shard per element, with `ShardWriter` (and its record index when
                                  uncompressed); a shard left whole by an interrupted run is kept
    CheckSources                  name every split left without a usable voice or noise file
    Finalize                      dataset_info.json (`SourcesInfo`), splits.json, rejects.jsonl

The graph keeps the rules of `pipeline`'s docstring: one output per transform, a single leaf
(Finalize takes the rest as side inputs), side-input producers that may run more than once. Shard
contents depend only on the sorted sources and their sizes, so every runner, worker count and rerun
writes the same bytes.
"""

from __future__ import annotations

import logging
import math
import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines import audio as audio_lib
from beam_pipelines import generation as gen
from beam_pipelines import runners
from beam_pipelines.options import DatasetOptions
from beam_pipelines.pipeline import (NAMESPACE, REJECTS_FILE, WORK_DIR, check_sources, decode_inputs, not_written,
                                     write_inputs_record, written_shard, wrote_problems)
from beam_pipelines.planning import Plan
from mixing.levels import active_level, rms
from tfrecord_schema import paths
from tfrecord_schema.dataset_info import SPLITS, SplitInfo, shard_name
from tfrecord_schema.shard_writer import ShardWriter
from tfrecord_schema.sources import Segment, SourcesInfo, encode_segment, from_pcm16, to_pcm16

LOG = logging.getLogger(__name__)
# Bytes of one record besides its samples (metadata and framing), for sizing shards only.
SEGMENT_OVERHEAD_BYTES = 300
LEVEL_FLOOR_DBFS = -200.0  # the level written for a segment that is all zeros


def segment_bytes(source: dict) -> int:
    """About the bytes of a source's record in an uncompressed shard: 2 per sample, and its metadata."""
    return 2 * int(source["num_samples"]) + SEGMENT_OVERHEAD_BYTES + 2 * len(source["file"])


def cut_shards(split: str, max_shard_bytes: int, sources: list[dict]) -> list[dict]:
    """The shards of `split`: its sources sorted by (role, file) and cut, in that order, into runs of at
    most `max_shard_bytes` (a source larger than that gets a shard of its own). Each shard is
    {"split", "shard", "num_shards", "sources": [...]}; none when the split kept no source."""
    mine = sorted((s for s in sources if s["split"] == split), key=lambda s: (s["role"], s["file"]))
    runs: list[list[dict]] = []
    size = 0
    for source in mine:
        n = segment_bytes(source)
        if not runs or size + n > max_shard_bytes:
            runs.append([])
            size = 0
        runs[-1].append(source)
        size += n
    return [{"split": split, "shard": i, "num_shards": len(runs), "sources": run} for i, run in enumerate(runs)]


def level_dbfs(samples: np.ndarray, role: str, sample_rate: int) -> float:
    """dBFS of a segment: a voice's active speech level (`mixing.levels.active_level`), else its RMS."""
    level = active_level(samples, sample_rate)[0] if role == "voice" else rms(samples)
    return round(20.0 * math.log10(level), 4) if level > 0 else LEVEL_FLOOR_DBFS


def _corpus(file: str, several: bool) -> str:
    """The input folder's tag of a file named as `planning` names it ("TAG/path" with several folders)."""
    return file.split("/", 1)[0] if several else ""


def _stem(file: str) -> str:
    name = file.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


class WriteSourceShard(beam.DoFn):
    """Writes one shard of segments (an element of `cut_shards`) with `ShardWriter`; yields
    {"split", "shard", "entry"}. `several`: role -> whether that role has several input folders
    (files then carry their folder's tag, the segment's corpus)."""

    def __init__(self, output: str, sample_rate: int, compression: str, several: dict[str, bool],
                 launcher: str | None = None) -> None:
        self.output, self.sample_rate, self.compression = output, sample_rate, compression
        self.several, self.launcher = several, launcher

    def setup(self) -> None:
        self.written = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, spec: dict):
        runners.stop_if_launcher_gone(self.launcher, not_written(self.output))
        name = shard_name(spec["split"], spec["shard"], spec["num_shards"])
        count = len(spec["sources"])
        if paths.isfile(paths.join(self.output, name)):
            entry = written_shard(self.output, name, count, self.compression)
        else:
            with ShardWriter(self.output, name, self.compression) as writer:
                for source in spec["sources"]:
                    writer.write(self._record(source))
            entry = writer.shard
        self.written.inc()
        LOG.info("wrote %s (%d segments, %.1f MiB)", name, count, entry.num_bytes / 2**20)
        yield {"split": spec["split"], "shard": spec["shard"], "entry": entry}

    def _record(self, source: dict) -> bytes:
        samples = gen.load_npy(audio_lib.read_bytes(source["key"]))
        role, file = source["role"], source["file"]
        # The level of what is stored: the samples as they read back from 16 bits.
        level = level_dbfs(from_pcm16(to_pcm16(samples)), role, self.sample_rate)
        segment = Segment(role=role, file=file, group=source["group"], split=source["split"],
                          num_samples=int(samples.shape[0]), sample_rate=self.sample_rate,
                          corpus=_corpus(file, self.several[role]), utterance=_stem(file), offset=0,
                          active_level_dbfs=level)
        return encode_segment(samples, segment)


def contents(sources: list[dict], sample_rate: int) -> dict:
    """split -> role -> {"segments", "hours", "groups": {group: hours}} of the usable sources."""
    out: dict = {}
    for s in sorted(sources, key=lambda s: (s["split"], s["role"], s["file"])):
        entry = out.setdefault(s["split"], {}).setdefault(s["role"], {"segments": 0, "samples": 0, "groups": {}})
        entry["segments"] += 1
        entry["samples"] += s["num_samples"]
        entry["groups"][s["group"]] = entry["groups"].get(s["group"], 0) + s["num_samples"]
    for roles in out.values():
        for entry in roles.values():
            entry["hours"] = round(entry.pop("samples") / sample_rate / 3600, 6)
            entry["groups"] = {g: round(n / sample_rate / 3600, 6) for g, n in sorted(entry["groups"].items())}
    return {split: out[split] for split in SPLITS if split in out}


def finalize_store(_, shards: list[dict], sources: list[dict], rejects: list[dict], problems: list[str],
                   opts: DatasetOptions, plan: Plan, arguments: dict, build_dir: str, started: float,
                   launcher: str | None = None) -> dict:
    """Writes rejects.jsonl, splits.json and (last, atomically) the store's dataset_info.json
    (`SourcesInfo`) into `build_dir`; removes scratch. With problems, writes them instead (`pipeline.finalize`)."""
    runners.stop_if_launcher_gone(launcher, not_written(build_dir))
    if wrote_problems(build_dir, problems):
        return {}
    rejects, reasons = write_inputs_record(build_dir, rejects, plan)
    splits = {}
    for split in SPLITS:
        mine = sorted((s for s in shards if s["split"] == split), key=lambda s: s["shard"])
        if mine:
            splits[split] = SplitInfo(split, tuple(s["entry"] for s in mine))
    rate = opts.sample_rate
    info = SourcesInfo(
        sample_rate=rate, splits=splits, name=paths.basename(opts.output), compression=opts.compression,
        arguments=arguments, contents=contents(sources, rate),
        sources={"voice_dir": opts.voice_dir, "noise_dir": opts.noise_dir, "rir_dir": opts.rir_dir or None,
                 "noise_classes": plan.classes_source},
        rejects={"count": len(rejects), "by_reason": reasons, "file": REJECTS_FILE},
        build_seconds=round(time.time() - started, 2))
    info.write(build_dir)
    paths.delete_tree(paths.join(build_dir, WORK_DIR))
    return info.to_dict()


def build_source_pipeline(p: beam.Pipeline, opts: DatasetOptions, plan: Plan, arguments: dict, started: float,
                          build_dir: str, launcher: str | None = None):
    """The source store job's graph (see the module docstring); everything it writes goes under
    `build_dir`. Returns the leaf (Finalize's output), on which every other stage depends."""
    work_dir = paths.join(build_dir, WORK_DIR)
    sources, rejects = decode_inputs(p, plan, work_dir, opts.config)
    several = {"voice": len(opts.voice_dirs) > 1, "noise": len(opts.noise_dirs) > 1, "rir": len(opts.rir_dirs) > 1}
    shards = (
        p
        | "ListSplits" >> beam.Create([split for split in SPLITS if plan.counts.get(split)])
        | "PlanShards" >> beam.FlatMap(cut_shards, opts.max_shard_bytes, sources=beam.pvalue.AsList(sources))
        | "SpreadShards" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(WriteSourceShard(build_dir, opts.sample_rate, opts.compression, several,
                                                       launcher)))
    problems = (
        p
        | "StartCheck" >> beam.Create([None])
        | "CheckSources" >> beam.FlatMap(check_sources, sources=beam.pvalue.AsList(sources),
                                         rejects=beam.pvalue.AsList(rejects), counts=plan.counts,
                                         planned="a split of the store"))
    # Applied last: DaskRunner computes the last transform of the graph (and what it depends on) only.
    return (
        p
        | "Start" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize_store, shards=beam.pvalue.AsList(shards),
                                 sources=beam.pvalue.AsList(sources), rejects=beam.pvalue.AsList(rejects),
                                 problems=beam.pvalue.AsList(problems), opts=opts, plan=plan, arguments=arguments,
                                 build_dir=build_dir, started=started, launcher=launcher))
