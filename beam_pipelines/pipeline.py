"""The dataset job: an Apache Beam pipeline that blends voices with noise and writes TFRecord shards.

Stages (each a labelled transform):
    DecodeVoices / DecodeNoises   read, downmix, resample, check; cache samples; rejects tagged out
    WriteChunks                   generate the examples of each chunk into a part file
    AssembleShards                concatenate a shard's parts in order, write it atomically
    Finalize                      dataset_info.json, splits.json, rejects.jsonl; remove scratch files

Runs locally on Beam's FnApiRunner (multi-process, all cores by default) and unchanged on Dataflow
(`--runner DataflowRunner --project ... --region ... --temp_location gs://... --setup_file ./setup.py`).
Only small records travel between stages; audio goes through scratch files, so memory stays flat as
the dataset grows.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
import uuid
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import audio as audio_lib
from beam_pipelines import output_layout as layout
from beam_pipelines import examples as ex
from beam_pipelines import splits as splits_lib
from beam_pipelines.mixing import active_level, is_silent, rms
from tfrecord_schema import SCHEMA_VERSION, paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import INFO_FILE, SPLITS, shard_name
from tfrecord_schema.records import RecordWriter
from tfrecord_schema.spectrogram import tune_malloc

LOG = logging.getLogger(__name__)
NAMESPACE = "speech_enhance.dataset"
WORK_DIR = "_work"
REJECTS_FILE = "rejects.jsonl"
SPLITS_FILE = "splits.json"
PROBLEMS_FILE = "_problems.json"
MIN_NOISE_SECONDS = 0.1
NOISE_SILENCE_RMS = 1e-4  # -80 dBFS


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """Everything the job needs besides Beam's own options."""

    voice_dir: str
    noise_dir: str
    output: str
    num_examples: int
    config: SpectrogramConfig = SpectrogramConfig()
    mix: ex.MixOptions = ex.MixOptions()
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
        if self.num_examples <= 0:
            raise ValueError(f"num_examples must be positive. Received: num_examples={self.num_examples}")
        if self.max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive. Received: max_shard_bytes={self.max_shard_bytes}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive. Received: chunk_size={self.chunk_size}")
        for split in self.write_audio:
            if split not in SPLITS:
                raise ValueError(f"write_audio takes split names from {SPLITS}. Received: write_audio={self.write_audio!r}")


# --- planning (in the launcher, before any worker starts) ----------------------------------------

@dataclasses.dataclass
class Plan:
    voices: list[dict]  # {"file", "group", "split"}
    noises: list[dict]
    chunks: list[ex.ChunkSpec]
    counts: dict[str, int]
    classes_source: str


def _read_text(path: str) -> str:
    return audio_lib.read_bytes(path).decode("utf-8")


