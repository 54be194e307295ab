"""The sparse-NMF (SNMF) baseline of `speech-enhance evaluate`: `SparseNMF`, after Le Roux, Weninger
& Hershey, "Sparse NMF - half-baked or well done?" (MERL TR2015-023). The cost and its updates are
in `predictor.evaluation.nmf`; the training frames come from `predictor.evaluation.snmf_data`.

A speech dictionary is learnt from clean speech magnitudes and a noise dictionary from noise
magnitudes (each by its own SNMF); at enhancement time both are held fixed, concatenated, and only
H is solved for under the same cost. The speech estimate is the noisy magnitude times a Wiener-like
mask (W_s H_s)^p / ((W_s H_s)^p + (W_n H_n)^p), p = 2 by default (a power ratio; p = 1, a magnitude
ratio, is an option), with the noisy phase. H is solved in float32 at enhancement time (three times
faster; the dictionaries are learnt in float64).

Spectrograms come from the toolkit's shared STFT (`tfrecord_schema.spectrogram`) with the model's
`SpectrogramConfig`, like every other baseline. Every V is divided by its mean before solving, so
`sparsity` means the same at any signal level. numpy/scipy only; no TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from typing import Any

import numpy as np

from predictor.evaluation.nmf import (EPS, check_beta, check_positive_int, check_sparsity,
                                      learn_dictionary, normalise_columns, solve_activations)
from predictor.evaluation.options import DEFAULT_ATOMS, DEFAULT_SPARSITY
from predictor.evaluation.snmf_data import DEFAULT_MAX_FRAMES, magnitudes_from_dataset, magnitudes_from_folder
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.spectrogram import istft, stft

logger = logging.getLogger(__name__)

FILE_FORMAT = "speech-enhance-snmf"
FILE_VERSION = 1


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
        self.atoms = check_positive_int("atoms", atoms)
        self.sparsity = check_sparsity(sparsity)
        self.beta = check_beta(beta)
        self.fit_iterations = check_positive_int("fit_iterations", fit_iterations)
        self.enhance_iterations = check_positive_int("enhance_iterations", enhance_iterations)
        if (not isinstance(mask_power, (int, float)) or isinstance(mask_power, bool) or not math.isfinite(mask_power)
                or mask_power <= 0):
            raise ValueError(f"mask_power must be a positive number (2: power ratio, 1: magnitude ratio). "
                             f"Received: mask_power={mask_power!r}")
        self.mask_power = float(mask_power)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
        self.seed = int(seed)
        self.block_frames = check_positive_int("block_frames", block_frames)
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
