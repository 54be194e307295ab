"""A small, deterministic demo corpus the toolkit makes itself (no download, no shared data).

Voices are synthetic speech-like signals (harmonic vowels with a pitch contour per speaker,
formant envelopes, consonant noise bursts, syllable rhythm and pauses), written as LibriSpeech-style
`SPEAKER-CHAPTER-UTT.flac` at 16 kHz. Noises are six classes of environmental sounds (clock,
footsteps, alarm, vacuum cleaner, babble, traffic) at 22.05 kHz, some in stereo, with a
`classes.tsv`. It exercises resampling, downmixing, speaker and class splits: enough to see the
whole flow in a minute, not to train a useful model.
"""

from __future__ import annotations

import io

import numpy as np

from tfrecord_schema import paths

VOICE_RATE = 16000
NOISE_RATE = 22050
# (F1, F2, F3) in Hz of a few vowels.
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240),
          (660, 1720, 2410), (490, 1350, 1690)]


def _formant_gain(freqs: np.ndarray, formants) -> np.ndarray:
    gain = np.zeros_like(freqs)
    for i, f in enumerate(formants):
        bw = 80.0 + 40.0 * i
        gain += (0.8 ** i) / (1.0 + ((freqs - f) / bw) ** 2)
    return gain


def synth_voice(rng: np.random.Generator, seconds: float, f0: float, rate: int = VOICE_RATE) -> np.ndarray:
    """Speech-like signal: syllables of voiced harmonics and consonant noise, with pauses."""
    out = np.zeros(int(seconds * rate), np.float32)
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


def synth_noise(kind: str, rng: np.random.Generator, seconds: float, rate: int = NOISE_RATE) -> np.ndarray:
    n = int(seconds * rate)
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
        x = sum(synth_voice(rng, seconds, rng.uniform(90, 240), rate) for _ in range(4))
        return x / 2.0
    if kind == "traffic":
        rumble = _lowpass(rng.standard_normal(n), 0.02) * 4
        swell = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 6))
        return 0.3 * rumble * swell + 0.02 * rng.standard_normal(n)
    raise ValueError(f"unknown demo noise kind {kind!r}")


NOISE_KINDS = ("clock", "footsteps", "alarm", "vacuum", "babble", "traffic")


def make_demo_corpus(root: str, speakers: int = 12, utterances: int = 3, noises_per_kind: int = 3,
                     seed: int = 1234) -> tuple[str, str]:
    """Writes the demo corpus under `root`, a local folder or a gs:// prefix (skipped if it is already
    complete); returns (voice_dir, noise_dir)."""
    import soundfile

    voice_dir, noise_dir = paths.join(root, "voices"), paths.join(root, "noises")
    marker = paths.join(root, ".complete")
    if paths.isfile(marker):
        return voice_dir, noise_dir

    def write(path: str, audio: np.ndarray, rate: int, fmt: str) -> None:
        buf = io.BytesIO()
        soundfile.write(buf, audio, rate, format=fmt)
        paths.write_atomic(path, buf.getvalue())

    rng = np.random.default_rng(seed)
    for s in range(speakers):
        speaker = 100 + s
        f0 = rng.uniform(95, 230)
        for u in range(utterances):
            audio = synth_voice(rng, rng.uniform(3.0, 5.0), f0)
            write(paths.join(voice_dir, str(speaker), f"{speaker}-1-{u:04d}.flac"), audio, VOICE_RATE, "FLAC")
    rows = ["file\tclass"]
    for kind in NOISE_KINDS:
        for i in range(noises_per_kind):
            audio = synth_noise(kind, rng, rng.uniform(2.0, 6.0)).astype(np.float32)
            audio = 0.5 * audio / (np.max(np.abs(audio)) + 1e-9)
            if i == 0:  # stereo, to exercise the downmix
                audio = np.stack([audio, np.roll(audio, 50)], axis=1)
            name = f"{kind}_{i}.wav"
            write(paths.join(noise_dir, name), audio, NOISE_RATE, "WAV")
            rows.append(f"{name}\t{kind}")
    paths.write_atomic(paths.join(noise_dir, "classes.tsv"), ("\n".join(rows) + "\n").encode("utf-8"))
    paths.write_atomic(marker, b"")
    return voice_dir, noise_dir
