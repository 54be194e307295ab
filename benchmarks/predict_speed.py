"""Predictor speed: real-time factor over a folder of mixed-length files, against the bare model.

In one run, on the same files and the same model:
  * `enhance_files` (read, resample, STFT, windows, model, overlap-add, inverse STFT, resample,
    atomic write) at each batch size;
  * the bare model: `model.predict_on_batch` on as many windows as the predictor ran, in batches of
    the same size, from one preallocated array: the tight reference for the model's share;
  * the predictor with a model that costs nothing (returns zeros): everything but the model, the
    floor that a faster accelerator cannot go below.
Real-time factor (RTF) = processing seconds / audio seconds; "x real time" is its inverse. Each
measurement is repeated (--repeats) and the fastest run counts.

Without --input, files are generated (seeded): lengths log-uniform in [--min-seconds, --max-seconds]
until --total-seconds of audio, mostly 16 kHz mono wav, every 4th 8 kHz flac, every 6th stereo.
Without --model, the full-size U-Net (`trainer.model.build_unet`) with random weights is used.

    python benchmarks/predict_speed.py --json benchmarks/results/predict_speed_cpu.json
    python benchmarks/predict_speed.py --model models/demo --batch-sizes 64 256 --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def generate_files(directory: str, total_seconds: float, min_seconds: float, max_seconds: float, seed: int) -> list:
    import soundfile

    rng = np.random.default_rng(seed)
    lengths, total, index = [], 0.0, 0
    while total < total_seconds:
        seconds = float(np.exp(rng.uniform(np.log(min_seconds), np.log(max_seconds))))
        seconds = min(seconds, max(min_seconds, total_seconds - total))
        rate, ext, channels = 16000, "wav", 1
        if index % 4 == 3:
            rate, ext = 8000, "flac"
        if index % 6 == 5:
            channels = 2
        n = int(seconds * rate)
        t = np.arange(n) / rate
        f0 = rng.uniform(100, 220)
        voice = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        voice *= np.clip(np.sin(2 * np.pi * 4 * t), 0, None)  # syllables at 4 Hz
        x = 0.05 * voice + 0.02 * rng.standard_normal(n)
        if channels == 2:
            x = np.stack([x, 0.7 * x], axis=1)
        sub = os.path.join(directory, f"group{index % 3}")
        os.makedirs(sub, exist_ok=True)
        soundfile.write(os.path.join(sub, f"file{index:03d}.{ext}"), x.astype(np.float32), rate)
        lengths.append({"seconds": seconds, "rate": rate, "channels": channels})
        total += seconds
        index += 1
    return lengths


def conv_flops(model) -> int:
    """Multiply-adds x 2 of the Conv2D layers (the rest of the U-Net is negligible), per window."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2 * h * w * kh * kw * c_in * c_out
    return int(total)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory; default: full-size U-Net, random weights")
    parser.add_argument("--input", default=None, help="folder of audio files; default: generated files")
    parser.add_argument("--total-seconds", type=float, default=180.0, help="audio to generate (default: 180)")
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.5],
                        help="window overlaps to time (default: 0.5, the predictor's default)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each measurement; the fastest counts (others' load only slows runs down)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import keras

    from predictor.enhance import Enhancer, enhance_files

    # Random weights scale the magnitudes wildly, so outputs clip; the warnings would drown the table.
    logging.getLogger("predictor.audio_io").setLevel(logging.ERROR)
    from tfrecord_schema.config import SpectrogramConfig

    work = tempfile.mkdtemp(prefix="predict-speed-")
    try:
        if args.model:
            from trainer.model_dir import load_model_dir

            model, info = load_model_dir(args.model)
            config, target = info["config"], info["target"]
        else:
            from trainer.model import build_unet

            config, target = SpectrogramConfig(), "noise"
            model = build_unet(config)
        source = args.input
        lengths = None
        if source is None:
            source = os.path.join(work, "input")
            lengths = generate_files(source, args.total_seconds, args.min_seconds, args.max_seconds, args.seed)
        flops = conv_flops(model)
        print(f"model: {model.count_params():,} parameters, {flops / 1e9:.2f} GFLOP per window of "
              f"{config.window_seconds:.3f} s; backend {keras.backend.backend()}; devices: {_devices()}")

        # Warm up: trace the predict function for a full and a partial batch of every size.
        for b in args.batch_sizes:
            for n in (b, max(1, b // 2 + 1)):
                model.predict_on_batch(np.zeros((n, *config.shape, 1), np.float32))

        load_before = os.getloadavg()

        def timed(fn) -> float:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return best

        runs = []
        for overlap in args.overlaps:
            floor = Enhancer(lambda x: np.zeros(x.shape[:-1], np.float32), config, target, batch_size=64,
                             overlap=overlap)
            out = os.path.join(work, "out-floor")
            summary = enhance_files(floor, source, out, overwrite=True, progress_interval=1e9)
            windows, audio_s = floor.windows_run, summary.audio_seconds
            print(f"{summary.written} files, {audio_s:.1f} s of audio, {windows} windows "
                  f"at {100 * overlap:.0f}% overlap")
            seconds = timed(lambda: enhance_files(floor, source, out, overwrite=True, progress_interval=1e9))
            runs.append({"what": "pipeline, no model", "overlap": overlap, "batch_size": 64,
                         "windows": windows, "seconds": seconds, "rtf": seconds / audio_s})
            x = np.random.default_rng(0).standard_normal((windows, *config.shape, 1)).astype(np.float32)
            for b in args.batch_sizes:
                enhancer = Enhancer(model, config, target, batch_size=b, overlap=overlap)
                out = os.path.join(work, f"out-{b}")

                def bare() -> None:
                    for start in range(0, windows, b):
                        model.predict_on_batch(x[start: start + b])

                for what, fn in (("predictor (files)",
                                  lambda: enhance_files(enhancer, source, out, overwrite=True, progress_interval=1e9)),
                                 ("bare model.predict_on_batch", bare)):
                    seconds = timed(fn)
                    runs.append({"what": what, "overlap": overlap, "batch_size": b, "windows": windows,
                                 "seconds": seconds, "rtf": seconds / audio_s})

        header = (f"{'what':<30} {'overlap':>7} {'batch':>5} {'windows':>7} {'seconds':>8} {'RTF':>8} "
                  f"{'x real time':>11} {'ms/window':>9}")
        print(header)
        print("-" * len(header))
        for r in runs:
            r["x_real_time"] = 1.0 / r["rtf"]
            r["ms_per_window"] = 1000.0 * r["seconds"] / r["windows"]
            print(f"{r['what']:<30} {r['overlap']:>7.2f} {r['batch_size']:>5} {r['windows']:>7} "
                  f"{r['seconds']:>8.2f} {r['rtf']:>8.4f} "
                  f"{r['x_real_time']:>11.1f} {r['ms_per_window']:>9.2f}")
        result = {
            "model": args.model or "trainer.model.build_unet (random weights)", "parameters": model.count_params(),
            "gflop_per_window": flops / 1e9, "spectrogram": config.to_dict(), "target": target,
            "overlaps": args.overlaps, "repeats": args.repeats, "input": args.input or "generated",
            "files": summary.written,
            "audio_seconds": audio_s, "generated_files": lengths, "runs": runs,
            "load_average_before_after": [load_before, os.getloadavg()],
            "platform": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                         "python": platform.python_version(), "keras": keras.__version__,
                         "backend": keras.backend.backend(), "devices": _devices()},
        }
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _devices() -> list:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices()]
    if keras.backend.backend() == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    return []


if __name__ == "__main__":
    sys.exit(main())
