"""On-the-fly mixing against the static store: reader throughput, mixing per core, disk and variety.

    .venv/bin/python benchmarks/mixing_speed.py            # builds its audio, static dataset and source store in /tmp
    .venv/bin/python benchmarks/mixing_speed.py --json out.json --speech-minutes 10

From generated 16-bit audio at the shipped config (8 kHz, 128 x 128 float16) it builds a static
dataset (the dataset job, `run_dataset`) and a source store of the same files (tests/source_stores.py),
so both hold the same examples, and times, in one run and taking turns, the train split's examples
into batches of --batch-size of the U-Net's (x, y) float32 [B, 128, 128, 1], iterated from Python:
    tf.data static         trainer.input_pipeline.make_dataset over the static store (shuffled)
    tf.data mixing         tf.data.Dataset.range -> tf.numpy_function(SourceMixer.spectrograms) per batch
                           (parallel calls) -> the U-Net's model_io in TensorFlow
    torch static           readers.torch_data.StreamDataset (shuffled), --workers DataLoader workers
    torch mixing           readers.torch_mixed.MixedDataset + StepSampler, --workers DataLoader workers
    grain mixing           readers.mixed.MixedSource under grain.MapDataset.batch, --workers threads
and, on one core: mixing alone (`SourceMixer.waveforms`, one-second examples at 16 kHz, and the
8 kHz spectrogram batches), the bytes on disk of both stores and the distinct (voice window, noise
window) pairs an epoch draws from. Each pipeline case is timed --repeats times, the best pass
counts (the median is in the JSON). Prints a table and writes JSON; never fails on speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from bench_report import write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))  # source_stores: the fixture the tests build stores with
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

DEFAULT_JSON = os.path.join(REPO, "benchmarks", "results", "mixing_speed.json")
DNS_ANCHOR = 113.0  # s of 16 kHz audio per s of one core: the DNS Challenge synthesizer's published figure


def build(root: str, speech_minutes: float, noise_files: int, num_examples: int):
    """(static Dataset, SourceStore of its files, 16 kHz SourceStore): the benchmark's stores."""
    from beam_pipelines.launcher import run_dataset
    from beam_pipelines.options import DatasetOptions
    from mixing.options import MixOptions
    from source_stores import folder_sources, static_sources, write_corpus, write_source_store

    speakers = 12
    utterances = max(1, round(speech_minutes * 60 / 15 / speakers))  # 15 s an utterance on average
    kinds = min(3, noise_files)
    voice_dir, noise_dir = write_corpus(f"{root}/audio8k", 8000, speakers=speakers, utterances=utterances,
                                        seconds=(10.0, 20.0), noise_kinds=kinds,
                                        noises_per_kind=-(-noise_files // kinds), noise_seconds=(10.0, 40.0))
    static = run_dataset(DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=f"{root}/static",
                                        num_examples=num_examples, mix=MixOptions(seed=0)), workers=2)
    store = write_source_store(f"{root}/sources", 8000, static_sources(static, voice_dir, noise_dir))
    voices16, noises16 = write_corpus(f"{root}/audio16k", 16000, speakers=6, utterances=2, seconds=(10.0, 20.0),
                                      noise_kinds=kinds, noises_per_kind=1, noise_seconds=(10.0, 40.0))
    store16 = write_source_store(f"{root}/sources16k", 16000, folder_sources(voices16, noises16))
    return static, store, store16


def pipeline_cases(static, store, batch_size: int, workers: int, count: int) -> list:
    """[(name, run one pass: returns examples read)]: the static store's whole train split, or `count`
    examples mixed on the fly (whole batches)."""
    import numpy as np
    import tensorflow as tf
    import torch.utils.data

    from mixing.on_the_fly import EpochPlan, SourceMixer
    from mixing.options import MixOptions
    from readers.mixed import MixedSource
    from readers.store import model_keys
    from readers.torch_data import StreamDataset
    from readers.torch_mixed import MixedDataset, StepSampler
    from trainer import input_pipeline

    config, mix, steps = static.config, MixOptions(seed=0), count // batch_size
    passes = {"n": 0}
    mixer = SourceMixer.for_config(store, "train", mix, config)
    to_model, keys = input_pipeline.target_model_io(config, "noise"), model_keys("noise")

    def tf_static():
        ds = input_pipeline.make_dataset(static, "train", batch_size=batch_size, shuffle=True, seed=passes["n"])
        return sum(int(x.shape[0]) for x, _ in ds)

    def tf_mixing():
        def spectra(indices):
            out = mixer.spectrograms(indices.tolist(), config, keys=keys)
            return tuple(out[k] for k in keys)

        def mixed(indices):
            arrays = tf.numpy_function(spectra, [indices], [tf.as_dtype(config.dtype)] * len(keys), stateful=False)
            return to_model({k: tf.ensure_shape(a, [None, *config.shape]) for k, a in zip(keys, arrays)})

        first = passes["n"] * steps * batch_size
        ds = tf.data.Dataset.range(first, first + steps * batch_size).batch(batch_size)
        ds = ds.map(mixed, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        return sum(int(x.shape[0]) for x, _ in ds)

    def torch_static():
        stream = StreamDataset(static, "train", batch_size=batch_size, shuffle=True, seed=0, epoch=passes["n"])
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4)
        return sum(int(x.shape[0]) for x, _ in loader)

    plan = EpochPlan(steps_per_epoch=steps, batch_size=batch_size)

    def torch_mixing():
        data = MixedDataset(store, "train", mix, config, length=(passes["n"] + 1) * steps * batch_size)
        loader = torch.utils.data.DataLoader(data, sampler=StepSampler(plan, passes["n"] * steps, steps),
                                             batch_size=None, num_workers=workers, prefetch_factor=4)
        return sum(int(x.shape[0]) for x, _ in loader)

    def grain_mixing():
        source = MixedSource(store, "train", mix, config, length=(passes["n"] + 1) * steps * batch_size)
        ds = grain.MapDataset.source(source)[passes["n"] * steps * batch_size:].batch(batch_size)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=4))
        return sum(int(np.shape(x)[0]) for x, _ in ds)

    cases = [("tf.data static store (make_dataset)", tf_static), ("tf.data mixing on the fly", tf_mixing),
             (f"torch static store (StreamDataset, {workers} workers)", torch_static),
             (f"torch mixing (MixedDataset, {workers} workers)", torch_mixing)]
    try:
        import grain
    except ImportError:  # the grain case needs `pip install -e .[grain]`
        return cases, passes
    cases.append((f"grain mixing (MixedSource, {workers} threads)", grain_mixing))
    return cases, passes