def make_plan(opts: DatasetOptions) -> Plan:
    """Lists the inputs, assigns speakers and noise files to splits and cuts the work into chunks.

    Fails at once, with the folder named, when either folder holds no audio file.
    """
    voice_files = audio_lib.list_audio(opts.voice_dir)
    if not voice_files:
        raise ValueError(f"No voice audio (wav, flac, ogg) found under --voice-dir {opts.voice_dir!r}.")
    noise_files = audio_lib.list_audio(opts.noise_dir)
    if not noise_files:
        raise ValueError(f"No noise audio (wav, flac, ogg) found under --noise-dir {opts.noise_dir!r}.")

    table: dict[str, str] = {}
    classes_source = "parent folder"
    candidates = [opts.noise_classes_file] if opts.noise_classes_file else [
        audio_lib.join_path(opts.noise_dir, "classes.tsv"), audio_lib.join_path(opts.noise_dir, "meta", "esc50.csv")]
    for candidate in candidates:
        if candidate and paths.isfile(candidate):
            table = splits_lib.read_class_table(_read_text(candidate))
            classes_source = candidate
            break
    else:
        if opts.noise_classes_file:
            raise FileNotFoundError(f"--noise-classes file not found: {opts.noise_classes_file!r}")

    speakers = {f: splits_lib.speaker_of(f) for f in voice_files}
    classes = {f: splits_lib.noise_class_of(f, table) for f in noise_files}
    if opts.splits_file:
        given = json.loads(_read_text(opts.splits_file))
        voice_split, noise_split = _given_splits(given, voice_files, noise_files, opts.splits_file)
    else:
        speaker_split = splits_lib.assign_groups(speakers.values(), opts.split_fractions, salt="voice")
        voice_split = {f: speaker_split[speakers[f]] for f in voice_files}
        noise_split = splits_lib.assign_groups(noise_files, opts.split_fractions, salt="noise", strata=classes)

    counts = ex.split_counts(opts.num_examples, opts.split_fractions)
    for split, n in counts.items():
        if n and not any(s == split for s in voice_split.values()):
            raise ValueError(f"Split {split!r} needs {n} examples but has no speaker: {len(set(speakers.values()))} "
                             "speakers cannot cover three splits. Add speakers, or set --split-fractions.")
        if n and not any(s == split for s in noise_split.values()):
            raise ValueError(f"Split {split!r} needs {n} examples but has no noise file: add noise files, "
                             "or set --split-fractions.")
    chunks = ex.plan_chunks(counts, opts.config, opts.max_shard_bytes, opts.chunk_size)
    voices = [{"file": f, "group": speakers[f], "split": voice_split[f]} for f in voice_files if voice_split.get(f)]
    noises = [{"file": f, "group": classes[f], "split": noise_split[f]} for f in noise_files if noise_split.get(f)]
    return Plan(voices, noises, chunks, counts, classes_source)


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
    """Decodes one input file; usable ones are cached as .npy in the scratch folder."""

    REJECTS = "rejects"

    def __init__(self, role: str, root: str, work_dir: str, config: SpectrogramConfig) -> None:
        self.role, self.root, self.work_dir, self.config = role, root, work_dir, config

    def setup(self) -> None:
        self.decoded = Metrics.counter(NAMESPACE, f"{self.role}_files_decoded")

    def process(self, entry: dict):
        path = audio_lib.join_path(self.root, entry["file"])
        try:
            try:
                data = audio_lib.read_bytes(path)
            except Exception as err:  # filesystem errors vary by backend
                raise audio_lib.AudioError("unreadable", f"{path}: cannot read ({type(err).__name__}: {err})") from err
            samples, info = audio_lib.decode_audio(data, path, self.config.sample_rate)
            self._check(samples, path)
        except audio_lib.AudioError as err:
            Metrics.counter(NAMESPACE, f"rejected_{err.reason}").inc()
            yield beam.pvalue.TaggedOutput(self.REJECTS, {
                "role": self.role, "file": entry["file"], "split": entry["split"], "reason": err.reason,
                "message": str(err)})
            return
        key = audio_lib.join_path(self.work_dir, "audio", f"{self.role}-{uuid.uuid5(uuid.NAMESPACE_URL, path).hex}.npy")
        paths.write_atomic(key, ex.dump_npy(samples))
        self.decoded.inc()
        yield ex.Source(role=self.role, file=entry["file"], group=entry["group"], split=entry["split"],
                        num_samples=int(samples.shape[0]), key=key).to_dict()

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
    """Generates one chunk of examples into a part file in the scratch folder."""

    def __init__(self, opts: DatasetOptions, work_dir: str, build_dir: str) -> None:
        self.opts, self.work_dir, self.build_dir = opts, work_dir, build_dir

    def setup(self) -> None:
        tune_malloc()
        self.cache = ex.SourceCache(lambda key: ex.load_npy(audio_lib.read_bytes(key)), self.opts.cache_bytes)
        self.examples = Metrics.counter(NAMESPACE, "examples_written")
        self.silent = Metrics.counter(NAMESPACE, "silent_voice_windows_skipped")
        self._tables: dict[str, ex.SplitSources | None] = {}

    def process(self, spec: ex.ChunkSpec, sources: Sequence[dict]):
        if spec.split not in self._tables:
            try:
                self._tables[spec.split] = ex.SplitSources([ex.Source(**s) for s in sources], spec.split,
                                                           self.opts.config.window_samples)
            except ex.NoUsableSources:
                self._tables[spec.split] = None  # named, with its rejects, by CheckSources
        table = self._tables[spec.split]
        if table is None:
            return
        keep_audio = spec.split in self.opts.write_audio
        result = ex.generate_chunk(spec, table, self.cache, self.opts.mix, self.opts.config, keep_audio=keep_audio)
        buf = io.BytesIO()
        with RecordWriter(buf, self.opts.compression) as writer:
            for record in result.records:
                writer.write(record)
        part = audio_lib.join_path(self.work_dir, "parts", f"{spec.shard_file}.part-{spec.chunk:05d}")
        paths.write_atomic(part, buf.getvalue())
        if keep_audio:
            self._write_audio(spec.split, result.audio)
        self.examples.inc(len(result.records))
        self.silent.inc(result.silent_windows_skipped)
        yield (spec.split, spec.shard, spec.num_shards), {
            "chunk": spec.chunk, "num_chunks": spec.num_chunks, "part": part, "count": len(result.records),
            "snr_db": result.snr_db, "levels": result.levels, "silent_skipped": result.silent_windows_skipped}

    def _write_audio(self, split: str, items: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
        import soundfile

        for example_id, mixture, clean in items:
            for kind, signal in (("noisy", mixture), ("clean", clean)):
                buf = io.BytesIO()
                soundfile.write(buf, signal, self.opts.config.sample_rate, format="WAV", subtype="FLOAT")
                paths.write_atomic(audio_lib.join_path(self.build_dir, "audio", split, kind, f"{example_id}.wav"),
                                   buf.getvalue())


class AssembleShard(beam.DoFn):
    """Concatenates a shard's part files in chunk order into the final shard (TFRecord framing and
    GZIP members both concatenate), written under a temporary name and renamed."""

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, element):
        (split, shard, num_shards), parts = element
        parts = sorted(parts, key=lambda p: p["chunk"])
        if [p["chunk"] for p in parts] != list(range(parts[0]["num_chunks"])):
            raise RuntimeError(f"shard {split} {shard}: chunks {[p['chunk'] for p in parts]} are incomplete")
        name = shard_name(split, shard, num_shards)
        path = audio_lib.join_path(self.output, name)
        tmp = paths.temporary_name(path)
        size = 0
        with paths.open_write(tmp) as out:
            for p in parts:
                data = paths.read_bytes(p["part"])
                out.write(data)
                size += len(data)
        paths.rename(tmp, path)
        paths.delete_files([p["part"] for p in parts])
        Metrics.counter(NAMESPACE, "shards_written").inc()
        LOG.info("wrote %s (%d examples, %.1f MiB)", name, sum(p["count"] for p in parts), size / 2**20)
        yield {"split": split, "shard": shard, "file": name, "num_examples": sum(p["count"] for p in parts),
               "num_bytes": size, "snr_db": [v for p in parts for v in p["snr_db"]],
               "levels": [v for p in parts for v in p["levels"]],
               "silent_skipped": sum(p["silent_skipped"] for p in parts)}


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
             opts: DatasetOptions, plan: Plan, arguments: dict, build_dir: str, started: float) -> dict:
    """Writes rejects.jsonl, splits.json and (last, atomically) dataset_info.json into `build_dir`;
    removes scratch. When the sources check found problems, writes them instead of dataset_info.json."""
    work_dir = audio_lib.join_path(build_dir, WORK_DIR)
    rejects = sorted(rejects, key=lambda r: (r["role"], r["file"]))
    if problems:
        paths.write_atomic(audio_lib.join_path(build_dir, PROBLEMS_FILE), json.dumps(problems).encode())
        return {}
    paths.write_atomic(audio_lib.join_path(build_dir, REJECTS_FILE),
                  "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    split_map = {"voices": {v["file"]: v["split"] for v in plan.voices},
                 "noises": {n["file"]: n["split"] for n in plan.noises}}
    paths.write_atomic(audio_lib.join_path(build_dir, SPLITS_FILE), json.dumps(split_map, indent=1, sort_keys=True).encode())

    splits_info: dict[str, Any] = {}
    snr_hist, level_hist = {}, {}
    for split in SPLITS:
        mine = sorted((s for s in shards if s["split"] == split), key=lambda s: s["shard"])
        if not mine:
            continue
        splits_info[split] = {
            "num_examples": sum(s["num_examples"] for s in mine),
            "num_bytes": sum(s["num_bytes"] for s in mine),
            "shards": [{k: s[k] for k in ("file", "num_examples", "num_bytes")} for s in mine],
        }
        snr = [v for s in mine for v in s["snr_db"]]
        levels = [v for s in mine for v in s["levels"]]
        snr_hist[split] = ex.histogram(snr, ex.SNR_EDGES)
        level_hist[split] = ex.histogram(levels, ex.LEVEL_EDGES)
        splits_info[split]["snr_db"] = {"min": float(np.min(snr)), "mean": float(np.mean(snr)),
                                        "max": float(np.max(snr))}
    usable = {role: sorted((s for s in sources if s["role"] == role), key=lambda s: s["file"])
              for role in ("voice", "noise")}
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[f"{r['role']}:{r['reason']}"] = reasons.get(f"{r['role']}:{r['reason']}", 0) + 1
    rate = opts.config.sample_rate
    info = {
        "name": paths.basename(opts.output),
        "schema_version": SCHEMA_VERSION,
        "spectrogram": opts.config.to_dict(),
        "compression": opts.compression,
        "seed": opts.mix.seed,
        "arguments": arguments,
        "splits": splits_info,
        "histograms": {"snr_db": {"edges": ex.SNR_EDGES, "counts": snr_hist},
                       "noise_level": {"edges": ex.LEVEL_EDGES, "counts": level_hist}},
        "silent_voice_windows_skipped": int(sum(s["silent_skipped"] for s in shards)),
        "sources": {
            "voice_dir": opts.voice_dir, "noise_dir": opts.noise_dir, "noise_classes": plan.classes_source,
            "voices": [{"file": s["file"], "speaker_id": s["group"], "split": s["split"],
                        "seconds": round(s["num_samples"] / rate, 3)} for s in usable["voice"]],
            "noises": [{"file": s["file"], "noise_class": s["group"], "split": s["split"],
                        "seconds": round(s["num_samples"] / rate, 3)} for s in usable["noise"]],
        },
        "rejects": {"count": len(rejects), "by_reason": reasons, "file": REJECTS_FILE},
        "build_seconds": round(time.time() - started, 2),
    }
    paths.write_atomic(audio_lib.join_path(build_dir, INFO_FILE), json.dumps(info, indent=1).encode())
    paths.delete_tree(work_dir)
    return info


