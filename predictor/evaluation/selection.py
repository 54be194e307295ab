"""Which trained model ships: candidates against a reference on an `evaluate` run (docs/selection.md).

Each candidate's per-item scores are paired with the reference's on the same items; per domain
(overall, each speech corpus, each noise group, each SNR bin) and per metric (PESQ, STOI, SI-SDR)
the mean difference candidate - reference gets a 95 % paired-bootstrap interval. `SelectionRule`
holds every constant of the rule; `select` applies it and `write_selection` writes the record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from predictor.evaluation.scoring import NOISE_KINDS, label, noise_kind
from tfrecord_schema import paths

# The metrics the rule compares, in the order of its tables.
SELECTION_METRICS = ("pesq", "stoi", "si_sdr")
METRIC_NAMES = {"pesq": "PESQ", "stoi": "STOI", "si_sdr": "SI-SDR"}
# Domain kinds, in the order of the tables; a domain's name is "KIND:VALUE" ("overall" alone).
DOMAIN_KINDS = ("overall", "corpus", "noise", "snr")
# What a record lacking "voice_corpus" (items made before corpora were recorded) belongs to.
ALL_CORPORA = "all"


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    """The constants of the selection rule (docs/selection.md), written into every selection record.

    Attributes:
        confidence: coverage of the percentile bootstrap interval (0.95: the 2.5th to 97.5th percentile).
        resamples: bootstrap resamples per domain.
        seed: the global seed; a domain's generator is seeded with (seed, crc32 of the domain name).
        veto_min_items: a domain vetoes only when it holds at least this many paired items.
        veto_margin: a domain vetoes only a mean loss larger than this many units (below): with some
            thirty domain x metric cells, an interval below 0 alone vetoes a candidate no different
            from the reference about half the time.
        units: per metric, the smallest difference the validation set is meant to resolve (PESQ
            points, STOI as a fraction, SI-SDR in dB); a difference is divided by it in the composite.
        composite_kinds: the domain kinds averaged, each domain weighted equally, into the composite.
        min_composite: the winner's composite must exceed this for the reference to be replaced.
        tie_tolerance: composites this close count as equal; the candidate listed first wins a tie.
    """

    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    veto_min_items: int = 20
    veto_margin: float = 1.0
    units: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"pesq": 0.05, "stoi": 0.01, "si_sdr": 0.3})
    composite_kinds: tuple[str, ...] = ("corpus", "noise")
    min_composite: float = 0.0
    tie_tolerance: float = 1e-9

    def __post_init__(self):
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie between 0 and 1. Received: confidence={self.confidence}")
        if self.resamples < 1 or self.veto_min_items < 1:
            raise ValueError(f"resamples and veto_min_items must be at least 1. Received: resamples="
                             f"{self.resamples}, veto_min_items={self.veto_min_items}")
        if set(self.units) != set(SELECTION_METRICS) or not all(v > 0 for v in self.units.values()):
            raise ValueError(f"units needs a positive unit for each of {SELECTION_METRICS}. "
                             f"Received: units={self.units}")
        unknown = set(self.composite_kinds) - set(DOMAIN_KINDS)
        if unknown or not self.composite_kinds:
            raise ValueError(f"composite_kinds must be taken from {DOMAIN_KINDS}. Received: {self.composite_kinds}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "units": dict(self.units), "composite_kinds": list(self.composite_kinds)}


def load_results(path: str) -> dict[str, Any]:
    """Reads the results.json of `speech-enhance evaluate --output DIR` (local or gs://) and checks its shape."""
    try:
        document = json.loads(paths.read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err}); pass the results.json that `speech-enhance evaluate "
                         "--output DIR` writes") from err
    check_results(document, path)
    return document


def check_results(results: Any, source: str = "results") -> None:
    """Raises ValueError naming `source` and what is missing when `results` is not an `evaluate` results dict."""
    hint = "; pass the results.json that `speech-enhance evaluate --output DIR` writes"
    if not isinstance(results, dict) or not isinstance(results.get("items"), list):
        raise ValueError(f"{source} has no list of \"items\"{hint}")
    for n, record in enumerate(results["items"]):
        missing = [k for k in ("id", "snr_bin", "noise_class", "scores")
                   if not isinstance(record, dict) or k not in record]
        if missing or not isinstance(record["scores"], dict):
            raise ValueError(f"{source}: item {n} lacks {', '.join(missing) or 'a dict of scores'}{hint}")


