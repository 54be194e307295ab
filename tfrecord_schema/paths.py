"""One path layer for local folders and remote prefixes (gs://... and any other scheme Beam knows).

Every user path is literal: `[`, `*` and `?` in a folder name are characters, never patterns. Local
paths go through `os`; remote ones through Beam's `FileSystems` (imported only when a remote path is
used, so readers that never touch a bucket need no Beam).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from typing import Iterable

# Suffix of every temporary file this toolkit writes before renaming it into place.
INCOMPLETE_MARK = ".incomplete-"


def is_remote(path: str) -> bool:
    return "://" in path


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def escape_glob(path: str) -> str:
    """`path` as a pattern that matches exactly itself in `FileSystems.match` (and `glob`)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def join(base: str, *parts: str) -> str:
    """Joins path parts for a local path or a remote prefix."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    if is_remote(path):
        scheme, rest = path.rstrip("/").split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(os.path.abspath(path))


def isfile(path: str) -> bool:
    if is_remote(path):
        return _fs().exists(path)
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
    matches = _fs().match([escape_glob(base) + "**"])[0].metadata_list
    return sorted(m.path[len(base):] for m in matches if m.path.startswith(base) and len(m.path) > len(base))


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
        _fs().delete(files)


def delete_files(paths: Iterable[str]) -> None:
    paths = list(paths)
    if not paths:
        return
    if is_remote(paths[0]):
        _fs().delete(paths)
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
    _fs().rename([join(src, r) for r in rel], [join(dst, r) for r in rel])


def temporary_name(path: str) -> str:
    """A unique sibling name for writing `path` before renaming it into place."""
    return f"{path}{INCOMPLETE_MARK}{uuid.uuid4().hex[:8]}"


def write_atomic(path: str, data: bytes) -> None:
    """Writes `data` under a temporary name, then renames it to `path`: readers never see part of it."""
    tmp = temporary_name(path)
    if is_remote(path):
        with _fs().create(tmp) as f:
            f.write(data)
        _fs().rename([tmp], [path])
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        with _fs().open(path) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def size(path: str) -> int:
    """Size in bytes of one file."""
    if is_remote(path):
        return _fs().match([escape_glob(path)])[0].metadata_list[0].size_in_bytes
    return os.path.getsize(path)


def free_bytes(path: str) -> int | None:
    """Free space on the local filesystem that would hold `path` (None for remote paths)."""
    if is_remote(path):
        return None
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe if os.path.isdir(probe) else os.path.dirname(probe)).free


def open_read(path: str):
    """A binary file object for reading, streamed (never downloaded whole first)."""
    return _fs().open(path) if is_remote(path) else open(path, "rb")


def open_write(path: str):
    """A binary file object for writing; local parent folders are created."""
    if is_remote(path):
        return _fs().create(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, "wb")


def rename(src: str, dst: str) -> None:
    """Renames one file (replacing `dst`)."""
    if is_remote(src):
        _fs().rename([src], [dst])
    else:
        os.replace(src, dst)
