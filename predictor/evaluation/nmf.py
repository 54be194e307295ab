"""Sparse NMF (SNMF) "done well": the cost, its multiplicative updates, and learning and solving with them.

Follows Le Roux, Weninger & Hershey, "Sparse NMF - half-baked or well done?" (MERL TR2015-023).
A non-negative magnitude spectrogram V [bins, frames] is approximated by W-bar H, where W-bar is
the dictionary W with every column divided by its Euclidean norm *inside the cost*:

    C(W, H) = D_beta(V | W-bar H) + sparsity * sum(H),        W-bar = W / ||W||  (per column)

D_beta is the beta-divergence (beta=1: Kullback-Leibler, the default; beta=2: squared Euclidean
distance / 2; beta=0: Itakura-Saito). Normalising inside the cost is what keeps the L1 penalty
honest: without it W grows and H shrinks until the penalty means nothing, and rescaling W after a
plain update ("half-baked") does not minimise the stated cost. The multiplicative updates are the
paper's, with Lambda = W-bar H:

    H <- H * [W-bar^T (V * Lambda^(beta-2))] / [W-bar^T Lambda^(beta-1) + sparsity]   (^gamma(beta))
    W <- W * [N + W-bar * (1 1^T (W-bar * P))] / [P + W-bar * (1 1^T (W-bar * N))]

with N = (V * Lambda^(beta-2)) H^T and P = Lambda^(beta-1) H^T, the negative and positive parts of
the gradient with respect to W-bar; gamma(beta) = 1/(2-beta) for beta < 1, else 1 (Fevotte & Idier,
2011). After each W update the columns are rescaled to unit norm, which leaves the cost unchanged.

Every V is divided by its mean before solving (by the callers), so `sparsity` means the same at any
signal level (for beta=1 the solution is scale-equivariant anyway). numpy/scipy only.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import scipy.special

from predictor.evaluation.options import DEFAULT_SPARSITY

logger = logging.getLogger(__name__)

EPS = 1e-12  # floor of Lambda and of column norms, in units of the (mean-normalised) data


# --- argument checks (also SparseNMF's) ----------------------------------------------------------------

def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int; ValueError naming `name` unless it is an integer >= 1."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_sparsity(value: Any) -> float:
    """`value` as a float; ValueError unless it is a finite number >= 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"sparsity must be a finite number >= 0 (the L1 weight on H; 0: plain NMF). "
                         f"Received: sparsity={value!r}")
    return float(value)


def check_beta(beta: float) -> float:
    """`beta` as a float; ValueError unless it is a number in [0, 2]."""
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0.0 <= beta <= 2.0:
        raise ValueError(f"beta must be a number in [0, 2] (1: Kullback-Leibler, 2: Euclidean, 0: Itakura-Saito). "
                         f"Received: beta={beta!r}")
    return float(beta)


# --- the cost and its multiplicative updates ---------------------------------------------------------

def beta_divergence(v: np.ndarray, lam: np.ndarray, beta: float) -> float:
    """Sum over all entries of the beta-divergence D_beta(v | lam); both non-negative, same shape.

    beta=1: sum v log(v/lam) - v + lam; beta=0: sum v/lam - log(v/lam) - 1; otherwise
    sum (v^beta + (beta-1) lam^beta - beta v lam^(beta-1)) / (beta (beta-1)). `lam` is floored at EPS.
    """
    lam = np.maximum(lam, EPS)
    if beta == 1.0:
        return float(np.sum(scipy.special.xlogy(v, v) - v * np.log(lam) - v + lam))
    if beta == 0.0:
        ratio = np.maximum(v, EPS) / lam
        return float(np.sum(ratio - np.log(ratio) - 1.0))
    return float(np.sum(v**beta + (beta - 1.0) * lam**beta - beta * v * lam ** (beta - 1.0)) / (beta * (beta - 1.0)))


def normalise_columns(w: np.ndarray) -> np.ndarray:
    """W-bar: every column of `w` [bins, atoms] divided by its Euclidean norm."""
    return w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), EPS)


def snmf_cost(v: np.ndarray, w: np.ndarray, h: np.ndarray, sparsity: float, beta: float) -> float:
    """C(W, H) = D_beta(V | W-bar H) + sparsity * sum(H) for V [bins, frames], W [bins, atoms], H [atoms, frames]."""
    return beta_divergence(v, normalise_columns(w) @ h, beta) + sparsity * float(np.sum(h))


def _h_update(v: np.ndarray, wbar: np.ndarray, h: np.ndarray, lam: np.ndarray, sparsity: float, beta: float,
              column_sums: np.ndarray | None = None) -> np.ndarray:
    """One multiplicative update of H (in place) for fixed W-bar; `lam` = W-bar H."""
    if beta == 1.0:
        numerator = wbar.T @ (v / lam)
        denominator = (column_sums if column_sums is not None else wbar.sum(axis=0))[:, None] + sparsity
    elif beta == 2.0:
        numerator = wbar.T @ v
        denominator = wbar.T @ lam + sparsity
    else:
        numerator = wbar.T @ (v * lam ** (beta - 2.0))
        denominator = wbar.T @ lam ** (beta - 1.0) + sparsity
    ratio = numerator / np.maximum(denominator, EPS)
    if beta < 1.0:  # the exponent that makes the update a majorisation-minimisation step
        ratio **= 1.0 / (2.0 - beta)
    h *= ratio
    return h


