"""Finding, decoding and resampling audio files, local or on any filesystem Beam knows (gs://...)."""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np

from tfrecord_schema import paths

# The audio files the toolkit reads and writes: extension (lower case) -> soundfile format.
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


class AudioError(ValueError):
    """An input file that cannot be used; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_audio_file(path: str) -> bool:
    """Whether `path` names an audio file the toolkit reads: a wav/flac/ogg extension (any case), and
    not a hidden name (".NAME": macOS's "._take.wav" metadata, `paths.temporary_name`'s temporaries)."""
    name = paths.basename(path) if paths.is_remote(path) else os.path.basename(path)
    return not name.startswith(".") and paths.split_extension(name)[1].lower() in FORMATS


def list_audio(root: str) -> list[str]:
    """Relative paths (posix, sorted) of every audio file (`is_audio_file`) under `root`, recursively.

    `root` is literal (a folder named `take[1]` is that folder). A missing local folder is an error;
    a remote prefix with nothing below it gives [] (buckets have no empty folders).
    """
    _check_folder(root)
    return [rel for rel in paths.list_files(root) if is_audio_file(rel)]


def list_audio_identities(root: str) -> dict[str, tuple[int, int]]:
    """{relative path: (size in bytes, modification time in ns)} of every file `list_audio` lists
    (`paths.list_identities`)."""
    _check_folder(root)
    return {rel: v for rel, v in paths.list_identities(root).items() if is_audio_file(rel)}


def _check_folder(root: str) -> None:
    if not paths.is_remote(root) and not os.path.isdir(root):
        kind = "is a file, not a folder" if os.path.exists(root) else "not found"
        raise FileNotFoundError(f"Audio folder {kind}: {root!r}. Pass an existing local folder or gs:// prefix.")


def read_bytes(path: str) -> bytes:
    return paths.read_bytes(path)


def read_samples(fileobj: BinaryIO, name: str) -> tuple[np.ndarray, int, str | None]:
    """Decodes wav/flac/ogg from an open binary file, as the toolkit reads all audio.

    Returns (float32 [samples, channels], sample rate in Hz, soundfile subtype such as "PCM_16").
    Raises AudioError("unreadable" | "empty" | "not_finite") naming the file.
    """
    import soundfile

    try:
        with soundfile.SoundFile(fileobj) as f:
            subtype = f.subtype
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (soundfile.SoundFileError, RuntimeError, OSError) as err:
        # libsndfile names the file object (`<_io.BytesIO object at 0x...>`): say "the file", so that the
        # message, and rejects.jsonl with it, is the same on every run.
        detail = str(err).replace(repr(fileobj), "the file")
        raise AudioError("unreadable", f"{name}: cannot decode audio ({type(err).__name__}: {detail})") from err
    if samples.shape[0] == 0:
        raise AudioError("empty", f"{name}: the file holds no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError("not_finite", f"{name}: the audio holds NaN or infinite samples")
    return samples, int(rate), subtype


def decode_audio(data: bytes, name: str, sample_rate: int) -> tuple[np.ndarray, dict]:
    """Decodes wav/flac/ogg bytes to mono float32 at `sample_rate`.

    Multi-channel audio is downmixed by averaging the channels. Returns (samples, source info).
    Raises AudioError("unreadable" | "empty" | "not_finite") naming the file.
    """
    import soxr

    if not data:
        raise AudioError("empty", f"{name}: the file is empty (0 bytes)")
    samples, rate, _ = read_samples(io.BytesIO(data), name)
    info = {"source_rate": rate, "channels": int(samples.shape[1]), "source_samples": int(samples.shape[0])}
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), info
