"""Input pipeline throughput: the full tf.data pipeline against a raw sequential read of the shards.

    .venv/bin/python benchmarks/input_pipeline.py                       # builds 3000 examples in /tmp
    .venv/bin/python benchmarks/input_pipeline.py --dataset data/demo --json out.json

Measured on the same shards, in the same run (the page cache is warmed first, so both sides read
from memory; on GCS or a cold disk the raw read is the ceiling for both):
    raw file read       Python reads the shard files in 8 MiB chunks (bytes only)
    raw TFRecord read   tf.data.TFRecordDataset over the shards, one after the other, reduced in C++
                        (framing and CRC checks, no parsing)
    pipeline stages     interleave + shuffle + batch; + parse_example/decode_raw; + model input and
                        target (the full `trainer.input_pipeline.make_dataset`), iterated from Python
                        as Keras does
MB/s counts shard bytes on disk. The goal is a full pipeline at >= 50 % of the raw TFRecord MB/s.
Each case is timed --repeats times, the cases taking turns; the best pass counts (the median is in
the JSON). Prints a table and writes JSON; never fails on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Iterator

from bench_report import write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def build_dataset(directory: str, num_examples: int, num_shards: int, compression: str, seed: int,
                  split: str = "train") -> None:
    from tfrecord_schema.config import SpectrogramConfig
    from beam_pipelines.testing import write_dataset

    started = time.perf_counter()
    write_dataset(directory, config=SpectrogramConfig(), splits={split: num_examples}, num_shards=num_shards,
                  compression=compression, seed=seed)
    print(f"built {num_examples} examples in {num_shards} shards in {time.perf_counter() - started:.1f} s: {directory}")


@contextlib.contextmanager
def given_or_built(dataset_dir: str | None, prefix: str, num_examples: int, *, split: str = "train",
                   num_shards: int = 8, compression: str = "", seed: int = 0, keep: bool = False) -> Iterator[str]:
    """`dataset_dir` when a benchmark was given one; else a dataset of `num_examples` generated windows
    (`build_dataset`) in a new temporary folder named `prefix`..., removed on leaving unless `keep`."""
    if dataset_dir is not None:
        yield dataset_dir
        return
    built = tempfile.mkdtemp(prefix=prefix)
    try:
        directory = os.path.join(built, "dataset")
        build_dataset(directory, num_examples, num_shards, compression, seed, split=split)
        yield directory
    finally:
        if not keep:
            shutil.rmtree(built, ignore_errors=True)


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def run(dataset_dir: str, split: str, batch_size: int, repeats: int, shuffle_buffer: int,
        cycle_length: int | None, target: str) -> dict:
    import tensorflow as tf

    from trainer import input_pipeline
    from tfrecord_schema.dataset import Dataset

    dataset = Dataset.open(dataset_dir)
    config = dataset.config
    files = dataset.shard_paths(split)
    total_bytes = sum(tf.io.gfile.stat(f).length for f in files)
    count = dataset.num_examples(split)
    compression = dataset.compression

    def file_read():
        for path in files:
            with tf.io.gfile.GFile(path, "rb") as f:
                while f.read(8 << 20):
                    pass

    def tfrecord_read():
        ds = tf.data.TFRecordDataset(files, compression_type=compression).map(tf.strings.length)
        ds.reduce(tf.constant(0, tf.int64), lambda acc, n: acc + tf.cast(n, tf.int64)).numpy()

    def batched_only():
        ds, _ = input_pipeline._batched_records(
            dataset, split, batch_size, shuffle=True, shuffle_buffer=shuffle_buffer, seed=0,
            repeat=False, drop_remainder=False, deterministic=False, cycle_length=cycle_length)
        n = sum(int(b.shape[0]) for b in ds.prefetch(tf.data.AUTOTUNE))
        assert n == count, (n, count)

    def parsed():
        ds, _ = input_pipeline._batched_records(
            dataset, split, batch_size, shuffle=True, shuffle_buffer=shuffle_buffer, seed=0,
            repeat=False, drop_remainder=False, deterministic=False, cycle_length=cycle_length)
        keys = ("noisy_magnitude", "clean_magnitude")
        ds = ds.map(lambda s: input_pipeline.parse_batch(s, config, keys), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=False).prefetch(tf.data.AUTOTUNE)
        n = sum(int(b["noisy_magnitude"].shape[0]) for b in ds)
        assert n == count, (n, count)

    def full():
        ds = input_pipeline.make_dataset(dataset, split, batch_size=batch_size, target=target, shuffle=True,
                                         shuffle_buffer=shuffle_buffer, seed=0, cycle_length=cycle_length)
        n = sum(int(x.shape[0]) for x, _ in ds)
        assert n == count, (n, count)

    file_read()  # warm the page cache (and TensorFlow's first-use costs)
    tfrecord_read()
    cases = [("raw file read", file_read), ("raw TFRecord read", tfrecord_read),
             ("pipeline: interleave+shuffle+batch", batched_only),
             ("pipeline: + parse_example+decode_raw", parsed),
             ("pipeline: full (+ model input/target, prefetch)", full)]
    # Round-robin over the cases, so that load from other processes hits every case alike.
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            times[name].extend(_timed(fn, 1))
    results = []
    for name, _ in cases:
        best, median = min(times[name]), statistics.median(times[name])
        results.append({"case": name, "seconds_best": best, "seconds_median": median,
                        "mb_per_s": total_bytes / 1e6 / best, "examples_per_s": count / best,
                        "mb_per_s_median": total_bytes / 1e6 / median})
    raw = next(r for r in results if r["case"] == "raw TFRecord read")
    for r in results:
        r["fraction_of_raw_tfrecord"] = r["mb_per_s"] / raw["mb_per_s"]
    return {
        "dataset": dataset_dir, "split": split, "examples": count, "shards": len(files), "bytes": total_bytes,
        "compression": compression, "spectrogram_shape": list(config.shape), "dtype": config.dtype,
        "batch_size": batch_size, "shuffle_buffer": shuffle_buffer, "cycle_length": cycle_length,
        "repeats": repeats, "target": target,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__},
        "results": results,
        "full_pipeline_fraction_of_raw": results[-1]["fraction_of_raw_tfrecord"],
    }


def print_table(report: dict) -> None:
    print(f"\n{report['examples']} examples, {report['shards']} shards, {report['bytes'] / 1e6:.1f} MB "
          f"({report['spectrogram_shape'][0]}x{report['spectrogram_shape'][1]} {report['dtype']}, compression "
          f"{report['compression'] or 'none'}), batch {report['batch_size']}, {report['machine']['cpus']} CPUs, "
          f"best of {report['repeats']}")
    header = f"{'case':<50} {'MB/s':>9} {'examples/s':>11} {'vs raw':>7}"
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(f"{r['case']:<50} {r['mb_per_s']:>9.1f} {r['examples_per_s']:>11.0f} "
              f"{100 * r['fraction_of_raw_tfrecord']:>6.0f}%")
    verdict = "meets" if report["full_pipeline_fraction_of_raw"] >= 0.5 else "misses"
    print(f"full pipeline at {100 * report['full_pipeline_fraction_of_raw']:.0f} % of the raw TFRecord read "
          f"({verdict} the 50 % goal)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="an existing dataset directory (default: build one in a temporary directory)")
    parser.add_argument("--split", default="train", help="split to read (default train)")
    parser.add_argument("--num-examples", type=int, default=3000,
                        help="examples to build when --dataset is not given (default 3000, about 400 MB)")
    parser.add_argument("--num-shards", type=int, default=8, help="shards to build (default 8)")
    parser.add_argument("--compression", choices=["", "GZIP"], default="", help="compression of built shards")
    parser.add_argument("--batch-size", type=int, default=64, help="pipeline batch size (default 64)")
    parser.add_argument("--shuffle-buffer", type=int, default=2048, help="shuffle buffer in examples (default 2048)")
    parser.add_argument("--cycle-length", type=int, default=None,
                        help="shards read in parallel (default min(16, shards))")
    parser.add_argument("--target", choices=["noise", "mask"], default="noise", help="training target (default noise)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed passes per case, taken in turns; the best counts (default 5)")
    parser.add_argument("--json", help="write the report to this JSON file")
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=False,
                        help="keep the built dataset (default: delete it)")
    args = parser.parse_args(argv)

    with given_or_built(args.dataset, "bench-input-", args.num_examples, num_shards=args.num_shards,
                        compression=args.compression, keep=args.keep) as dataset_dir:
        report = run(dataset_dir, args.split, args.batch_size, args.repeats, args.shuffle_buffer,
                     args.cycle_length, args.target)
    print_table(report)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
