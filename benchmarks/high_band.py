"""Wide-band quality of `predict` on 16 kHz input: the band above the model's kept (`keep`) or dropped.

Mixtures (seeded): 16 kHz clean speech (FLAC, e.g. LibriSpeech test-other) plus held-out noise
resampled to 16 kHz, `--duration` seconds each, at SNRs cycling through `--snrs`, peak-limited
together so nothing clips. They are written as 16 kHz float wav files and denoised with
`predictor.enhance.enhance_files` (the shipped 8 kHz model unless `--model`), once per system:

    noisy      the input, unprocessed
    drop       high_band="drop": the model's band only, band-limited to 4 kHz (the behaviour before)
    keep       high_band="keep" with the default `HighBandGain` (what `predict` does now)
    keep-*     with --designs all: other gain designs (weighting, band, floor), for choosing one
    NAME       with --compare NAME=DIR: another model (e.g. one trained at 16 kHz) on the same files,
               with predict's defaults

Each output is scored against the clean 16 kHz speech with wide-band PESQ (P.862.2) and SI-SDR
(`predictor.evaluation.metrics`). Choose designs on one seed and report on another:

    python benchmarks/high_band.py --seed 1 --designs all --json benchmarks/results/high_band_tuning.json
    python benchmarks/high_band.py --seed 0 --json benchmarks/results/high_band.json

Prints a table (mean over all mixtures, and PESQ per SNR) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

from bench_report import write_report
from family_speed import model_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from predictor import audio_io
from predictor.enhance import Enhancer
from predictor.evaluation.metrics import pesq_score, si_sdr
from predictor.folders import enhance_files
from predictor.high_band import HighBandGain

RATE = 16000
PEAK = 0.9
DEFAULT = HighBandGain()
# name: the high-band gain design (None: high_band="drop").
DESIGNS = {
    "drop": None,
    "keep": DEFAULT,
    "keep-floor-10dB": HighBandGain(floor_db=-10.0),
    "keep-floor-30dB": HighBandGain(floor_db=-30.0),
    "keep-mean-mask": HighBandGain(weighting="none"),
    "keep-power": HighBandGain(weighting="power"),
    "keep-broadband": HighBandGain(band_hz=(4000.0, 250.0)),
    "keep-unity": HighBandGain(floor_db=0.0),  # the high band as it is, noise and all
}


def audio_files(folder: str, extensions: tuple[str, ...]) -> list[str]:
    found = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
             if name.lower().endswith(extensions) and not name.startswith(".")]
    return sorted(found)


def load_mono(path: str) -> np.ndarray:
    audio = audio_io.read_audio(path)
    x = audio.samples.mean(axis=1)
    return audio_io.resample(x.astype(np.float32), audio.sample_rate, RATE)


def segment(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if x.shape[0] < n:
        x = np.tile(x, -(-n // x.shape[0]))
    start = int(rng.integers(0, x.shape[0] - n + 1))
    return x[start: start + n]


def make_mixtures(speech_files: list[str], noise_files: list[str], count: int, seconds: float,
                  snrs: list[float], seed: int) -> list[dict]:
    """`count` mixtures; mixture i is seeded by (seed, i) and has SNR snrs[i % len(snrs)]."""
    n = int(round(seconds * RATE))
    long_enough = []
    for path in speech_files:
        with audio_io.AudioReader(path) as reader:
            if reader.num_samples >= n:
                long_enough.append(path)
    noises: dict[str, np.ndarray] = {}
    items = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        clean = segment(load_mono(long_enough[int(rng.integers(len(long_enough)))]), n, rng).astype(np.float64)
        noise_path = noise_files[int(rng.integers(len(noise_files)))]
        if noise_path not in noises:
            noises[noise_path] = load_mono(noise_path)
        noise = segment(noises[noise_path], n, rng).astype(np.float64)
        snr = snrs[i % len(snrs)]
        noise *= np.sqrt(np.sum(clean ** 2) / (max(np.sum(noise ** 2), 1e-12) * 10 ** (snr / 10)))
        mixture = clean + noise
        scale = min(1.0, PEAK / max(np.max(np.abs(mixture)), 1e-12))
        items.append({"name": f"mix{i:04d}", "snr_db": snr, "clean": (clean * scale).astype(np.float32),
                      "noisy": (mixture * scale).astype(np.float32),
                      "noise": os.path.basename(noise_path)})
    return items


def score(items: list[dict], outputs: dict[str, np.ndarray]) -> dict:
    pesq, sdr = [], []
    for item in items:
        y = outputs[item["name"]]
        pesq.append(pesq_score(item["clean"], y, RATE, "wb"))
        sdr.append(si_sdr(item["clean"], y))
    pesq_a, sdr_a = np.array(pesq), np.array(sdr)
    snrs = sorted({item["snr_db"] for item in items})
    by_snr = {str(s): float(np.nanmean([p for p, it in zip(pesq, items) if it["snr_db"] == s])) for s in snrs}
    return {"pesq_wb": float(np.nanmean(pesq_a)), "si_sdr_db": float(np.nanmean(sdr_a)),
            "pesq_wb_by_snr": by_snr, "pesq_wb_items": [float(p) for p in pesq], "si_sdr_items": [float(s) for s in sdr]}


def run(args: argparse.Namespace) -> dict:
    speech = audio_files(args.speech_dir, (".flac", ".wav"))
    noise = audio_files(args.noise_dir, (".flac", ".wav", ".ogg"))
    if not speech or not noise:
        raise FileNotFoundError(f"No audio found. Received: speech_dir={args.speech_dir!r} ({len(speech)} files), "
                                f"noise_dir={args.noise_dir!r} ({len(noise)} files)")
    items = make_mixtures(speech, noise, args.num_mixtures, args.duration, args.snrs, args.seed)
    enhancer = Enhancer.from_model_dir(args.model)
    designs = {k: v for k, v in DESIGNS.items() if args.designs == "all" or k in ("drop", "keep")}
    clashes = sorted({name for name, _ in args.compare} & (set(designs) | {"noisy"}))
    if clashes:
        raise ValueError(f"--compare names must differ from the systems {sorted(designs) + ['noisy']}. "
                         f"Received: {clashes}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "noisy")
        for item in items:
            audio_io.write_audio_atomic(os.path.join(source, item["name"] + ".wav"), item["noisy"], RATE, "FLOAT")
        results["noisy"] = score(items, {item["name"]: item["noisy"] for item in items})

        def enhanced_and_scored(denoiser: Enhancer, out: str, **kwargs) -> dict:
            start = time.perf_counter()
            enhance_files(denoiser, source, out, **kwargs)
            seconds = time.perf_counter() - start
            outputs = {item["name"]: audio_io.read_audio(os.path.join(out, item["name"] + ".wav")).samples[:, 0]
                       for item in items}
            return {**score(items, outputs), "seconds": seconds}

        for name, gain in designs.items():
            kwargs = {"high_band": "drop"} if gain is None else {"high_band": "keep", "high_band_gain": gain}
            results[name] = enhanced_and_scored(enhancer, os.path.join(tmp, name), **kwargs)
            results[name]["design"] = None if gain is None else {
                "band_hz": list(gain.band_hz), "weighting": gain.weighting, "smooth_seconds": gain.smooth_seconds,
                "floor_db": gain.floor_db}
        for name, directory in args.compare:
            other = Enhancer.from_model_dir(directory)
            results[name] = enhanced_and_scored(other, os.path.join(tmp, "compare-" + name))
            results[name].update(design=None, model=directory, model_rate=other.sample_rate)
    return {"config": {"speech_dir": args.speech_dir, "noise_dir": args.noise_dir, "model": args.model or "shipped",
                       "compare": dict(args.compare), "num_mixtures": args.num_mixtures, "duration_s": args.duration,
                       "snrs_db": args.snrs, "seed": args.seed, "sample_rate": RATE, "model_rate": enhancer.sample_rate,
                       "python": platform.python_version()},
            "systems": results}


def print_table(report: dict) -> None:
    snrs = [str(s) for s in report["config"]["snrs_db"]]
    print(f"{report['config']['num_mixtures']} mixtures of {report['config']['duration_s']} s at 16 kHz, "
          f"seed {report['config']['seed']}")
    head = f"{'system':<18} {'PESQ-wb':>8} {'SI-SDR':>8} " + " ".join(f"{'@' + s + ' dB':>9}" for s in snrs)
    print(head)
    print("-" * len(head))
    for name, r in report["systems"].items():
        print(f"{name:<18} {r['pesq_wb']:>8.3f} {r['si_sdr_db']:>8.2f} "
              + " ".join(f"{r['pesq_wb_by_snr'][s]:>9.3f}" for s in snrs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speech-dir", default=os.path.join(ROOT, "..", "shared", "data", "speech", "librispeech",
                                                        "test-other"),
                   help="clean 16 kHz speech (flac/wav, searched recursively)")
    p.add_argument("--noise-dir", default=os.path.join(ROOT, "runs", "shared_split", "heldout_noise"),
                   help="held-out noise (any rate; resampled to 16 kHz)")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--num-mixtures", type=int, default=60)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per mixture")
    p.add_argument("--snrs", type=float, nargs="+", default=[-5.0, 0.0, 5.0, 10.0, 15.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="append", type=model_spec, default=[], metavar="NAME=DIR",
                   help="also run the model in DIR (any rate, e.g. a 16 kHz one) on the same files as system NAME")
    p.add_argument("--designs", choices=("default", "all"), default="default",
                   help="'default': drop and keep; 'all': also the other gain designs (for choosing one)")
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "high_band.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    print_table(report)
    write_report(args.json, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
