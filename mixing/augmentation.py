"""Realistic augmentation of one example, free of Beam: reverberation (simulated or recorded rooms),
babble, speed, noise colour, several noises; and of the blended mixture: tilt, telephone band and
codecs, clipping, gain.

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
    recorded rooms  the voice convolved with a recorded impulse response of the split (`--rir-dir`,
                    `rir_source`); the recorded noise is left as it was recorded, in its own room
    several noises  the noise summed from 2-3 windows of different noise files of the split, each
                    added one at a random level relative to the first, before the noise level is set

After blending (`mixing.levels.blend`), the mixture alone (the clean target keeps as it was) goes
through, in this order:

    mixture tilt    a spectral tilt in dB per octave around 1 kHz
    telephone band  a band-pass to 300-3400 Hz, then optionally 8-bit mu-law or A-law companding
    clipping        clipped at a level in dB below its own peak
then the gain (mixture, clean target and noise together, in dB), and last the peak limit
(`mixing.levels.PEAK_LIMIT`), which lowers that gain for mixture, target and noise alike.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Sequence

import numpy as np

from mixing.histograms import histogram
from mixing.options import MAX_BABBLE_TALKERS, MAX_NOISES, TELEPHONE_BAND_HZ, AugmentOptions

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
                   "noise_tilt_db_per_octave": 0.0, "noise_lowpass_hz": 0.0,
                   "rir_file": "", "noise_count": 1, "clip_level_db": 0.0, "telephone": 0, "codec": "",
                   "gain_db": 0.0, "mixture_tilt_db_per_octave": 0.0}
MU_LAW, A_LAW = 255.0, 87.6  # G.711's companding constants
CODEC_LEVELS = 256  # 8-bit codes


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


def _early(rir: np.ndarray, early_ms: float, sample_rate: int) -> np.ndarray:
    """The direct path of an aligned response (`_align`) and its first `early_ms` ms (a hard cut)."""
    return rir[: 2 + int(round(early_ms * sample_rate / 1000.0)) + 1]


def reverberate(voice: np.ndarray, noise: np.ndarray, room: Room, early_ms: float, sample_rate: int):
    """(reverberant voice, clean target, reverberant noise), each float32 like `voice` [samples].

    The target is the voice through the room response's direct path and its first `early_ms`
    milliseconds after it (a hard cut; 0 keeps the direct path alone); the mixture gets the full
    response."""
    early = _early(room.voice_rir, early_ms, sample_rate)
    return _convolve(voice, room.voice_rir), _convolve(voice, early), _convolve(noise, room.noise_rir)


def recorded_rir(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """(a recorded impulse response [samples] from its direct path (its largest sample) on, peak 1,
    at most MAX_RIR_SECONDS long, float32; its RT60 in s measured by `measure_rt60`)."""
    if samples.shape[0] == 0 or not np.any(samples):
        raise ValueError("A room impulse response file holds only silence; remove it from --rir-dir.")
    rir = _align(np.asarray(samples, np.float64))[: int(MAX_RIR_SECONDS * sample_rate)]
    return rir.astype(np.float32), round(measure_rt60(rir, sample_rate), 3)


def reverberate_voice(voice: np.ndarray, rir: np.ndarray, early_ms: float, sample_rate: int):
    """(voice convolved with the aligned response `rir`, clean target through its direct path and
    first `early_ms` ms), float32 [samples] like `voice`."""
    return _convolve(voice, rir), _convolve(voice, _early(rir, early_ms, sample_rate))


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


# --- the blended mixture: telephone band, codecs, clipping ------------------------------------------

def telephone_band(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """`signal` [samples] band-limited to TELEPHONE_BAND_HZ, zero phase: its spectrum over the whole
    window is kept from 400 to 3200 Hz, faded by raised-cosine ramps to zero at 300 and 3400 Hz, and
    zero outside. Needs a sample rate above twice 3400 Hz (`AugmentOptions.check_sample_rate`)."""
    low, high = TELEPHONE_BAND_HZ
    freqs = np.fft.rfftfreq(signal.shape[0], 1.0 / sample_rate)
    ramp = 100.0  # Hz, the width of each fade
    rise = np.clip((freqs - low) / ramp, 0.0, 1.0)
    fall = np.clip((high - freqs) / ramp, 0.0, 1.0)
    mask = 0.25 * (1 - np.cos(np.pi * rise)) * (1 - np.cos(np.pi * fall))
    return np.fft.irfft(np.fft.rfft(signal.astype(np.float64)) * mask, n=signal.shape[0]).astype(np.float32)


def compand(signal: np.ndarray, codec: str) -> np.ndarray:
    """`signal` [samples] through an 8-bit G.711-style codec and back: "ulaw" (mu = 255) or "alaw"
    (A = 87.6) companding, quantised to CODEC_LEVELS evenly spaced codes, expanded. Samples beyond
    full scale (1.0) are clipped to it first, as the codec would."""
    x = np.clip(signal.astype(np.float64), -1.0, 1.0)
    magnitude = np.abs(x)
    if codec == "ulaw":
        y = np.log1p(MU_LAW * magnitude) / np.log1p(MU_LAW)
    elif codec == "alaw":
        log_a = 1.0 + np.log(A_LAW)
        y = np.where(magnitude < 1.0 / A_LAW, A_LAW * magnitude / log_a,
                     (1.0 + np.log(np.maximum(A_LAW * magnitude, 1.0))) / log_a)
    else:
        raise ValueError(f"codec must be 'ulaw' or 'alaw'. Received: codec={codec!r}")
    step = 2.0 / (CODEC_LEVELS - 1)  # codes at -1, -1 + step, ..., 1 of the companded value
    y = np.round((np.sign(x) * y + 1.0) / step) * step - 1.0
    magnitude = np.abs(y)
    if codec == "ulaw":
        out = np.expm1(magnitude * np.log1p(MU_LAW)) / MU_LAW
    else:
        log_a = 1.0 + np.log(A_LAW)
        out = np.where(magnitude < 1.0 / log_a, magnitude * log_a / A_LAW, np.exp(magnitude * log_a - 1.0) / A_LAW)
    return (np.sign(y) * out).astype(np.float32)


def clip(signal: np.ndarray, level_db: float) -> tuple[np.ndarray, float]:
    """(`signal` [samples] clipped at `level_db` dB (below 0) relative to its own peak, float32 like
    it; the clip level as a linear amplitude)."""
    level = float(np.max(np.abs(signal))) * 10.0 ** (level_db / 20.0)
    return np.clip(signal, -level, level).astype(np.float32), level


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
    noises = [0] * (MAX_NOISES + 1)
    for k in values("noise_count"):
        noises[k] += 1
    codecs = values("codec")
    return {"examples": len(metadata), "reverberant": len(rt60), "babble": len(metadata) - talkers[0],
            "speed": len(speed), "noise_tilt": len(tilts), "noise_lowpass": len(cutoffs),
            "recorded_rir": sum(1 for v in values("rir_file") if v), "several_noises": len(metadata) - noises[1],
            "clipped": sum(1 for v in values("clip_level_db") if v != 0.0), "telephone": sum(values("telephone")),
            "codec_ulaw": codecs.count("ulaw"), "codec_alaw": codecs.count("alaw"),
            "gain": sum(1 for v in values("gain_db") if v != 0.0),
            "mixture_tilt": sum(1 for v in values("mixture_tilt_db_per_octave") if v != 0.0), "noise_counts": noises,
            "rt60_hist": histogram(rt60, RT60_EDGES), "babble_talkers": talkers,
            "speed_hist": histogram(speed, SPEED_EDGES), "tilt_hist": histogram(tilts, TILT_EDGES),
            "lowpass_hist": histogram(cutoffs, LOWPASS_EDGES)}


def merge_stats(stats: Sequence[dict]) -> dict:
    out = stats_of([])
    for s in stats:
        for key, value in s.items():
            out[key] = [a + b for a, b in zip(out[key], value)] if isinstance(value, list) else out[key] + value
    return out


COUNTS = ("examples", "reverberant", "babble", "speed", "noise_tilt", "noise_lowpass", "recorded_rir",
          "several_noises", "clipped", "telephone", "codec_ulaw", "codec_alaw", "gain", "mixture_tilt")


def summary(options: AugmentOptions, stats: dict) -> dict:
    """The `augmentation` block of dataset_info.json: options, counts and histograms over all splits."""
    return {
        "options": options.to_dict(),
        "counts": {k: stats[k] for k in COUNTS},
        "histograms": {
            "rt60_s": {"edges": RT60_EDGES, "counts": stats["rt60_hist"]},
            "babble_talkers": {"talkers": list(range(MAX_BABBLE_TALKERS + 1)), "counts": stats["babble_talkers"]},
            "speed_factor": {"edges": SPEED_EDGES, "counts": stats["speed_hist"]},
            "noise_tilt_db_per_octave": {"edges": TILT_EDGES, "counts": stats["tilt_hist"]},
            "noise_lowpass_hz": {"edges": LOWPASS_EDGES, "counts": stats["lowpass_hist"]},
            "noise_count": {"noises": list(range(MAX_NOISES + 1)), "counts": stats["noise_counts"]},
        },
    }

