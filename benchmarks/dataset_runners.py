"""The same dataset build on Beam's FnApiRunner and on Beam's DaskRunner, in one run.

Each build is `speech-enhance dataset` in its own process with the same arguments and the same
number of local workers (FnApiRunner: SDK worker processes; DaskRunner: a LocalCluster of worker
processes with one thread each, started and closed by the command). Wall time is end to end
(start-up, cluster start, decoding included); the shards of every run are compared byte for byte.

    python benchmarks/dataset_runners.py --data ../shared/data --json benchmarks/results/dataset_runners.json
    python benchmarks/dataset_runners.py --demo          # the built-in demo corpus instead
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNERS = {"FnApiRunner": [], "DaskRunner": ["--runner", "DaskRunner"]}


def shard_digests(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if ".tfrecord-" in name:
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def build(runner: str, inputs: list[str], n: int, workers: int, out: str) -> dict:
    cmd = [sys.executable, "-m", "speech_enhance", "dataset", *inputs, "--output", out, "--num-examples", str(n),
           "--workers", str(workers), *RUNNERS[runner]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{runner} build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "dataset_info.json")) as f:
        info = json.load(f)
    return {"runner": runner, "examples": n, "workers": workers, "wall_seconds": wall, "examples_per_s": n / wall,
            "job_seconds": info["build_seconds"], "rejects": info["rejects"]["count"],
            "shards": shard_digests(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--demo", action="store_true", help="use the built-in demo corpus")
    parser.add_argument("--examples", type=int, nargs="+", default=[2000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="builds per runner, alternating runners")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "dataset_runners.json"))
    args = parser.parse_args()
    scratch = tempfile.mkdtemp()
    try:
        if args.demo:
            sys.path.insert(0, ROOT)
            from beam_pipelines.demo import make_demo_corpus

            voice_dir, noise_dir = make_demo_corpus(os.path.join(scratch, "demo_corpus"))
        else:
            voice_dir = os.path.join(args.data, "speech", "librispeech", "train-clean-100")
            noise_dir = os.path.join(args.data, "noise", "hu-nonspeech")
        inputs = ["--voice-dir", voice_dir, "--noise-dir", noise_dir]
        runs = []
        for n in args.examples:
            for i in range(args.repeat):
                for runner in RUNNERS:
                    out = os.path.join(scratch, f"{runner}-{i}", "ds")  # same folder name: same dataset_info
                    runs.append(build(runner, inputs, n, args.workers, out))
                    print(f"{runner}, {n} examples: {runs[-1]['wall_seconds']:.1f} s", flush=True)
                    shutil.rmtree(os.path.dirname(out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    identical = all(r["shards"] == next(q for q in runs if q["examples"] == r["examples"])["shards"] for r in runs)
    print()
    print(f"{'runner':<14} {'workers':>7} {'examples':>8} {'wall s':>7} {'ex/s':>6} {'job s':>6}")
    for r in runs:
        del r["shards"]  # compared above; the digests need not go into the results
        print(f"{r['runner']:<14} {r['workers']:>7} {r['examples']:>8} {r['wall_seconds']:>7.1f} "
              f"{r['examples_per_s']:>6.0f} {r['job_seconds']:>6.1f}")
    print(f"\nshards byte-identical across runners (per size): {identical}")
    write_report(args.json, {"inputs": "demo corpus" if args.demo else inputs, "runs": runs,
                             "shards_identical": identical, "cpu_count": os.cpu_count()}, indent=1)


if __name__ == "__main__":
    main()
