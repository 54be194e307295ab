"""PNG plots of an evaluation: SI-SDR improvement vs input SNR, and example spectrograms."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import stft


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def improvement_vs_snr(results: Mapping[str, Any], path: str) -> str:
    """Mean SI-SDR improvement (left) and PESQ (right) per input-SNR bin, one line per system."""
    plt = _pyplot()
    bins = results["snr_bins"]
    labels = [f"{b:g}" for b in bins]
    by_snr = results["aggregates"]["by_snr"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for metric, ax, ylabel in (("si_sdri", axes[0], "SI-SDR improvement (dB)"), ("pesq", axes[1], "PESQ")):
        for system in results["systems"]:
            name = system["name"]
            values = [by_snr[name][label][metric] for label in labels]
            values = [v if v is not None and math.isfinite(v) else np.nan for v in values]
            ax.plot(bins, values, marker="o", label=name)
        ax.set_xlabel("input SNR (dB)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].axhline(0.0, color="black", linewidth=0.8)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{results['num_items']} items at {results['sample_rate']} Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def example_spectrograms(examples: Sequence[tuple[Any, np.ndarray]], system: str, config: SpectrogramConfig,
                         path: str) -> str:
    """Noisy / `system` / clean log-magnitude spectrograms (rows) of a few items (columns).

    `examples` holds (item, estimate) pairs; items have `clean`, `noisy`, `item_id`, `snr_db`.
    """
    plt = _pyplot()
    cols = len(examples)
    fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 8), squeeze=False)
    seconds_per_frame = config.hop_length / config.sample_rate
    for c, (item, estimate) in enumerate(examples):
        rows = (("noisy", item.noisy), (system, estimate), ("clean", item.clean))
        reference = np.abs(stft(item.noisy, config)).max() + 1e-12
        for r, (label, signal) in enumerate(rows):
            db = 20.0 * np.log10(np.abs(stft(signal, config)) / reference + 1e-6)
            ax = axes[r][c]
            extent = (0.0, db.shape[0] * seconds_per_frame, 0.0, config.sample_rate / 2000.0)
            ax.imshow(db.T, origin="lower", aspect="auto", vmin=-80, vmax=0, cmap="magma", extent=extent)
            ax.set_title(f"{item.item_id} ({item.snr_db:.0f} dB): {label}" if r == 0 else label, fontsize=9)
            ax.set_ylabel("kHz")
            if r == 2:
                ax.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
