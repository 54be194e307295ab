"""The STFT and its inverse, in numpy, shared by the dataset writer and the predictor.

Frames are centred (n_fft // 2 zeros padded at each end) under a periodic Hann window, as
`librosa.stft(..., center=True, pad_mode="constant")`; the tests check both against librosa.
Arrays are time-major: a spectrogram has shape [..., frames, bins].
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

from tfrecord_schema.config import SpectrogramConfig


@functools.lru_cache(maxsize=16)
def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window of length `n` (float32), the STFT analysis and synthesis window."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(signal: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    """Complex STFT of `signal` [..., samples] -> complex64 [..., frames, bins]."""
    x = np.asarray(signal, dtype=np.float32)
    if x.shape[-1] < 1:
        raise ValueError(f"stft needs at least one sample. Received: shape={x.shape}")
    pad = config.n_fft // 2
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)])
    frames = np.lib.stride_tricks.sliding_window_view(x, config.n_fft, axis=-1)[..., :: config.hop_length, :]
    # scipy's pocketfft keeps float32 and is several times faster than numpy's for odd n_fft.
    return scipy.fft.rfft(frames * hann_window(config.n_fft), n=config.n_fft, axis=-1).astype(np.complex64, copy=False)


@functools.lru_cache(maxsize=16)
def _window_envelope(n_fft: int, hop: int, frames: int) -> np.ndarray:
    w2 = hann_window(n_fft).astype(np.float64) ** 2
    env = np.zeros(n_fft + hop * (frames - 1))
    for f in range(frames):
        env[f * hop: f * hop + n_fft] += w2
    return env


def istft(spectrogram: np.ndarray, config: SpectrogramConfig, length: int) -> np.ndarray:
    """Inverse of `stft`: complex [..., frames, bins] -> float32 [..., length] (weighted overlap-add)."""
    spec = np.asarray(spectrogram)
    n_fft, hop = config.n_fft, config.hop_length
    num_frames = spec.shape[-2]
    frames = scipy.fft.irfft(spec.astype(np.complex64, copy=False), n=n_fft, axis=-1).astype(np.float32, copy=False)
    frames = frames * hann_window(n_fft)
    # Overlap-add in blocks of `hop` samples: each frame covers `k` blocks, so k vectorised adds.
    k = -(-n_fft // hop)
    frames = np.pad(frames, [(0, 0)] * (frames.ndim - 1) + [(0, k * hop - n_fft)])
    blocks = frames.reshape(*frames.shape[:-1], k, hop)
    out = np.zeros((*spec.shape[:-2], num_frames + k - 1, hop), dtype=np.float32)
    for j in range(k):
        out[..., j: j + num_frames, :] += blocks[..., :, j, :]
    out = out.reshape(*out.shape[:-2], -1)
    env = _window_envelope(n_fft, hop, num_frames)
    out = out[..., : env.shape[0]]
    nonzero = env > 1e-8
    out[..., nonzero] /= env[nonzero].astype(np.float32)
    pad = n_fft // 2
    out = out[..., pad: pad + length]
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return out


def phase(spectrogram: np.ndarray) -> np.ndarray:
    """Angle in radians (-pi..pi] of a complex array, float32, within 1.5e-5 rad of `np.angle`.

    A polynomial arctangent: numpy's float32 arctan2 is the slowest step of example generation,
    and phases are stored as float16 (resolution about 2e-3 rad near pi) anyway.
    """
    re = np.ascontiguousarray(spectrogram.real, dtype=np.float32)
    im = np.ascontiguousarray(spectrogram.imag, dtype=np.float32)
    ax, ay = np.abs(re), np.abs(im)
    swap = ay > ax
    a = np.minimum(ax, ay) / np.maximum(np.maximum(ax, ay), np.float32(1e-30))
    s = a * a
    r = ((((np.float32(0.0208351) * s - np.float32(0.085133)) * s + np.float32(0.180141)) * s
          - np.float32(0.3302995)) * s + np.float32(0.999866)) * a
    # Arithmetic blends instead of np.where, which is several times slower here.
    r += swap.astype(np.float32) * (np.float32(np.pi / 2) - 2 * r)
    r += (re < 0).astype(np.float32) * (np.float32(np.pi) - 2 * r)
    return np.copysign(r, im)


def magnitude_phase(signal: np.ndarray, config: SpectrogramConfig) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (radians) of `stft(signal)`, both float32 [..., frames, bins]."""
    spec = stft(signal, config)
    return np.abs(spec), phase(spec)


def from_magnitude_phase(magnitude: np.ndarray, phase: np.ndarray, config: SpectrogramConfig,
                         length: int) -> np.ndarray:
    """Waveform [..., length] from a magnitude and a phase [..., frames, bins]."""
    spec = np.asarray(magnitude, np.float32) * np.exp(1j * np.asarray(phase, np.float32))
    return istft(spec, config, length)
