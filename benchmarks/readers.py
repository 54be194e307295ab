"""Reader throughput: the tf.data pipeline against the PyTorch readers of the shard indexes (readers/).

    .venv/bin/python benchmarks/readers.py                    # builds 3000 examples (128 x 128) in /tmp
    .venv/bin/python benchmarks/readers.py --dataset data/demo --json out.json

Every case makes one full, shuffled pass over the split and yields the U-Net's (x, y) float32
[batch, frames, bins, 1], iterated from Python as Keras does:
    tf.data             trainer.input_pipeline.make_dataset (interleave, shuffle buffer, parse, targets)
    torch stream        readers.torch_data.StreamDataset in a DataLoader (runs of records per read,
                        shuffle buffer, batch decoding in numpy), with --workers worker processes, or
                        in-process with --workers decoding threads (threads=N, num_workers=0)
    torch map-style     readers.torch_data.RecordDataset in a DataLoader whose sampler is a BatchSampler
                        over a RandomSampler (exact global shuffle, one read per record, each batch
                        decoded whole: batch_size=None), likewise with workers or threads; and, for
                        comparison, with batch_size and shuffle=True (examples collated by the DataLoader)
    grain source        readers.grain_source.RecordSource under grain.MapDataset (shuffle, batch),
                        read with --workers threads (only when grain is installed)
Each pass includes starting the pipeline (and the DataLoader's worker processes). The page cache is
warmed first. Each case is timed --repeats times, the cases taking turns; the best pass counts (the
median is in the JSON). The goal: each PyTorch reader at >= 80 % of tf.data's examples/s. Prints a
table and writes JSON; never fails on speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from bench_report import write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from input_pipeline import given_or_built  # noqa: E402  (the same generated dataset as the tf.data benchmark)

DEFAULT_JSON = os.path.join(REPO, "benchmarks", "results", "readers_cpu.json")


def run(dataset_dir: str, split: str, batch_size: int, repeats: int, shuffle_buffer: int, workers: int) -> dict:
    import numpy as np
    import tensorflow as tf
    import torch
    import torch.utils.data

    from readers.torch_data import RecordDataset, StreamDataset
    from tfrecord_schema.dataset import Dataset
    from trainer import input_pipeline

    dataset = Dataset.open(dataset_dir)
    config = dataset.config
    files = dataset.shard_paths(split)
    count = dataset.num_examples(split)
    total_bytes = sum(os.path.getsize(f) for f in files)
    passes = {"n": 0}

    def tf_data():
        ds = input_pipeline.make_dataset(dataset, split, batch_size=batch_size, shuffle=True,
                                         shuffle_buffer=shuffle_buffer, seed=passes["n"])
        return sum(int(x.shape[0]) for x, _ in ds)

    def torch_stream(threads: int, num_workers: int):
        def run_pass():
            stream = StreamDataset(dataset, split, batch_size=batch_size, shuffle=True,
                                   shuffle_buffer=shuffle_buffer, seed=0, epoch=passes["n"], threads=threads)
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                                 prefetch_factor=4 if num_workers else None)
            return sum(int(x.shape[0]) for x, _ in loader)
        return run_pass

    def torch_map(threads: int, num_workers: int, whole_batches: bool = True):
        def run_pass():
            records = RecordDataset(dataset, split, threads=threads)
            generator = torch.Generator().manual_seed(passes["n"])
            workers = dict(num_workers=num_workers, prefetch_factor=4 if num_workers else None)
            if whole_batches:  # the sampler's index lists as items: each batch decoded whole
                sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(records, generator=generator),
                                                        batch_size, drop_last=False)
                loader = torch.utils.data.DataLoader(records, sampler=sampler, batch_size=None, **workers)
            else:  # examples collated by the DataLoader
                loader = torch.utils.data.DataLoader(records, batch_size=batch_size, shuffle=True, generator=generator,
                                                     **workers)
            return sum(int(x.shape[0]) for x, _ in loader)
        return run_pass

    cases = [("tf.data make_dataset", tf_data),
             (f"torch StreamDataset ({workers} workers)", torch_stream(0, workers)),
             (f"torch StreamDataset (in-process, {workers} threads)", torch_stream(workers, 0)),
             (f"torch RecordDataset, global shuffle ({workers} workers)", torch_map(0, workers)),
             (f"torch RecordDataset, global shuffle (in-process, {workers} threads)", torch_map(workers, 0)),
             (f"torch RecordDataset, collated examples ({workers} workers)", torch_map(0, workers, False))]
    try:
        import grain

        from readers.grain_source import RecordSource

        def grain_source():
            ds = grain.MapDataset.source(RecordSource(dataset, split)).shuffle(seed=passes["n"])
            ds = ds.batch(batch_size).to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=4))
            return sum(int(np.shape(x)[0]) for x, _ in ds)

        cases.append((f"grain RecordSource ({workers} threads)", grain_source))
    except ImportError:
        grain = None

    for path in files:  # warm the page cache
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            started = time.perf_counter()
            n = fn()
            times[name].append(time.perf_counter() - started)
            if n != count:
                raise RuntimeError(f"{name} read {n} examples, the split holds {count}")
        passes["n"] += 1
    results = []
    for name, _ in cases:
        best, median = min(times[name]), statistics.median(times[name])
        results.append({"case": name, "seconds_best": best, "seconds_median": median,
                        "examples_per_s": count / best, "examples_per_s_median": count / median,
                        "mb_per_s": total_bytes / 1e6 / best})
    base = results[0]["examples_per_s"]
    for r in results:
        r["fraction_of_tf_data"] = r["examples_per_s"] / base
    return {
        "dataset": dataset_dir, "split": split, "examples": count, "shards": len(files), "bytes": total_bytes,
        "spectrogram_shape": list(config.shape), "dtype": config.dtype, "batch_size": batch_size,
        "shuffle_buffer": shuffle_buffer, "workers": workers, "repeats": repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "torch": torch.__version__,
                    "grain": getattr(grain, "__version__", "installed") if grain else None},
        "results": results,
    }


def print_table(report: dict) -> None:
    print(f"\n{report['examples']} examples, {report['shards']} shards, {report['bytes'] / 1e6:.1f} MB "
          f"({report['spectrogram_shape'][0]}x{report['spectrogram_shape'][1]} {report['dtype']}), batch "
          f"{report['batch_size']}, shuffle buffer {report['shuffle_buffer']}, {report['machine']['cpus']} CPUs, "
          f"best of {report['repeats']}")
    header = f"{'case':<62} {'examples/s':>11} {'median':>8} {'MB/s':>7} {'vs tf.data':>10}"
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(f"{r['case']:<62} {r['examples_per_s']:>11.0f} {r['examples_per_s_median']:>8.0f} "
              f"{r['mb_per_s']:>7.0f} {100 * r['fraction_of_tf_data']:>9.0f}%")
    for r in (r for r in report["results"] if r["case"].startswith("torch")):
        verdict = "meets" if r["fraction_of_tf_data"] >= 0.8 else "misses"
        print(f"{r['case']}: {100 * r['fraction_of_tf_data']:.0f} % of tf.data ({verdict} the 80 % goal)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="an existing indexed dataset (default: build one in a temporary directory)")
    parser.add_argument("--split", default="train", help="split to read (default train)")
    parser.add_argument("--num-examples", type=int, default=3000,
                        help="examples to build when --dataset is not given (default 3000, 128 x 128, about 400 MB)")
    parser.add_argument("--num-shards", type=int, default=8, help="shards to build (default 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--shuffle-buffer", type=int, default=2048, help="shuffle buffer in examples (default 2048)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers, or decoding threads of the in-process cases and grain (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes per case, taken in turns; the best counts (default 3)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"write the report here (default {DEFAULT_JSON})")
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=False,
                        help="keep the built dataset (default: delete it)")
    args = parser.parse_args(argv)

    with given_or_built(args.dataset, "bench-readers-", args.num_examples, num_shards=args.num_shards,
                        keep=args.keep) as dataset_dir:
        report = run(dataset_dir, args.split, args.batch_size, args.repeats, args.shuffle_buffer, args.workers)
    print_table(report)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
