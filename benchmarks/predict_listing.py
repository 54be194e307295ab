"""What `predict --runner` costs its launcher before the pipeline starts: listing and planning the
inputs (`folders.plan_jobs`: outputs, duplicates, the input-overwrite check, resume skips) and writing
the job manifest (`beam_predict.JobManifest`), for 100,000 and 1,000,000 files, and what the job
graph would weigh with the list of files inside it (`beam.Create`, as before) and with the manifest.

The inputs are empty `.wav` files in a temporary folder (planning opens none of them), 1,000 per
sub-folder, each named with a random-looking token (`file_name`). `--gcs N` also plans N objects in
a bucket of the local GCS emulator (tests/gcs_emulator.py: in memory on 127.0.0.1, so its listing
speed says little about a real bucket's). Each measurement runs in its own process, so its peak RSS
(ru_maxrss) is its own; the baseline is that process's RSS after its imports (Beam, the predictor).

    python benchmarks/predict_listing.py --sizes 100000 1000000 --gcs 10000 \
        --json benchmarks/results/predict_listing.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from bench_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

FILES_PER_FOLDER = 1000


def file_name(i: int) -> str:
    """The `i`-th input's relative path: a folder of 1,000 and a name with a random-looking 16-digit
    token (as uploads and recorders name files), so that the names compress as real ones do, not as
    a counter does (Beam compresses what it pickles into the graph)."""
    token = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=8).hexdigest()
    return f"{i // FILES_PER_FOLDER:06d}/rec-{token}.wav"


def make_inputs(root: str, count: int) -> str:
    """`count` empty wav files under `root`/in (`file_name`)."""
    source = os.path.join(root, "in")
    for start in range(0, count, FILES_PER_FOLDER):
        os.makedirs(os.path.join(source, f"{start // FILES_PER_FOLDER:06d}"))
        for i in range(start, min(count, start + FILES_PER_FOLDER)):
            open(os.path.join(source, file_name(i)), "wb").close()
    return source


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_plan(source: str, output: str) -> dict:
    """In a child process: plan_jobs, then the manifest written, as `run_predict` does."""
    import apache_beam  # noqa: F401  (imported by the launcher anyway; not counted)

    from predictor.job_manifest import JobManifest
    from predictor.output_folder import plan_jobs
    from tfrecord_schema import paths

    baseline = rss_mb()
    started = time.perf_counter()
    jobs, summary = plan_jobs(source, output)
    planned = time.perf_counter()
    after_plan = rss_mb()
    manifest = JobManifest(output)
    shards = manifest.write(jobs)
    written = time.perf_counter()
    size = sum(paths.size(path) for path, _ in shards)
    manifest.remove()
    return {"files": summary.total, "jobs": len(jobs), "plan_s": planned - started, "manifest_s": written - planned,
            "shards": len(shards), "manifest_mb": size / 2 ** 20, "baseline_rss_mb": baseline,
            "rss_after_plan_mb": after_plan, "peak_rss_mb": peak_mb(),
            "peak_above_baseline_mb": peak_mb() - baseline}


def measure_graph(source: str, output: str) -> dict:
    """In a child process: the pipeline's graph (`Pipeline.to_runner_api`, what a runner is sent) with
    the files in a `beam.Create`, as before, and with the manifest's shards."""
    import apache_beam as beam

    from predictor.job_manifest import JobManifest, ReadJobs
    from predictor.output_folder import plan_jobs

    jobs, _ = plan_jobs(source, output)
    shards = JobManifest(output).num_shards(len(jobs))
    fake_shards = [(os.path.join(output, f".predict-jobs-1-00000000/jobs-{k:05d}-of-{shards:05d}.jsonl"), 10_000)
                   for k in range(shards)]
    out = {}
    for name, make in (("create", lambda p: p | beam.Create(jobs) | beam.Reshuffle()),
                       ("manifest", lambda p: p | ReadJobs(fake_shards))):
        p = beam.Pipeline()
        make(p)
        started = time.perf_counter()
        out[f"graph_{name}_mb"] = len(p.to_runner_api().SerializeToString()) / 2 ** 20
        out[f"graph_{name}_s"] = time.perf_counter() - started
    return out


