"""Scoring systems on items (`evaluate`) and averaging the scores per system, SNR bin, noise class and kind.

A metric that cannot be computed for one system on one item is nan, left out of the means and
listed as a failure, so one bad file never costs the whole run and never silently moves an average.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from predictor.evaluation import metrics
from predictor.evaluation.items import Item, describe_source, item_domains, screen_items
from predictor.evaluation.systems import System

logger = logging.getLogger(__name__)

METRICS = ("si_sdr", "si_sdri", "pesq", "stoi")

# The two kinds of noise the aggregates are also split into. Denoisers fail on other people's voices
# (the mask cannot tell the target talker from the others), so those items are reported apart.
NOISE_KINDS = ("talkers", "other")
# A noise class is "talkers" when one of its words (lower-cased, words split at anything but a letter)
# starts with one of these: babble, crowds, competing speech, voices, people talking, TV news, children
# playing, and the chatter of cafes, restaurants and parties. Every other class is "other", "unknown"
# (a file at the top of a noise folder without a class table) included. Bare "speech" is no word of
# the rule: "speech-shaped noise" and a folder named "speech-commands-background" hold no talkers.
TALKER_CLASS_PATTERN = re.compile(
    r"(?<![a-z])(babble|crowd|competing|voice|talk|chatter|conversation|caf[eé]|restaurant|party|news|children)")


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
                **item_domains(it.source), "seconds": it.noisy.shape[0] / sample_rate, "source": it.source,
                "scores": {}} for it in items]
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
                                   system.name, item.item_id, describe_source(item.source), metric, error)
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
    audio_seconds = max(sum(r["seconds"] for r in records), 1e-9)
    return {
        "sample_rate": sample_rate,
        "pesq_mode": metrics.PESQ_MODES.get(sample_rate) if with_pesq else None,
        # Real-time factor: the system's wall-clock time over the seconds of audio it enhanced, as it ran here.
        "systems": [{"name": s.name, "description": s.description, "seconds": timing[s.name],
                     "real_time_factor": timing[s.name] / audio_seconds} for s in systems],
        "snr_bins": sorted({it.snr_bin for it in items}),
        "noise_classes": sorted({it.noise_class for it in items}),
        "num_items": len(items),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "failures": failures,
        "items": records,
        "aggregates": aggregate(records, names),
        "noise_kinds": {kind: [c for c in sorted({it.noise_class for it in items}) if noise_kind(c) == kind]
                        for kind in NOISE_KINDS},
        "outputs": outputs,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def noise_kind(noise_class: str) -> str:
    """"talkers" when `noise_class` names other people's voices (`TALKER_CLASS_PATTERN`), else "other"."""
    return NOISE_KINDS[0] if TALKER_CLASS_PATTERN.search(noise_class.lower()) else NOISE_KINDS[1]


def aggregate(records: Sequence[dict[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    """Mean of each metric per system (NaNs left out): overall, per SNR bin, per noise class, per noise
    kind (`noise_kind`: "talkers" or "other", the kinds present), over the "other" items alone
    ("overall_without_talkers", means nan and count 0 when every item is talkers), and per speech
    corpus and noise group (`items.item_domains`; "all" for records without them)."""
    def group(key: Callable[[dict], Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for system in systems:
            buckets: dict[Any, list[dict]] = {}
            for r in records:
                buckets.setdefault(key(r) if key else "all", []).append(r["scores"][system])
            out[system] = {label(k): {**{m: _mean([s[m] for s in scores]) for m in METRICS}, "count": len(scores)}
                           for k, scores in sorted(buckets.items())}
        return out

    overall = group(None)
    by_kind = group(lambda r: noise_kind(r["noise_class"]))
    no_items = {**{m: math.nan for m in METRICS}, "count": 0}
    return {"overall": {s: v["all"] for s, v in overall.items()},
            "by_snr": group(lambda r: r["snr_bin"]),
            "by_noise_class": group(lambda r: r["noise_class"]),
            "by_noise_kind": by_kind,
            "by_voice_corpus": group(lambda r: r.get("voice_corpus", "all")),
            "by_noise_group": group(lambda r: r.get("noise_group", "all")),
            "overall_without_talkers": {s: v.get(NOISE_KINDS[1], no_items) for s, v in by_kind.items()}}


def label(key: Any) -> str:
    """How an aggregate key (an SNR bin or a noise class) is written in the results."""
    return f"{key:g}" if isinstance(key, float) else str(key)
