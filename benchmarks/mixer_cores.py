"""The mixer alone on every core of a host: one-window waveform examples per second from a source store.

One process per core (spawned) mixes COUNT one-window (1.008 s) waveform examples of the training
split, 64 at a time, after a first batch that fills its source cache; the host's rate is the
processes' examples over the slowest process's time. Prints one line and writes JSON.

    python benchmarks/mixer_cores.py SOURCE_STORE [--count 4000] [--processes N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _mix(args: tuple[str, int, int]) -> float:
    from mixing.on_the_fly import SourceMixer
    from mixing.options import MixOptions
    from tfrecord_schema.config import SpectrogramConfig
    from tfrecord_schema.sources import SourceStore

    store, worker, count = args
    config = SpectrogramConfig.for_sample_rate(SourceStore.open(store).info.sample_rate)
    mixer = SourceMixer.for_config(SourceStore.open(store), "train", MixOptions(), config)
    first = worker * 10 ** 6
    mixer.waveforms(range(first, first + 32))
    start = time.perf_counter()
    for index in range(first, first + count, 64):
        mixer.waveforms(range(index, index + 64))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        seconds = pool.map(_mix, [(args.store, w, args.count) for w in range(args.processes)])
    result = {"processes": args.processes, "examples_per_process": args.count,
              "examples_per_second": args.processes * args.count / max(seconds),
              "per_process": args.count / (sum(seconds) / len(seconds))}
    print(f"mixer alone: {args.processes} processes x {args.count} one-window waveform examples: "
          f"{result['examples_per_second']:.0f} examples/s ({result['per_process']:.0f} per process)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
