"""Dataset job throughput and memory on real recordings.

In one run:
  * a single-process tight loop of the same per-example work (decode the sources once, then draw,
    blend, STFT, encode and write N examples to one file), with no Beam at all;
  * the Beam job (`speech-enhance dataset`) with 1 and with 2 worker processes, at 2,000 and at
    20,000 examples, each in its own process tree whose summed RSS is sampled every 50 ms.
Rates: end to end (N / wall time, start-up and decoding included) and steady state (the extra
examples over the extra time between the two sizes, which cancels the fixed costs).

    python benchmarks/dataset_build.py --data ../shared/data --json benchmarks/results/dataset_build.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from bench_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def tight_loop(voice_dir: str, noise_dir: str, n: int, out_dir: str) -> dict:
    from beam_pipelines import audio as audio_lib
    from beam_pipelines import generation as gen
    from mixing import draw
    from mixing.options import MixOptions
    from beam_pipelines.planning import ChunkSpec
    from tfrecord_schema.config import SpectrogramConfig
    from tfrecord_schema.records import RecordWriter
    from tfrecord_schema.malloc import tune_malloc

    tune_malloc()
    config = SpectrogramConfig()
    arrays, sources = {}, []
    t0 = time.perf_counter()
    for role, root in (("voice", voice_dir), ("noise", noise_dir)):
        for rel in audio_lib.list_audio(root):
            path = os.path.join(root, rel)
            samples, _ = audio_lib.decode_audio(audio_lib.read_bytes(path), path, config.sample_rate)
            if role == "voice" and samples.shape[0] < config.window_samples:
                continue
            arrays[path] = samples
            sources.append(draw.Source(role, rel, "g", "train", int(samples.shape[0]), path))
    decode_s = time.perf_counter() - t0
    table = draw.SplitSources(sources, "train", config.window_samples)
    cache = draw.SourceCache(arrays.__getitem__)
    t0 = time.perf_counter()
    with open(os.path.join(out_dir, "tight.tfrecord"), "wb") as f, RecordWriter(f) as writer:
        for start in range(0, n, 100):
            spec = ChunkSpec("train", 0, 1, 0, 1, start, min(100, n - start))
            for record in gen.generate_chunk(spec, table, cache, MixOptions(), config).records:
                writer.write(record)
    gen_s = time.perf_counter() - t0
    return {"examples": n, "decode_seconds": decode_s, "generate_seconds": gen_s, "examples_per_s": n / gen_s}


def beam_job(voice_dir: str, noise_dir: str, n: int, workers: int, out_dir: str) -> dict:
    out = os.path.join(out_dir, f"ds-{workers}-{n}")
    cmd = [sys.executable, "-m", "speech_enhance", "dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir,
           "--output", out, "--num-examples", str(n), "--workers", str(workers), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"tree": 0, "single": 0}
    stop = threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [parent] + parent.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["single"] = max(peak["single"], max(rss, default=0))
            except psutil.Error:
                pass
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"dataset job failed ({proc.returncode}):\n{err[-3000:]}")
    with open(os.path.join(out, "dataset_info.json")) as f:
        info = json.load(f)
    total_bytes = sum(s["num_bytes"] for s in info["splits"].values())
    shutil.rmtree(out)
    return {"examples": n, "workers": workers, "wall_seconds": wall, "examples_per_s": n / wall,
            "peak_rss_tree_mb": peak["tree"] / 2**20, "peak_rss_process_mb": peak["single"] / 2**20,
            "bytes_per_example": total_bytes / n, "rejects": info["rejects"]["count"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scratch", default=None, help="folder for the datasets (default: a temp dir)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "dataset_build.json"))
    args = parser.parse_args()
    voice_dir = os.path.join(args.data, "speech", "librispeech", "train-clean-100")
    noise_dir = os.path.join(args.data, "noise", "hu-nonspeech")
    scratch = tempfile.mkdtemp(dir=args.scratch)
    try:
        tight = tight_loop(voice_dir, noise_dir, max(args.sizes), scratch)
        os.remove(os.path.join(scratch, "tight.tfrecord"))
        print(f"tight loop: {tight['examples_per_s']:.0f} examples/s", flush=True)
        jobs = []
        for workers in args.workers:
            for n in args.sizes:
                jobs.append(beam_job(voice_dir, noise_dir, n, workers, scratch))
                print(f"beam {workers} worker(s), {n} examples: {jobs[-1]['wall_seconds']:.1f} s, "
                      f"peak RSS {jobs[-1]['peak_rss_tree_mb']:.0f} MB", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    small, large = min(args.sizes), max(args.sizes)
    steady = {}
    for workers in args.workers:
        a = next(j for j in jobs if j["workers"] == workers and j["examples"] == small)
        b = next(j for j in jobs if j["workers"] == workers and j["examples"] == large)
        steady[workers] = (large - small) / max(1e-9, b["wall_seconds"] - a["wall_seconds"]) if large > small else None
        b["steady_examples_per_s"] = steady[workers]
        b["rss_growth_vs_small"] = b["peak_rss_tree_mb"] / a["peak_rss_tree_mb"] - 1
    print()
    print(f"{'run':<28} {'examples':>8} {'wall s':>8} {'ex/s e2e':>9} {'ex/s steady':>11} {'peak RSS MB':>11} {'bytes/ex':>9}")
    print(f"{'tight loop (1 process)':<28} {tight['examples']:>8} {tight['generate_seconds']:>8.1f} "
          f"{tight['examples_per_s']:>9.0f} {tight['examples_per_s']:>11.0f} {'':>11} {'':>9}")
    for j in jobs:
        st = j.get("steady_examples_per_s")
        print(f"{'beam, ' + str(j['workers']) + ' worker(s)':<28} {j['examples']:>8} {j['wall_seconds']:>8.1f} "
              f"{j['examples_per_s']:>9.0f} {(f'{st:.0f}' if st else '-'):>11} {j['peak_rss_tree_mb']:>11.0f} "
              f"{j['bytes_per_example']:>9.0f}")
    if 2 in steady and steady[2]:
        print(f"\n2 workers steady / (2 x tight loop) = {steady[2] / (2 * tight['examples_per_s']):.0%}")
        e2e = next(j for j in jobs if j["workers"] == 2 and j["examples"] == large)
        print(f"2 workers end-to-end / (2 x tight loop) = {e2e['examples_per_s'] / (2 * tight['examples_per_s']):.0%}")
        big = next(j for j in jobs if j["workers"] == 2 and j["examples"] == large)
        print(f"peak RSS at {large} vs {small} (2 workers): {big['rss_growth_vs_small']:+.1%}")
    write_report(args.json, {"tight_loop": tight, "beam": jobs, "cpu_count": os.cpu_count()}, indent=1)


if __name__ == "__main__":
    main()
