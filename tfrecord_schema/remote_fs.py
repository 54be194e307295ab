"""The clients that reach remote paths (gs://..., and the other schemes they know), for `tfrecord_schema.paths`.

Two clients, both able to talk to Google Cloud Storage: Apache Beam's `FileSystems` (what the
dataset job's workers have; the `gcp` extra) or TensorFlow's `tf.io.gfile` (what a Colab trainer
has). The first installed one is used; `SPEECH_ENHANCE_REMOTE_FS=beam|tensorflow` chooses. Neither
is imported for local paths.
"""

from __future__ import annotations

import functools
import os
import posixpath
from typing import BinaryIO

REMOTE_FS_VARIABLE = "SPEECH_ENHANCE_REMOTE_FS"


class _BeamClient:
    """Remote files through Apache Beam's FileSystems (gcsio for gs://)."""

    name = "beam"

    def __init__(self) -> None:
        from apache_beam.io.filesystems import FileSystems

        self.fs = FileSystems

    def list_files(self, prefix: str) -> list[str]:
        return [m.path for m in self.fs.match([escape_glob(prefix) + "**"])[0].metadata_list]

    def list_identities(self, prefix: str) -> dict[str, tuple[int, int]]:
        return {m.path: (int(m.size_in_bytes), int(round((m.last_updated_in_seconds or 0) * 1e9)))
                for m in self.fs.match([escape_glob(prefix) + "**"])[0].metadata_list}

    def isfile(self, path: str) -> bool:
        return self.fs.exists(path)

    def size(self, path: str) -> int:
        found = self.fs.match([escape_glob(path)])[0].metadata_list
        if not found:
            raise FileNotFoundError(f"{path}: no such file")
        return found[0].size_in_bytes

    def open_read(self, path: str) -> BinaryIO:
        return self.fs.open(path)

    def open_write(self, path: str) -> BinaryIO:
        return self.fs.create(path)

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        self.fs.rename(sources, destinations)

    def delete(self, paths: list[str]) -> None:
        self.fs.delete(paths)


class _TensorFlowClient:
    """Remote files through TensorFlow's own filesystem layer (tf.io.gfile)."""

    name = "tensorflow"

    def __init__(self) -> None:
        import tensorflow as tf

        self.gfile = tf.io.gfile

    def list_files(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/")
        out = []
        if not self.gfile.isdir(base):
            return out
        for folder, _dirs, files in self.gfile.walk(base):
            out += [posixpath.join(folder.rstrip("/"), name) for name in files]
        return out

    def list_identities(self, prefix: str) -> dict[str, tuple[int, int]]:
        out = {}
        for path in self.list_files(prefix):
            stat = self.gfile.stat(path)
            out[path] = (int(stat.length), int(stat.mtime_nsec))
        return out

    def isfile(self, path: str) -> bool:
        return self.gfile.exists(path) and not self.gfile.isdir(path)

    def size(self, path: str) -> int:
        import tensorflow as tf

        try:
            return self.gfile.stat(path).length
        except tf.errors.NotFoundError as err:
            raise FileNotFoundError(f"{path}: no such file") from err

    def open_read(self, path: str) -> BinaryIO:
        return self.gfile.GFile(path, "rb")

    def open_write(self, path: str) -> BinaryIO:
        return self.gfile.GFile(path, "wb")

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        for src, dst in zip(sources, destinations):
            self.gfile.rename(src, dst, overwrite=True)

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            self.gfile.remove(path)


@functools.lru_cache(maxsize=None)
def _client_named(name: str):
    return {"beam": _BeamClient, "tensorflow": _TensorFlowClient}[name]()


def remote_client():
    """The client used for remote paths (see the module docstring)."""
    wanted = os.environ.get(REMOTE_FS_VARIABLE, "").strip().lower()
    if wanted:
        if wanted not in ("beam", "tensorflow"):
            raise ValueError(f"{REMOTE_FS_VARIABLE} must be 'beam' or 'tensorflow'. Received: {wanted!r}")
        return _client_named(wanted)
    for name in ("beam", "tensorflow"):
        try:
            return _client_named(name)
        except ImportError:
            continue
    raise ImportError("Remote paths (gs://...) need Apache Beam or TensorFlow: pip install 'speech-enhance[gcp]'.")


def escape_glob(path: str) -> str:
    """`path` as a pattern that matches exactly itself in `FileSystems.match` (and `glob`)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def gcs_client():
    # One client per endpoint: STORAGE_EMULATOR_HOST can change within a process (a user switching
    # to an emulator, an emulator per test module), and a client keeps the endpoint it was made with.
    return _gcs_client_for(os.environ.get("STORAGE_EMULATOR_HOST", ""))


@functools.lru_cache(maxsize=None)
def _gcs_client_for(endpoint: str):
    from google.cloud import storage

    return storage.Client()

