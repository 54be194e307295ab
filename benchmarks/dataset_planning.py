"""What the dataset job's launcher holds and how long it plans, for 1 M and 10 M examples.

The corpus is a synthetic file listing (300,000 files: 250,000 LibriSpeech-style utterances of 2,500
speakers and 50,000 noises of 50 classes); planning does everything `make_plan` does after listing
(speaker and noise splits, counts, work items). Each size runs in its own process, so its peak RSS
is its own. Sizes are of what the launcher hands Beam: the Create of work items, the voice and noise
entries, and the side inputs workers receive (every usable source; one summary per shard, with
chunk statistics merged, for Finalize), pickled.

    python benchmarks/dataset_planning.py --json benchmarks/results/dataset_planning.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time

from bench_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VOICES, SPEAKERS, NOISES, CLASSES = 250_000, 2_500, 50_000, 50


def synthetic_listing() -> tuple[list[str], list[str], dict[str, str]]:
    voices = [f"{s}/{c}/{s}-{c}-{u:04d}.flac" for s in range(SPEAKERS) for c in range(10)
              for u in range(VOICES // SPEAKERS // 10)]
    noises = [f"class{c:02d}/noise-{c:02d}-{i:05d}.wav" for c in range(CLASSES) for i in range(NOISES // CLASSES)]
    table = {n: n.split("/")[0] for n in noises}
    return voices, noises, table


def plan_once(num_examples: int) -> dict:
    from beam_pipelines import generation as gen
    from mixing import draw
    from beam_pipelines import splits as splits_lib
    from beam_pipelines.options import DatasetOptions
    from beam_pipelines.planning import Plan, plan_work, split_counts

    opts = DatasetOptions(voice_dir="gs://bucket/voices", noise_dir="gs://bucket/noises", output="gs://bucket/ds",
                          num_examples=num_examples)
    voices, noises, table = synthetic_listing()
    started = time.perf_counter()
    speakers = {f: splits_lib.speaker_of(f) for f in voices}
    classes = {f: splits_lib.noise_class_of(f, table) for f in noises}
    speaker_split = splits_lib.assign_groups(speakers.values(), opts.split_fractions, salt="voice")
    noise_split = splits_lib.assign_groups(noises, opts.split_fractions, salt="noise", strata=classes)
    counts = split_counts(opts.num_examples, opts.split_fractions)
    work = plan_work(counts, opts.config, opts.max_shard_bytes, opts.chunk_size)
    plan = Plan([{"file": f, "path": f"gs://bucket/voices/{f}", "group": speakers[f],
                  "split": speaker_split[speakers[f]]} for f in voices],
                [{"file": f, "path": f"gs://bucket/noises/{f}", "group": classes[f], "split": noise_split[f]}
                 for f in noises], work, counts, "classes.tsv")
    plan.fingerprint(opts)
    seconds = time.perf_counter() - started
    # Side inputs as workers receive them: one record per usable source, one summary per shard.
    sources = [draw.Source(role="voice", file=v["file"], group=v["group"], split=v["split"], num_samples=120_000,
                         key=f"gs://bucket/ds.incomplete/_work/audio/voice-{i:032x}.npy").to_dict()
               for i, v in enumerate(plan.voices)]
    sources += [draw.Source(role="noise", file=n["file"], group=n["group"], split=n["split"], num_samples=40_000,
                          key=f"gs://bucket/ds.incomplete/_work/audio/noise-{i:032x}.npy").to_dict()
                for i, n in enumerate(plan.noises)]
    shards = {(w.split, w.shard, w.num_shards) for w in work}
    stats = gen.ChunkStats.merge([gen.ChunkStats.of_chunk([5.0] * 100, [0.5] * 100, 0)])
    shard_summaries = [{"split": s, "shard": i, "file": f"{s}.tfrecord-{i:05d}-of-{n:05d}", "num_examples": 1000,
                        "num_bytes": 10**8, "stats": stats, "chunks_reused": 0} for s, i, n in shards]
    sizes = {"work items (Create)": len(pickle.dumps(work)),
             "voice + noise entries (Create)": len(pickle.dumps(plan.voices)) + len(pickle.dumps(plan.noises)),
             "side input: sources": len(pickle.dumps(sources)),
             "side input: shard summaries": len(pickle.dumps(shard_summaries))}
    return {"examples": num_examples, "plan_seconds": round(seconds, 2), "work_items": len(work),
            "chunks": plan.num_chunks, "shards": len(shards),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "sizes_mib": {k: round(v / 2**20, 2) for k, v in sizes.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "dataset_planning.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: plan this size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(plan_once(args.one)))
        return
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| examples | plan s | peak RSS MB | work items | chunks | shards | largest Create or side input |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name, mib = max(r["sizes_mib"].items(), key=lambda kv: kv[1])
        print(f"| {r['examples']:,} | {r['plan_seconds']:.1f} | {r['peak_rss_mb']:,.0f} | {r['work_items']:,} | "
              f"{r['chunks']:,} | {r['shards']:,} | {name}: {mib:.1f} MiB |")
    for r in rows:
        print(f"{r['examples']:,}: " + ", ".join(f"{k} {v:.2f} MiB" for k, v in r["sizes_mib"].items()))
    write_report(args.json, {"corpus_files": VOICES + NOISES, "rows": rows}, indent=1, announce=False)


if __name__ == "__main__":
    main()
