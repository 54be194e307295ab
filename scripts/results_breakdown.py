"""What a mean of `speech-enhance evaluate` is made of: one noise class left out, and that class per file.

    python scripts/results_breakdown.py runs/eval/results.json --class babble --snrs -5 0 5

Reads the per-item scores of results.json and prints, for each system, the mean SI-SDRi over the
given input-SNR bins (mean of the bin means, as the goals table takes it) with and without the
class, how many of the class's items fall in each bin, and the class's mean SI-SDRi per noise
file (over all its bins). Nothing is scored again.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np


def breakdown(results: dict, noise_class: str, snrs: list[float]) -> dict:
    items = results["items"]
    systems = [s["name"] for s in results["systems"]]
    out: dict = {"class": noise_class, "snrs_db": snrs, "class_items_per_bin": [], "systems": {}}
    for snr in snrs:
        out["class_items_per_bin"].append(sum(1 for it in items if it["snr_bin"] == snr
                                              and it.get("noise_class") == noise_class))
    for name in systems:
        with_class, without_class = [], []
        for snr in snrs:
            in_bin = [it for it in items if it["snr_bin"] == snr and name in it.get("scores", {})]
            with_class.append(float(np.mean([it["scores"][name]["si_sdri"] for it in in_bin])))
            rest = [it["scores"][name]["si_sdri"] for it in in_bin if it.get("noise_class") != noise_class]
            without_class.append(float(np.mean(rest)) if rest else float("nan"))
        per_file = collections.defaultdict(list)
        for it in items:
            if it.get("noise_class") == noise_class and name in it.get("scores", {}):
                per_file[it["source"]["noise_file"]].append(it["scores"][name]["si_sdri"])
        out["systems"][name] = {
            "si_sdri_by_bin": with_class, "mean": float(np.mean(with_class)),
            "si_sdri_by_bin_without_class": without_class, "mean_without_class": float(np.mean(without_class)),
            "class_by_file": {f: {"items": len(v), "si_sdri": float(np.mean(v))} for f, v in sorted(per_file.items())},
        }
    return out


def print_breakdown(report: dict) -> None:
    bins = " / ".join(f"{s:g}" for s in report["snrs_db"])
    print(f"mean SI-SDRi over {bins} dB; '{report['class']}' items per bin: {report['class_items_per_bin']}")
    files = sorted({f for r in report["systems"].values() for f in r["class_by_file"]})
    head = f"{'system':<26} {'all':>7} {'without':>8}   " + "  ".join(f"{f[-32:]:>32}" for f in files)
    print(head)
    print("-" * len(head))
    for name, r in report["systems"].items():
        cells = "  ".join(f"{r['class_by_file'][f]['si_sdri']:>32.2f}" if f in r["class_by_file"] else f"{'':>32}"
                          for f in files)
        print(f"{name:<26} {r['mean']:>7.2f} {r['mean_without_class']:>8.2f}   {cells}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json written by `speech-enhance evaluate`")
    p.add_argument("--class", dest="noise_class", default="babble", help="the noise class to take apart")
    p.add_argument("--snrs", type=float, nargs="+", default=[-5.0, 0.0, 5.0], help="input-SNR bins to average")
    p.add_argument("--json", default=None, help="also write the breakdown here")
    args = p.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        results = json.load(f)
    known = {it.get("noise_class") for it in results["items"]}
    if args.noise_class not in known:
        print(f"error: {args.results} has no item of noise class {args.noise_class!r}; its classes: "
              f"{sorted(c for c in known if c)}", file=sys.stderr)
        return 2
    missing = [s for s in args.snrs if not any(it["snr_bin"] == s for it in results["items"])]
    if missing:
        print(f"error: {args.results} has no item in the SNR bins {missing}; its bins: {results['snr_bins']}",
              file=sys.stderr)
        return 2
    report = breakdown(results, args.noise_class, args.snrs)
    print_breakdown(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
