"""Training curves as PNG files (matplotlib's Agg canvas; no pyplot, no display needed)."""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

from tfrecord_schema import paths


def plot_history(history: Mapping[str, Sequence[float]], path: str, title: str = "Training") -> str:
    """Writes loss (and learning rate, when logged) per epoch to the PNG file `path`; returns it.

    `history` maps "epoch", "loss", "val_loss", "learning_rate"... to per-epoch values (a Keras
    `History.history` or `trainer.history.HistoryCsv.columns()`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    loss = list(history.get("loss", []))
    epochs = [int(e) + 1 for e in history.get("epoch", range(len(loss)))]
    has_lr = bool(history.get("learning_rate"))
    fig = Figure(figsize=(8, 6 if has_lr else 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if has_lr else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.plot(epochs, loss, marker="o", label="train loss")
    if history.get("val_loss"):
        val = list(history["val_loss"])
        ax.plot(epochs, val, marker="o", label="validation loss")
        finite = [(v, e) for v, e in zip(val, epochs) if math.isfinite(v)]
        if finite:
            best, best_epoch = min(finite)
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best ({best:.4g}, epoch {best_epoch})")
    ax.set_ylabel("Huber loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if has_lr:
        axes[1].plot(epochs, list(history["learning_rate"]), marker=".", color="tab:green")
        axes[1].set_ylabel("learning rate (end of epoch)")
        axes[1].grid(True, alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    paths.write_atomic(path, buf.getvalue())
    return path