def build_pipeline(p: beam.Pipeline, opts: DatasetOptions, plan: Plan, arguments: dict, started: float,
                   build_dir: str):
    """The job's graph; everything it writes goes under `build_dir`."""
    work_dir = audio_lib.join_path(build_dir, WORK_DIR)
    decoded = {}
    for role, entries, root in (("voice", plan.voices, opts.voice_dir), ("noise", plan.noises, opts.noise_dir)):
        label = "Voices" if role == "voice" else "Noises"
        decoded[role] = (
            p
            | f"List{label}" >> beam.Create(entries)
            | f"Spread{label}" >> beam.Reshuffle()
            | f"Decode{label}" >> beam.ParDo(DecodeSource(role, root, work_dir, opts.config)).with_outputs(
                DecodeSource.REJECTS, main="ok"))
    sources = (decoded["voice"].ok, decoded["noise"].ok) | "AllSources" >> beam.Flatten()
    rejects = (decoded["voice"][DecodeSource.REJECTS], decoded["noise"][DecodeSource.REJECTS]) | "AllRejects" >> beam.Flatten()
    shards = (
        p
        | "ListChunks" >> beam.Create(plan.chunks)
        | "SpreadChunks" >> beam.Reshuffle()
        | "WriteChunks" >> beam.ParDo(WriteChunk(opts, work_dir, build_dir), sources=beam.pvalue.AsList(sources))
        | "GroupByShard" >> beam.GroupByKey()
        | "AssembleShards" >> beam.ParDo(AssembleShard(build_dir)))
    problems = (
        p
        | "StartCheck" >> beam.Create([None])
        | "CheckSources" >> beam.FlatMap(check_sources, sources=beam.pvalue.AsList(sources),
                                         rejects=beam.pvalue.AsList(rejects), counts=plan.counts))
    return (
        p
        | "Start" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize, shards=beam.pvalue.AsList(shards), sources=beam.pvalue.AsList(sources),
                                 rejects=beam.pvalue.AsList(rejects), problems=beam.pvalue.AsList(problems),
                                 opts=opts, plan=plan, arguments=arguments, build_dir=build_dir, started=started))


