"""Training throughput of the U-Net fed by the tf.data pipeline vs. fed from memory.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/train_throughput.py --dataset data/demo \
        --batch-size 256 --precision bfloat16 --steps 200 --json out.json
    .venv/bin/python benchmarks/train_throughput.py --num-examples 2000 --batch-size 16 --steps 30   # CPU smoke run

Both runs train the same freshly built model (Adam + Huber, same batch size, precision and XLA
setting) through `model.fit` for `--steps` steps; only the input differs:
    pipeline    `trainer.input_pipeline.make_dataset` (interleave, shuffle, batch, parse, targets,
                prefetch), as `trainer.train` uses it
    in-memory   `--memory-batches` batches taken from the same pipeline beforehand and replayed
                from host memory (no reading, parsing or target computation)
Steps before `--warmup-steps` (compilation, autotuning) are not timed; the timer synchronises
with the device at both ends. A ratio near 1.0 means the input pipeline keeps the accelerator fed.
Prints a table and writes JSON; never fails on speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from bench_report import write_report
from input_pipeline import given_or_built

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainer.cli import BACKENDS  # noqa: E402  (Keras-free, like trainer.config)
from trainer.config import PRECISIONS, TARGETS, TrainConfig  # noqa: E402

_DEFAULT = TrainConfig()
# TrainConfig's precisions, plus the short names bfloat16 and float16 for the mixed ones.
_PRECISIONS = {**{p: p for p in PRECISIONS}, **{p.split("_")[1]: p for p in PRECISIONS if p.startswith("mixed_")}}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="dataset directory (local or gs://); default: build --num-examples in /tmp")
    parser.add_argument("--num-examples", type=int, default=2000,
                        help="examples (128x128) to build when --dataset is not given (default 2000)")
    parser.add_argument("--split", default="train", help="split to train on (default train)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size (default 256)")
    parser.add_argument("--precision", choices=sorted(_PRECISIONS), default="float32",
                        help="float32, or bfloat16/float16 mixed precision (default float32)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run, warm-up included (default 200)")
    parser.add_argument("--warmup-steps", type=int, default=20, help="untimed steps at the start (default 20)")
    parser.add_argument("--memory-batches", type=int, default=8,
                        help="distinct batches replayed by the in-memory run (default 8)")
    parser.add_argument("--base-filters", type=int, default=_DEFAULT.base_filters,
                        help=f"U-Net base filters (default {_DEFAULT.base_filters}, the reference)")
    parser.add_argument("--depth", type=int, default=_DEFAULT.depth,
                        help=f"U-Net depth (default {_DEFAULT.depth}, the reference)")
    parser.add_argument("--target", choices=TARGETS, default=_DEFAULT.target,
                        help=f"training target (default {_DEFAULT.target})")
    parser.add_argument("--shuffle-buffer", type=int, default=_DEFAULT.shuffle_buffer,
                        help=f"pipeline shuffle buffer (default {_DEFAULT.shuffle_buffer})")
    parser.add_argument("--steps-per-execution", type=int, default=_DEFAULT.steps_per_execution,
                        help=f"batches per compiled call (default {_DEFAULT.steps_per_execution})")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="XLA-compile the train step (default: Keras decides)")
    parser.add_argument("--modes", nargs="+", choices=["pipeline", "memory"], default=["pipeline", "memory"],
                        help="which runs to time (default both)")
    parser.add_argument("--json", help="write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.warmup_steps < 1 or args.steps <= args.warmup_steps:
        parser.error(f"--steps must exceed --warmup-steps >= 1. Received: steps={args.steps}, "
                     f"warmup_steps={args.warmup_steps}")
    return args


def step_timer(warmup_steps: int, steps: int):
    """A Keras callback that clocks the training steps from `warmup_steps` (compilation and pipeline
    start-up left out) to `steps`; `.rate(batch_size)` gives the timed steps, seconds, examples/s and
    ms/step. Keras is imported here, once the backend is chosen."""
    import keras
    import numpy as np

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks = {}

        def on_train_batch_end(self, batch, logs=None):
            done = batch + 1  # steps finished (with steps_per_execution, `batch` is the last of the call)
            mark = "start" if "start" not in self.marks and done >= warmup_steps else (
                "end" if done >= steps else None)
            if mark:
                # Reading the loss waits for the device, so the clock covers finished work only.
                np.asarray(keras.ops.convert_to_numpy(logs["loss"]))
                self.marks[mark] = (done, time.perf_counter())

        def rate(self, batch_size: int) -> dict:
            (s0, t0), (s1, t1) = self.marks["start"], self.marks["end"]
            seconds = t1 - t0
            return {"timed_steps": s1 - s0, "seconds": seconds, "examples_per_s": (s1 - s0) * batch_size / seconds,
                    "ms_per_step": 1000 * seconds / (s1 - s0)}

    return StepTimer()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend:
        if os.environ.get("KERAS_BACKEND", args.backend) != args.backend:
            print(f"note: --backend {args.backend} overrides KERAS_BACKEND={os.environ['KERAS_BACKEND']}")
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

    import keras
    import numpy as np
    import tensorflow as tf

    from tfrecord_schema.dataset import Dataset
    from trainer import input_pipeline
    from trainer.model import build_unet

    # tf.data must not take the accelerator from the model (JAX backend, or TF on GPU).
    if keras.backend.backend() == "jax":
        tf.config.set_visible_devices([], "GPU")

    with given_or_built(args.dataset, "bench-train-", args.num_examples, split=args.split) as dataset_dir:
        precision = _PRECISIONS[args.precision]
        jit_compile = "auto" if args.jit_compile is None else args.jit_compile
        dataset = Dataset.open(dataset_dir)
        config = dataset.config

        def pipeline():
            return input_pipeline.make_dataset(dataset, args.split, batch_size=args.batch_size, target=args.target,
                                               shuffle=True, shuffle_buffer=args.shuffle_buffer, seed=0, repeat=True,
                                               drop_remainder=True)

        def timed_fit(dataset):
            keras.utils.set_random_seed(0)
            previous = keras.config.dtype_policy()
            keras.config.set_dtype_policy(precision)
            try:
                model = build_unet(config, base_filters=args.base_filters, depth=args.depth)
                model.compile(optimizer=keras.optimizers.Adam(_DEFAULT.learning_rate),
                              loss=keras.losses.Huber(delta=_DEFAULT.huber_delta),
                              steps_per_execution=args.steps_per_execution, jit_compile=jit_compile)
                timer = step_timer(args.warmup_steps, args.steps)
                model.fit(dataset, epochs=1, steps_per_epoch=args.steps, callbacks=[timer], verbose=0, shuffle=False)
            finally:
                keras.config.set_dtype_policy(previous)
            return {**timer.rate(args.batch_size), "params": model.count_params()}

        results = {}
        if "pipeline" in args.modes:
            results["pipeline"] = timed_fit(pipeline())
        if "memory" in args.modes:
            xs, ys = zip(*pipeline().take(args.memory_batches).as_numpy_iterator())
            memory = tf.data.Dataset.from_tensor_slices((np.stack(xs), np.stack(ys))).repeat().prefetch(2)
            results["memory"] = timed_fit(memory)

    devices = [str(d) for d in keras.distribution.list_devices()] if hasattr(keras, "distribution") else []
    report = {
        "dataset": args.dataset or f"built: {args.num_examples} examples", "backend": keras.backend.backend(),
        "precision": precision, "batch_size": args.batch_size, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "jit_compile": jit_compile, "steps_per_execution": args.steps_per_execution,
        "model": {"base_filters": args.base_filters, "depth": args.depth, "input_shape": list(config.shape)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "devices": devices,
                    "keras": keras.__version__, "tensorflow": tf.__version__},
        "results": results,
    }
    if "pipeline" in results and "memory" in results:
        report["pipeline_over_memory"] = results["pipeline"]["examples_per_s"] / results["memory"]["examples_per_s"]

    print(f"\nU-Net ({next(iter(results.values()))['params']:,} parameters, {config.shape[0]}x{config.shape[1]}), "
          f"backend {report['backend']}, {precision}, batch {args.batch_size}, "
          f"{args.steps - args.warmup_steps} timed steps after {args.warmup_steps} warm-up; devices: {devices}")
    header = f"{'input':<12} {'examples/s':>11} {'ms/step':>9}"
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        print(f"{mode:<12} {r['examples_per_s']:>11.1f} {r['ms_per_step']:>9.1f}")
    if "pipeline_over_memory" in report:
        print(f"pipeline / in-memory: {report['pipeline_over_memory']:.2f}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
