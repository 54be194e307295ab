"""Predictor memory: peak RSS of `speech-enhance predict` on one long file, against the file's length.

Each case generates one long file into a temporary folder (seeded: a voice-like harmonic tone with
4 Hz syllables plus white noise, 16-bit wav, written a minute at a time so this script stays small),
then runs `speech-enhance predict` on it as a subprocess of the checkout given by --repo (default:
this one) and reports its peak resident memory: the kernel's own maximum (`ru_maxrss` from
`os.wait4`, exact) and psutil samples every 0.2 s of the process and its children (a check on the
first). The output is checked to have the input's length, rate and channel count.

    python benchmarks/predict_memory.py --json benchmarks/results/predict_memory.json
    python benchmarks/predict_memory.py --repo /tmp/before --label before --cases 20min-48k-stereo \
        --json benchmarks/results/predict_memory.json

Results of several runs (labels, cases) are merged into the --json file, one row per (label, case).
Run the cases one at a time on a quiet machine: a run of the whole-file predictor on the 2-hour case
needs about 9 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (seconds, sample rate in Hz, channels)
CASES = {
    "2h-8k-mono": (7200.0, 8000, 1),
    "20min-48k-stereo": (1200.0, 48000, 2),
    "10min-8k-mono": (600.0, 8000, 1),
    "1s-8k-mono": (1.0, 8000, 1),  # the floor: Python, TensorFlow and the model
}


def generate(path: str, seconds: float, rate: int, channels: int, seed: int = 0) -> None:
    """Writes a 16-bit wav of `seconds` at `rate` Hz, one minute at a time."""
    import soundfile

    rng = np.random.default_rng(seed)
    total = int(round(seconds * rate))
    block = 60 * rate
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=channels, subtype="PCM_16") as f:
        for start in range(0, total, block):
            t = np.arange(start, min(total, start + block)) / rate
            f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.05 * t)  # a slowly gliding pitch
            phase = 2 * np.pi * np.cumsum(f0) / rate
            voice = sum(np.sin(k * phase) / k for k in range(1, 8)) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
            x = 0.05 * voice[:, None] + 0.02 * rng.standard_normal((t.size, channels))
            if channels > 1:
                x[:, 1:] *= 0.7
            f.write(x.astype(np.float32))


def run_predict(repo: str, source: str, output: str, log_path: str, extra: list[str]) -> dict:
    """Runs `speech-enhance predict` of checkout `repo`; returns wall time, exit status and peak RSS."""
    import psutil

    command = [sys.executable, os.path.join(repo, "speech_enhance.py"), "predict", "--input", source,
               "--output", output, "--progress-interval", "60", *extra]
    sampled = [0]
    with open(log_path, "w", encoding="utf-8") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            try:
                parent = psutil.Process(proc.pid)
                while not done.is_set():
                    rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
                    sampled[0] = max(sampled[0], rss)
                    done.wait(0.2)
            except psutil.Error:  # the process ended between two samples
                pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    return {"exit_status": proc.returncode, "wall_seconds": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024.0,  # Linux reports kilobytes
            "sampled_peak_rss_mb": sampled[0] / 2 ** 20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=ROOT, help="checkout whose speech_enhance.py runs (default: this one)")
    parser.add_argument("--label", default="after", help="name of this code version in the table (default: after)")
    parser.add_argument("--cases", nargs="+", default=["2h-8k-mono", "20min-48k-stereo"], choices=sorted(CASES),
                        help="files to measure, one at a time (default: 2h-8k-mono 20min-48k-stereo)")
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--work", default=None,
                        help="folder for the generated inputs and the outputs, kept afterwards "
                             "(default: a temporary folder, removed)")
    parser.add_argument("--json", default=None, help="merge the results into this JSON file")
    args = parser.parse_args(argv)

    import soundfile

    work = args.work or tempfile.mkdtemp(prefix="predict-memory-")
    rows = []
    try:
        for case in args.cases:
            seconds, rate, channels = CASES[case]
            source = os.path.join(work, "input", case, f"{case}.wav")
            if not os.path.isfile(source):
                os.makedirs(os.path.dirname(source), exist_ok=True)
                generate(source + ".part.wav", seconds, rate, channels)
                os.replace(source + ".part.wav", source)
            output = os.path.join(work, f"output-{args.label}", case)
            shutil.rmtree(output, ignore_errors=True)
            extra = ["--model", args.model] if args.model else []
            result = run_predict(os.path.abspath(args.repo), source, output,
                                 os.path.join(work, f"{args.label}-{case}.log"), extra)
            written = os.path.join(output, f"{case}.wav")
            if result["exit_status"] == 0:
                info, source_info = soundfile.info(written), soundfile.info(source)
                same = (info.frames, info.samplerate, info.channels) == (
                    source_info.frames, source_info.samplerate, source_info.channels)
            else:
                same = False
            rows.append({"label": args.label, "case": case, "audio_seconds": seconds, "sample_rate": rate,
                         "channels": channels, **result, "rtf": result["wall_seconds"] / seconds,
                         "output_matches_input_shape": same})
            print(f"{args.label} {case}: exit {result['exit_status']}, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"{result['wall_seconds']:.1f} s", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    header = (f"{'code':<8} {'case':<18} {'audio s':>8} {'rate':>6} {'ch':>3} {'wall s':>8} {'RTF':>7} "
              f"{'peak RSS MB':>11} {'sampled MB':>10} {'exit':>4} {'shape ok':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['label']:<8} {r['case']:<18} {r['audio_seconds']:>8.0f} {r['sample_rate']:>6} {r['channels']:>3} "
              f"{r['wall_seconds']:>8.1f} {r['rtf']:>7.4f} {r['peak_rss_mb']:>11.0f} "
              f"{r['sampled_peak_rss_mb']:>10.0f} {r['exit_status']:>4} {str(r['output_matches_input_shape']):>8}")

    if args.json:
        result = {"runs": []}
        if os.path.isfile(args.json):
            with open(args.json, encoding="utf-8") as f:
                result = json.load(f)
        keep = [r for r in result["runs"] if (r["label"], r["case"]) not in {(n["label"], n["case"]) for n in rows}]
        result["runs"] = keep + rows
        result["platform"] = {"machine": platform.machine(), "processor": platform.processor(),
                              "cpus": os.cpu_count(), "python": platform.python_version(),
                              "memory_gb": _memory_gb()}
        write_report(args.json, result)
    return 0 if all(r["exit_status"] == 0 for r in rows) else 1


def _memory_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2 ** 30


if __name__ == "__main__":
    sys.exit(main())
