"""CPU speed of every model family (and head) through the predictor, in one run on the same audio.

    python benchmarks/family_speed.py --model unet=predictor/pretrained --model blstm-sce=runs/gpu/blstm-sce \
        --snmf runs/eval/snmf.npz --json benchmarks/results/family_speed.json

Generates files of 8 kHz noisy speech-like audio (or reads --input), then for each model
directory and each of its heads times `enhance_files` over all of them (the fastest of --repeats
runs) and reports the real-time factor (processing seconds / audio seconds), next to the
predictor's floor (the same pipeline with a model that returns zeros) and, with --snmf, the
sparse-NMF baseline on the same signals. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from bench_report import write_report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from predict_speed import generate_files  # noqa: E402


def model_spec(value: str) -> tuple[str, str]:
    name, sep, directory = value.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR. Received: {value!r}")
    return name, directory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", type=model_spec, required=True, metavar="NAME=DIR",
                        help="a model directory to time, every head of it; repeat")
    parser.add_argument("--snmf", default=None, metavar="FILE", help="also time a saved sparse-NMF model (.npz)")
    parser.add_argument("--input", default=None, help="folder of audio files; default: generated files")
    parser.add_argument("--total-seconds", type=float, default=120.0, help="audio to generate (default: 120)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="windows per model call (default: 8, the CPU default)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the fastest counts")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import keras

    from predictor.enhance import Enhancer
    from predictor.folders import enhance_files
    from trainer.model_dir import read_model_info

    logging.getLogger("predictor.audio_io").setLevel(logging.ERROR)
    work = tempfile.mkdtemp(prefix="family-speed-")
    try:
        source = args.input
        if source is None:
            source = os.path.join(work, "input")
            generate_files(source, args.total_seconds, 5.0, 30.0, 0)

        def timed(fn) -> float:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return best

        rows = []
        config = None
        for name, directory in args.model:
            info = read_model_info(directory)
            for head in info.get("heads") or [None]:
                enhancer = Enhancer.from_model_dir(directory, head=head, batch_size=args.batch_size)
                config = config or enhancer.config
                out = os.path.join(work, "out")
                summary = enhance_files(enhancer, source, out, overwrite=True, progress_interval=1e9)  # warm-up
                seconds = timed(lambda: enhance_files(enhancer, source, out, overwrite=True, progress_interval=1e9))
                rows.append({"system": name if head in (None, (info.get("heads") or [None])[0]) else f"{name}-{head}",
                             "model_dir": directory, "head": head, "architecture": info["model"].get("architecture"),
                             "parameters": int(enhancer.model.count_params()), "seconds": seconds,
                             "audio_seconds": summary.audio_seconds, "rtf": seconds / summary.audio_seconds})
        floor = Enhancer(lambda x: np.zeros(x.shape[:-1], np.float32), config, "mask", batch_size=args.batch_size)
        out = os.path.join(work, "out-floor")
        summary = enhance_files(floor, source, out, overwrite=True, progress_interval=1e9)
        seconds = timed(lambda: enhance_files(floor, source, out, overwrite=True, progress_interval=1e9))
        rows.append({"system": "predictor floor (no model)", "parameters": 0, "seconds": seconds,
                     "audio_seconds": summary.audio_seconds, "rtf": seconds / summary.audio_seconds})
        if args.snmf:
            from predictor.evaluation.items import load_mono
            from predictor.evaluation.snmf import SparseNMF
            from tfrecord_schema import paths

            snmf = SparseNMF.load(args.snmf)
            signals = [load_mono(paths.join(source, p), config.sample_rate) for p in paths.list_files(source)]
            audio = sum(len(s) for s in signals) / config.sample_rate
            seconds = timed(lambda: [snmf.enhance(s) for s in signals])
            rows.append({"system": "snmf (signals in memory)",
                         "parameters": int(snmf.speech_dictionary.size + snmf.noise_dictionary.size),
                         "seconds": seconds, "audio_seconds": audio, "rtf": seconds / audio})

        header = f"{'system':<28} {'parameters':>11} {'audio s':>8} {'seconds':>8} {'RTF':>7} {'x real time':>11}"
        print(header)
        print("-" * len(header))
        for r in rows:
            print(f"{r['system']:<28} {r['parameters']:>11,} {r['audio_seconds']:>8.1f} {r['seconds']:>8.2f} "
                  f"{r['rtf']:>7.4f} {1 / r['rtf']:>11.1f}")
        result = {"batch_size": args.batch_size, "repeats": args.repeats, "input": args.input or "generated",
                  "rows": rows, "load_average_after": os.getloadavg(),
                  "platform": {"machine": platform.machine(), "processor": platform.processor(),
                               "cpus": os.cpu_count(), "python": platform.python_version(),
                               "keras": keras.__version__, "backend": keras.backend.backend()}}
        if args.json:
            write_report(args.json, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
