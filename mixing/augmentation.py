"""Realistic augmentation of one example, free of Beam: reverberation, babble, speed, noise colour.

Every augmentation is off by default (`AugmentOptions()`), and then the dataset job's examples are
those it always wrote. Each one draws from its own child of the example's generator
(`numpy.random.Generator.spawn`), which leaves the example's own stream untouched: turning one
augmentation on or off changes neither the voice and noise windows nor the draws of the others, and
the output depends only on (seed, split, example index).

    reverberation   the voice and the noise convolved with two room impulse responses (two source
                    positions, one microphone) of one simulated room, drawn from a bank of rooms
                    simulated once per worker with pyroomacoustics' image-source method; the clean
                    target is the voice through the direct path and the first 50 ms of reflections
    babble          the noise replaced by the sum of 1-6 excerpts of other speakers of the split
    speed           the voice resampled by a factor (tempo and pitch change together), with soxr
    noise tilt      a spectral tilt of the noise, in dB per octave around 1 kHz
    noise low-pass  a low-pass filter of the noise at a random cut-off
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Sequence

import numpy as np

from mixing.histograms import histogram
from mixing.options import MAX_BABBLE_TALKERS, AugmentOptions

LOG = logging.getLogger(__name__)

# Room shapes of the bank: width and length 3-10 m, height 2.4-4 m; sources and microphone at least
# 0.5 m from every wall, at 1-2 m height.
ROOM_SIZE_RANGE_M = ((3.0, 10.0), (3.0, 8.0), (2.4, 4.0))
WALL_MARGIN_M = 0.5
# The image-source order is capped: cost grows with its cube (an RT60 of 0.9 s in a small room asks
# for order 160, 5 s per room); at order 30 a room takes about 0.035 s and the measured RT60 follows
# the one asked for (correlation 0.9 over 100 rooms; 0.82 at order 20) though it falls short of it in
# small live rooms. The RT60 recorded is the one measured on the simulated response, not the one asked.
MAX_IMAGE_ORDER = 30
MAX_RIR_SECONDS = 1.0
TILT_REFERENCE_HZ = 1000.0
LOWPASS_ORDER = 8

RT60_EDGES = [round(0.1 * i, 1) for i in range(0, 16)]  # 0.0 .. 1.5 s; 0 = dry
SPEED_EDGES = [round(0.8 + 0.02 * i, 2) for i in range(0, 21)]  # 0.80 .. 1.20
TILT_EDGES = [float(v) for v in range(-12, 13)]  # dB/octave
LOWPASS_EDGES = [float(v) for v in range(0, 8001, 500)]  # Hz; 0 = none
NO_AUGMENTATION = {"rt60": 0.0, "early_reflections_ms": 0.0, "babble_talkers": 0, "speed_factor": 1.0,
                   "noise_tilt_db_per_octave": 0.0, "noise_lowpass_hz": 0.0}


# --- room impulse responses -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Room:
    """One simulated room: `voice_rir` and `noise_rir` (float32, direct path at sample `direct`
    of each, peak 1), the RT60 measured on the voice response (s) and the room's size (m)."""

    voice_rir: np.ndarray
    noise_rir: np.ndarray
    rt60: float
    size: tuple[float, float, float]


def measure_rt60(rir: np.ndarray, sample_rate: int) -> float:
    """RT60 in seconds from the Schroeder backward integral: the -5 to -25 dB decay (T20) times 3."""
    energy = np.cumsum(np.square(rir[::-1].astype(np.float64)))[::-1]
    edc = 10 * np.log10(np.maximum(energy / energy[0], 1e-30))
    start = int(np.argmax(edc <= -5.0))
    end = int(np.argmax(edc <= -25.0))
    if end <= start:
        return 0.0
    return 3.0 * (end - start) / sample_rate


def _align(rir: np.ndarray) -> np.ndarray:
    """The response from its direct path on (a few samples of the fractional-delay filter kept
    before it), normalised to a peak of 1, cut at MAX_RIR_SECONDS."""
    direct = int(np.argmax(np.abs(rir)))
    return rir[max(0, direct - 2):] / np.max(np.abs(rir))


def _simulate_room(rng: np.random.Generator, rt60: float, sample_rate: int):
    import pyroomacoustics as pra

    for _ in range(100):
        size = np.array([rng.uniform(*r) for r in ROOM_SIZE_RANGE_M])
        try:
            absorption, order = pra.inverse_sabine(rt60, size)
        except ValueError:  # this room cannot be that dry
            continue
        room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption),
                           max_order=min(order, MAX_IMAGE_ORDER))
        low, high = [WALL_MARGIN_M] * 3, size - WALL_MARGIN_M
        low[2], high[2] = 1.0, min(2.0, size[2] - WALL_MARGIN_M)
        positions = [rng.uniform(low, high) for _ in range(3)]  # voice, noise, microphone
        room.add_source(positions[0])
        room.add_source(positions[1])
        room.add_microphone(positions[2])
        room.compute_rir()
        limit = int(MAX_RIR_SECONDS * sample_rate)
        voice, noise = (_align(np.asarray(room.rir[0][s], np.float64))[:limit] for s in (0, 1))
        return voice, noise, tuple(round(float(v), 3) for v in size)
    raise ValueError(f"No room of the sizes {ROOM_SIZE_RANGE_M} m reaches RT60 {rt60} s; narrow rt60_range.")