def default_beam_args(beam_args: Sequence[str], workers: int) -> list[str]:
    """Local default: FnApiRunner, one process per worker (Beam's DirectRunner may try to download
    the Prism runner, which offline machines cannot)."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")
        if workers > 1:
            args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        else:
            args += ["--direct_running_mode=in_memory"]
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        # Worker processes: the job's own progress lines, Beam's warnings and errors.
        args += ["--default_sdk_harness_log_level=WARNING",
                 '--sdk_harness_log_level_overrides={"beam_pipelines": "INFO"}']
    return args


def run_dataset(opts: DatasetOptions, beam_args: Sequence[str] = (), workers: int | None = None,
                arguments: dict | None = None, assume_yes: bool = False) -> dict:
    """Builds the dataset described by `opts`; returns its dataset_info (also written to disk).

    The job writes into a sibling build folder (`OUTPUT.incomplete`); only a finished dataset replaces
    what `opts.output` held, so a failed or killed build leaves an existing dataset as it was.
    `assume_yes` accepts an estimated size larger than the free space of a local output.
    """
    started = time.time()
    layout.check_output(opts.output, opts.overwrite, inputs={"voice_dir": opts.voice_dir, "noise_dir": opts.noise_dir})
    estimate = layout.estimate_bytes(opts.num_examples, opts.config, opts.split_fractions, opts.write_audio,
                                     opts.compression)
    layout.check_space(opts.output, estimate, assume_yes)
    plan = make_plan(opts)
    LOG.info("%d voice files, %d noise files; %s examples in %d chunks, about %.1f MiB", len(plan.voices),
             len(plan.noises), plan.counts, len(plan.chunks), estimate / 2**20)
    build_dir = layout.start_build(opts.output)
    workers = workers or os.cpu_count() or 1
    if logging.getLogger("apache_beam").getEffectiveLevel() < logging.WARNING:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    options = PipelineOptions(default_beam_args(beam_args, workers))
    try:
        with beam.Pipeline(options=options) as p:
            build_pipeline(p, opts, plan, arguments or {}, started, build_dir)
        problems_path = audio_lib.join_path(build_dir, PROBLEMS_FILE)
        if paths.isfile(problems_path):
            raise ValueError("\n".join(json.loads(paths.read_bytes(problems_path))))
    except BaseException:
        # Nothing of a failed build is worth keeping, and the old dataset (if any) was not touched.
        paths.delete_tree(build_dir)
        raise
    layout.replace_with_build(build_dir, opts.output)
    info = json.loads(paths.read_bytes(audio_lib.join_path(opts.output, INFO_FILE)))
    LOG.info("dataset written to %s in %.1f s: %s; %d inputs rejected", opts.output, time.time() - started,
             {k: v["num_examples"] for k, v in info["splits"].items()}, info["rejects"]["count"])
    return info
