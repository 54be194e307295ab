"""The dataset job from a bucket to a bucket, next to the same build on local disk, in one run.

The bucket is a local GCS emulator (tests/gcs_emulator.py, in memory, on 127.0.0.1): this measures
what the job itself adds on gs:// paths (listing prefixes, streaming objects through Beam's gcsio,
per-object renames instead of one folder rename), not a real network. Inputs are real recordings
from ../shared/data, uploaded to the emulator first; both builds use 2 worker processes and give
byte-identical shards (checked here).

    python benchmarks/gcs_build.py --data ../shared/data --num-examples 4000 \
        --json benchmarks/results/gcs_build.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def build(voice_dir: str, noise_dir: str, output: str, n: int, workers: int, env: dict) -> float:
    cmd = [sys.executable, "-m", "speech_enhance", "dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir,
           "--output", output, "--num-examples", str(n), "--workers", str(workers)]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--num-examples", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "gcs_build.json"))
    args = parser.parse_args()

    from gcs_emulator import GcsEmulator
    from tfrecord_schema import paths

    voices = os.path.join(args.data, "speech", "librispeech", "train-clean-100")
    noises = os.path.join(args.data, "noise", "hu-nonspeech")
    with tempfile.TemporaryDirectory() as tmp, GcsEmulator("bench") as gcs, gcs.environ():
        env = {**os.environ, **gcs.env}
        started = time.perf_counter()
        uploaded = 0
        for local, remote in ((voices, gcs.url("in/voices")), (noises, gcs.url("in/noises"))):
            for rel in paths.list_files(local):
                paths.upload_atomic(os.path.join(local, rel), paths.join(remote, rel))
                uploaded += os.path.getsize(os.path.join(local, rel))
        upload_s = time.perf_counter() - started
        rows = []
        for where, voice_dir, noise_dir, output in (
                ("local -> local", voices, noises, os.path.join(tmp, "ds")),
                ("gs:// -> gs://", gcs.url("in/voices"), gcs.url("in/noises"), gcs.url("out/ds"))):
            seconds = build(voice_dir, noise_dir, output, args.num_examples, args.workers, env)
            rows.append({"build": where, "examples": args.num_examples, "workers": args.workers,
                         "seconds": round(seconds, 2), "examples_per_s": round(args.num_examples / seconds, 1)})
            print(f"{where}: {seconds:.1f} s", flush=True)
        info = json.loads(paths.read_text(paths.join(gcs.url("out/ds"), "dataset_info.json")))
        shards = [s["file"] for split in info["splits"].values() for s in split["shards"]]
        identical = all(paths.read_bytes(paths.join(gcs.url("out/ds"), f)) ==
                        paths.read_bytes(os.path.join(tmp, "ds", f)) for f in shards)
        leftovers = [f for f in paths.list_files(gcs.url("out")) if not f.startswith("ds/")]
        # The reference: the emulator alone moving the bytes the job moves (parts written and read back,
        # shards written, then renamed from the build folder into place), in one process, no Beam.
        sizes = [paths.size(paths.join(gcs.url("out/ds"), f)) for f in shards]
        started = time.perf_counter()
        for i, size in enumerate(sizes):
            data = os.urandom(size)
            paths.write_atomic(gcs.url(f"ref/part-{i}"), data)
            paths.read_bytes(gcs.url(f"ref/part-{i}"))
            paths.write_atomic(gcs.url(f"ref/shard-{i}"), data)
            paths.rename(gcs.url(f"ref/shard-{i}"), gcs.url(f"ref/final-{i}"))
        io_s = time.perf_counter() - started
    rows.append({"build": "reference: emulator I/O alone", "examples": args.num_examples, "workers": 1,
                 "seconds": round(io_s, 2), "examples_per_s": round(args.num_examples / io_s, 1)})
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    print(f"\n| build | examples | workers | seconds | examples/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['build']} | {r['examples']:,} | {r['workers']} | {r['seconds']:.1f} | {r['examples_per_s']:,.0f} |")
    print(f"\ngs:// build takes {ratio:.2f}x the local build's time; shards byte-identical: {identical}; "
          f"objects left outside the dataset: {len(leftovers)}; inputs uploaded first: "
          f"{uploaded / 2**20:.0f} MiB in {upload_s:.1f} s (not counted)")
    print(f"gs:// build time over (local build + emulator I/O alone): "
          f"{rows[1]['seconds'] / (rows[0]['seconds'] + io_s):.2f}")
    result = {"rows": rows, "gcs_over_local": round(ratio, 3), "shards_identical": identical,
              "leftover_objects": leftovers, "input_mib": round(uploaded / 2**20, 1), "upload_seconds": round(upload_s, 1)}
    write_report(args.json, result, indent=1, announce=False)


if __name__ == "__main__":
    main()
