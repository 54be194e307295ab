"""Finding, reading, resampling and atomically writing audio files for the predictor.

Audio is float32 [samples, channels] everywhere here; channel handling is the caller's choice.
Files of any length are read, resampled and written a block at a time (`AudioReader`,
`StreamResampler`, `AtomicAudioWriter`), so memory does not grow with the file; the block-wise
results equal the whole-file ones (`read_audio`, `resample`, `write_audio_atomic`).

Paths are local or remote (gs://...): every file operation goes through `tfrecord_schema.paths`.
Remote files are read streamed (soundfile decodes from the path layer's seekable reader) and
written to a local temporary file, uploaded atomically when complete.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import tempfile
from typing import Iterator

import numpy as np

# One reader for the whole toolkit: the dataset job decodes its inputs with the same function.
from beam_pipelines.audio import FORMATS, AudioError, list_audio, read_samples
from tfrecord_schema import paths

logger = logging.getLogger(__name__)

_EXTENSIONS = "/".join(FORMATS)  # ".wav/.flac/.ogg", for messages
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


def extension(path: str) -> str:
    """The lower-case extension of `path` (".wav"), "" when it has none."""
    return paths.split_extension(path)[1].lower()


_GLOB_CHARACTERS = ("*", "?", "[")


def find_audio_files(source: str, exclude: str | None = None) -> tuple[str, list[str]]:
    """Resolves `source`, a folder (searched recursively) or one audio file, local or remote
    (gs://...), to (base folder, relative paths of its audio files, sorted).

    `source` is literal, never a glob pattern: `*`, `?` and `[` in it are characters; one that names
    nothing and holds them is refused with ValueError saying so. Only the files `list_audio` lists
    count (wav/flac/ogg, not hidden). Files under `exclude` (e.g. an output folder inside the input
    folder) are left out. Raises FileNotFoundError when nothing is found.
    """
    remote = paths.is_remote(source)
    if remote or os.path.isdir(source):
        base, rels = (source.rstrip("/") if remote else source), list_audio(source)
    else:
        base, rels = source, []
    if not rels:
        if paths.isfile(source):
            if extension(source) not in FORMATS:  # named by the user: hidden or not
                raise ValueError(f"--input must be a {_EXTENSIONS} file or a folder. Received: input={source!r}")
            base, rels = paths.dirname(source) if remote else (os.path.dirname(source) or "."), [paths.basename(source)]
        elif paths.exists_folder(source):  # a folder, but without audio
            raise FileNotFoundError(f"No {_EXTENSIONS} files found in {source!r}.")
        elif any(c in source for c in _GLOB_CHARACTERS):
            raise ValueError(
                f"--input is a path, never a glob pattern: '*', '?' and '[' in it are characters. Received: "
                f"input={source!r}, which names no file and no folder. Pass the folder that holds the files "
                "(it is searched recursively), or one file.")
        else:
            where = ("a folder prefix with objects below it nor one object" if remote else "a folder nor a file")
            raise FileNotFoundError(f"No {_EXTENSIONS} files match the input: {source!r} is neither {where}.")
    if exclude and paths.is_inside(exclude, base):
        # Only a folder strictly inside the input is left out; the caller refuses one equal to it.
        rels = [rel for rel in rels if not paths.is_inside(paths.join(base, rel), exclude)]
    if not rels:
        raise FileNotFoundError(f"No {_EXTENSIONS} files found in {source!r}.")
    return base, rels


def read_audio(path: str) -> Audio:
    """Reads a wav/flac/ogg file (any rate and channel count) as float32 [samples, channels].

    Raises AudioError("unreadable" | "empty" | "not_finite") naming the file.
    """
    try:
        if paths.size(path) == 0:
            raise AudioError("empty", f"{path}: the file is empty (0 bytes)")
        with paths.open_read(path) as f:
            samples, rate, subtype = read_samples(f, path)
    except OSError as err:
        raise AudioError("unreadable", f"{path}: cannot read ({type(err).__name__}: {err})") from err
    return Audio(samples=samples, sample_rate=rate, subtype=subtype)


class AudioReader:
    """A wav/flac/ogg file opened for reading a block at a time, as float32 [samples, channels].

    The blocks, joined, are what `read_audio` returns, and the errors are its errors, naming the
    file: AudioError "empty" (no bytes, or no samples), "unreadable" (cannot be opened or decoded),
    "not_finite" (NaN or infinite samples, in whichever block they turn up). A context manager.

    A remote file is streamed: soundfile decodes from the path layer's reader (Beam's GCS reader
    and tf.io.gfile's are both seekable, which soundfile needs to find the header and the blocks),
    so nothing is downloaded whole first.
    """

    def __init__(self, path: str) -> None:
        import soundfile

        self.path = path
        self._stream = None  # the remote reader soundfile decodes from
        try:
            size = paths.size(path)
        except OSError as err:
            raise AudioError("unreadable", f"{path}: cannot read ({type(err).__name__}: {err})") from err
        if size == 0:
            raise AudioError("empty", f"{path}: the file is empty (0 bytes)")
        try:
            if paths.is_remote(path):
                self._stream = paths.open_read(path)
                self._file = soundfile.SoundFile(self._stream)
            else:
                self._file = soundfile.SoundFile(path)
        except (soundfile.SoundFileError, RuntimeError, OSError) as err:
            self._close_stream()
            raise AudioError("unreadable", f"{path}: cannot decode audio ({type(err).__name__}: {err})") from err
        self.sample_rate = int(self._file.samplerate)
        self.num_channels = int(self._file.channels)
        self.subtype: str | None = self._file.subtype
        self.samples_read = 0  # per channel, so far

    @property
    def num_samples(self) -> int:
        """Samples per channel that the file's header announces."""
        return int(self._file.frames)

    def blocks(self, block_samples: int) -> Iterator[tuple[np.ndarray, bool]]:
        """Yields (float32 [at most `block_samples`, channels], is_last) up to the end of the file.

        The last block is shorter than `block_samples`, possibly empty.
        """
        import soundfile

        if not isinstance(block_samples, int) or block_samples < 1:
            raise ValueError(f"block_samples must be a positive integer. Received: block_samples={block_samples!r}")
        while True:
            try:
                block = self._file.read(block_samples, dtype="float32", always_2d=True)
            except (soundfile.SoundFileError, RuntimeError, OSError) as err:
                raise AudioError("unreadable", f"{self.path}: cannot decode audio after {self.samples_read} samples "
                                               f"({type(err).__name__}: {err})") from err
            if not np.all(np.isfinite(block)):
                raise AudioError("not_finite", f"{self.path}: the audio holds NaN or infinite samples")
            self.samples_read += block.shape[0]
            last = block.shape[0] < block_samples
            if last and self.samples_read == 0:
                raise AudioError("empty", f"{self.path}: the file holds no samples")
            yield block, last
            if last:
                return

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resamples float32 [samples] or [samples, channels] with soxr (high quality)."""
    if from_rate == to_rate:
        return samples
    import soxr

    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """`resample` a block at a time: float32 [samples, channels] blocks in, blocks out.

    soxr keeps its filter state between blocks, so the output blocks joined are `resample` of the
    input joined, sample for sample and of the same length. Pass `last=True` with the final block
    (it may be empty) to flush the filter's delay.
    """

    def __init__(self, from_rate: int, to_rate: int, channels: int) -> None:
        self.from_rate, self.to_rate, self.channels = from_rate, to_rate, channels
        self._stream = None
        if from_rate != to_rate:
            import soxr

            self._stream = soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32", quality="HQ")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(np.ascontiguousarray(samples, np.float32), last=last)


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


# libsndfile's error for a failed system call (SFE_SYSTEM), which soundfile reports as "System error."
_LIBSNDFILE_SYSTEM_ERROR = 2
_ERRNO_BY_TEXT = {os.strerror(code): code for code in errno.errorcode}


def _system_error(err: Exception, path: str, sound_file: object = None) -> Exception:
    """`err`, a libsndfile error, as OSError(errno, "No space left on device", `path`) when a system call
    failed (full or read-only disk, no permission), else `err` itself.

    soundfile turns every failed system call into "System error."; libsndfile keeps the call's own
    text ("System error : No space left on device.") for `sf_strerror`, which soundfile does not
    call: it is asked here, of the open file's handle or (after a failed open or close) of the
    library. Without it (another soundfile) the error stays as it was.
    """
    import soundfile

    if getattr(err, "code", None) != _LIBSNDFILE_SYSTEM_ERROR:
        return err
    try:
        ffi, library = soundfile._ffi, soundfile._snd
        handle = getattr(sound_file, "_file", None) or ffi.NULL
        text = ffi.string(library.sf_strerror(handle)).decode("utf-8", "replace")
    except (AttributeError, TypeError, ValueError):
        return err
    reason = text.partition(":")[2].strip().rstrip(".") if ":" in text else ""
    if not reason:
        return err
    return OSError(_ERRNO_BY_TEXT.get(reason, errno.EIO), reason, path)


class AtomicAudioWriter:
    """Writes a wav/flac/ogg file a block at a time, under `paths.temporary_name(path)` until `commit()`.

    `commit()` closes the temporary and renames it to `path` (`os.replace`), so a reader never sees
    a half-written file and an interrupted run leaves no file under the final name; `abort()` (or
    leaving the `with` block on an exception) removes the temporary. Integer subtypes and ogg cannot
    hold values beyond full scale, so such samples are clipped; `clipped` counts them and `commit()`
    logs the count.

    A remote `path` (gs://...) is written block by block to a local temporary file (in
    `tempfile.gettempdir()`: soundfile seeks back to finish a header, which an object upload cannot)
    and `commit()` uploads it with `paths.upload_atomic`, under a temporary object name renamed
    into place, so the bucket never holds part of a file under the final name. The local file is
    removed by `commit()` and `abort()`. An upload that fails raises OSError naming `path`.

    Args:
        path: the final file (local or remote); its extension (.wav, .flac, .ogg) picks the format.
        sample_rate: Hz.
        channels: channels of every block written.
        subtype: soundfile subtype ("PCM_16", "FLOAT", ...); None: the format's default.
    """

    def __init__(self, path: str, sample_rate: int, channels: int, subtype: str | None = None) -> None:
        import soundfile

        ext = extension(path)
        if ext not in FORMATS:
            raise ValueError(f"Output files must end in one of {tuple(FORMATS)}. Received: path={path!r}")
        self.path, self.sample_rate, self.channels = path, sample_rate, channels
        self.format = FORMATS[ext]
        self.subtype = subtype or soundfile.default_subtype(self.format)
        self.remote = paths.is_remote(path)
        # A remote output's local temporary is made when the first block comes (see `write`).
        self.temporary = None if self.remote else paths.temporary_name(path)
        self.clipped = 0
        self.samples_written = 0
        self._clips = self.subtype in _INTEGER_SUBTYPES or self.format == "OGG"
        self._file = None

    def write(self, samples: np.ndarray) -> None:
        """Appends float [samples, channels] (or [samples] for mono)."""
        import soundfile

        if self._file is None:
            if self.remote:
                handle, self.temporary = tempfile.mkstemp(prefix="speech-enhance-", suffix=extension(self.path))
                os.close(handle)
            else:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            try:
                self._file = soundfile.SoundFile(self.temporary, "w", samplerate=self.sample_rate,
                                                 channels=self.channels, subtype=self.subtype, format=self.format)
            except soundfile.LibsndfileError as err:
                raise _system_error(err, self.path) from err
        if self._clips:
            over = int(np.count_nonzero(np.abs(samples) > 1.0))
            if over:
                self.clipped += over
                samples = np.clip(samples, -1.0, 1.0)
        try:
            self._file.write(samples)
        except soundfile.LibsndfileError as err:
            raise _system_error(err, self.path, self._file) from err
        self.samples_written += int(samples.shape[0])

    def commit(self) -> None:
        """Closes the file and renames it into place."""
        import soundfile

        if self._file is None:  # nothing was written: still an (empty) file, as asked
            self.write(np.zeros((0, self.channels), np.float32))
        try:
            self._file.close()  # rewrites the header: a full disk can fail here too
        except soundfile.LibsndfileError as err:
            raise _system_error(err, self.path) from err
        if self.remote:
            local, self.temporary = self.temporary, None  # gone after this, whatever happens
            try:
                paths.upload_atomic(local, self.path)
            except OSError:
                raise
            except Exception as err:  # the storage clients' own errors (google.api_core, ...) are no OSError
                raise OSError(f"cannot upload to {self.path} ({type(err).__name__}: {err})") from err
            finally:
                os.remove(local)
        else:
            os.replace(self.temporary, self.path)
        if self.clipped:
            logger.warning("%s: %d samples beyond full scale were clipped", self.path, self.clipped)

    def abort(self) -> None:
        """Closes and removes the temporary; the final name is left as it was."""
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except (RuntimeError, OSError):  # a disk that failed the writes may fail the close too
                pass
        if self.temporary is not None and os.path.exists(self.temporary):
            os.remove(self.temporary)

    def __enter__(self) -> "AtomicAudioWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()


def write_audio_atomic(path: str, samples: np.ndarray, sample_rate: int, subtype: str | None = None) -> int:
    """Writes `samples` [samples, channels] (or [samples]) to `path` at once with `AtomicAudioWriter`.

    Returns the number of samples clipped (beyond full scale for an integer subtype or ogg).
    """
    channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    with AtomicAudioWriter(path, sample_rate, channels, subtype) as writer:
        writer.write(samples)
        writer.commit()
    return writer.clipped
