"""U-Net training examples/s on the jax backend (fed by tf.data) against the torch backend (fed by
the PyTorch reader of the shards), each through `trainer.train.train` in a process of its own.

    python3 benchmarks/train_backends.py --dataset ~/ds --steps 300 --json out/train_backends_gpu.json   # GPU
    .venv/bin/python benchmarks/train_backends.py --num-examples 96 --batch-size 8 --steps 8 --warmup-steps 3 \\
        --precision float32 --base-filters 4 --depth 2 --loader-batches 8          # CPU smoke run (builds a dataset)

Keras fixes its backend when it is first imported, so each backend runs in a child process of this
script with KERAS_BACKEND set. Both train the same U-Net (`--preset`, default gpu: batch 256, mixed
bfloat16, compiled train step: XLA on jax, torch.compile on torch) with `trainer.train.train` for
`--steps` steps of one epoch without validation, as `speech-enhance train --backend jax|torch` does:
    jax     tf.data (`trainer.input_pipeline.make_dataset`), TensorFlow kept off the GPU
    torch   `readers.torch_training.training_loaders`: `readers.torch_data.StreamDataset` in a
            DataLoader (worker processes and pinned memory on CUDA, decoding threads on CPU)
A callback times the steps after `--warmup-steps` (compilation, pipeline start-up), waiting for the
device at both ends. The torch child also times its loader alone, without a model
(`--loader-batches` batches after 5 untimed ones, on the host and copied to the training device),
so a gap can be laid on the loader or on the training step. Should torch.compile fail, the torch
run is retried with `jit_compile=False` and says so. jax is skipped, with the reason, where it is not
importable. Prints a table and writes JSON; never fails on speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from bench_report import write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from input_pipeline import given_or_built  # noqa: E402  (the same generated dataset as the tf.data benchmark)
from train_throughput import step_timer  # noqa: E402  (the same step clock as the tf.data benchmark)
from trainer.config import PRECISIONS, PRESETS, TrainConfig  # noqa: E402  (Keras-free)

BACKENDS = ("jax", "torch")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="indexed, uncompressed dataset directory; default: build --num-examples "
                                          "in a temporary directory")
    parser.add_argument("--num-examples", type=int, default=2000,
                        help="examples (128x128) to build when --dataset is not given (default 2000)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="backends to run, each in its own process (default: jax torch)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu", help="training preset (default gpu)")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--precision", choices=PRECISIONS, help="override the preset's precision")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="override the preset's jit_compile (XLA on jax, torch.compile on torch)")
    parser.add_argument("--base-filters", type=int, help="override the U-Net's base filters")
    parser.add_argument("--depth", type=int, help="override the U-Net's depth")
    parser.add_argument("--steps", type=int, default=300, help="training steps, warm-up included (default 300)")
    parser.add_argument("--warmup-steps", type=int, default=20, help="untimed steps at the start (default 20)")
    parser.add_argument("--loader-batches", type=int, default=100,
                        help="batches timed by the torch loader-alone measurement (default 100; 0: skip it)")
    parser.add_argument("--json", help="write the report to this JSON file")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup_steps < 1 or args.steps <= args.warmup_steps:
        parser.error(f"--steps must exceed --warmup-steps >= 1. Received: steps={args.steps}, "
                     f"warmup_steps={args.warmup_steps}")
    if args.loader_batches < 0:
        parser.error(f"--loader-batches must be >= 0. Received: {args.loader_batches}")
    return args


def train_config(args) -> TrainConfig:
    """The preset with the overrides given, trained for one epoch of --steps steps, no validation."""
    overrides = {name: getattr(args, name) for name in ("batch_size", "precision", "jit_compile", "base_filters",
                                                         "depth") if getattr(args, name) is not None}
    return TrainConfig.from_preset(args.preset, epochs=1, steps_per_epoch=args.steps, validation_split=None,
                                   early_stopping_patience=0, **overrides)


# --- child: one backend -------------------------------------------------------------------------

def _device(backend: str) -> str:
    if backend == "jax":
        import jax

        return ", ".join(f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices())
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


def _loader_alone(dataset_dir: str, config: TrainConfig, batches: int) -> dict:
    """examples/s of the torch training loader by itself: host batches, then host batches copied to the
    training device as Keras copies them."""
    import torch

    from readers.torch_training import training_loaders
    from tfrecord_schema.dataset import Dataset

    cuda = torch.cuda.is_available()
    loader, _ = training_loaders(Dataset.open(dataset_dir), config, "unet", None, None)
    out = {"num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
           "threads": getattr(loader.dataset, "threads", None), "batches": batches}
    iterator = iter(loader)
    for copy in (False, True) if cuda else (False,):
        for _ in range(5):  # start-up (worker processes, shuffle buffers) is not timed
            next(iterator)
        started = time.perf_counter()
        for _ in range(batches):
            x, y = next(iterator)[:2]
            if copy:
                x, y = x.to("cuda"), y.to("cuda")
        if copy:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        out["examples_per_s_to_device" if copy else "examples_per_s"] = batches * config.batch_size / seconds
    del iterator
    return out


def run_child(args) -> dict:
    backend = args.child
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        return {"backend": backend, "status": "skipped",
                "reason": f"jax is not importable in {sys.executable} (pip install 'jax[cuda12]' for the GPU run)"}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from readers.torch_training import training_loaders
    from trainer import train

    config = train_config(args)
    result = {"backend": keras.backend.backend(), "status": "ok", "device": _device(backend),
              "precision": config.precision, "batch_size": config.batch_size, "jit_compile": config.jit_compile,
              "model": {"base_filters": config.base_filters, "depth": config.depth}}
    if backend == "torch" and args.loader_batches:
        result["loader_alone"] = _loader_alone(args.dataset, config, args.loader_batches)

    def timed_train(config: TrainConfig) -> dict:
        work = tempfile.mkdtemp(prefix=f"train-backends-{backend}-")
        try:
            timer = step_timer(args.warmup_steps, args.steps)
            summary = train.train(args.dataset, os.path.join(work, "model"), config, callbacks=[timer], verbose=0,
                                  torch_inputs=training_loaders)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {**timer.rate(config.batch_size), "parameters": summary["parameters"],
                "final_loss": summary["final_loss"]}

    try:
        result["training"] = timed_train(config)
    except Exception as err:  # torch.compile can fail where its compiler tool chain is missing
        if not (backend == "torch" and config.jit_compile is True):
            raise
        result["jit_error"] = f"{type(err).__name__}: {str(err)[:2000]}"
        print(f"torch.compile failed ({result['jit_error'][:300]}); retrying with jit_compile=False", file=sys.stderr)
        config = TrainConfig.from_dict(dict(config.to_dict(), jit_compile=False))
        result["jit_compile"] = False
        result["training"] = timed_train(config)
    return result


# --- parent -------------------------------------------------------------------------------------

def _run_backend(backend: str, args, dataset_dir: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="train-backends-") as tmp:
        out = os.path.join(tmp, "child.json")
        command = [sys.executable, os.path.abspath(__file__), "--child", backend, "--child-json", out,
                   "--dataset", dataset_dir, "--preset", args.preset, "--steps", str(args.steps),
                   "--warmup-steps", str(args.warmup_steps), "--loader-batches", str(args.loader_batches)]
        for name in ("batch_size", "precision", "base_filters", "depth"):
            if getattr(args, name) is not None:
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        if args.jit_compile is not None:
            command.append("--jit-compile" if args.jit_compile else "--no-jit-compile")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL",
                                                                                             "2")}
        print(f"--- {backend}: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        process = subprocess.run(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        if process.returncode == 0 and os.path.isfile(out):
            with open(out, encoding="utf-8") as f:
                result = json.load(f)
        else:
            result = {"backend": backend, "status": "failed", "returncode": process.returncode,
                      "stderr_tail": process.stderr[-4000:]}
            sys.stderr.write(process.stderr[-4000:])
        result["process_seconds"] = wall
        return result


def print_table(report: dict) -> None:
    timed = report["steps"] - report["warmup_steps"]
    print(f"\nU-Net, preset {report['preset']}, batch {report['batch_size']}, {timed} "
          f"timed steps after {report['warmup_steps']} warm-up, dataset {report['dataset']}")
    header = f"{'backend':<8} {'input':<34} {'precision':<15} {'jit':<6} {'examples/s':>11} {'ms/step':>8}  device"
    print(header)
    print("-" * len(header))
    inputs = {"jax": "tf.data (input_pipeline)", "torch": "PyTorch reader (readers.torch_data)"}
    for backend, r in report["backends"].items():
        if r["status"] != "ok":
            print(f"{backend:<8} {r['status']}: {r.get('reason') or 'see stderr_tail in the JSON'}")
            continue
        t = r["training"]
        print(f"{backend:<8} {inputs[backend]:<34} {r['precision']:<15} {str(r['jit_compile']):<6} "
              f"{t['examples_per_s']:>11.1f} {t['ms_per_step']:>8.1f}  {r['device']}")
        loader = r.get("loader_alone")
        if loader:
            how = (f"{loader['num_workers']} workers" if loader["num_workers"] else f"{loader['threads']} threads") + \
                  (", pinned" if loader["pin_memory"] else "")
            print(f"{'':<8} {'loader alone (' + how + ')':<34} {'':<15} {'':<6} {loader['examples_per_s']:>11.1f}")
            if "examples_per_s_to_device" in loader:
                print(f"{'':<8} {'loader alone, copied to the GPU':<34} {'':<15} {'':<6} "
                      f"{loader['examples_per_s_to_device']:>11.1f}")
    if "torch_over_jax" in report:
        print(f"torch / jax examples/s: {report['torch_over_jax']:.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        try:
            result = run_child(args)
        except Exception:
            traceback.print_exc()
            return 1
        with open(args.child_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        return 0

    with given_or_built(args.dataset, "bench-backends-", args.num_examples) as dataset_dir:
        results = {backend: _run_backend(backend, args, dataset_dir) for backend in args.backends}

    config = train_config(args)
    report = {
        "dataset": args.dataset or f"built: {args.num_examples} examples", "preset": args.preset,
        "batch_size": config.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "backends": results,
    }
    ok = {b: r for b, r in results.items() if r["status"] == "ok"}
    if "jax" in ok and "torch" in ok:
        report["torch_over_jax"] = ok["torch"]["training"]["examples_per_s"] / ok["jax"]["training"]["examples_per_s"]
    print_table(report)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
