"""Tables and the SI-SDRi-vs-input-SNR plot of the model-family comparison in docs/results.md.

    python scripts/family_results.py --results runs/eval_families/results.json \
        --models runs/gpu_families --speed benchmarks/results/family_speed.json \
        --plot docs/results/families_si_sdri_vs_snr.png --markdown docs/results/family_tables.md

Reads an evaluation's results.json (`speech-enhance evaluate`), the model directories' model.json
(parameters, GPU training time) and a `benchmarks/family_speed.py` JSON (CPU real-time factor),
and writes markdown tables (overall, per input SNR, per noise class) and a plot with one line per
system, like Figure 1(b) of Hetherly et al. (2018).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METRICS = (("si_sdr", "SI-SDR", "{:.2f}"), ("si_sdri", "SI-SDRi", "{:+.2f}"), ("pesq", "PESQ", "{:.2f}"),
           ("stoi", "STOI", "{:.3f}"))


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else pattern.format(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="results.json of the evaluation")
    parser.add_argument("--models", default=None, help="folder of model directories named as the systems")
    parser.add_argument("--speed", default=None, help="benchmarks/family_speed.py JSON")
    parser.add_argument("--systems", nargs="+", default=None, help="systems to show, in order (default: all)")
    parser.add_argument("--model-dir", nargs="+", default=[], metavar="SYSTEM=DIR",
                        help="model directories of systems not under --models")
    parser.add_argument("--speed-name", nargs="+", default=[], metavar="SYSTEM=ROW",
                        help="the --speed row of a system named otherwise there")
    parser.add_argument("--plot", required=True)
    parser.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)

    results = json.load(open(args.results, encoding="utf-8"))
    aggregates = results["aggregates"]
    names = args.systems or [s["name"] for s in results["systems"]]
    missing = sorted(set(names) - set(aggregates["overall"]))
    if missing:
        parser.error(f"--systems {missing} are not in {args.results}: {sorted(aggregates['overall'])}")
    speed = {}
    if args.speed:
        rows = {row["system"]: row for row in json.load(open(args.speed, encoding="utf-8"))["rows"]}
        renamed = dict(spec.split("=", 1) for spec in args.speed_name)
        speed = {name: rows[renamed.get(name, name)] for name in names if renamed.get(name, name) in rows}
    model_dirs = dict(spec.split("=", 1) for spec in args.model_dir)

    def trained(name: str) -> dict:
        base = name[: -len("-kmeans")] if name.endswith("-kmeans") else name
        path = os.path.join(model_dirs.get(base) or os.path.join(args.models or "", base), "model.json")
        return json.load(open(path, encoding="utf-8"))["training"] if os.path.isfile(path) else {}

    lines = ["# Model families on the held-out test set\n",
             f"{results['num_items']} mixtures at {results['sample_rate']} Hz from `{args.results}`; "
             "means over items.\n",
             "## Overall\n",
             "| system | SI-SDR (dB) | SI-SDRi (dB) | PESQ | STOI | parameters | GPU training (s) | CPU RTF |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        overall = aggregates["overall"][name]
        info = trained(name)
        row = speed.get(name, {})
        params = info.get("parameters", row.get("parameters"))
        lines.append(f"| {name} | " + " | ".join(_fmt(overall.get(m), p) for m, _, p in METRICS)
                     + f" | {'' if params is None else f'{params:,}'} | {_fmt(info.get('duration_seconds'), '{:.0f}')}"
                     + f" | {_fmt(row.get('rtf'), '{:.4f}')} |")
    bins = [f"{b:g}" for b in results["snr_bins"]]
    for metric, title, pattern in METRICS[1:]:
        lines += ["", f"## {title} by input SNR (dB)\n", "| system | " + " | ".join(bins) + " |",
                  "|---|" + "---|" * len(bins)]
        for name in names:
            by = aggregates["by_snr"][name]
            lines.append(f"| {name} | " + " | ".join(_fmt(by[b].get(metric), pattern) for b in bins) + " |")
    classes = sorted(next(iter(aggregates["by_noise_class"].values())))
    for metric, title, pattern in (METRICS[1], METRICS[2]):
        lines += ["", f"## {title} by noise class\n", "| system | " + " | ".join(classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for name in names:
            by = aggregates["by_noise_class"][name]
            lines.append(f"| {name} | " + " | ".join(_fmt(by[c].get(metric), pattern) for c in classes) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
    with open(args.markdown, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    x = results["snr_bins"]
    colours = iter(plt.get_cmap("tab10").colors)
    for name in names:
        if name == "noisy":  # its improvement is 0 by definition: the black line
            continue
        values = [aggregates["by_snr"][name][b].get("si_sdri") for b in bins]
        style = {"color": "black", "linestyle": ":"} if name == "oracle" else {
            "color": next(colours), "linestyle": "--" if name.endswith("-kmeans") else "-"}
        ax.plot(x, [v if v is not None else float("nan") for v in values], marker="o", label=name, **style)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel("SI-SDR improvement (dB)")
    ax.set_title(f"Held-out test set: {results['num_items']} mixtures at {results['sample_rate']} Hz")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)
    print(f"wrote {args.markdown} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