def measure_before(source: str, output: str) -> dict:
    """In a child process, with the code of `--before` first on sys.path: what the launcher did
    before the manifest, `plan_jobs` and the files in a `beam.Create` of the job graph."""
    import apache_beam as beam

    sys.path.insert(0, os.environ["PREDICT_LISTING_BEFORE"])
    from predictor.output_folder import plan_jobs

    baseline = rss_mb()
    started = time.perf_counter()
    jobs, summary = plan_jobs(source, output)
    planned = time.perf_counter()
    p = beam.Pipeline()
    _ = p | beam.Create(list(jobs)) | beam.Reshuffle()
    graph = len(p.to_runner_api().SerializeToString())
    return {"files": summary.total, "before_plan_s": planned - started,
            "before_plan_and_graph_s": time.perf_counter() - started, "before_graph_mb": graph / 2 ** 20,
            "before_peak_rss_mb": peak_mb(), "before_peak_above_baseline_mb": peak_mb() - baseline}


def child(kind: str, source: str, output: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, source, output], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gcs_case(count: int, work: str) -> dict:
    from gcs_emulator import GcsEmulator

    with GcsEmulator() as gcs:
        with gcs.environ():
            from apache_beam.io.gcp import gcsio

            bucket = gcsio.GcsIO().client.bucket(gcs.bucket)
            started = time.perf_counter()
            for i in range(count):
                bucket.blob(f"listing/in/{file_name(i)}").upload_from_string(b"")
            upload_s = time.perf_counter() - started
        result = child("plan", gcs.url("listing/in"), gcs.url("listing/out"), gcs.env)
    result.update(where="gs:// (emulator)", upload_s=upload_s)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="local input counts")
    parser.add_argument("--gcs", type=int, default=0, help="also this many objects in the GCS emulator (0: none)")
    parser.add_argument("--graph-up-to", type=int, default=1_000_000,
                        help="measure the job graph's size for sizes up to this (building the Create is slow)")
    parser.add_argument("--before", default=None,
                        help="a copy of the code before the manifest (e.g. `git archive HEAD | tar -x -C DIR`): "
                             "measure its launcher too")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, source, output = args.child
        measure = {"plan": measure_plan, "graph": measure_graph, "before": measure_before}[kind]
        print(json.dumps(measure(source, output)))
        return 0

    rows = []

    def save() -> None:  # after every row: a long run that is stopped keeps what it measured
        if args.json:
            write_report(args.json, {"rows": rows, "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
                         announce=False)

    for count in args.sizes:
        work = tempfile.mkdtemp(prefix="predict-listing-")
        try:
            started = time.perf_counter()
            source = make_inputs(work, count)
            made = time.perf_counter() - started
            row = {"where": "local", "create_files_s": made}
            row.update(child("plan", source, os.path.join(work, "out")))
            if count <= args.graph_up_to:
                row.update(child("graph", source, os.path.join(work, "out")))
            if args.before:
                row.update(child("before", source, os.path.join(work, "out"),
                                 {"PREDICT_LISTING_BEFORE": os.path.abspath(args.before)}))
            rows.append(row)
            save()
            print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.gcs:
        row = gcs_case(args.gcs, tempfile.gettempdir())
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)

    print()
    print("| inputs | files | plan s | manifest s | shards | manifest MB | peak RSS MB (above baseline) "
          "| graph MB: Create / manifest | before: plan + Create s, peak RSS MB (above baseline) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        graph = (f"{r['graph_create_mb']:.1f} / {r['graph_manifest_mb']:.3f}" if "graph_create_mb" in r else "n/a")
        before = (f"{r['before_plan_and_graph_s']:.1f} s, {r['before_peak_rss_mb']:.0f} "
                  f"({r['before_peak_above_baseline_mb']:.0f})" if "before_peak_rss_mb" in r else "n/a")
        print(f"| {r['where']} | {r['files']:,} | {r['plan_s']:.1f} | {r['manifest_s']:.1f} | {r['shards']} "
              f"| {r['manifest_mb']:.1f} | {r['peak_rss_mb']:.0f} ({r['peak_above_baseline_mb']:.0f}) | {graph} "
              f"| {before} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