def time_cases(cases, passes, repeats: int, static_count: int, mixed_count: int) -> list[dict]:
    """Each case's passes, the cases taking turns: examples/s of the best and of the median pass."""
    counts = {name: mixed_count if "mixing" in name else static_count for name, _ in cases}
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            started = time.perf_counter()
            read = fn()
            times[name].append(time.perf_counter() - started)
            if read != counts[name]:
                raise RuntimeError(f"{name} read {read} examples, expected {counts[name]}")
        passes["n"] += 1
    results = [{"case": name, "examples": counts[name], "seconds_best": min(times[name]),
                "seconds_median": statistics.median(times[name]),
                "examples_per_s": counts[name] / min(times[name]),
                "examples_per_s_median": counts[name] / statistics.median(times[name])} for name, _ in cases]
    for r in results:
        r["fraction_of_tf_data_static"] = r["examples_per_s"] / results[0]["examples_per_s"]
    return results


def one_core(static, store, store16, batch_size: int, examples: int) -> dict:
    """Mixing alone in this process (one thread): 16 kHz one-second waveforms, 8 kHz model batches."""
    from mixing.on_the_fly import SourceMixer
    from mixing.options import MixOptions
    from readers.mixed import MixedSource

    mixer16 = SourceMixer(store16, "train", MixOptions(seed=0), window=16000)
    mixer16.waveforms(range(batch_size))  # the sources read and decoded before timing
    started = time.perf_counter()
    for first in range(0, examples, batch_size):
        mixer16.waveforms(range(10_000 + first, 10_000 + first + batch_size))
    waves = examples / (time.perf_counter() - started)
    source = MixedSource(store, "train", MixOptions(seed=0), static.config, length=10_000 + examples)
    source.batch(range(batch_size))
    started = time.perf_counter()
    for first in range(0, examples, batch_size):
        source.batch(range(10_000 + first, 10_000 + first + batch_size))
    model = examples / (time.perf_counter() - started)
    return {"waveforms_16k_examples_per_s": waves, "audio_seconds_per_s_16k": waves * 1.0,
            "dns_anchor_audio_seconds_per_s_16k": DNS_ANCHOR, "model_batches_8k_examples_per_s": model,
            "examples": examples}


def disk_and_variety(static, store) -> dict:
    """Bytes on disk of both stores, and the distinct (voice window, noise window) pairs of the train split."""
    def size(directory):
        return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))

    config, window = static.config, static.config.window_samples
    segments = [s for split in store.info.splits for s in store.segments(split)]
    source_hours = sum(s.num_samples for s in segments) / store.sample_rate / 3600
    examples = sum(static.num_examples(s) for s in static.splits)
    static_bytes = size(static.directory)
    train = store.segments("train")
    voice_windows = sum(s.num_samples - window + 1 for s in train if s.role == "voice" and s.num_samples >= window)
    noise_windows = sum(s.num_samples - window + 1 if s.num_samples >= window else s.num_samples
                        for s in train if s.role == "noise")
    return {"source_store_bytes": size(store.directory), "source_hours": source_hours,
            "source_bytes_per_hour": size(store.directory) / source_hours,
            "static_bytes": static_bytes, "static_examples": examples, "static_bytes_per_example": static_bytes / examples,
            "static_bytes_per_hour_of_examples": static_bytes / examples * 3600 * config.sample_rate / window,
            "train_voice_files": sum(s.role == "voice" for s in train),
            "train_noise_files": sum(s.role == "noise" for s in train),
            "train_voice_window_positions": voice_windows, "train_noise_window_positions": noise_windows,
            "train_distinct_voice_noise_pairs": voice_windows * noise_windows}


