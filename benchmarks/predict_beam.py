"""Throughput of `predict --runner fnapi` (the Beam pipeline) against the single-process `predict`.

In one run, on the same generated audio (`predict_speed.generate_files`: lengths log-uniform in
[--min-seconds, --max-seconds], mostly 16 kHz mono wav, every 4th 8 kHz flac, every 6th stereo)
and the same model (default: the shipped one, predictor/pretrained), with the same batch size:
  * `enhance_files`, one process (its threads do the file and STFT work around the model);
  * `beam_predict.run_predict` on Beam's FnApiRunner with --workers processes, start-up included
    (the workers start and load the model inside the timed run, as a user's run does);
and checks that both wrote the same audio (largest sample difference). "x real time" = audio
seconds / wall seconds. Prints a table and writes JSON.

    python benchmarks/predict_beam.py --json benchmarks/results/predict_beam_cpu.json
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--total-seconds", type=float, default=1800.0, help="audio to generate (default: 1800)")
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model call (default: 8, the CPU default)")
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes (default: 2)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import soundfile

    from predict_speed import generate_files
    from predictor.beam_predict import run_predict
    from predictor.enhance import Enhancer, resolve_model_dir
    from predictor.folders import enhance_files
    from predictor.predict_options import PredictOptions

    model_dir = resolve_model_dir(args.model)
    work = tempfile.mkdtemp(prefix="predict_beam_")
    try:
        source = os.path.join(work, "in")
        lengths = generate_files(source, args.total_seconds, args.min_seconds, args.max_seconds, args.seed)
        audio_s = sum(f["seconds"] for f in lengths)
        print(f"{len(lengths)} files, {audio_s:.1f} s of audio; model {model_dir}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPU cores")
        runs = []

        start = time.perf_counter()
        enhancer = Enhancer.from_model_dir(model_dir, batch_size=args.batch_size)
        summary = enhance_files(enhancer, source, os.path.join(work, "single"), progress_interval=1e9)
        seconds = time.perf_counter() - start
        assert summary.written == len(lengths) and not summary.failures, summary
        runs.append({"what": "predict (one process)", "processes": 1, "seconds": seconds})

        start = time.perf_counter()
        summary = run_predict(PredictOptions(source=source, output_dir=os.path.join(work, "beam"),
                                             model_dir=model_dir, runner="fnapi", workers=args.workers,
                                             batch_size=args.batch_size))
        seconds = time.perf_counter() - start
        runs.append({"what": f"predict --runner fnapi --workers {args.workers}", "processes": args.workers,
                     "seconds": seconds, "written": summary.written, "failures": summary.failures})
        if summary.failures:
            print(f"Beam path: {len(summary.failures)} failure(s): {[f['message'] for f in summary.failures][:3]}")

        largest = 0.0
        for folder, _, names in os.walk(os.path.join(work, "single")):
            for name in names:
                path = os.path.join(folder, name)
                a = soundfile.read(path, dtype="float32")[0]
                other = path.replace(os.path.join(work, "single"), os.path.join(work, "beam"))
                if not os.path.exists(other):
                    continue
                b = soundfile.read(other, dtype="float32")[0]
                largest = max(largest, float(np.abs(a - b).max()) if a.size else 0.0)

        header = f"{'what':<36} {'processes':>9} {'seconds':>8} {'x real time':>11}"
        print(header)
        print("-" * len(header))
        for r in runs:
            r["x_real_time"] = audio_s / r["seconds"]
            print(f"{r['what']:<36} {r['processes']:>9} {r['seconds']:>8.1f} {r['x_real_time']:>11.1f}")
        print(f"largest sample difference between the two outputs: {largest:.2e}")
        import keras

        result = {
            "model": os.path.relpath(model_dir, ROOT) if model_dir.startswith(ROOT) else model_dir,
            "batch_size": args.batch_size, "files": len(lengths), "audio_seconds": audio_s,
            "runs": runs, "largest_sample_difference": largest,
            "notes": "wall time, start-up included (Beam: worker processes start and load the model in the run); "
                     "outputs of both written as the inputs' formats (16-bit wav/flac)",
            "platform": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                         "python": platform.python_version(), "keras": keras.__version__,
                         "backend": keras.backend.backend()},
        }
        if args.json:
            write_report(args.json, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