def system_names(results: Mapping[str, Any]) -> list[str]:
    """The systems scored on every item of `results`, in the order of its "systems" list."""
    listed = [s["name"] for s in results.get("systems", []) if isinstance(s, dict) and "name" in s]
    common = set.intersection(*(set(r["scores"]) for r in results["items"])) if results["items"] else set()
    return [s for s in listed if s in common] + sorted(common - set(listed))


def selection_domains(record: Mapping[str, Any]) -> list[str]:
    """The domains one item belongs to: overall, its speech corpus, its noise group and its SNR bin.

    The corpus is "voice_corpus" ("all" when absent). The noise group is "talkers" for a talker class
    (`scoring.noise_kind`), whatever its folder; else "noise_group", or the class's kind when absent.
    """
    kind = noise_kind(str(record["noise_class"]))
    group = kind if kind == NOISE_KINDS[0] else str(record.get("noise_group") or kind)
    snr = record["snr_bin"]
    snr_label = label(float(snr)) if isinstance(snr, (int, float)) and math.isfinite(snr) else "unknown"
    return ["overall", f"corpus:{record.get('voice_corpus') or ALL_CORPORA}", f"noise:{group}", f"snr:{snr_label}"]


def _domain_order(name: str) -> tuple:
    kind, _, value = name.partition(":")
    try:
        key: tuple = (0, float(value))
    except ValueError:
        key = (1, value)
    return (DOMAIN_KINDS.index(kind), key)


def score_matrix(records: Sequence[Mapping[str, Any]], system: str) -> np.ndarray:
    """(items, metrics) float64 scores of `system` in `SELECTION_METRICS` order; NaN where not computed."""
    def value(scores: Mapping[str, Any], metric: str) -> float:
        v = scores.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    return np.array([[value(r["scores"][system], m) for m in SELECTION_METRICS] for r in records], np.float64)


