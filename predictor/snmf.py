"""Sparse NMF (SNMF) "done well": a classical, dictionary-based baseline for `speech-enhance evaluate`.

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

As an enhancement system (`SparseNMF`): a speech dictionary is learnt from clean speech magnitudes
and a noise dictionary from noise magnitudes (each by its own SNMF); at enhancement time both are
held fixed, concatenated, and only H is solved for under the same cost. The speech estimate is the
noisy magnitude times a Wiener-like mask (W_s H_s)^p / ((W_s H_s)^p + (W_n H_n)^p), p = 2 by
default (a power ratio; p = 1, a magnitude ratio, is an option), with the noisy phase. H is solved
in float32 at enhancement time (three times faster; the dictionaries are learnt in float64).

Spectrograms come from the toolkit's shared STFT (`tfrecord_schema.spectrogram`) with the model's
`SpectrogramConfig`, like every other baseline. Every V is divided by its mean before solving, so
`sparsity` means the same at any signal level (for beta=1 the solution is scale-equivariant anyway).
numpy/scipy only; no TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from typing import Any, Iterator

import numpy as np
import scipy.special

from predictor import audio_io
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.spectrogram import istft, stft

logger = logging.getLogger(__name__)

__all__ = ["SparseNMF", "beta_divergence", "learn_dictionary", "magnitudes_from_dataset", "magnitudes_from_folder",
           "normalise_columns", "same_stft", "snmf_cost", "solve_activations"]

FILE_FORMAT = "speech-enhance-snmf"
FILE_VERSION = 1
EPS = 1e-12  # floor of Lambda and of column norms, in units of the (mean-normalised) data
DEFAULT_ATOMS = 128
DEFAULT_SPARSITY = 1.0
DEFAULT_MAX_FRAMES = 20000
# Frames quieter than this relative to the loudest frame of their file (speech pauses, digital
# silence) carry no spectral shape and are not used for learning.
SILENT_FRAME_DB = -50.0


# --- the cost and its multiplicative updates ---------------------------------------------------------

def _check_beta(beta: float) -> float:
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0.0 <= beta <= 2.0:
        raise ValueError(f"beta must be a number in [0, 2] (1: Kullback-Leibler, 2: Euclidean, 0: Itakura-Saito). "
                         f"Received: beta={beta!r}")
    return float(beta)


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
    _check_positive_int("atoms", atoms)
    _check_positive_int("iterations", iterations)
    _check_sparsity(sparsity)
    beta = _check_beta(beta)
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


# --- argument checks ---------------------------------------------------------------------------------

def _check_positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


def _check_sparsity(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"sparsity must be a finite number >= 0 (the L1 weight on H; 0: plain NMF). "
                         f"Received: sparsity={value!r}")
    return float(value)


# --- training data -----------------------------------------------------------------------------------

def _voiced_frames(magnitude: np.ndarray) -> np.ndarray:
    """The frames [n, bins] of `magnitude` louder than SILENT_FRAME_DB below its loudest frame."""
    energy = np.sum(np.square(magnitude, dtype=np.float64), axis=1)
    if energy.size == 0 or energy.max() <= 0:
        return magnitude[:0]
    return magnitude[energy > energy.max() * 10.0 ** (SILENT_FRAME_DB / 10.0)]


def _subsample(frames: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if frames.shape[0] <= count:
        return frames
    return frames[np.sort(rng.choice(frames.shape[0], size=count, replace=False))]


def magnitudes_from_folder(folder: str, config: SpectrogramConfig, *, max_frames: int = DEFAULT_MAX_FRAMES,
                           seed: int = 0, argument: str = "folder") -> np.ndarray:
    """Magnitude frames [n <= max_frames, bins] (float32) of the audio files below `folder`.

    Files (wav/flac/ogg, listed recursively through `tfrecord_schema.paths`, local or gs://) are
    read in an order shuffled by a generator seeded with `seed`, downmixed, resampled to
    `config.sample_rate` and turned into magnitudes with the shared STFT. Near-silent frames are
    dropped; each file gives at most 2 * max_frames / (number of files) random frames, so many
    files contribute, and reading stops once `max_frames` are collected. `argument` names the
    folder in errors (e.g. "speech_dir").
    """
    _check_positive_int("max_frames", max_frames)
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"{argument} must be a folder path. Received: {argument}={folder!r}")
    if not paths.is_remote(folder) and not paths.exists_folder(folder):
        raise FileNotFoundError(f"{argument} must be an existing folder of audio files. Received: "
                                f"{argument}={folder!r}")
    files = [rel for rel in paths.list_files(folder)
             if audio_io.is_audio_file(rel) and not paths.basename(rel).startswith(".")]
    if not files:
        raise FileNotFoundError(f"{argument} holds no wav/flac/ogg files to learn from. Received: "
                                f"{argument}={folder!r}")
    rng = np.random.default_rng([seed, len(files)])
    per_file = max(1, math.ceil(2 * max_frames / len(files)))
    collected, total, used = [], 0, 0
    for index in rng.permutation(len(files)):
        path = paths.join(folder, files[index])
        try:
            audio = audio_io.read_audio(path)
        except (audio_io.AudioError, ValueError, OSError) as err:
            logger.warning("snmf: skipping %s, which cannot be read: %s", path, err)
            continue
        mono = audio_io.resample(audio.samples.mean(axis=1), audio.sample_rate, config.sample_rate)
        if mono.shape[0] == 0:
            continue
        frames = _subsample(_voiced_frames(np.abs(stft(mono, config))), per_file, rng)
        if frames.shape[0]:
            collected.append(frames)
            total += frames.shape[0]
            used += 1
        if total >= max_frames:
            break
    if not total:
        raise ValueError(f"{argument} holds only silent or unreadable audio: no frame to learn from. Received: "
                         f"{argument}={folder!r}")
    out = _subsample(np.concatenate(collected), max_frames, rng)
    logger.info("snmf: %d frames from %d of %d files in %s", out.shape[0], used, len(files), folder)
    return out


def _dataset_records(dataset: Dataset, split: str, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    from tfrecord_schema.schema import decode

    shards = dataset.shard_paths(split)
    for index in rng.permutation(len(shards)):
        for record in dataset.shard_records(shards[index]):
            yield decode(record)


def magnitudes_from_dataset(dataset_dir: str, split: str = "train", *, max_frames: int = DEFAULT_MAX_FRAMES,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, SpectrogramConfig]:
    """(clean frames [n, bins], noise frames [m, bins], the dataset's SpectrogramConfig) from TFRecord shards.

    Records of `split` are read in numpy (`tfrecord_schema.records` + `schema.decode`, no
    TensorFlow), shards in an order shuffled with `seed`, and only until both `max_frames` budgets
    are met. The noise magnitude is |noisy - clean| of the complex spectrograms
    (noisy_mag e^{j noisy_phase} - clean_mag e^{j clean_phase}). Near-silent frames are dropped.
    """
    _check_positive_int("max_frames", max_frames)
    if not isinstance(dataset_dir, str) or not dataset_dir:
        raise ValueError(f"dataset_dir must be a dataset directory. Received: dataset_dir={dataset_dir!r}")
    dataset = Dataset.open(dataset_dir)
    config = dataset.config
    rng = np.random.default_rng([seed, 1])
    clean_parts, noise_parts, clean_total, noise_total, records = [], [], 0, 0, 0
    for example in _dataset_records(dataset, split, rng):
        records += 1
        clean_mag = example["clean_magnitude"].astype(np.float32)
        noisy = example["noisy_magnitude"].astype(np.float32) * np.exp(1j * example["noisy_phase"].astype(np.float32))
        clean = clean_mag * np.exp(1j * example["clean_phase"].astype(np.float32))
        noise_mag = np.abs(noisy - clean).astype(np.float32)
        if clean_total < max_frames:
            frames = _voiced_frames(clean_mag)
            clean_parts.append(frames)
            clean_total += frames.shape[0]
        if noise_total < max_frames:
            frames = _voiced_frames(noise_mag)
            noise_parts.append(frames)
            noise_total += frames.shape[0]
        if clean_total >= max_frames and noise_total >= max_frames:
            break
    if not records:
        raise ValueError(f"The {split!r} split of dataset_dir holds no records. Received: dataset_dir={dataset_dir!r}")
    if not clean_total or not noise_total:
        raise ValueError(f"The {split!r} split of dataset_dir holds only silent clean or noise spectrograms. "
                         f"Received: dataset_dir={dataset_dir!r}")
    clean = _subsample(np.concatenate(clean_parts), max_frames, rng)
    noise = _subsample(np.concatenate(noise_parts), max_frames, rng)
    logger.info("snmf: %d clean and %d noise frames from %d records of %s (%s)", clean.shape[0], noise.shape[0],
                records, dataset_dir, split)
    return clean, noise, config


# --- the enhancement system --------------------------------------------------------------------------

class SparseNMF:
    """Supervised sparse-NMF speech enhancement: a speech and a noise dictionary, then a Wiener-like mask.

    Args:
        config: the STFT (sample rate, n_fft, hop) of training and enhancement.
        atoms: atoms (columns) of each dictionary, speech and noise alike.
        sparsity: L1 weight on the activations H, for learning and enhancing alike (the data are
            normalised to mean 1 first, so it does not depend on the level).
        beta: beta-divergence of the cost, in [0, 2]; 1 (Kullback-Leibler) by default, 2 Euclidean.
        fit_iterations: multiplicative updates when learning each dictionary.
        enhance_iterations: H updates per block when enhancing.
        mask_power: p of the mask (W_s H_s)^p / ((W_s H_s)^p + (W_n H_n)^p); 2 (a Wiener-like
            power ratio, the default) or 1 (a magnitude ratio), any p > 0 accepted.
        seed: seeds the random dictionary init (a `numpy.random.Generator`, never a global RNG).
        block_frames: STFT frames solved at a time in `enhance`, bounding its working memory.

    `fit` learns the dictionaries; `enhance` denoises; `save`/`load` keep them in an .npz file.
    `from_folders` and `from_dataset` collect training frames and fit in one call.
    """

    def __init__(self, config: SpectrogramConfig, *, atoms: int = DEFAULT_ATOMS, sparsity: float = DEFAULT_SPARSITY,
                 beta: float = 1.0, fit_iterations: int = 200, enhance_iterations: int = 100,
                 mask_power: float = 2.0, seed: int = 0, block_frames: int = 4096) -> None:
        if not isinstance(config, SpectrogramConfig):
            raise ValueError(f"config must be a SpectrogramConfig. Received: config={config!r}")
        self.config = config
        self.atoms = _check_positive_int("atoms", atoms)
        self.sparsity = _check_sparsity(sparsity)
        self.beta = _check_beta(beta)
        self.fit_iterations = _check_positive_int("fit_iterations", fit_iterations)
        self.enhance_iterations = _check_positive_int("enhance_iterations", enhance_iterations)
        if (not isinstance(mask_power, (int, float)) or isinstance(mask_power, bool) or not math.isfinite(mask_power)
                or mask_power <= 0):
            raise ValueError(f"mask_power must be a positive number (2: power ratio, 1: magnitude ratio). "
                             f"Received: mask_power={mask_power!r}")
        self.mask_power = float(mask_power)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
        self.seed = int(seed)
        self.block_frames = _check_positive_int("block_frames", block_frames)
        self.speech_dictionary: np.ndarray | None = None  # [bins, atoms], unit-norm columns
        self.noise_dictionary: np.ndarray | None = None
        self.training: dict[str, Any] = {}  # where the frames came from, frame counts, costs, seconds

    # -- hyper-parameters, as saved --
    def hyper_parameters(self) -> dict[str, Any]:
        return {"atoms": self.atoms, "sparsity": self.sparsity, "beta": self.beta,
                "fit_iterations": self.fit_iterations, "enhance_iterations": self.enhance_iterations,
                "mask_power": self.mask_power, "seed": self.seed, "block_frames": self.block_frames}

    def describe(self) -> str:
        return (f"sparse NMF, W normalised in the cost (Le Roux et al. 2015): {self.atoms} speech + {self.atoms} "
                f"noise atoms, sparsity {self.sparsity:g}, beta {self.beta:g}, mask power {self.mask_power:g}")

    @property
    def fitted(self) -> bool:
        return self.speech_dictionary is not None and self.noise_dictionary is not None

    def _check_frames(self, name: str, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        bins = self.config.num_bins
        if frames.ndim != 2 or frames.shape[1] != bins or frames.shape[0] < 1:
            raise ValueError(f"{name} must be magnitude frames [n >= 1, {bins}] of the config's STFT. "
                             f"Received: {name} with shape {frames.shape}")
        if not np.all(np.isfinite(frames)) or np.any(frames < 0):
            raise ValueError(f"{name} must be finite and non-negative (STFT magnitudes). Received: {name} with "
                             f"min {np.nanmin(frames):.3g}")
        return frames

    def fit(self, speech_magnitudes: np.ndarray, noise_magnitudes: np.ndarray) -> SparseNMF:
        """Learns the speech and the noise dictionary from magnitude frames [n, bins] of this config's STFT.

        Each source's frames are divided by their mean, then factorised by `learn_dictionary`
        (`fit_iterations` updates, init from a generator seeded with (seed, source)). Returns self.
        """
        speech = self._check_frames("speech_magnitudes", speech_magnitudes)
        noise = self._check_frames("noise_magnitudes", noise_magnitudes)
        start = time.perf_counter()
        dictionaries, costs = [], {}
        for index, (name, frames) in enumerate((("speech", speech), ("noise", noise))):
            v = frames.T.astype(np.float64)
            v /= max(float(v.mean()), EPS)
            w, _, cost = learn_dictionary(v, self.atoms, sparsity=self.sparsity, beta=self.beta,
                                          iterations=self.fit_iterations,
                                          rng=np.random.default_rng([self.seed, index]), name=name)
            dictionaries.append(w.astype(np.float32))
            costs[name] = {"frames": int(frames.shape[0]), "initial_cost": cost[0][1], "final_cost": cost[-1][1]}
        self.speech_dictionary, self.noise_dictionary = dictionaries
        seconds = time.perf_counter() - start
        self.training.update({"fit_seconds": seconds, **costs})
        logger.info("snmf: dictionaries learnt in %.1f s (%d + %d frames)", seconds, speech.shape[0], noise.shape[0])
        return self

    def activations(self, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(speech model W_s H_s, noise model W_n H_n), both [frames, bins] float32, of magnitudes [frames, bins].

        H is solved with both dictionaries fixed, `block_frames` frames at a time, after dividing
        the whole magnitude by its mean (multiplied back in the outputs).
        """
        if not self.fitted:
            raise ValueError("This SparseNMF has no dictionaries yet: call fit(), from_folders(), from_dataset() or "
                             "load() first.")
        magnitude = np.asarray(magnitude, np.float32)
        scale = max(float(magnitude.mean(dtype=np.float64)), EPS) if magnitude.size else 1.0
        w = normalise_columns(np.concatenate([self.speech_dictionary, self.noise_dictionary], axis=1))
        speech_model = np.empty(magnitude.shape, np.float32)
        noise_model = np.empty(magnitude.shape, np.float32)
        k = self.atoms
        for start in range(0, magnitude.shape[0], self.block_frames):
            v = magnitude[start: start + self.block_frames].T * np.float32(1.0 / scale)
            h = solve_activations(v, w, sparsity=self.sparsity, beta=self.beta, iterations=self.enhance_iterations,
                                  dtype=np.float32)
            speech_model[start: start + v.shape[1]] = (scale * (w[:, :k] @ h[:k])).T
            noise_model[start: start + v.shape[1]] = (scale * (w[:, k:] @ h[k:])).T
        return speech_model, noise_model

    def enhance(self, signal: np.ndarray) -> np.ndarray:
        """Denoises a mono signal [samples] at config.sample_rate; returns float32 [samples], same length.

        Speech magnitude = noisy magnitude * S^p / (S^p + N^p), S = W_s H_s, N = W_n H_n (p =
        mask_power); the noisy phase is reused, through the shared STFT and its inverse.
        """
        x = np.asarray(signal, np.float32)
        if x.ndim != 1:
            raise ValueError(f"signal must be mono [samples]. Received: shape={x.shape}")
        if x.shape[0] == 0:
            return x.copy()
        spec = stft(x, self.config)
        speech_model, noise_model = self.activations(np.abs(spec))
        p = self.mask_power
        s, n = speech_model.astype(np.float64) ** p, noise_model.astype(np.float64) ** p
        mask = s / np.maximum(s + n, EPS)
        return istft(spec * mask.astype(np.float32), self.config, x.shape[0])

    # -- files --
    def save(self, path: str) -> str:
        """Writes an .npz (local or gs://, atomically) holding both dictionaries, the spectrogram
        config, the hyper-parameters and the training record; returns `path`."""
        if not self.fitted:
            raise ValueError("save() needs fitted dictionaries: call fit() first.")
        meta = {"format": FILE_FORMAT, "version": FILE_VERSION, "spectrogram": self.config.to_dict(),
                "hyper_parameters": self.hyper_parameters(), "training": self.training}
        buffer = io.BytesIO()
        np.savez(buffer, speech_dictionary=self.speech_dictionary, noise_dictionary=self.noise_dictionary,
                 meta=np.array(json.dumps(meta, default=float)))
        paths.write_atomic(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str) -> SparseNMF:
        """The model `save` wrote to `path` (local or gs://)."""
        if not isinstance(path, str) or not path or not paths.isfile(path):
            raise FileNotFoundError(f"path must be an .npz file written by SparseNMF.save(). Received: path={path!r}")
        try:
            with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                speech, noise = np.asarray(data["speech_dictionary"]), np.asarray(data["noise_dictionary"])
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"path is not an .npz written by SparseNMF.save() ({err}). "
                             f"Received: path={path!r}") from err
        if meta.get("format") != FILE_FORMAT or meta.get("version") != FILE_VERSION:
            raise ValueError(f"path holds format {meta.get('format')!r} version {meta.get('version')!r}; this toolkit "
                             f"reads {FILE_FORMAT!r} version {FILE_VERSION}: fit the model again. "
                             f"Received: path={path!r}")
        model = cls(SpectrogramConfig.from_dict(meta["spectrogram"]), **meta["hyper_parameters"])
        bins = model.config.num_bins
        if speech.shape != (bins, model.atoms) or noise.shape != (bins, model.atoms):
            raise ValueError(f"path holds dictionaries of shapes {speech.shape} and {noise.shape}, not "
                             f"({bins}, {model.atoms}). Received: path={path!r}")
        model.speech_dictionary, model.noise_dictionary = speech.astype(np.float32), noise.astype(np.float32)
        model.training = meta.get("training", {})
        return model

    # -- training data --
    @classmethod
    def from_folders(cls, speech_dir: str, noise_dir: str, config: SpectrogramConfig, *,
                     max_frames: int = DEFAULT_MAX_FRAMES, **kwargs: Any) -> SparseNMF:
        """A model fitted on the audio below `speech_dir` and `noise_dir` (local or gs://).

        At most `max_frames` magnitude frames per source (`magnitudes_from_folder`, seeded with the
        model's `seed`); `kwargs` are the constructor's (atoms, sparsity, beta, ...).
        """
        model = cls(config, **kwargs)
        speech = magnitudes_from_folder(speech_dir, config, max_frames=max_frames, seed=model.seed,
                                        argument="speech_dir")
        noise = magnitudes_from_folder(noise_dir, config, max_frames=max_frames, seed=model.seed,
                                       argument="noise_dir")
        model.training = {"source": {"kind": "folders", "speech_dir": speech_dir, "noise_dir": noise_dir,
                                     "max_frames": max_frames}}
        return model.fit(speech, noise)

    @classmethod
    def from_dataset(cls, dataset_dir: str, split: str = "train", *, max_frames: int = DEFAULT_MAX_FRAMES,
                     config: SpectrogramConfig | None = None, **kwargs: Any) -> SparseNMF:
        """A model fitted on the clean and noise magnitudes of a dataset's `split` (`magnitudes_from_dataset`).

        The dataset's own SpectrogramConfig is used; a `config` given must have the same STFT
        (sample rate, n_fft, hop), else ValueError.
        """
        seed = kwargs.get("seed", 0)
        clean, noise, dataset_config = magnitudes_from_dataset(dataset_dir, split, max_frames=max_frames, seed=seed)
        if config is not None and not same_stft(config, dataset_config):
            raise ValueError(
                f"dataset_dir was written with another STFT ({_stft_text(dataset_config)}) than the one asked for "
                f"({_stft_text(config)}). Received: dataset_dir={dataset_dir!r}. Use a dataset built at the model's "
                "sample rate.")
        model = cls(dataset_config, **kwargs)
        model.training = {"source": {"kind": "dataset", "dataset_dir": dataset_dir, "split": split,
                                     "max_frames": max_frames}}
        return model.fit(clean, noise)


def same_stft(a: SpectrogramConfig, b: SpectrogramConfig) -> bool:
    """Whether two configs frame audio identically (sample rate, n_fft and hop)."""
    return (a.sample_rate, a.n_fft, a.hop_length) == (b.sample_rate, b.n_fft, b.hop_length)


def _stft_text(config: SpectrogramConfig) -> str:
    return f"{config.sample_rate} Hz, n_fft {config.n_fft}, hop {config.hop_length}"

