"""One path layer for local folders and remote prefixes (gs://..., and the other schemes the clients know).

Every stage reads and writes through these functions. Rules they keep:
- A user's path is literal: `[`, `*` and `?` in a folder name are characters, never patterns.
- A remote "folder" is a prefix: it exists through the objects below it (`exists_folder`), and
  deleting it deletes those objects (`delete_tree`).
- Writes are atomic: locally a temporary name (`*.incomplete-XXXXXXXX`), then a rename; on a
  bucket an upload is itself atomic (an object appears only when its upload completes), so objects
  are written under their final name and a rename, a full copy there, is saved.
- Remote files are streamed (`open_read`), never downloaded whole first.

Local paths go through `os`. Remote paths go through one of two clients, both able to talk to
Google Cloud Storage: Apache Beam's `FileSystems` (what the dataset job's workers have; the `gcp`
extra) or TensorFlow's `tf.io.gfile` (what a Colab trainer has). The first installed one is used;
`SPEECH_ENHANCE_REMOTE_FS=beam|tensorflow` chooses. Neither is imported for local paths.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import shutil
import uuid
from typing import BinaryIO, Iterable

# Suffix of every temporary file this toolkit writes before renaming it into place.
INCOMPLETE_MARK = ".incomplete-"
REMOTE_FS_VARIABLE = "SPEECH_ENHANCE_REMOTE_FS"


def is_remote(path: str) -> bool:
    return "://" in str(path)


class _BeamClient:
    """Remote files through Apache Beam's FileSystems (gcsio for gs://)."""

    name = "beam"

    def __init__(self) -> None:
        from apache_beam.io.filesystems import FileSystems

        self.fs = FileSystems

    def list_files(self, prefix: str) -> list[str]:
        return [m.path for m in self.fs.match([escape_glob(prefix) + "**"])[0].metadata_list]

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


def join(base: str, *parts: str) -> str:
    """Joins path parts for a local path or a remote prefix."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    """The folder that holds `path` (absolute for local paths)."""
    if is_remote(path):
        scheme, rest = path.rstrip("/").split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(os.path.abspath(path))


def relative(path: str, root: str) -> str:
    """`path` relative to the folder `root`, with / separators."""
    if is_remote(path):
        base = root.rstrip("/") + "/"
        if not path.startswith(base):
            raise ValueError(f"{path!r} is not below {root!r}")
        return path[len(base):]
    return os.path.relpath(path, root).replace(os.sep, "/")


def isfile(path: str) -> bool:
    if is_remote(path):
        return remote_client().isfile(path)
    return os.path.isfile(path)


def list_files(root: str) -> list[str]:
    """Paths relative to `root` (posix, sorted) of every file below it, recursively; [] when there are none.

    A remote prefix "exists" only through the objects below it, so an empty or missing prefix both give [].
    """
    if not is_remote(root):
        out = []
        for folder, _dirs, files in os.walk(root):
            rel = os.path.relpath(folder, root)
            for name in files:
                out.append(name if rel == "." else posixpath.join(rel.replace(os.sep, "/"), name))
        return sorted(out)
    base = root.rstrip("/") + "/"
    found = remote_client().list_files(base)
    # Objects named "dir/" are folder markers some clients write (tf.io.gfile.makedirs), not files.
    return sorted(p[len(base):] for p in found if p.startswith(base) and len(p) > len(base) and not p.endswith("/"))


def exists_folder(path: str) -> bool:
    """A local folder, or a remote prefix with at least one object below it."""
    if is_remote(path):
        return bool(list_files(path))
    return os.path.isdir(path)


def makedirs(path: str) -> None:
    """Creates a local folder and its parents (remote prefixes need nothing)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def delete_tree(path: str) -> None:
    """Removes a folder (or prefix) and everything below it; nothing when it does not exist."""
    if not is_remote(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    files = [join(path, rel) for rel in list_files(path)]
    if files:
        remote_client().delete(files)


def delete_files(paths: Iterable[str]) -> None:
    paths = list(paths)
    if not paths:
        return
    if is_remote(paths[0]):
        remote_client().delete(paths)
    else:
        for path in paths:
            os.remove(path)


def move_tree(src: str, dst: str, last: str | None = None) -> None:
    """Moves folder `src` to `dst`, which must not exist. Locally one rename; on a remote filesystem
    (no folders there) object by object, with the file named `last` (relative) moved last so that a
    reader who waits for it sees a complete folder."""
    if not is_remote(src):
        os.rename(src, dst)
        return
    rel = list_files(src)
    rel.sort(key=lambda r: r == last)
    remote_client().rename([join(src, r) for r in rel], [join(dst, r) for r in rel])


def temporary_name(path: str) -> str:
    """A unique sibling name for writing `path` before renaming it into place."""
    return f"{path}{INCOMPLETE_MARK}{uuid.uuid4().hex[:8]}"


def rename(src: str, dst: str) -> None:
    """Renames one file (replacing `dst`)."""
    if is_remote(src):
        remote_client().rename([src], [dst])
    else:
        os.replace(src, dst)


def open_read(path: str) -> BinaryIO:
    """A binary file object for reading, streamed (never downloaded whole first)."""
    return remote_client().open_read(path) if is_remote(path) else open(path, "rb")


def open_write(path: str) -> BinaryIO:
    """A binary file object for writing; local parent folders are created."""
    if is_remote(path):
        return remote_client().open_write(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, "wb")


def open_write_atomic(path: str) -> tuple[BinaryIO, str]:
    """(file object, name it writes) for a file that must appear whole or not at all at `path`:
    call `finish_atomic(name, path)` after closing it. The name is `path` itself on a bucket."""
    if is_remote(path):
        return remote_client().open_write(path), path
    tmp = temporary_name(path)
    return open_write(tmp), tmp


def finish_atomic(written: str, path: str) -> None:
    if written != path:
        rename(written, path)


def write_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` so that readers never see part of it (see the module docstring)."""
    if is_remote(path):
        with remote_client().open_write(path) as f:
            f.write(data)
        return
    tmp = temporary_name(path)
    try:
        with open_write(tmp) as f:
            f.write(data)
        rename(tmp, path)
    except BaseException:  # Ctrl-C or a full disk: no `.incomplete-` file is left beside `path`
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def upload_atomic(local_file: str, path: str) -> None:
    """Copies the local file `local_file` to `path` (local or remote) atomically, streaming it."""
    dst, written = open_write_atomic(path)
    with open(local_file, "rb") as src, dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    finish_atomic(written, path)


def download(path: str, local_file: str) -> None:
    """Copies the file at `path` (local or remote) to the local file `local_file`, streaming it."""
    with open_read(path) as src, open(local_file, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def size(path: str) -> int:
    """Size in bytes of one file."""
    if is_remote(path):
        return remote_client().size(path)
    return os.path.getsize(path)


def free_bytes(path: str) -> int | None:
    """Free space on the local filesystem that would hold `path` (None for remote paths)."""
    if is_remote(path):
        return None
    probe = existing_ancestor(path)
    return shutil.disk_usage(probe if os.path.isdir(probe) else os.path.dirname(probe)).free


def existing_ancestor(path: str) -> str:
    """The nearest local path, `path` itself or a folder above it, that exists."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe
