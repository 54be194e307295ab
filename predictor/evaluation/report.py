"""The evaluation report: results.json, results.md and PNG plots, each written whole (local or gs://)."""

from __future__ import annotations

import io
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from predictor.evaluation.items import Item, describe_source
from predictor.evaluation.scoring import METRICS, NOISE_KINDS, label, noise_kind
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig

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
    """Markdown tables: overall, per system x SNR bin, per system x noise class and per system x noise kind."""
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
    lines += [f"- **{s['name']}**: {s['description']} ({s['seconds']:.1f} s"
              + (f", real-time factor {s['real_time_factor']:.3f})" if "real_time_factor" in s else ")")
              for s in results["systems"]]
    lines += ["", "## Overall", ""]
    lines += table(["system"], [([s], agg["overall"][s]) for s in systems])
    lines += ["", "## SI-SDR improvement (dB) by input SNR", ""]
    bins = [label(b) for b in results["snr_bins"]]
    lines.append(row(["system"] + [f"{b} dB" for b in bins]))
    lines.append(row(["---"] * (len(bins) + 1)))
    for s in systems:
        lines.append(row([s] + [_fmt(agg["by_snr"][s][b]["si_sdri"]) for b in bins]))
    lines += ["", "## By input SNR", ""]
    lines += table(["SNR (dB)", "system"], [([b, s], agg["by_snr"][s][b]) for b in bins for s in systems])
    lines += ["", "## By noise class", ""]
    classes = results["noise_classes"]
    lines += table(["noise class", "system"], [([c, s], agg["by_noise_class"][s][c]) for c in classes for s in systems])
    lines += ["", "## Talkers and other noise", ""] + _kind_lines(agg, classes, systems, table)
    for key, heading, first in (("by_voice_corpus", "By speech corpus", "corpus"),
                                ("by_noise_group", "By noise group", "noise group")):
        domains = list(agg.get(key, {}).get(systems[0], {}))
        if len(domains) > 1:  # one domain ("all") repeats the overall table
            lines += ["", f"## {heading}", ""]
            lines += table([first, "system"], [([d, s], agg[key][s][d]) for d in domains for s in systems])
    if skipped:
        lines += ["", "## Skipped items", "", row(["item", "files", "reason"]), row(["---"] * 3)]
        lines += [row([s["id"], describe_source(s["source"]), s["reason"]]) for s in skipped]
    if failures:
        lines += ["", "## Metric failures", "", row(["item", "system", "metric", "error"]), row(["---"] * 4)]
        lines += [row([f["id"], f["system"], f["metric"], f["error"]]) for f in failures]
    return "\n".join(lines) + "\n"


def _kind_lines(agg: Mapping[str, Any], classes: Sequence[str], systems: Sequence[str],
                table: Callable[[list[str], list], list[str]]) -> list[str]:
    """The "talkers" and "other" items apart (`scoring.noise_kind`); "other" is overall_without_talkers."""
    talkers = [c for c in classes if noise_kind(c) == NOISE_KINDS[0]]
    lines = ["Noise of other people's voices (babble, crowds, competing speech, chatter) apart from the rest; "
             "talker classes here: " + (", ".join(talkers) if talkers else "none") + ". The \"other\" rows are "
             "overall_without_talkers in results.json.", ""]
    kinds = [k for k in NOISE_KINDS if k in agg["by_noise_kind"][systems[0]]]
    return lines + table(["noise kind", "system"], [([k, s], agg["by_noise_kind"][s][k]) for k in kinds for s in systems])


def write_report(results: Mapping[str, Any], items: Sequence[Item], output_dir: str, *,
                 config: SpectrogramConfig, example_system: str | None = None, num_examples: int = 3,
                 extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Writes results.json, results.md, si_sdri_vs_snr.png and examples.png into `output_dir`.

    examples.png shows the noisy, `example_system` and clean spectrograms of up to `num_examples`
    items whose estimates are in results["outputs"], through `config`'s STFT. `extra` is merged
    into the JSON (e.g. how the items were made). Returns {kind: path}. `output_dir` may be local
    or remote; each file is written whole under a temporary name and renamed into place.
    """
    from predictor.evaluation import plots

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
