"""Binned counts, the form in which dataset_info.json reports what was drawn (SNR, noise level,
augmentation): each chunk counts its examples into fixed bins, and the counts add up over chunks."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin; values beyond the edges are counted in the first or last bin."""
    clipped = np.clip(np.asarray(values, np.float64), edges[0], np.nextafter(edges[-1], -np.inf))
    return np.histogram(clipped, bins=np.asarray(edges))[0].tolist()
