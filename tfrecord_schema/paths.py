"""One path layer for local folders and remote prefixes (gs://..., and the other schemes the clients know).

Every stage reads and writes through these functions. Rules they keep:
- A user's path is literal: `[`, `*` and `?` in a folder name are characters, never patterns.
- A remote "folder" is a prefix: it exists through the objects below it (`exists_folder`), and
  deleting it deletes those objects (`delete_tree`).
- Two paths are compared as locations (`location`, `same_location`, `is_inside`): locally resolved
  (absolute, links followed), remotely without trailing "/" (a bucket has no links and no "..").
- Writes are atomic: locally a temporary name, then a rename; on a bucket an upload is itself
  atomic (an object appears only when its upload completes), so objects are written under their
  final name and a rename, a full copy there, is saved.
- Every temporary file is named by `temporary_name` (`.NAME.PID-XXXXXXXX.tmp`, hidden beside
  NAME, with the writer's process id), so `remove_stale_temporaries` removes what any writer that
  no longer runs left, and nothing else.
- Remote files are streamed (`open_read`), never downloaded whole first.

Local paths go through `os`; remote paths through a client of `tfrecord_schema.remote_fs`, which
is imported only for them. Files created only if absent, and the lock built on them, are in
`tfrecord_schema.locks`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import re
import shutil
import uuid
from typing import BinaryIO, Iterable

from tfrecord_schema.remote_fs import remote_client

LOG = logging.getLogger(__name__)

# A write that fails with one of these fails for every later write to that disk: it is full.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# `temporary_name`'s names: the final name, the writer's process id, a random part.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def is_remote(path: str) -> bool:
    return "://" in str(path)


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


def list_identities(root: str) -> dict[str, tuple[int, int]]:
    """{path relative to `root`: (size in bytes, modification time in ns)} of every file below it, as
    `list_files` lists them: what tells a replaced file from the one seen before without reading it
    (the size and time rsync and make compare). On a bucket the time is the object's update time,
    which every rewrite (a new generation) changes."""
    if not is_remote(root):
        out = {}
        for rel in list_files(root):
            stat = os.stat(os.path.join(root, rel))
            out[rel] = (int(stat.st_size), int(stat.st_mtime_ns))
        return out
    base = root.rstrip("/") + "/"
    found = remote_client().list_identities(base)
    return {p[len(base):]: v for p, v in sorted(found.items())
            if p.startswith(base) and len(p) > len(base) and not p.endswith("/")}


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
    except BaseException:  # Ctrl-C or a full disk: no temporary is left beside `path`
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


def format_bytes(num_bytes: float) -> str:
    """A size for people, in the largest binary unit that keeps it at least 1: "512 bytes", "3.4 MiB",
    "1.2 GiB" (a size below 1 GiB in GiB reads "0.0 GiB")."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    value, unit = float(num_bytes), 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024.0, unit + 1
    return f"{int(value)} bytes" if unit == 0 else f"{value:.1f} {units[unit]}"


def existing_ancestor(path: str) -> str:
    """The nearest local path, `path` itself or a folder above it, that exists."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def split_extension(path: str) -> tuple[str, str]:
    """(`path` without its extension, the extension as written) for a local path or a remote URL."""
    return (posixpath if is_remote(path) else os.path).splitext(path)


def location(path: str, resolved_folders: dict[str, str] | None = None) -> str:
    """`path` normalised for comparing with another: resolved locally, without trailing "/" remotely.

    `resolved_folders` caches resolved folders: a file's resolved path is its resolved folder joined with
    its name, unless the name itself is a link (what `os.path.realpath` gives, with one `lstat`
    per file instead of one per component of its path).
    """
    if is_remote(path):
        return path.rstrip("/")
    if resolved_folders is None:
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if not name or name in (".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    resolved = resolved_folders.get(folder)
    if resolved is None:
        resolved = resolved_folders[folder] = os.path.realpath(folder)
    return os.path.join(resolved, name)


def _as_folder(path: str) -> str:
    """`location(path)` with one trailing separator: what every path below it starts with."""
    return location(path).rstrip("/" if is_remote(path) else os.sep) + ("/" if is_remote(path) else os.sep)


def same_location(a: str, b: str) -> bool:
    """Whether the local paths or remote prefixes `a` and `b` name the same file or folder."""
    return is_remote(a) == is_remote(b) and _as_folder(a) == _as_folder(b)


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` lies strictly below `folder` (both local, or both remote)."""
    if is_remote(path) != is_remote(folder):
        return False
    inside, top = _as_folder(path), _as_folder(folder)
    return inside != top and inside.startswith(top)


def is_no_space(err: BaseException) -> bool:
    """True when `err`, or an error it was raised from, is a full disk: an OSError with an errno of
    `NO_SPACE_ERRNOS` here, or, from a Beam worker (re-raised in the launcher as a RuntimeError
    holding the worker's message), its text."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return True
        if f"[Errno {errno.ENOSPC}]" in str(err) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def temporary_name(path: str) -> str:
    """The name `path` is written under before it is renamed into place: a hidden sibling that
    carries this process's id and a random part (`.NAME.PID-XXXXXXXX.tmp`), so that
    `remove_stale_temporaries` tells the leftovers of a writer that no longer runs from the files
    of one still writing, and two writers of one name never share a temporary."""
    folder, name = (posixpath if is_remote(path) else os.path).split(path)
    return join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def final_name(path: str) -> str | None:
    """The path that the temporary `path` (`temporary_name`'s) is written for; None for any other name."""
    folder, name = (posixpath if is_remote(path) else os.path).split(path)
    match = _TEMPORARY.match(name)
    return None if match is None else join(folder, match.group("name"))


def remove_stale_temporaries(folder: str, log: bool = True) -> list[str]:
    """Deletes the temporaries (`temporary_name`: files, or folders with all below them) under the
    local `folder` (searched recursively) whose writer no longer runs; returns the paths deleted.

    A run still writing keeps its temporaries, and nothing else is touched. Links are not followed.
    For a remote `folder` nothing is deleted and [] is returned: a bucket cannot tell whether the
    writer of a temporary object is still alive (its process may run on another machine), and
    remote outputs are written under their final names (an upload is atomic) or staged on the
    local disk. `log`: say how many were removed (an interrupted command stopping says nothing).
    """
    if is_remote(folder):
        return []
    removed: list[str] = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            match = _TEMPORARY.match(name)
            path = os.path.join(root, name)
            if not match or os.path.islink(path) or process_running(int(match.group("pid"))):
                continue
            if name in dirs:
                dirs.remove(name)
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:  # another run cleaned it up first
                    continue
            removed.append(path)
    if removed and log:
        LOG.info("removed %d temporary file(s) left in %s by an interrupted run", len(removed), folder)
    return removed


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), None where unknown:
    with the pid it names one process, even after the pid is reused."""
    try:
        return int(_stat(pid)[19])
    except (TypeError, ValueError, IndexError):
        return None


def process_running(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` runs on this host; with `start` (its `process_start`), whether it is
    still that process and not a later one given the same pid."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        pass
    except (OverflowError, ValueError):  # not a possible process id
        return False
    stat = _stat(pid)
    if stat and stat[0] == b"Z":  # ended, not yet reaped by its parent: it writes nothing any more
        return False
    now = process_start(pid)
    return start is None or now is None or now == start
