"""Finding, reading, resampling and atomically writing local audio files for the predictor.

Audio is float32 [samples, channels] everywhere here; channel handling is the caller's choice.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os

import numpy as np

# One reader for the whole toolkit: the dataset job decodes its inputs with the same function.
from beam_pipelines.audio import AUDIO_EXTENSIONS, AudioError, read_samples

logger = logging.getLogger(__name__)

# soundfile format name for each extension we write.
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
_INTEGER_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32")


@dataclasses.dataclass(frozen=True)
class Audio:
    """Decoded audio: `samples` float32 [samples, channels] at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int
    subtype: str | None = None  # soundfile subtype of the source file ("PCM_16", "FLOAT", ...)

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def is_audio_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def find_audio_files(source: str, exclude: str | None = None) -> tuple[str, list[str]]:
    """Resolves `source` (a folder, one file, or a glob pattern) to (base folder, relative paths).

    Folders are searched recursively; a glob is expanded with `**` support and its files are named
    relative to their deepest common folder, so the output mirrors the input's structure. Only
    wav/flac/ogg files count. Files under `exclude` (e.g. an output folder inside the input folder)
    are left out. Raises FileNotFoundError when nothing matches.
    """
    if os.path.isdir(source):
        base = source
        found = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            found.extend(os.path.join(root, f) for f in files if is_audio_file(f) and not f.startswith("."))
    elif os.path.isfile(source):
        if not is_audio_file(source):
            raise ValueError(f"--input must be a {'/'.join(AUDIO_EXTENSIONS)} file, a folder or a glob. "
                             f"Received: input={source!r}")
        base, found = os.path.dirname(source) or ".", [source]
    else:
        found = [p for p in glob.glob(source, recursive=True) if os.path.isfile(p) and is_audio_file(p)]
        if not found:
            raise FileNotFoundError(
                f"No {'/'.join(AUDIO_EXTENSIONS)} files match the input: {source!r} is neither a folder, "
                "a file nor a glob pattern with matches.")
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in found])
    if exclude:
        # Only a folder strictly inside the input is left out; the caller refuses one equal to it.
        inside, top = os.path.realpath(exclude) + os.sep, os.path.realpath(base) + os.sep
        if inside != top and inside.startswith(top):
            found = [p for p in found if not os.path.realpath(p).startswith(inside)]
    rel = sorted(os.path.relpath(p, base) for p in found)
    if not rel:
        raise FileNotFoundError(f"No {'/'.join(AUDIO_EXTENSIONS)} files found in {source!r}.")
    return base, rel


def read_audio(path: str) -> Audio:
    """Reads a wav/flac/ogg file (any rate and channel count) as float32 [samples, channels].

    Raises AudioError("unreadable" | "empty" | "not_finite") naming the file.
    """
    try:
        if os.path.getsize(path) == 0:
            raise AudioError("empty", f"{path}: the file is empty (0 bytes)")
        with open(path, "rb") as f:
            samples, rate, subtype = read_samples(f, path)
    except OSError as err:
        raise AudioError("unreadable", f"{path}: cannot read ({type(err).__name__}: {err})") from err
    return Audio(samples=samples, sample_rate=rate, subtype=subtype)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resamples float32 [samples] or [samples, channels] with soxr (high quality)."""
    if from_rate == to_rate:
        return samples
    import soxr

    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trims or zero-pads axis 0 to `length` (resampling there and back can be a sample off)."""
    if samples.shape[0] >= length:
        return samples[:length]
    return np.pad(samples, [(0, length - samples.shape[0])] + [(0, 0)] * (samples.ndim - 1))


def output_subtype(extension: str, source_subtype: str | None, source_extension: str) -> str:
    """The subtype to write: the source's when the container is the same, else the format default."""
    import soundfile

    fmt = FORMATS[extension]
    if source_subtype and source_extension == extension and soundfile.check_format(fmt, source_subtype):
        return source_subtype
    return soundfile.default_subtype(fmt)


def write_audio_atomic(path: str, samples: np.ndarray, sample_rate: int, subtype: str | None = None) -> int:
    """Writes `samples` [samples, channels] to `path` via a temporary file and `os.replace`.

    A reader never sees a half-written file, and an interrupted run leaves no file under the final
    name. Integer subtypes cannot hold values beyond full scale, so such samples are clipped; the
    number of clipped samples is returned (and logged).
    """
    import soundfile

    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"Output files must end in one of {AUDIO_EXTENSIONS}. Received: path={path!r}")
    fmt = FORMATS[extension]
    subtype = subtype or soundfile.default_subtype(fmt)
    clipped = 0
    if subtype in _INTEGER_SUBTYPES or fmt == "OGG":
        over = np.abs(samples) > 1.0
        clipped = int(np.count_nonzero(over))
        if clipped:
            logger.warning("%s: %d samples beyond full scale were clipped", path, clipped)
            samples = np.clip(samples, -1.0, 1.0)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        soundfile.write(tmp, samples, sample_rate, subtype=subtype, format=fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return clipped