def run(root: str, args: argparse.Namespace) -> dict:
    import tensorflow as tf
    import torch

    static, store, store16 = build(root, args.speech_minutes, args.noise_files, args.num_examples)
    count = static.num_examples("train") // args.batch_size * args.batch_size
    cases, passes = pipeline_cases(static, store, args.batch_size, args.workers, count)
    for path in static.shard_paths("train"):  # warm the page cache
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass
    results = time_cases(cases, passes, args.repeats, static.num_examples("train"), count)
    return {"config": {"sample_rate": static.config.sample_rate, "shape": list(static.config.shape),
                       "dtype": static.config.dtype},
            "examples_per_pass": count, "batch_size": args.batch_size, "workers": args.workers,
            "repeats": args.repeats, "results": results,
            "one_core": one_core(static, store, store16, args.batch_size, args.one_core_examples),
            "disk": disk_and_variety(static, store),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "tensorflow": tf.__version__, "torch": torch.__version__}}


def print_table(report: dict) -> None:
    config, disk, core = report["config"], report["disk"], report["one_core"]
    print(f"\nA pass: the static store's train split ({report['results'][0]['examples']} examples) or "
          f"{report['examples_per_pass']} examples mixed on the fly ({config['sample_rate']} Hz, "
          f"{config['shape'][0]}x{config['shape'][1]} {config['dtype']}), batch {report['batch_size']}, "
          f"{report['machine']['cpus']} CPUs, best of {report['repeats']}")
    rows = [("case", "examples/s", "median", "vs tf.data static")]
    rows += [(r["case"], f"{r['examples_per_s']:.0f}", f"{r['examples_per_s_median']:.0f}",
              f"{100 * r['fraction_of_tf_data_static']:.0f} %") for r in report["results"]]
    for number, (case, best, median, fraction) in enumerate(rows):
        print(f"{case:<52} {best:>11} {median:>8} {fraction:>18}")
        if number == 0:
            print("-" * 92)
    print(f"\nmixing alone, one core: {core['waveforms_16k_examples_per_s']:.0f} one-second 16 kHz waveform "
          f"examples/s = {core['audio_seconds_per_s_16k']:.0f} s of audio per s (the DNS Challenge synthesizer's "
          f"published anchor: about {core['dns_anchor_audio_seconds_per_s_16k']:.0f} s/s, not measured here); "
          f"8 kHz model batches (mix + STFT + x, y): {core['model_batches_8k_examples_per_s']:.0f} examples/s")
    print(f"disk: source store {disk['source_store_bytes'] / 1e6:.1f} MB for {disk['source_hours'] * 60:.1f} min "
          f"of audio = {disk['source_bytes_per_hour'] / 1e6:.1f} MB per hour of sources; static store "
          f"{disk['static_bytes_per_example'] / 1e3:.1f} kB per example = "
          f"{disk['static_bytes_per_hour_of_examples'] / 1e9:.2f} GB per hour of examples")
    print(f"variety (train): (sum over voices of samples - window + 1) x (sum over noises of their window "
          f"positions) = {disk['train_voice_window_positions']:,} x {disk['train_noise_window_positions']:,} = "
          f"{disk['train_distinct_voice_noise_pairs']:.3g} (voice window, noise window) pairs, each at a "
          f"continuous level and loudness; the static store holds {disk['static_examples']} examples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech-minutes", type=float, default=6.0, help="minutes of 8 kHz speech to generate (default 6)")
    parser.add_argument("--noise-files", type=int, default=6, help="noise files of 10-40 s to generate (default 6)")
    parser.add_argument("--num-examples", type=int, default=4000,
                        help="examples of the static dataset over all splits (default 4000, 527 MB)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, grain threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case, taking turns (default 3)")
    parser.add_argument("--one-core-examples", type=int, default=960,
                        help="examples timed for mixing alone on one core (default 960)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"write the report here (default {DEFAULT_JSON})")
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    built = None if args.keep else tempfile.mkdtemp(prefix="bench-mixing-")
    try:
        report = run(args.keep or built, args)
    finally:
        if built:
            shutil.rmtree(built, ignore_errors=True)
    print_table(report)
    if args.json:  # --json "" prints only
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
