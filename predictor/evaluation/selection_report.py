"""The selection record: selection.json (everything `selection.select` returns) and selection.md (its tables)."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from predictor.evaluation.report import _json_safe
from predictor.evaluation.selection import METRIC_NAMES, SELECTION_METRICS, cell_vetoes
from tfrecord_schema import paths

# Digits shown per metric: PESQ and SI-SDR differences of hundredths, STOI of thousandths.
_DIGITS = {"pesq": 3, "stoi": 4, "si_sdr": 2}


def _cell(cell: Mapping[str, float], metric: str, rule: Mapping[str, Any]) -> str:
    if cell["n"] == 0 or not math.isfinite(cell["mean"]):
        return "n/a"
    d = _DIGITS[metric]
    text = f"{cell['mean']:+.{d}f} [{cell['low']:+.{d}f}, {cell['high']:+.{d}f}]"
    return f"**{text} VETO**" if cell_vetoes(cell, metric, rule) else text


def selection_markdown(record: Mapping[str, Any]) -> str:
    """selection.md: the rule's constants, one table per candidate (domains x metrics), then the pick."""
    rule = record["rule"]
    units = ", ".join(f"{METRIC_NAMES[m]} {rule['units'][m]:g}" for m in SELECTION_METRICS)
    lines = ["# Model selection", "",
             f"Candidates against the reference **{record['reference']}** on {record['num_items']} items "
             "(docs/selection.md). Each cell: mean paired difference candidate - reference and its "
             f"{100 * rule['confidence']:g} % bootstrap interval ({rule['resamples']} resamples, seed {rule['seed']}). "
             f"VETO: the interval lies below 0 and the mean loses more than {rule['veto_margin']:g} unit, in a domain "
             f"of at least {rule['veto_min_items']} items. Composite: "
             f"mean over the {' and '.join(rule['composite_kinds'])} domains of the differences in units of "
             f"{units}, averaged over the metrics.", ""]
    for name, summary in record["candidates"].items():
        lines += [f"## {name}", "", "| domain | items | " + " | ".join(METRIC_NAMES[m] for m in SELECTION_METRICS)
                  + " |", "| --- | --- |" + " --- |" * len(SELECTION_METRICS)]
        for domain, by_metric in summary["domains"].items():
            cells = [_cell(by_metric[m], m, rule) for m in SELECTION_METRICS]
            n = max(by_metric[m]["n"] for m in SELECTION_METRICS)
            lines.append(f"| {domain.replace('|', '/')} | {n} | " + " | ".join(cells) + " |")
        score = summary["composite"]
        lines += ["", f"Composite: {score:+.3f}." if math.isfinite(score) else "Composite: n/a."]
        if summary["veto"]:
            lines += ["", "Vetoed:", ""] + [f"- {reason}" for reason in summary["veto"]]
        lines.append("")
    lines += ["## Pick", "", f"**{record['pick']}**: {record['why']}.", ""]
    return "\n".join(lines)


def write_selection(record: Mapping[str, Any], output_dir: str) -> dict[str, str]:
    """Writes selection.json and selection.md into `output_dir` (local or gs://), each whole; returns {kind: path}."""
    paths.makedirs(output_dir)
    written = {"json": paths.join(output_dir, "selection.json"), "markdown": paths.join(output_dir, "selection.md")}
    paths.write_atomic(written["json"], json.dumps(_json_safe(dict(record)), indent=2).encode("utf-8"))
    paths.write_atomic(written["markdown"], selection_markdown(record).encode("utf-8"))
    return written
