"""CPU speed of the streaming family through `speech-enhance predict`, on one core.

For each size at 16 kHz, as the Keras model directory and as its ONNX export, `predict` runs pinned
to one core (`taskset -c 0`) over a SECONDS-long file and over a 1 s file; the difference of the two
wall-clock times over SECONDS - 1 is the real-time factor of the enhancement itself (start-up and
model loading cancel out), and the long run's whole time over SECONDS is the end-to-end one. The
weights are random: the work per frame does not depend on them. Prints a table and writes JSON.

    python benchmarks/stream_speed.py [--seconds 60] [--json benchmarks/results/stream_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _model_dirs(root: str, size: str) -> dict[str, str]:
    from tfrecord_schema.config import SpectrogramConfig
    from trainer.model_dir import save_model_dir
    from tfrecord_schema.stream_stft import StreamSettings
    from trainer.streaming_crn import StreamingCrn

    net = StreamingCrn(StreamSettings.for_sample_rate(16000), size)
    core = net.core_model()
    keras_dir, onnx_dir = os.path.join(root, f"{size}-keras"), os.path.join(root, f"{size}-onnx")
    save_model_dir(core, keras_dir, config=SpectrogramConfig.for_sample_rate(16000), target="mask",
                   model_args={"architecture": "stream-crn", "stream_size": size}, streaming=net.describe(core))
    subprocess.run([sys.executable, "-m", "speech_enhance", "export", "--format", "onnx", keras_dir, onnx_dir],
                   check=True, capture_output=True, env=_env())
    return {"keras": keras_dir, "onnx": onnx_dir}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
                TF_NUM_INTEROP_THREADS="1")


def _predict_seconds(model_dir: str, input_dir: str, output_dir: str) -> float:
    shutil.rmtree(output_dir, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "speech_enhance", "predict", "--model", model_dir,
                    "--input", input_dir, "--output", output_dir], check=True, capture_output=True, env=_env())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "stream_speed.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        for name, seconds in (("long", args.seconds), ("short", 1.0)):
            os.makedirs(os.path.join(root, name))
            sf.write(os.path.join(root, name, "a.wav"), 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
        for size in ("small", "large"):
            for kind, model_dir in _model_dirs(root, size).items():
                long_s = _predict_seconds(model_dir, os.path.join(root, "long"), os.path.join(root, "out"))
                short_s = _predict_seconds(model_dir, os.path.join(root, "short"), os.path.join(root, "out"))
                rows.append({"size": size, "runtime": kind, "seconds_long": long_s, "seconds_short": short_s,
                             "rtf_enhancement": (long_s - short_s) / (args.seconds - 1.0),
                             "rtf_end_to_end": long_s / args.seconds})
    print(f"streaming CRN, 16 kHz, one core (taskset -c 0), {args.seconds:g} s file through `speech-enhance predict`")
    print(f"{'size':<6} {'runtime':<8} {'RTF (enhancement)':>18} {'RTF (end to end)':>17} {'wall (s)':>9}")
    for r in rows:
        print(f"{r['size']:<6} {r['runtime']:<8} {r['rtf_enhancement']:>18.4f} {r['rtf_end_to_end']:>17.4f} "
              f"{r['seconds_long']:>9.1f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"seconds": args.seconds, "cores": 1, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
