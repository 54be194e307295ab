"""`speech-enhance inspect`: what a dataset holds, as a table, text histograms and a PNG."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np

from tfrecord_schema import paths
from tfrecord_schema.dataset import Dataset, ShardedStore
from tfrecord_schema.sources import SourceStore, open_store

LOG = logging.getLogger(__name__)


def _bars(edges: list[float], counts: list[int], width: int = 40, group: int = 1) -> list[str]:
    counts = [sum(counts[i: i + group]) for i in range(0, len(counts), group)]
    lows = edges[::group]
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return ["  (empty)"]
    peak = max(counts)
    lines = []
    for i in range(nonzero[0], nonzero[-1] + 1):
        lines.append(f"  {lows[i]:>6g} | {'#' * max(1 if counts[i] else 0, round(width * counts[i] / peak)):<{width}} {counts[i]}")
    return lines


def summarize(dataset: Dataset) -> dict[str, Any]:
    rows = {}
    for name, split in dataset.splits.items():
        sizes = [shard.num_bytes for shard in split.shards]
        rows[name] = {
            "examples": split.num_examples, "shards": len(sizes), "mebibytes": split.num_bytes / 2**20,
            "bytes_per_example": split.num_bytes / max(1, split.num_examples),
            "shard_mib_min": min(sizes) / 2**20, "shard_mib_max": max(sizes) / 2**20,
            "snr_db": split.extra.get("snr_db", {}),
        }
    info = dataset.info
    return {"splits": rows, "rejects": info.rejects or {}, "seed": info.seed,
            "spectrogram": info.spectrogram.to_dict(), "compression": info.compression,
            "augmentation": (info.augmentation or {}).get("counts", {})}


def inspect_dataset(dataset: str, split: str = "train", examples: int = 4, plot_path: str | None = None,
                    json_path: str | None = None, verify: bool = False) -> dict[str, Any]:
    """Prints a summary of the dataset, plots a few examples and checks its shards: their sizes always,
    every record (CRCs, schema, counts) with `verify`. The summary's "problems" lists what is damaged.
    A source store (`--kind sources`) gets its own summary (`summarize_store`) and no plot."""
    opened = open_store(dataset)
    if isinstance(opened, SourceStore):
        summary = summarize_store(opened)
        lines = store_lines(dataset, summary)
        summary["problems"] = _check(opened, lines, verify)
        print("\n".join(lines))
        if json_path:
            paths.write_atomic(json_path, json.dumps(summary, indent=1).encode())
        return summary
    summary = summarize(opened)
    cfg = opened.config
    lines = [f"dataset {dataset}: schema v{opened.info.schema_version}, {cfg.sample_rate} Hz, window "
             f"{cfg.window_samples} samples, n_fft {cfg.n_fft}, hop {cfg.hop_length}, {cfg.dtype}, "
             f"compression {summary['compression'] or 'none'}, seed {summary['seed']}",
             f"{'split':<6} {'examples':>9} {'shards':>6} {'MiB':>9} {'bytes/ex':>9} {'shard MiB min-max':>17} {'SNR dB min/mean/max':>21}"]
    for name, r in summary["splits"].items():
        snr = r["snr_db"]
        lines.append(f"{name:<6} {r['examples']:>9} {r['shards']:>6} {r['mebibytes']:>9.1f} {r['bytes_per_example']:>9.0f} "
                     f"{r['shard_mib_min']:>8.1f}-{r['shard_mib_max']:<8.1f} "
                     f"{snr.get('min', float('nan')):>6.1f}/{snr.get('mean', float('nan')):.1f}/{snr.get('max', float('nan')):.1f}")
    rej = summary["rejects"]
    lines.append(f"rejected inputs: {rej.get('count', 0)} {rej.get('by_reason', {})}")
    augmented = summary["augmentation"]
    if augmented:
        lines.append("augmentation (examples): " + ", ".join(f"{k} {v}" for k, v in augmented.items()))
    hist = opened.info.histograms or {}
    for key, title, group in (("snr_db", "realised SNR (dB), all splits", 2), ("noise_level", "noise level", 2)):
        if key in hist:
            counts = np.sum([hist[key]["counts"][s] for s in hist[key]["counts"]], axis=0).tolist()
            lines.append(f"{title}:")
            lines.extend(_bars(hist[key]["edges"], counts, group=group))
    problems = summary["problems"] = _check(opened, lines, verify)
    print("\n".join(lines))

    if plot_path is None:
        plot_path = paths.join(dataset, "inspect.png")
    if plot_path and examples > 0 and not problems:
        items = opened.examples(split, examples)
        if items:
            _plot(items, hist, plot_path)
            print(f"plot: {plot_path}")
    if json_path:
        paths.write_atomic(json_path, json.dumps(summary, indent=1).encode())
    return summary


def _check(store: ShardedStore, lines: list[str], verify: bool) -> list[str]:
    """The store's problems (every record read with `verify`, else shard sizes only); appends the verdict
    to `lines`."""
    if verify:
        found, records = store.verify()
        checked = (f"read all {records} records: CRCs, schema, counts, "
                   f"{'all-zero examples' if isinstance(store, Dataset) else 'sample rates'} and record indexes")
    else:
        found = store.check_sizes()
        checked = "shard sizes only; --verify reads every record"
    problems = [str(problem) for problem in found]
    if problems:
        lines.append(f"DAMAGED: {len(problems)} problem(s) found ({checked}):")
        lines.extend(f"  {p}" for p in problems)
        lines.append("Rebuild the dataset (speech-enhance dataset ... --overwrite).")
    else:
        lines.append(f"healthy ({checked})")
    return problems


def summarize_store(store: SourceStore) -> dict[str, Any]:
    """A source store's summary: its rate, and per split its shards and bytes and per role its
    segments, hours and groups (from its dataset_info.json; nothing is read from the shards)."""
    info = store.info
    contents = info.contents or {}
    splits = {name: {"segments": split.num_examples, "shards": len(split.shards), "mebibytes": split.num_bytes / 2**20,
                     "roles": contents.get(name, {})} for name, split in store.splits.items()}
    return {"kind": info.kind, "sample_rate": info.sample_rate, "compression": info.compression,
            "splits": splits, "rejects": info.rejects or {}}


def store_lines(directory: str, summary: dict[str, Any]) -> list[str]:
    """The printed table of `summarize_store`'s summary."""
    lines = [f"source store {directory}: {summary['sample_rate']} Hz, 16-bit PCM segments, compression "
             f"{summary['compression'] or 'none'}",
             f"{'split':<6} {'role':<6} {'segments':>9} {'hours':>9} {'groups':>7}  largest groups (hours)"]
    for name, split in summary["splits"].items():
        for role, entry in split["roles"].items():
            top = sorted(entry["groups"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            lines.append(f"{name:<6} {role:<6} {entry['segments']:>9} {entry['hours']:>9.3f} {len(entry['groups']):>7}  "
                         + ", ".join(f"{g} {h:.3f}" for g, h in top))
        lines.append(f"{name:<6} {'all':<6} {split['segments']:>9} in {split['shards']} shard(s), "
                     f"{split['mebibytes']:.1f} MiB")
    rej = summary["rejects"]
    lines.append(f"rejected inputs: {rej.get('count', 0)} {rej.get('by_reason', {})}")
    return lines


def _plot(items: list[dict], hist: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(items)
    fig, axes = plt.subplots(n + 1, 2, figsize=(9, 2.6 * (n + 1)), squeeze=False)
    for row, item in enumerate(items):
        for col, key in enumerate(("noisy_magnitude", "clean_magnitude")):
            db = 20 * np.log10(np.maximum(item[key].astype(np.float32), 1e-5))
            ax = axes[row][col]
            im = ax.imshow(db.T, origin="lower", aspect="auto", vmin=-80, vmax=20, cmap="magma")
            ax.set_title(f"{item['example_id']} {'noisy' if col == 0 else 'clean'}"
                         + (f": {item['noise_class']}, SNR {item['snr_db']:.1f} dB" if col == 0 else f": speaker {item['speaker_id']}"),
                         fontsize=8)
            ax.set_xlabel("frame")
            ax.set_ylabel("bin")
    for col, key in enumerate(("snr_db", "noise_level")):
        ax = axes[n][col]
        if key in hist:
            edges = np.asarray(hist[key]["edges"])
            for split, counts in hist[key]["counts"].items():
                ax.stairs(counts, edges, label=split)
            ax.set_xlabel("realised SNR (dB)" if key == "snr_db" else "noise level (noise RMS / active speech level)")
            ax.set_ylabel("examples")
            ax.legend(fontsize=7)
            total = np.sum(list(hist[key]["counts"].values()), axis=0)
            used = np.nonzero(total)[0]
            if used.size:
                ax.set_xlim(edges[used[0]] - 1e-9, edges[used[-1] + 1])
    # The colour bar gets a column of its own, right of the spectrograms, so it covers none of them.
    fig.subplots_adjust(hspace=0.55, right=0.86)
    top, bottom = axes[0][1].get_position().y1, axes[n - 1][1].get_position().y0
    fig.colorbar(im, cax=fig.add_axes([0.89, bottom, 0.018, top - bottom]), label="dB")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    paths.write_atomic(path, buf.getvalue())
