"""Scoring denoisers side by side on held-out audio: per item, per input-SNR bin, per noise class.

Items come either from paired folders (`paired_items`: noisy and clean files matched by relative
path) or from mixtures made here (`make_mixtures`: held-out voices and noises mixed at given SNRs,
each item from its own seeded generator, so the set depends only on the folders and the seed).
Every system (`System`) turns the items' noisy signals into estimates; `evaluate` scores them with
`predictor.metrics` and aggregates; `write_report` writes results.json, results.md and PNG plots.

Items that cannot be scored meaningfully (shorter than one model window, a silent clean reference,
a noisy file that holds no noise) are skipped with a warning and listed with their reason in the
report; a metric that fails on one item of one system is left out of the means and listed too,
so one bad file never costs the whole run and never silently moves an average.

Input and output folders may be local or remote (gs://...): files are listed, read and written
through `tfrecord_schema.paths` (the report's files whole, with `paths.write_atomic`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import math
import os
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from predictor import audio_io, baselines, metrics
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig

logger = logging.getLogger(__name__)

DEFAULT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)
CLASSES_FILE = "classes.tsv"
METRICS = ("si_sdr", "si_sdri", "pesq", "stoi")
PEAK_LIMIT = 0.99
# Items are screened before scoring (see `degenerate_reason`).
MIN_CLEAN_DBFS = -80.0  # mean power of the clean reference; quieter counts as silent (digital silence, dither)
MAX_INPUT_SNR_DB = 60.0  # a noisy input closer to the clean than this holds no noise to remove


@dataclasses.dataclass
class Item:
    """One evaluation example: float32 mono `clean` and `noisy` of equal length at the eval rate.

    `snr_db` is the input SNR, 10 log10(sum clean^2 / sum (noisy - clean)^2); `snr_bin` the bin it
    is reported under (the SNR it was mixed at, or the nearest bin for paired files).
    """

    item_id: str
    clean: np.ndarray
    noisy: np.ndarray
    snr_db: float
    snr_bin: float
    noise_class: str
    source: dict[str, Any] = dataclasses.field(default_factory=dict)


# --- items -----------------------------------------------------------------------------------

def noise_classes(root: str, rel_paths: Iterable[str]) -> dict[str, str]:
    """Class of each file (paths relative to `root`, a local folder or a remote prefix).

    The class is taken from the nearest `classes.tsv` ("file<TAB>class" lines, paths relative to
    the folder holding the tsv, an optional "file<TAB>class" header) in the file's folder or any
    folder above it up to `root`; else from the name of the file's parent folder when it is below
    `root`; else "unknown".
    """
    tables: dict[str, dict[str, str] | None] = {}

    def table(folder: str) -> dict[str, str] | None:
        if folder not in tables:
            path = paths.join(root, folder, CLASSES_FILE)
            tables[folder] = _read_classes(path) if paths.isfile(path) else None
        return tables[folder]

    out = {}
    for rel in rel_paths:
        folder, cls = os.path.dirname(rel), None
        while cls is None:
            entries = table(folder)
            if entries is not None:
                cls = entries.get(os.path.relpath(rel, folder) if folder else rel)
            if not folder:
                break
            folder = os.path.dirname(folder)
        if cls is None:
            parent = os.path.basename(os.path.dirname(rel))
            cls = parent or "unknown"
        out[rel] = cls
    return out


def _read_classes(path: str) -> dict[str, str]:
    entries = {}
    # A small table: read whole (newline="" lets csv see the line ends as they are, as open() did).
    with io.StringIO(paths.read_text(path), newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) < 2 or not row[0].strip() or row[0].startswith("#"):
                continue
            name, cls = row[0].strip(), row[1].strip()
            if (name.lower(), cls.lower()) == ("file", "class"):
                continue
            entries[os.path.normpath(name)] = cls
    return entries


@functools.lru_cache(maxsize=64)
def load_mono(path: str, sample_rate: int) -> np.ndarray:
    """A file as mono float32 at `sample_rate` (channels averaged); cached, as mixtures reuse files."""
    audio = audio_io.read_audio(path)
    mono = audio.samples.mean(axis=1)
    mono = audio_io.resample(mono, audio.sample_rate, sample_rate)
    mono.setflags(write=False)
    return mono


def _energy(x: np.ndarray) -> float:
    return float(np.dot(x.astype(np.float64), x.astype(np.float64)))


def input_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """10 log10(sum clean^2 / sum (noisy - clean)^2) in dB."""
    return float(10.0 * np.log10(max(_energy(clean), 1e-20) / max(_energy(noisy - clean), 1e-20)))


def make_mixtures(voice_dir: str, noise_dir: str, *, snrs: Sequence[float] = DEFAULT_SNRS, num_mixtures: int = 20,
                  duration: float = 4.0, sample_rate: int = 8000, seed: int = 0) -> list[Item]:
    """`num_mixtures` mixtures per SNR in `snrs` (dB) from the files of `voice_dir` and `noise_dir`.

    Item `snr{snr:+g}-{i}` draws, from a generator seeded with (seed, crc32 of its id): a voice file
    and a segment of at most `duration` seconds, a noise file and a segment of the same length
    (looped if the noise is shorter). The noise is scaled so that 10 log10(sum clean^2 / sum noise^2)
    equals the SNR exactly; if the mixture would clip, both are scaled down together. Voice segments
    quieter than -60 dBFS are redrawn.
    """
    if num_mixtures < 1 or duration <= 0:
        raise ValueError(f"num_mixtures and duration must be positive. Received: num_mixtures={num_mixtures}, "
                         f"duration={duration}")
    _, voices = audio_io.find_audio_files(voice_dir)
    _, noises = audio_io.find_audio_files(noise_dir)
    classes = noise_classes(noise_dir, noises)
    max_samples = max(1, int(round(duration * sample_rate)))
    items = []
    for snr in snrs:
        for index in range(num_mixtures):
            item_id = f"snr{snr:+g}-{index:04d}"
            rng = np.random.default_rng([seed, zlib.crc32(item_id.encode("utf-8"))])
            clean, voice_rel, voice_offset = _draw_voice(rng, voice_dir, voices, max_samples, sample_rate, item_id)
            noise, noise_rel, noise_offset = _draw_noise(rng, noise_dir, noises, clean.shape[0], sample_rate, item_id)
            noise = noise * np.float32(math.sqrt(_energy(clean) / (_energy(noise) * 10.0 ** (snr / 10.0))))
            mixture = clean + noise
            peak = float(np.max(np.abs(mixture)))
            if peak > PEAK_LIMIT:
                g = np.float32(PEAK_LIMIT / peak)
                clean, mixture = clean * g, mixture * g
            items.append(Item(
                item_id=item_id, clean=clean.astype(np.float32), noisy=mixture.astype(np.float32),
                snr_db=input_snr(clean, mixture), snr_bin=float(snr), noise_class=classes[noise_rel],
                source={"voice_file": voice_rel, "voice_offset": voice_offset, "noise_file": noise_rel,
                        "noise_offset": noise_offset}))
    return items


def _draw_voice(rng, root, files, max_samples, rate, item_id, tries=10):
    for _ in range(tries):
        rel = files[int(rng.integers(len(files)))]
        voice = load_mono(paths.join(root, rel), rate)
        n = min(voice.shape[0], max_samples)
        offset = int(rng.integers(voice.shape[0] - n + 1))
        segment = voice[offset: offset + n]
        if _energy(segment) / n > 1e-6:  # -60 dBFS
            return segment.astype(np.float32), rel, offset
    raise ValueError(f"{item_id}: no voice segment above -60 dBFS after {tries} draws from {root!r}; "
                     "are the voice files silent?")


def _draw_noise(rng, root, files, length, rate, item_id, tries=10):
    for _ in range(tries):
        rel = files[int(rng.integers(len(files)))]
        noise = load_mono(paths.join(root, rel), rate)
        if noise.shape[0] < length:
            noise = np.tile(noise, -(-length // noise.shape[0]))
        offset = int(rng.integers(noise.shape[0] - length + 1))
        segment = noise[offset: offset + length]
        if _energy(segment) > 0:
            return segment.astype(np.float32), rel, offset
    raise ValueError(f"{item_id}: only silent noise segments after {tries} draws from {root!r}")


def paired_items(noisy_dir: str, clean_dir: str, *, sample_rate: int = 8000,
                 snr_bins: Sequence[float] = DEFAULT_SNRS) -> list[Item]:
    """Items from noisy files and the clean files at the same relative path (any audio extension).

    Both are downmixed to mono and resampled to `sample_rate`; lengths are cut to the shorter one.
    Each item is binned at the nearest of `snr_bins` to its measured input SNR; its noise class
    comes from `noise_classes(noisy_dir, ...)`. Noisy files without a clean twin are skipped.
    """
    _, noisy_files = audio_io.find_audio_files(noisy_dir)
    _, clean_files = audio_io.find_audio_files(clean_dir)
    clean_by_stem = {os.path.splitext(rel)[0]: rel for rel in clean_files}
    classes = noise_classes(noisy_dir, noisy_files)
    items, missing = [], []
    for rel in noisy_files:
        clean_rel = clean_by_stem.get(os.path.splitext(rel)[0])
        if clean_rel is None:
            missing.append(rel)
            continue
        noisy = load_mono(paths.join(noisy_dir, rel), sample_rate)
        clean = load_mono(paths.join(clean_dir, clean_rel), sample_rate)
        n = min(noisy.shape[0], clean.shape[0])
        source = {"noisy_file": rel, "clean_file": clean_rel}
        if noisy.shape[0] != clean.shape[0]:
            logger.warning("%s: noisy and clean lengths differ (%d, %d samples); both cut to %d",
                           rel, noisy.shape[0], clean.shape[0], n)
            # kept so that a skip for length can say which file was short
            source["uncut_seconds"] = {"noisy": noisy.shape[0] / sample_rate, "clean": clean.shape[0] / sample_rate}
        noisy, clean = noisy[:n].astype(np.float32), clean[:n].astype(np.float32)
        snr = input_snr(clean, noisy)
        snr_bin = float(min(snr_bins, key=lambda b: abs(b - snr)))
        items.append(Item(item_id=os.path.splitext(rel)[0], clean=clean, noisy=noisy, snr_db=snr, snr_bin=snr_bin,
                          noise_class=classes[rel], source=source))
    if missing:
        logger.warning("%d noisy files have no clean file at the same relative path in %s, e.g. %s; skipped",
                       len(missing), clean_dir, missing[0])
    if not items:
        raise FileNotFoundError(f"No noisy file in {noisy_dir!r} has a clean twin in {clean_dir!r} "
                                "(matched by relative path without extension).")
    return items


def degenerate_reason(item: Item, sample_rate: int, min_samples: int = 0) -> str | None:
    """Why `item` cannot be scored meaningfully, or None when it can.

    Refused: non-finite samples; fewer than `min_samples` samples (one model window: the reference
    recipe returns silence for such an item, which PESQ cannot score, and STOI needs about 0.4 s of
    speech); a clean reference quieter than MIN_CLEAN_DBFS (SI-SDR, PESQ and STOI compare against
    it); a silent noisy input; and an input SNR above MAX_INPUT_SNR_DB (noisy equal to clean: its
    SI-SDR is some +200 dB, so every system's SI-SDR improvement on it is hugely negative).
    """
    n = item.noisy.shape[0]
    if item.clean.shape != item.noisy.shape:
        return f"clean and noisy differ in shape ({item.clean.shape} and {item.noisy.shape})"
    if not (np.isfinite(item.clean).all() and np.isfinite(item.noisy).all()):
        return "holds non-finite samples (NaN or infinity)"
    if n == 0:
        return "empty (0 samples)"
    if n < min_samples:
        reason = (f"{n / sample_rate:.3f} s long, shorter than one model window ({min_samples / sample_rate:.3f} s): "
                  "the reference recipe returns silence for it and PESQ/STOI cannot score so little audio")
        uncut = item.source.get("uncut_seconds")
        if uncut:
            reason += (f"; it was cut to the shorter of its noisy file ({uncut['noisy']:.3f} s) and clean file "
                       f"({uncut['clean']:.3f} s): is the clean file the right one?")
        return reason
    if _energy(item.clean) == 0.0:
        return "the clean reference is silent (all zeros)"
    clean_dbfs = 10.0 * math.log10(_energy(item.clean) / n)
    if clean_dbfs < MIN_CLEAN_DBFS:
        return f"the clean reference is silent ({clean_dbfs:.1f} dBFS mean power, below {MIN_CLEAN_DBFS:g} dBFS)"
    if _energy(item.noisy) == 0.0:
        return "the noisy input is silent"
    if item.snr_db > MAX_INPUT_SNR_DB:
        return (f"the noisy input is (nearly) identical to the clean reference (input SNR {item.snr_db:.1f} dB, "
                f"above {MAX_INPUT_SNR_DB:g} dB): there is no noise to remove")
    return None


def _describe_source(source: Mapping[str, Any]) -> str:
    names = [f"{key.replace('_file', '')} {source[key]}" for key in ("noisy_file", "clean_file", "voice_file",
                                                                     "noise_file") if key in source]
    return ", ".join(names) or "no source file"


def screen_items(items: Sequence[Item], sample_rate: int,
                 min_samples: int = 0) -> tuple[list[Item], list[dict[str, Any]]]:
    """Splits `items` into those to score and the skipped ones ({"id", "reason", "source"}).

    Each skipped item is logged as a warning naming its files (see `degenerate_reason`).
    """
    kept, skipped = [], []
    for item in items:
        reason = degenerate_reason(item, sample_rate, min_samples)
        if reason is None:
            kept.append(item)
            continue
        logger.warning("skipping item %s (%s): %s", item.item_id, _describe_source(item.source), reason)
        skipped.append({"id": item.item_id, "reason": reason, "source": item.source})
    return kept, skipped


# --- systems ---------------------------------------------------------------------------------

@dataclasses.dataclass
class System:
    """A named denoiser: `run(items)` returns one estimate per item (same length as item.noisy)."""

    name: str
    run: Callable[[Sequence[Item]], list[np.ndarray]]
    description: str = ""


def _per_item(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Sequence[Item]], list[np.ndarray]]:
    return lambda items: [fn(item.noisy) for item in items]


def model_systems(name: str, model_dir: str, *, batch_size: int | None = None, overlap: float = 0.5,
                  reference_recipe: bool = True) -> tuple[list[System], SpectrogramConfig]:
    """Our model (overlap-add predictor) and, optionally, the reference's recipe on the same weights."""
    from predictor.enhance import Enhancer

    enhancer = Enhancer.from_model_dir(model_dir, batch_size=batch_size, overlap=overlap)

    def run(items: Sequence[Item]) -> list[np.ndarray]:
        return [y for _, y in enhancer.enhance_many((i, item.noisy) for i, item in enumerate(items))]

    systems = [System(name, run, f"{model_dir}: {enhancer.target} target, {100 * overlap:.0f}% overlap-add")]
    if reference_recipe:
        recipe = baselines.ReferenceRecipe(enhancer.predict, enhancer.config, enhancer.target,
                                           batch_size=enhancer.batch_size)
        systems.append(System(f"{name}-reference-recipe", lambda items: recipe.enhance_many([i.noisy for i in items]),
                              f"{model_dir} run as the reference did: per-window peak normalisation, "
                              "non-overlapping windows, tail dropped, output x10"))
    return systems, enhancer.config


def baseline_systems(config: SpectrogramConfig) -> list[System]:
    """noisy input, spectral subtraction, Wiener filter, noisereduce (both modes) and the oracle."""
    rate = config.sample_rate
    return [
        System("noisy", lambda items: [item.noisy for item in items], "the unprocessed mixture"),
        System("spectral-subtraction", _per_item(lambda x: baselines.spectral_subtraction(x, config)),
               "power spectral subtraction, minimum-statistics noise estimate"),
        System("wiener", _per_item(lambda x: baselines.wiener_filter(x, config)),
               "decision-directed Wiener filter, minimum-statistics noise estimate"),
        System("noisereduce-stationary", _per_item(lambda x: baselines.spectral_gating(x, rate, stationary=True)),
               "noisereduce.reduce_noise(stationary=True)"),
        System("noisereduce-nonstationary", _per_item(lambda x: baselines.spectral_gating(x, rate, stationary=False)),
               "noisereduce.reduce_noise(stationary=False)"),
        System("oracle", lambda items: [baselines.oracle(item.noisy, item.clean, config) for item in items],
               "clean magnitude with the noisy phase (ceiling of magnitude-only models)"),
    ]


# --- scoring ---------------------------------------------------------------------------------

def evaluate(items: Sequence[Item], systems: Sequence[System], sample_rate: int, *,
             with_pesq: bool = True, with_stoi: bool = True, keep_outputs: Iterable[str] = (),
             progress_interval: float = 10.0, min_samples: int = 0) -> dict[str, Any]:
    """Runs every system on every item and scores it; returns the results dict (see `write_report`).

    Items that `degenerate_reason` refuses (e.g. shorter than `min_samples`, one model window) are
    skipped with a warning and listed under "skipped" with their reason. A metric that cannot be
    computed for one system on one item (or an estimate of the wrong shape or with non-finite
    samples) is nan, left out of the means, and listed under "failures"; the run goes on.
    PESQ is computed at 8 kHz ('nb') and 16 kHz ('wb') only; at other rates it is left out.
    Estimates of the item ids in `keep_outputs` are returned under "outputs" (not JSON).
    """
    if not items:
        raise ValueError("evaluate() needs at least one item.")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"System names must be unique. Received: {names}")
    if with_pesq and sample_rate not in metrics.PESQ_MODES:
        logger.warning("PESQ is defined at 8 and 16 kHz only; not computed at %d Hz", sample_rate)
        with_pesq = False
    total = len(items)
    items, skipped = screen_items(items, sample_rate, min_samples)
    if not items:
        examples = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"All {total} items were skipped, so there is nothing to score, e.g. {examples}. "
                         "Fix or replace those files (or use longer mixtures) and run again.")
    keep = set(keep_outputs)
    records = [{"id": it.item_id, "snr_db": it.snr_db, "snr_bin": it.snr_bin, "noise_class": it.noise_class,
                "seconds": it.noisy.shape[0] / sample_rate, "source": it.source, "scores": {}} for it in items]
    outputs: dict[str, dict[str, np.ndarray]] = {}
    failures: list[dict[str, str]] = []
    warned: set[tuple[str, str]] = set()  # (system, metric): the first failure of each is logged in full
    timing = {}
    for system in systems:
        start = time.perf_counter()
        estimates = system.run(items)
        timing[system.name] = time.perf_counter() - start
        if len(estimates) != len(items):
            raise ValueError(f"System {system.name!r} returned {len(estimates)} estimates for {len(items)} items")
        logger.info("%s: enhanced %d items in %.1f s; scoring", system.name, len(items), timing[system.name])
        last = time.perf_counter()
        first_failures = len(failures)
        for n, (item, record, estimate) in enumerate(zip(items, records, estimates), 1):
            estimate = np.asarray(estimate, np.float32)
            errors: dict[str, str] = {}
            if estimate.shape != item.noisy.shape:
                errors["all"] = f"the estimate has shape {estimate.shape}, the input {item.noisy.shape}"
            elif not np.isfinite(estimate).all():
                errors["all"] = "the estimate holds non-finite samples (NaN or infinity)"
            if errors:
                record["scores"][system.name] = {m: math.nan for m in METRICS}
            else:
                record["scores"][system.name] = metrics.score(item.clean, estimate, item.noisy, sample_rate,
                                                              with_pesq=with_pesq, with_stoi=with_stoi, errors=errors)
            for metric, error in errors.items():
                if (system.name, metric) not in warned:
                    warned.add((system.name, metric))
                    logger.warning("%s on item %s (%s): %s could not be computed (%s); left out of the means",
                                   system.name, item.item_id, _describe_source(item.source), metric, error)
                failures.append({"id": item.item_id, "system": system.name, "metric": metric, "error": error})
            if errors:
                record.setdefault("failures", {})[system.name] = errors
            if item.item_id in keep and not errors.get("all"):
                outputs.setdefault(item.item_id, {})[system.name] = estimate
            if time.perf_counter() - last > progress_interval:
                last = time.perf_counter()
                logger.info("%s: scored %d/%d items", system.name, n, len(items))
        if len(failures) > first_failures:
            logger.warning("%s: %d metric values could not be computed on %d items (listed in the report)",
                           system.name, len(failures) - first_failures,
                           len({f["id"] for f in failures[first_failures:]}))
    return {
        "sample_rate": sample_rate,
        "pesq_mode": metrics.PESQ_MODES.get(sample_rate) if with_pesq else None,
        "systems": [{"name": s.name, "description": s.description, "seconds": timing[s.name]} for s in systems],
        "snr_bins": sorted({it.snr_bin for it in items}),
        "noise_classes": sorted({it.noise_class for it in items}),
        "num_items": len(items),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "failures": failures,
        "items": records,
        "aggregates": aggregate(records, names),
        "outputs": outputs,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def aggregate(records: Sequence[dict[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    """Mean of each metric per system: overall, per SNR bin and per noise class (NaNs left out)."""
    def group(key: Callable[[dict], Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for system in systems:
            buckets: dict[Any, list[dict]] = {}
            for r in records:
                buckets.setdefault(key(r) if key else "all", []).append(r["scores"][system])
            out[system] = {_label(k): {**{m: _mean([s[m] for s in scores]) for m in METRICS}, "count": len(scores)}
                           for k, scores in sorted(buckets.items())}
        return out

    overall = group(None)
    return {"overall": {s: v["all"] for s, v in overall.items()},
            "by_snr": group(lambda r: r["snr_bin"]),
            "by_noise_class": group(lambda r: r["noise_class"])}


def _label(key: Any) -> str:
    return f"{key:g}" if isinstance(key, float) else str(key)


# --- report ----------------------------------------------------------------------------------

_HEADERS = {"si_sdr": "SI-SDR (dB)", "si_sdri": "SI-SDRi (dB)", "pesq": "PESQ", "stoi": "STOI"}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_report(results: Mapping[str, Any], title: str = "Evaluation") -> str:
    """Markdown tables: overall, per system x SNR bin and per system x noise class."""
    agg = results["aggregates"]
    systems = [s["name"] for s in results["systems"]]
    pesq_name = f"PESQ ({results['pesq_mode']})" if results.get("pesq_mode") else "PESQ"
    headers = [_HEADERS[m] if m != "pesq" else pesq_name for m in METRICS]

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    def table(first: list[str], rows: list[tuple[list[str], dict[str, Any]]]) -> list[str]:
        lines = [row(first + headers + ["items"]), row(["---"] * (len(first) + len(headers) + 1))]
        for keys, values in rows:
            cells = [_fmt(values[m], 3 if m == "stoi" else 2) for m in METRICS]
            lines.append(row(keys + cells + [str(values["count"])]))
        return lines

    skipped, failures = results.get("skipped", []), results.get("failures", [])
    notes = ""
    if skipped:
        notes += f" {len(skipped)} more items were skipped (see Skipped items)."
    if failures:
        notes += f" {len(failures)} metric values could not be computed and are left out (see Metric failures)."
    lines = [f"# {title}", "",
             f"{results['num_items']} items at {results['sample_rate']} Hz; input SNR bins (dB): "
             + ", ".join(f"{b:g}" for b in results["snr_bins"]) + ". Means over items; SI-SDRi is the "
             "SI-SDR gain over the noisy input." + notes, "", "## Systems", ""]
    lines += [f"- **{s['name']}**: {s['description']} ({s['seconds']:.1f} s)" for s in results["systems"]]
    lines += ["", "## Overall", ""]
    lines += table(["system"], [([s], agg["overall"][s]) for s in systems])
    lines += ["", "## SI-SDR improvement (dB) by input SNR", ""]
    bins = [_label(b) for b in results["snr_bins"]]
    lines.append(row(["system"] + [f"{b} dB" for b in bins]))
    lines.append(row(["---"] * (len(bins) + 1)))
    for s in systems:
        lines.append(row([s] + [_fmt(agg["by_snr"][s][b]["si_sdri"]) for b in bins]))
    lines += ["", "## By input SNR", ""]
    lines += table(["SNR (dB)", "system"], [([b, s], agg["by_snr"][s][b]) for b in bins for s in systems])
    lines += ["", "## By noise class", ""]
    classes = results["noise_classes"]
    lines += table(["noise class", "system"], [([c, s], agg["by_noise_class"][s][c]) for c in classes for s in systems])
    if skipped:
        lines += ["", "## Skipped items", "", row(["item", "files", "reason"]), row(["---"] * 3)]
        lines += [row([s["id"], _describe_source(s["source"]), s["reason"]]) for s in skipped]
    if failures:
        lines += ["", "## Metric failures", "", row(["item", "system", "metric", "error"]), row(["---"] * 4)]
        lines += [row([f["id"], f["system"], f["metric"], f["error"]]) for f in failures]
    return "\n".join(lines) + "\n"


def write_report(results: Mapping[str, Any], items: Sequence[Item], output_dir: str, *,
                 config: SpectrogramConfig, example_system: str | None = None, num_examples: int = 3,
                 extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Writes results.json, results.md, si_sdri_vs_snr.png and examples.png into `output_dir`.

    examples.png shows the noisy, `example_system` and clean spectrograms of up to `num_examples`
    items whose estimates are in results["outputs"], through `config`'s STFT. `extra` is merged
    into the JSON (e.g. how the items were made). Returns {kind: path}. `output_dir` may be local
    or remote; each file is written whole under a temporary name and renamed into place.
    """
    from predictor import plots

    paths.makedirs(output_dir)
    written = {"json": paths.join(output_dir, "results.json"), "markdown": paths.join(output_dir, "results.md"),
               "improvement_plot": paths.join(output_dir, "si_sdri_vs_snr.png")}
    document = {k: v for k, v in results.items() if k != "outputs"}
    document.update(extra or {})
    _write_text(written["json"], json.dumps(_json_safe(document), indent=2, sort_keys=False))
    _write_text(written["markdown"], markdown_report(results))
    _write_png(written["improvement_plot"], lambda f: plots.improvement_vs_snr(results, f))
    by_id = {item.item_id: item for item in items}
    outputs = results.get("outputs", {})
    if example_system and outputs:
        examples = [(by_id[i], outputs[i][example_system]) for i in list(outputs)[:num_examples]
                    if example_system in outputs[i]]
        if examples:
            written["examples_plot"] = paths.join(output_dir, "examples.png")
            _write_png(written["examples_plot"], lambda f: plots.example_spectrograms(examples, example_system,
                                                                                       config, f))
    return written


def _write_text(path: str, text: str) -> None:
    paths.write_atomic(path, text.encode("utf-8"))


def _write_png(path: str, draw: Callable[[io.BytesIO], Any]) -> None:
    """Has `draw` save a figure into memory (matplotlib writes PNG to a file object), then writes it."""
    buffer = io.BytesIO()
    draw(buffer)
    paths.write_atomic(path, buffer.getvalue())


def pick_examples(items: Sequence[Item], count: int) -> list[str]:
    """Ids of up to `count` items spread over the SNR bins (the first item of bins spread evenly)."""
    bins = sorted({it.snr_bin for it in items})
    if count <= 0 or not bins:
        return []
    chosen_bins = [bins[round(i * (len(bins) - 1) / max(1, count - 1))] for i in range(min(count, len(bins)))]
    ids = []
    for b in chosen_bins:
        for it in items:
            if it.snr_bin == b and it.item_id not in ids:
                ids.append(it.item_id)
                break
    for it in items:  # fewer bins than examples: fill up in order
        if len(ids) >= count:
            break
        if it.item_id not in ids:
            ids.append(it.item_id)
    return ids


# --- the whole evaluation --------------------------------------------------------------------

def run_evaluation(output_dir: str, *, models: Mapping[str, str] | None = None, noisy_dir: str | None = None,
                   clean_dir: str | None = None, voice_dir: str | None = None, noise_dir: str | None = None,
                   snrs: Sequence[float] = DEFAULT_SNRS, num_mixtures: int = 20, duration: float = 4.0,
                   seed: int = 0, sample_rate: int | None = None, systems: Sequence[str] | None = None,
                   reference_recipe: bool = True, with_pesq: bool = True, with_stoi: bool = True,
                   batch_size: int | None = None, overlap: float = 0.5, num_examples: int = 3,
                   save_audio: bool = False) -> dict[str, Any]:
    """Builds the items and systems, scores them and writes the report; returns the results.

    Items come from `noisy_dir` + `clean_dir` or from `voice_dir` + `noise_dir` (see `paired_items`,
    `make_mixtures`). `models` maps a system name to a model directory; all models must share one
    sample rate, which is the evaluation rate (else `sample_rate`, 8000 Hz by default). `systems`
    keeps only the systems of those names. Items shorter than one model window, or otherwise
    degenerate (`degenerate_reason`), are skipped and listed in the report; `duration` (seconds)
    must therefore be at least one window. With `save_audio`, the example items' clean, noisy and
    estimated signals are written as wav under output_dir/audio/ITEM/. The input folders and
    `output_dir` may be local or remote (gs://...).
    """
    paired = noisy_dir is not None or clean_dir is not None
    mixed = voice_dir is not None or noise_dir is not None
    if paired == mixed or (paired and not (noisy_dir and clean_dir)) or (mixed and not (voice_dir and noise_dir)):
        raise ValueError("Give either --noisy-dir and --clean-dir (paired files) or --voice-dir and --noise-dir "
                         f"(mixtures made here). Received: noisy_dir={noisy_dir!r}, clean_dir={clean_dir!r}, "
                         f"voice_dir={voice_dir!r}, noise_dir={noise_dir!r}")
    all_systems: list[System] = []
    config = None
    for name, directory in (models or {}).items():
        found, model_config = model_systems(name, directory, batch_size=batch_size, overlap=overlap,
                                            reference_recipe=reference_recipe)
        if config is not None and model_config.sample_rate != config.sample_rate:
            raise ValueError(f"All models must share one sample rate. Received: {config.sample_rate} Hz and "
                             f"{model_config.sample_rate} Hz ({directory})")
        config = config or model_config
        all_systems += found
    if config is None:
        config = SpectrogramConfig.for_sample_rate(sample_rate or 8000)
    elif sample_rate and sample_rate != config.sample_rate:
        raise ValueError(f"--sample-rate {sample_rate} differs from the models' rate {config.sample_rate} Hz; "
                         "leave it out to evaluate at the models' rate.")
    base = baseline_systems(config)
    all_systems = base[:1] + all_systems + base[1:]
    if systems:
        unknown = sorted(set(systems) - {s.name for s in all_systems})
        if unknown:
            raise ValueError(f"Unknown system names {unknown}. Available: {[s.name for s in all_systems]}")
        all_systems = [s for s in all_systems if s.name in set(systems)]
    rate = config.sample_rate
    if mixed and duration * rate < config.window_samples:
        # Every mixture would be shorter than one model window, and every one would be skipped.
        window_seconds = config.window_samples / rate
        raise ValueError(
            f"duration (--duration) must be at least one model window, {window_seconds:.3f} s at {rate} Hz: "
            "shorter items cannot be scored (the reference recipe returns silence for them and PESQ/STOI need "
            f"more audio). Received: duration={duration}. Use --duration {math.ceil(window_seconds * 100) / 100:g} "
            "or more.")
    if paired:
        items = paired_items(noisy_dir, clean_dir, sample_rate=rate, snr_bins=snrs)
        source = {"kind": "pairs", "noisy_dir": noisy_dir, "clean_dir": clean_dir, "snr_bins": list(snrs)}
    else:
        items = make_mixtures(voice_dir, noise_dir, snrs=snrs, num_mixtures=num_mixtures, duration=duration,
                              sample_rate=rate, seed=seed)
        source = {"kind": "mixtures", "voice_dir": voice_dir, "noise_dir": noise_dir, "snrs": list(snrs),
                  "num_mixtures": num_mixtures, "duration": duration, "seed": seed}
    logger.info("evaluating %d systems on %d items (%.1f s of audio at %d Hz)", len(all_systems), len(items),
                sum(it.noisy.shape[0] for it in items) / rate, rate)
    examples = pick_examples([it for it in items if degenerate_reason(it, rate, config.window_samples) is None],
                             num_examples)
    results = evaluate(items, all_systems, rate, with_pesq=with_pesq, with_stoi=with_stoi, keep_outputs=examples,
                       min_samples=config.window_samples)
    model_names = [s.name for s in all_systems if s.name in (models or {})]
    example_system = model_names[0] if model_names else ("oracle" if any(s.name == "oracle" for s in all_systems)
                                                         else all_systems[-1].name)
    written = write_report(results, items, output_dir, config=config, example_system=example_system,
                           num_examples=num_examples, extra={"source": source, "spectrogram": config.to_dict()})
    if save_audio:
        by_id = {it.item_id: it for it in items}
        for item_id, estimates in results["outputs"].items():
            folder = paths.join(output_dir, "audio", item_id)
            signals = {"clean": by_id[item_id].clean, **estimates}
            for name, signal in signals.items():
                audio_io.write_audio_atomic(paths.join(folder, f"{name}.wav"), signal[:, None], rate, "FLOAT")
        written["audio"] = paths.join(output_dir, "audio")
    results = {k: v for k, v in results.items() if k != "outputs"}
    results["paths"] = written
    return results
