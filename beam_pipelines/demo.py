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

from beam_pipelines import synthetic
from tfrecord_schema import paths

VOICE_RATE = 16000
NOISE_RATE = 22050
NOISE_KINDS = synthetic.ENVIRONMENTAL_NOISE_KINDS


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
            audio = synthetic.speech(rng, int(rng.uniform(3.0, 5.0) * VOICE_RATE), VOICE_RATE, f0)
            write(paths.join(voice_dir, str(speaker), f"{speaker}-1-{u:04d}.flac"), audio, VOICE_RATE, "FLAC")
    rows = ["file\tclass"]
    for kind in NOISE_KINDS:
        for i in range(noises_per_kind):
            audio = synthetic.noise(rng, int(rng.uniform(2.0, 6.0) * NOISE_RATE), NOISE_RATE, kind).astype(np.float32)
            audio = 0.5 * audio / (np.max(np.abs(audio)) + 1e-9)
            if i == 0:  # stereo, to exercise the downmix
                audio = np.stack([audio, np.roll(audio, 50)], axis=1)
            name = f"{kind}_{i}.wav"
            write(paths.join(noise_dir, name), audio, NOISE_RATE, "WAV")
            rows.append(f"{name}\t{kind}")
    paths.write_atomic(paths.join(noise_dir, "classes.tsv"), ("\n".join(rows) + "\n").encode("utf-8"))
    paths.write_atomic(marker, b"")
    return voice_dir, noise_dir
