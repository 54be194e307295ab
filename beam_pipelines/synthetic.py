"""Synthetic audio for the demo corpus, the tests and the benchmarks (no download, no shared data).

Every function takes `(rng, num_samples, sample_rate, ...)`: a `numpy.random.Generator`, a length
in samples and a rate in Hz, so the same generator state gives the same signal.

    speech(rng, n, rate, f0)   speech-like syllables (formants, consonants, pauses): the demo voices
    chirp(rng, n, rate)        a cheap harmonic chirp under a syllable envelope, unit RMS
    noise(rng, n, rate, kind)  environmental noises (ENVIRONMENTAL_NOISE_KINDS) or
                               white / brown / hum at unit RMS (SIMPLE_NOISE_KINDS)
"""

from __future__ import annotations

import numpy as np

ENVIRONMENTAL_NOISE_KINDS = ("clock", "footsteps", "alarm", "vacuum", "babble", "traffic")
SIMPLE_NOISE_KINDS = ("white", "brown", "hum")
NOISE_KINDS = ENVIRONMENTAL_NOISE_KINDS + SIMPLE_NOISE_KINDS

# (F1, F2, F3) in Hz of a few vowels.
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240),
          (660, 1720, 2410), (490, 1350, 1690)]


def _formant_gain(freqs: np.ndarray, formants) -> np.ndarray:
    gain = np.zeros_like(freqs)
    for i, f in enumerate(formants):
        bw = 80.0 + 40.0 * i
        gain += (0.8 ** i) / (1.0 + ((freqs - f) / bw) ** 2)
    return gain


def speech(rng: np.random.Generator, num_samples: int, sample_rate: int, f0: float) -> np.ndarray:
    """Speech-like float32 [num_samples] at `sample_rate` Hz around pitch `f0` Hz: syllables of
    formant-shaped voiced harmonics and consonant noise bursts, with pauses; peak 0.25."""
    rate = sample_rate
    out = np.zeros(num_samples, np.float32)
    pos = int(rng.uniform(0.05, 0.2) * rate)
    while pos < out.size - rate // 10:
        n = int(rng.uniform(0.12, 0.3) * rate)
        n = min(n, out.size - pos)
        t = np.arange(n) / rate
        pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6))) * rng.uniform(0.9, 1.1)
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        formants = VOWELS[rng.integers(len(VOWELS))]
        syllable = np.zeros(n)
        for k in range(1, int(3800 / f0)):
            syllable += _formant_gain(k * pitch, formants) * np.sin(k * phase) / np.sqrt(k)
        envelope = np.sin(np.pi * np.arange(n) / n) ** 0.7
        syllable *= envelope
        if rng.random() < 0.5:  # a consonant: a short noise burst before the vowel
            m = min(int(rng.uniform(0.03, 0.08) * rate), n)
            burst = rng.standard_normal(m) * 0.3
            burst = np.diff(burst, prepend=0.0)  # tilt towards high frequencies
            syllable[:m] += burst * np.hanning(m)
        out[pos: pos + n] += syllable.astype(np.float32)
        pos += n + int(rng.choice([0.02, 0.05, 0.3], p=[0.6, 0.3, 0.1]) * rate)
    return (0.25 * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def _lowpass(x: np.ndarray, alpha: float) -> np.ndarray:
    y = np.empty_like(x)
    acc = 0.0
    for i, v in enumerate(x):  # short signals only: demo noises
        acc += alpha * (v - acc)
        y[i] = acc
    return y


def noise(rng: np.random.Generator, num_samples: int, sample_rate: int, kind: str) -> np.ndarray:
    """Noise of `kind` (one of NOISE_KINDS), [num_samples] at `sample_rate` Hz.

    Environmental kinds (clock, footsteps, alarm, vacuum, babble, traffic) come unnormalised
    (float64, roughly within +-1); the simple kinds (white, brown, hum) float32 at unit RMS.
    """
    if kind in SIMPLE_NOISE_KINDS:
        return _simple_noise(rng, num_samples, sample_rate, kind)
    rate = sample_rate
    n = num_samples
    t = np.arange(n) / rate
    if kind == "clock":
        x = np.zeros(n)
        period = int(rate * rng.uniform(0.45, 0.55))
        for start in range(int(rng.uniform(0, 0.3) * rate), n - 400, period):
            click = rng.standard_normal(300) * np.exp(-np.arange(300) / 40.0)
            x[start: start + 300] += click
        return x * 0.3
    if kind == "footsteps":
        x = np.zeros(n)
        start = int(rng.uniform(0, 0.2) * rate)
        while start < n - 2000:
            m = 2000
            thump = np.sin(2 * np.pi * rng.uniform(60, 120) * np.arange(m) / rate) * np.exp(-np.arange(m) / 300.0)
            thump += 0.2 * rng.standard_normal(m) * np.exp(-np.arange(m) / 100.0)
            x[start: start + m] += thump
            start += int(rng.uniform(0.4, 0.7) * rate)
        return x * 0.4
    if kind == "alarm":
        tones = np.where((t * rng.uniform(1.5, 3)) % 1 < 0.5, rng.uniform(700, 900), rng.uniform(1100, 1500))
        return 0.2 * np.sign(np.sin(2 * np.pi * np.cumsum(tones) / rate)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    if kind == "vacuum":
        base = rng.uniform(90, 140)
        hum = sum(np.sin(2 * np.pi * k * base * t + rng.uniform(0, 6)) / k for k in range(1, 8))
        return 0.05 * hum + 0.15 * rng.standard_normal(n)
    if kind == "babble":
        x = sum(speech(rng, n, rate, rng.uniform(90, 240)) for _ in range(4))
        return x / 2.0
    if kind == "traffic":
        rumble = _lowpass(rng.standard_normal(n), 0.02) * 4
        swell = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 6))
        return 0.3 * rumble * swell + 0.02 * rng.standard_normal(n)
    raise ValueError(f"noise(): kind must be one of {NOISE_KINDS}. Received: kind={kind!r}")


def chirp(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """A cheap voiced-speech stand-in, float32 [num_samples] at unit RMS: harmonics of a gliding f0
    (90-250 Hz) under a syllable envelope."""
    t = np.arange(num_samples) / sample_rate
    f0_start, f0_end = rng.uniform(90.0, 250.0, size=2)
    duration = num_samples / sample_rate
    f0 = f0_start + (f0_end - f0_start) * t / duration
    phase = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    voice = np.zeros(num_samples)
    for harmonic in range(1, 12):
        if harmonic * max(f0_start, f0_end) >= sample_rate / 2:
            break
        voice += rng.uniform(0.2, 1.0) / harmonic * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi))
    syllable_rate = rng.uniform(3.0, 6.0)  # Hz
    envelope = np.clip(np.sin(2 * np.pi * syllable_rate * t + rng.uniform(0, 2 * np.pi)), 0.05, None)
    voice *= envelope
    return (voice / (np.sqrt(np.mean(voice**2)) + 1e-12)).astype(np.float32)


def _simple_noise(rng: np.random.Generator, num_samples: int, sample_rate: int, kind: str) -> np.ndarray:
    if kind == "white":
        noise = rng.standard_normal(num_samples)
    elif kind == "brown":
        noise = np.cumsum(rng.standard_normal(num_samples))
        noise -= np.linspace(noise[0], noise[-1], num_samples)
    else:  # mains hum with harmonics plus a little hiss
        t = np.arange(num_samples) / sample_rate
        base = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * base * k * t) / k for k in (1, 2, 3, 5))
        noise = noise + 0.05 * rng.standard_normal(num_samples)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)