@functools.lru_cache(maxsize=4)
def room_bank(seed: int, sample_rate: int, rt60_range: tuple[float, float], count: int) -> tuple[Room, ...]:
    """`count` rooms, the same for the same arguments on every worker (one per worker process,
    kept for its life: about 0.035 s per room). Room i's RT60 target is spread evenly over
    `rt60_range` and its size and positions come from a generator seeded with (seed, i)."""
    rooms = []
    for i in range(count):
        rng = np.random.default_rng([seed, 0x5EB, i])
        lo, hi = rt60_range
        target = lo + (hi - lo) * (i + rng.random()) / count
        voice, noise, size = _simulate_room(rng, target, sample_rate)
        rooms.append(Room(voice.astype(np.float32), noise.astype(np.float32),
                          round(measure_rt60(voice, sample_rate), 3), size))
    LOG.info("simulated %d rooms (RT60 %.2f-%.2f s measured)", count, min(r.rt60 for r in rooms),
             max(r.rt60 for r in rooms))
    return tuple(rooms)


def _convolve(signal: np.ndarray, rir: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(signal.astype(np.float64), rir.astype(np.float64))[: signal.shape[0]].astype(np.float32)


def reverberate(voice: np.ndarray, noise: np.ndarray, room: Room, early_ms: float, sample_rate: int):
    """(reverberant voice, clean target, reverberant noise), each float32 like `voice` [samples].

    The target is the voice through the room response's direct path and its first `early_ms`
    milliseconds after it (a hard cut); the mixture gets the full response."""
    early = room.voice_rir[: 2 + int(round(early_ms * sample_rate / 1000.0)) + 1]
    return _convolve(voice, room.voice_rir), _convolve(voice, early), _convolve(noise, room.noise_rir)


# --- speed and noise colour ---------------------------------------------------------------------

def speed_window(audio: np.ndarray, offset: int, window: int, factor: float) -> tuple[np.ndarray, int]:
    """(`window` samples of `audio` played `factor` times faster (tempo and pitch), the offset
    actually read). Reads about window x factor samples from `offset`, moved back when the file ends
    too soon; a file too short for it loops."""
    import soxr

    need = int(math.ceil(window * factor)) + 64
    if audio.shape[0] >= need:
        offset = min(offset, audio.shape[0] - need)
        segment = audio[offset: offset + need]
    else:
        offset = 0
        segment = np.resize(audio, need)
    # Read as if recorded at rate x factor and resampled back to the rate: `factor` faster.
    out = soxr.resample(segment.astype(np.float32), 1000.0 * factor, 1000.0, quality="HQ")
    if out.shape[0] < window:
        out = np.pad(out, (0, window - out.shape[0]))
    return np.ascontiguousarray(out[:window], np.float32), offset


def tilt(noise: np.ndarray, db_per_octave: float, sample_rate: int) -> np.ndarray:
    """`noise` with its spectrum tilted by `db_per_octave` around TILT_REFERENCE_HZ (zero phase;
    below 50 Hz the gain stays at that of 50 Hz)."""
    spectrum = np.fft.rfft(noise.astype(np.float64))
    freqs = np.maximum(np.fft.rfftfreq(noise.shape[0], 1.0 / sample_rate), 50.0)
    gain = 10.0 ** (db_per_octave * np.log2(freqs / TILT_REFERENCE_HZ) / 20.0)
    return np.fft.irfft(spectrum * gain, n=noise.shape[0]).astype(np.float32)


def lowpass(noise: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    """`noise` through a zero-phase Butterworth low-pass at `cutoff_hz` (Hz)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(LOWPASS_ORDER // 2, cutoff_hz, btype="low", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, noise.astype(np.float64)).astype(np.float32)


# --- statistics for dataset_info.json ---------------------------------------------------------

def stats_of(metadata: Sequence[dict]) -> dict:
    """Counts and histograms of the augmentation metadata of a chunk's examples."""
    def values(key):
        return [m[key] for m in metadata]

    rt60 = [v for v in values("rt60") if v > 0]
    speed = [v for v in values("speed_factor") if v != 1.0]
    tilts = [v for v in values("noise_tilt_db_per_octave") if v != 0.0]
    cutoffs = [v for v in values("noise_lowpass_hz") if v > 0]
    talkers = [0] * (MAX_BABBLE_TALKERS + 1)
    for k in values("babble_talkers"):
        talkers[k] += 1
    return {"examples": len(metadata), "reverberant": len(rt60), "babble": len(metadata) - talkers[0],
            "speed": len(speed), "noise_tilt": len(tilts), "noise_lowpass": len(cutoffs),
            "rt60_hist": histogram(rt60, RT60_EDGES), "babble_talkers": talkers,
            "speed_hist": histogram(speed, SPEED_EDGES), "tilt_hist": histogram(tilts, TILT_EDGES),
            "lowpass_hist": histogram(cutoffs, LOWPASS_EDGES)}


def merge_stats(stats: Sequence[dict]) -> dict:
    out = stats_of([])
    for s in stats:
        for key, value in s.items():
            out[key] = [a + b for a, b in zip(out[key], value)] if isinstance(value, list) else out[key] + value
    return out


def summary(options: AugmentOptions, stats: dict) -> dict:
    """The `augmentation` block of dataset_info.json: options, counts and histograms over all splits."""
    return {
        "options": options.to_dict(),
        "counts": {k: stats[k] for k in ("examples", "reverberant", "babble", "speed", "noise_tilt", "noise_lowpass")},
        "histograms": {
            "rt60_s": {"edges": RT60_EDGES, "counts": stats["rt60_hist"]},
            "babble_talkers": {"talkers": list(range(MAX_BABBLE_TALKERS + 1)), "counts": stats["babble_talkers"]},
            "speed_factor": {"edges": SPEED_EDGES, "counts": stats["speed_hist"]},
            "noise_tilt_db_per_octave": {"edges": TILT_EDGES, "counts": stats["tilt_hist"]},
            "noise_lowpass_hz": {"edges": LOWPASS_EDGES, "counts": stats["lowpass_hist"]},
        },
    }