def _w_terms(v: np.ndarray, w: np.ndarray, h: np.ndarray, lam: np.ndarray,
             beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W-bar, numerator, denominator) [bins, atoms] of the W update; `lam` = W-bar H.

    The gradient of the cost with respect to W is (denominator - numerator) / ||W|| (per column):
    the gradient with respect to W-bar, P - N, projected orthogonally to each column of W-bar.
    """
    wbar = normalise_columns(w)
    if beta == 1.0:
        negative = (v / lam) @ h.T
        positive = np.broadcast_to(h.sum(axis=1), wbar.shape)  # Lambda^0 H^T = 1 H^T
    elif beta == 2.0:
        negative = v @ h.T
        positive = lam @ h.T
    else:
        negative = (v * lam ** (beta - 2.0)) @ h.T
        positive = lam ** (beta - 1.0) @ h.T
    # The gradient through the normalisation: W-bar (W-bar . grad), one scalar per column.
    numerator = negative + wbar * np.sum(wbar * positive, axis=0, keepdims=True)
    denominator = positive + wbar * np.sum(wbar * negative, axis=0, keepdims=True)
    return wbar, numerator, denominator


def _w_update(v: np.ndarray, w: np.ndarray, h: np.ndarray, lam: np.ndarray, beta: float) -> np.ndarray:
    """One multiplicative update of W for the cost with W normalised inside it; returns W-bar after it."""
    _, numerator, denominator = _w_terms(v, w, h, lam, beta)
    return normalise_columns(w * numerator / np.maximum(denominator, EPS))


def learn_dictionary(v: np.ndarray, atoms: int, *, sparsity: float = DEFAULT_SPARSITY, beta: float = 1.0,
                     iterations: int = 200, rng: np.random.Generator | None = None, cost_every: int = 0,
                     name: str = "dictionary") -> tuple[np.ndarray, np.ndarray, list[tuple[int, float]]]:
    """Sparse NMF of `v` [bins, frames] (non-negative) with W normalised inside the cost.

    Alternates the H and W multiplicative updates (module docstring) for a fixed number of
    `iterations`, from a uniform random init drawn from `rng` (a seeded `numpy.random.Generator`;
    default seed 0). Returns (W-bar [bins, atoms] with unit-norm columns, H [atoms, frames],
    costs): costs are (iteration, C(W, H)) at iteration 0, every `cost_every` iterations (0: only
    the first and last) and after the last one. Progress is logged at INFO about every 25 %.
    """
    v = np.asarray(v, np.float64)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"v must be a non-empty [bins, frames] array. Received: shape={v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("v must be finite and non-negative (magnitudes). Received: min="
                         f"{np.nanmin(v):.3g}, finite={bool(np.all(np.isfinite(v)))}")
    check_positive_int("atoms", atoms)
    check_positive_int("iterations", iterations)
    check_sparsity(sparsity)
    beta = check_beta(beta)
    rng = rng if rng is not None else np.random.default_rng(0)
    bins, frames = v.shape
    w = normalise_columns(rng.uniform(0.1, 1.0, size=(bins, atoms)))
    # H at a scale where W-bar H has the data's mean, so the first updates are not spent on the level.
    h = rng.uniform(0.1, 1.0, size=(atoms, frames))
    h *= v.mean() / max(float((w @ h).mean()), EPS)
    costs = [(0, snmf_cost(v, w, h, sparsity, beta))]
    start = time.perf_counter()
    report_every = max(1, iterations // 4)
    for it in range(1, iterations + 1):
        lam = np.maximum(w @ h, EPS)
        _h_update(v, w, h, lam, sparsity, beta)
        lam = np.maximum(w @ h, EPS)
        w = _w_update(v, w, h, lam, beta)
        if it == iterations or (cost_every and it % cost_every == 0):
            costs.append((it, snmf_cost(v, w, h, sparsity, beta)))
        if it % report_every == 0 or it == iterations:
            logger.info("snmf %s: iteration %d/%d (%d atoms, %d frames), %.1f s", name, it, iterations, atoms,
                        frames, time.perf_counter() - start)
    return w, h, costs


def solve_activations(v: np.ndarray, w: np.ndarray, *, sparsity: float = DEFAULT_SPARSITY, beta: float = 1.0,
                      iterations: int = 100, dtype: Any = np.float64) -> np.ndarray:
    """H [atoms, frames] >= 0 minimising D_beta(V | W-bar H) + sparsity * sum(H) for a fixed `w`.

    `v` [bins, frames], `w` [bins, atoms] (normalised here). Starts from an H constant over atoms
    at each frame's level (deterministic: no randomness at enhancement time) and runs `iterations`
    multiplicative updates. Each frame's H depends only on that frame, so blocks of frames give the same result.
    Computed in `dtype` (`SparseNMF.enhance` uses float32, some 3x faster than float64).
    """
    v = np.asarray(v, dtype)
    wbar = normalise_columns(np.asarray(w, dtype))
    # Per frame, a constant H with mean(W-bar H) = mean(V): the init, like the updates, sees only its frame.
    frame_means = np.maximum(v.mean(axis=0), EPS)
    h = np.repeat((frame_means * (wbar.shape[0] / max(float(wbar.sum()), EPS)))[None, :], wbar.shape[1], axis=0)
    column_sums = wbar.sum(axis=0)
    for _ in range(iterations):
        lam = np.maximum(wbar @ h, EPS)
        _h_update(v, wbar, h, lam, sparsity, beta, column_sums)
    return h