def paired_bootstrap(differences: np.ndarray, rng: np.random.Generator, resamples: int = 2000,
                     confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap interval of each column of paired `differences` (items, columns).

    NaN marks an item without a pair in that column; it is left out of the mean. Each resample
    draws the items with replacement (the same draw for every column) and averages each column's
    finite values. Returns (n, mean, low, high), each of shape (columns,): n the count of finite
    items, NaN mean and bounds where n is 0.
    """
    d = np.asarray(differences, np.float64)
    if d.ndim != 2:
        raise ValueError(f"differences must be (items, columns). Received shape {d.shape}")
    items = d.shape[0]
    finite = np.isfinite(d)
    n = finite.sum(axis=0)
    filled = np.where(finite, d, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / n
    if items == 0:
        nan = np.full(d.shape[1], math.nan)
        return n, nan, nan, nan
    # How often each item is drawn in each resample: (resamples, items); the resampled means are then
    # two matrix products, which keeps a thousand items x several candidates to a fraction of a second.
    draws = rng.integers(0, items, size=(resamples, items))
    counts = np.bincount((draws + items * np.arange(resamples)[:, None]).ravel(),
                         minlength=resamples * items).reshape(resamples, items).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts @ filled) / (counts @ finite.astype(np.float64))
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():  # a column without a finite item has no interval: NaN, said by n == 0
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(means, [tail, 100 - tail], axis=0)
    return n, mean, low, high


def domain_seed(rule: SelectionRule, domain: str) -> list[int]:
    """The generator seed of one domain: (rule seed, crc32 of its name), so no result depends on order."""
    return [rule.seed, zlib.crc32(domain.encode("utf-8"))]


def compare(results: Mapping[str, Any], reference: str, candidates: Sequence[str],
            rule: SelectionRule = SelectionRule()) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{candidate: {domain: {metric: {"n", "mean", "low", "high"}}}}: candidate - reference per domain.

    Every candidate is resampled with the same draws in a domain, so their intervals are comparable.
    """
    records = results["items"]
    ref = score_matrix(records, reference)
    diffs = np.concatenate([score_matrix(records, c) - ref for c in candidates], axis=1)
    members: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        for domain in selection_domains(record):
            members.setdefault(domain, []).append(i)
    out: dict[str, dict] = {c: {} for c in candidates}
    width = len(SELECTION_METRICS)
    for domain in sorted(members, key=_domain_order):
        rng = np.random.default_rng(domain_seed(rule, domain))
        n, mean, low, high = paired_bootstrap(diffs[members[domain]], rng, rule.resamples, rule.confidence)
        for c_index, candidate in enumerate(candidates):
            columns = range(c_index * width, (c_index + 1) * width)
            out[candidate][domain] = {
                m: {"n": int(n[k]), "mean": float(mean[k]), "low": float(low[k]), "high": float(high[k])}
                for m, k in zip(SELECTION_METRICS, columns)}
    return out


def cell_vetoes(cell: Mapping[str, float], metric: str, rule: Mapping[str, Any]) -> bool:
    """Whether one domain x metric cell vetoes (rule step 1): at least `veto_min_items` items, an
    interval wholly below 0 and a mean loss beyond `veto_margin` units. `rule`: `SelectionRule.to_dict()`,
    as the selection record holds it."""
    return (cell["n"] >= rule["veto_min_items"] and cell["high"] < 0
            and cell["mean"] < -rule["veto_margin"] * rule["units"][metric])


def veto_reasons(domains: Mapping[str, Mapping[str, Mapping[str, float]]], rule: SelectionRule) -> list[str]:
    """One line per (domain, metric) whose interval lies wholly below 0 and whose mean loses more than
    `veto_margin` units, on at least `veto_min_items` items."""
    reasons, constants = [], rule.to_dict()
    for domain, by_metric in domains.items():
        for metric in SELECTION_METRICS:
            cell = by_metric[metric]
            if cell_vetoes(cell, metric, constants):
                reasons.append(f"{domain} {METRIC_NAMES[metric]}: {cell['mean']:+.4g} "
                               f"[{cell['low']:+.4g}, {cell['high']:+.4g}] on {cell['n']} items")
    return reasons


def composite(domains: Mapping[str, Mapping[str, Mapping[str, float]]], rule: SelectionRule) -> float:
    """Mean over the `composite_kinds` domains of the mean over metrics of difference / unit.

    A metric not computed in a domain (no paired item) is left out of that domain's mean, and a
    domain with no metric at all out of the composite; NaN when nothing is left.
    """
    per_domain = []
    for domain, by_metric in domains.items():
        if domain.partition(":")[0] not in rule.composite_kinds:
            continue
        scaled = [by_metric[m]["mean"] / rule.units[m] for m in SELECTION_METRICS if by_metric[m]["n"] > 0]
        if scaled:
            per_domain.append(sum(scaled) / len(scaled))
    return sum(per_domain) / len(per_domain) if per_domain else math.nan


def select(results: Mapping[str, Any], reference: str, candidates: Sequence[str],
           rule: SelectionRule = SelectionRule()) -> dict[str, Any]:
    """Applies the selection rule; returns the record `write_selection` writes (see docs/selection.md).

    Keys: "rule" (its constants), "reference", "candidates" ({name: {"domains", "veto", "composite"}}
    in the order given), "pick" (a candidate, or the reference when none qualifies) and "why".
    """
    check_results(results)
    present = system_names(results)
    unknown = [s for s in [reference, *candidates] if s not in present]
    if unknown:
        raise ValueError(f"unknown system name(s) {unknown}; the systems scored on every item are {present}")
    if not candidates or reference in candidates or len(set(candidates)) != len(candidates):
        raise ValueError(f"candidates must be one or more distinct systems other than the reference {reference!r}. "
                         f"Received: {list(candidates)}")
    if len(results["items"]) < 2:
        raise ValueError(f"selection needs at least 2 scored items; the results hold {len(results['items'])}: "
                         "evaluate on more items")
    compared = compare(results, reference, candidates, rule)
    summary = {}
    for c in candidates:
        reasons = veto_reasons(compared[c], rule)
        summary[c] = {"domains": compared[c], "veto": reasons, "composite": composite(compared[c], rule)}
    best = None
    for c in candidates:  # in the order given: a later candidate must beat the best by more than the tolerance
        score = summary[c]["composite"]
        if not summary[c]["veto"] and math.isfinite(score) and (
                best is None or score > summary[best]["composite"] + rule.tie_tolerance):
            best = c
    return {"rule": rule.to_dict(), "reference": reference, "num_items": len(results["items"]),
            "candidates": summary, **_decision(summary, reference, best, rule)}


def _decision(summary: Mapping[str, Any], reference: str, best: str | None, rule: SelectionRule) -> dict[str, str]:
    vetoed = [c for c in summary if summary[c]["veto"]]
    note = f" ({len(vetoed)} vetoed: {', '.join(vetoed)})" if vetoed else ""
    if best is None:
        return {"pick": reference, "why": f"every candidate is vetoed or has no composite{note}; "
                                          f"the reference {reference} stays"}
    score = summary[best]["composite"]
    if score > rule.min_composite:
        return {"pick": best, "why": f"{best} has the highest composite among the candidates not vetoed, "
                                     f"{score:+.3f} > {rule.min_composite:g}{note}; it replaces {reference}"}
    return {"pick": reference, "why": f"the best candidate not vetoed, {best}, has composite {score:+.3f}, not above "
                                      f"{rule.min_composite:g}{note}; the reference {reference} stays"}
