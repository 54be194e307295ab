"""Predictor speed: real-time factor over a folder of files, against the bare model, threads and processes.

In one run, on the same files and the same model:
  * the bare model: `model.predict_on_batch` on as many windows as the predictor ran, in batches of
    the same size, from one preallocated array: the tight reference for the model's share;
  * the file side alone (read, resample, STFT, windows, overlap-add, inverse STFT, resample,
    atomic write) with a model that costs nothing (returns zeros): in threads of one process
    (`file_processes=0`) and in N worker processes (`--file-processes`, default: the number of
    cores), the floor that a faster accelerator cannot go below;
  * `enhance_files` end to end at each batch size, with the file side in threads and in N processes.
Real-time factor (RTF) = processing seconds / audio seconds; "x real time" is its inverse. Each
measurement is repeated (--repeats) and the fastest run counts. The worker processes are started
once per process count (`FileProcesses`) and used by every run of that count, as `speech-enhance
predict --file-processes N` starts them while it loads the model; their start-up (spawn, imports)
is reported on its own ("start-up s"), not in the runs' seconds.

Without --input, files are generated (seeded): lengths log-uniform in [--min-seconds, --max-seconds]
until --total-seconds of audio; `--audio 8k-mono` (the default) writes 8 kHz mono wav, `--audio
mixed` mostly 16 kHz mono wav, every 4th 8 kHz flac, every 6th stereo (this script's folder before
the process runs were added, with --min-seconds 0.3).
Without --model, the full-size U-Net (`trainer.model.build_unet`) with random weights is used.

    python benchmarks/predict_speed.py --model predictor/pretrained --total-seconds 60 \
        --json benchmarks/results/predict_speed_cpu.json
    python3 benchmarks/predict_speed.py --model predictor/pretrained --batch-sizes 256 1024 --total-seconds 1800 \
        --json gpu.json   # on a GPU machine
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


AUDIO_KINDS = ("8k-mono", "mixed")


def generate_files(directory: str, total_seconds: float, min_seconds: float, max_seconds: float, seed: int,
                   kind: str = "mixed") -> list:
    """Writes speech-like files into `directory`; returns their seconds, rates and channels.

    kind "mixed": mostly 16 kHz mono wav, every 4th 8 kHz flac, every 6th stereo; "8k-mono": 8 kHz
    mono wav (the model's rate: no resampling).
    """
    import soundfile

    rng = np.random.default_rng(seed)
    lengths, total, index = [], 0.0, 0
    while total < total_seconds:
        seconds = float(np.exp(rng.uniform(np.log(min_seconds), np.log(max_seconds))))
        seconds = min(seconds, max(min_seconds, total_seconds - total))
        rate, ext, channels = 16000, "wav", 1
        if kind == "8k-mono":
            rate = 8000
        else:
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
    parser.add_argument("--audio", choices=AUDIO_KINDS, default="8k-mono",
                        help="generated files: 8 kHz mono wav, or mixed rates and channels (default: 8k-mono)")
    parser.add_argument("--total-seconds", type=float, default=180.0, help="audio to generate (default: 180)")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="shortest generated file (default: 5)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest generated file (default: 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.5],
                        help="window overlaps to time (default: 0.5, the predictor's default)")
    parser.add_argument("--file-processes", type=int, nargs="+", default=[os.cpu_count() or 1], metavar="N",
                        help="worker process counts to time the file side with (default: the number of cores, "
                             f"{os.cpu_count()} here)")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads of the threaded runs (default: the predictor's, cores up to 16)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each measurement; the fastest counts (others' load only slows runs down)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.file_processes):
        parser.error(f"--file-processes must be at least 1 (the threaded runs are always timed). "
                     f"Received: {args.file_processes}")

    import keras

    from predictor.enhance import DEFAULT_WORKERS, Enhancer
    from predictor.folders import enhance_files

    # Random weights scale the magnitudes wildly, so outputs clip; the warnings would drown the table.
    logging.getLogger("predictor.audio_io").setLevel(logging.ERROR)
    from predictor.file_processes import FileProcesses
    from tfrecord_schema.config import SpectrogramConfig

    workers = DEFAULT_WORKERS if args.workers is None else args.workers
    work = tempfile.mkdtemp(prefix="predict-speed-")
    pools: dict[int, FileProcesses] = {}
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
            lengths = generate_files(source, args.total_seconds, args.min_seconds, args.max_seconds, args.seed,
                                     kind=args.audio)
        flops = conv_flops(model)
        print(f"model: {model.count_params():,} parameters, {flops / 1e9:.2f} GFLOP per window of "
              f"{config.window_seconds:.3f} s; backend {keras.backend.backend()}; devices: {_devices()}; "
              f"{os.cpu_count()} CPU cores; threads {workers}, file processes {args.file_processes}")

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

        startup: dict[int, float] = {}
        for processes in args.file_processes:
            pools[processes] = FileProcesses(processes)
            startup[processes] = pools[processes].wait_ready()
            print(f"{processes} file processes started in {startup[processes]:.2f} s")

        def files_run(enhancer, out: str, processes: int):
            return lambda: enhance_files(enhancer, source, out, overwrite=True, progress_interval=1e9,
                                         file_processes=pools[processes] if processes else 0)

        runs = []
        for overlap in args.overlaps:
            floor = Enhancer(lambda x: np.zeros(x.shape[:-1], np.float32), config, target, batch_size=64,
                             overlap=overlap, workers=workers)
            out = os.path.join(work, "out-floor")
            summary = enhance_files(floor, source, out, overwrite=True, progress_interval=1e9)
            windows, audio_s = floor.windows_run, summary.audio_seconds
            print(f"{summary.written} files, {audio_s:.1f} s of audio, {windows} windows "
                  f"at {100 * overlap:.0f}% overlap")
            for processes in [0, *args.file_processes]:
                seconds = timed(files_run(floor, out, processes))
                runs.append({"what": "pipeline, no model", "file_processes": processes, "overlap": overlap,
                             "batch_size": 64, "windows": windows, "seconds": seconds,
                             "startup_seconds": startup.get(processes), "rtf": seconds / audio_s})
            x = np.random.default_rng(0).standard_normal((windows, *config.shape, 1)).astype(np.float32)
            for b in args.batch_sizes:
                def bare() -> None:
                    for start in range(0, windows, b):
                        model.predict_on_batch(x[start: start + b])

                seconds = timed(bare)
                runs.append({"what": "bare model.predict_on_batch", "file_processes": None, "overlap": overlap,
                             "batch_size": b, "windows": windows, "seconds": seconds, "startup_seconds": None,
                             "rtf": seconds / audio_s})
                for processes in [0, *args.file_processes]:
                    enhancer = Enhancer(model, config, target, batch_size=b, overlap=overlap,
                                        workers=0 if processes else workers)
                    before = enhancer.windows_run
                    seconds = timed(files_run(enhancer, os.path.join(work, f"out-{b}-{processes}"), processes))
                    ran = (enhancer.windows_run - before) // args.repeats
                    runs.append({"what": "predictor (files)", "file_processes": processes, "overlap": overlap,
                                 "batch_size": b, "windows": ran, "seconds": seconds,
                                 "startup_seconds": startup.get(processes), "rtf": seconds / audio_s})

        header = (f"{'what':<28} {'file side':>13} {'overlap':>7} {'batch':>5} {'windows':>7} {'seconds':>8} "
                  f"{'RTF':>8} {'x real time':>11} {'ms/window':>9} {'start-up s':>10}")
        print(header)
        print("-" * len(header))
        for r in runs:
            r["x_real_time"] = 1.0 / r["rtf"]
            r["ms_per_window"] = 1000.0 * r["seconds"] / r["windows"]
            side = {None: "", 0: f"{workers} threads"}.get(r["file_processes"], f"{r['file_processes']} processes")
            started = f"{r['startup_seconds']:.2f}" if r["startup_seconds"] is not None else ""
            print(f"{r['what']:<28} {side:>13} {r['overlap']:>7.2f} {r['batch_size']:>5} {r['windows']:>7} "
                  f"{r['seconds']:>8.2f} {r['rtf']:>8.4f} {r['x_real_time']:>11.1f} {r['ms_per_window']:>9.2f} "
                  f"{started:>10}")
        result = {
            "model": args.model or "trainer.model.build_unet (random weights)", "parameters": model.count_params(),
            "gflop_per_window": flops / 1e9, "spectrogram": config.to_dict(), "target": target,
            "overlaps": args.overlaps, "repeats": args.repeats, "input": args.input or "generated",
            "audio": None if args.input else {"kind": args.audio, "min_seconds": args.min_seconds,
                                              "max_seconds": args.max_seconds, "seed": args.seed},
            "threads": workers, "file_processes": args.file_processes, "file_processes_startup_seconds": startup,
            "files": summary.written,
            "audio_seconds": audio_s, "generated_files": lengths, "runs": runs,
            "load_average_before_after": [load_before, os.getloadavg()],
            "platform": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                         "python": platform.python_version(), "keras": keras.__version__,
                         "backend": keras.backend.backend(), "devices": _devices()},
        }
        if args.json:
            write_report(args.json, result)
    finally:
        for pool in pools.values():
            pool.close()
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
