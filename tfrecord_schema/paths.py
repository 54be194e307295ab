"""One path layer for local folders and remote prefixes (gs://..., and the other schemes the clients know).

Every stage reads and writes through these functions. Rules they keep:
- A user's path is literal: `[`, `*` and `?` in a folder name are characters, never patterns.
- A remote "folder" is a prefix: it exists through the objects below it (`exists_folder`), and
  deleting it deletes those objects (`delete_tree`).
- Writes are atomic: locally a temporary name (`*.incomplete-XXXXXXXX`), then a rename; on a
  bucket an upload is itself atomic (an object appears only when its upload completes), so objects
  are written under their final name and a rename, a full copy there, is saved.
- Remote files are streamed (`open_read`), never downloaded whole first.
- A file can be created only if absent (`create_exclusive`: O_EXCL locally, a generation
  precondition on gs://), which is what `FileLock` (one build of a dataset at a time) rests on.

Local paths go through `os`. Remote paths go through one of two clients, both able to talk to
Google Cloud Storage: Apache Beam's `FileSystems` (what the dataset job's workers have; the `gcp`
extra) or TensorFlow's `tf.io.gfile` (what a Colab trainer has). The first installed one is used;
`SPEECH_ENHANCE_REMOTE_FS=beam|tensorflow` chooses. Neither is imported for local paths.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import posixpath
import shutil
import socket
import sys
import uuid
from typing import BinaryIO, Iterable

LOG = logging.getLogger(__name__)

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


def create_exclusive(path: str, data: bytes) -> None:
    """Writes `data` to a new file `path`, in one step that fails with FileExistsError when a file of
    that name exists, even against a writer on another machine at the same moment.

    Locally `O_CREAT | O_EXCL`. On gs:// an upload with the precondition `ifGenerationMatch=0`
    (google-cloud-storage, which Beam's gcp extra installs): Cloud Storage creates the object only
    when none exists (the test suite's emulator ignores preconditions: there only the existence check
    before the upload is exercised). Other remote schemes have no such precondition here: an existence check, then
    a write, with a small window in which two writers both succeed.
    """
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            os.remove(path)
            raise
        os.close(fd)
        return
    if path.startswith("gs://"):
        from google.api_core import exceptions

        if isfile(path):  # the common case, at the cost of one request; the precondition covers the race
            raise FileExistsError(f"{path}: exists")
        bucket, _, name = path[len("gs://"):].partition("/")
        try:
            _gcs_client().bucket(bucket).blob(name).upload_from_string(data, if_generation_match=0)
        except exceptions.PreconditionFailed as err:
            raise FileExistsError(f"{path}: exists") from err
        return
    if isfile(path):
        raise FileExistsError(f"{path}: exists")
    LOG.debug("%s: no create-if-absent precondition for this scheme; checked, then written", path)
    write_atomic(path, data)


def _gcs_client():
    # One client per endpoint: STORAGE_EMULATOR_HOST can change within a process (a user switching
    # to an emulator, an emulator per test module), and a client keeps the endpoint it was made with.
    return _gcs_client_for(os.environ.get("STORAGE_EMULATOR_HOST", ""))


@functools.lru_cache(maxsize=None)
def _gcs_client_for(endpoint: str):
    from google.cloud import storage

    return storage.Client()


class LockHeld(FileExistsError):
    """A lock file exists and its holder may still be running; `holder` is what it wrote."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), None where unknown:
    with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_running(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


class FileLock:
    """A lock held by creating `path` exclusively (`create_exclusive`), locally or on a bucket.

    The file holds who took it: pid, host, start time, command. `acquire` refuses a lock that is held
    (LockHeld naming the holder) and takes over, with a warning, a lock whose holder is gone: one
    left on this host by a process that no longer runs (killed, or its machine restarted), or any
    lock when `break_lock` (for a holder on another host that crashed: this host cannot see it).
    `release` removes the file only while it is still this holder's.
    """

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        self.token = uuid.uuid4().hex
        self.held = False

    def _content(self) -> bytes:
        return json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:]),
            "token": self.token}).encode()

    def read(self) -> dict | None:
        """What the lock file holds, None when there is none ({} when unreadable)."""
        if is_remote(self.path) and not isfile(self.path):
            return None
        try:
            data = read_bytes(self.path)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(data)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        return not _pid_running(holder["pid"], holder.get("process_start"))

    def describe(self, holder: dict) -> str:
        return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')} ({holder.get('command', '?')!r})")

    def acquire(self, break_lock: bool = False) -> None:
        for _ in range(5):
            try:
                create_exclusive(self.path, self._content())
                self.held = True
                return
            except FileExistsError:
                pass
            holder = self.read()
            if holder is None:  # released in between: try again
                continue
            if not (break_lock or self._stale(holder)):
                raise LockHeld(f"{self.what} is in use by another run: {self.describe(holder)}, which holds the "
                               f"lock {self.path}. Wait for it to finish or stop it. If that run is gone (its "
                               "machine crashed), pass break_lock=True to take the lock over.", holder)
            LOG.warning("taking over the lock %s of %s: %s", self.path, self.describe(holder),
                        "break_lock=True" if break_lock else "that process no longer runs")
            self._remove_if_still(holder)
        raise LockHeld(f"{self.what}: could not take the lock {self.path}: other runs keep taking it.", {})

    def _remove_if_still(self, holder: dict) -> None:
        """Removes the lock file if it still holds `holder` (another run may have replaced it since)."""
        if is_remote(self.path):
            delete_files([self.path])  # no rename on a bucket; the window between read and delete is small
            return
        moved = temporary_name(self.path)
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        try:
            with open(moved, "rb") as f:
                now = json.loads(f.read() or b"{}")
        except ValueError:
            now = {}
        if now.get("token") != holder.get("token"):
            try:
                os.link(moved, self.path)  # someone else's fresh lock: put it back (never over a newer one)
            except OSError:
                pass
        os.remove(moved)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.read()
        if holder and holder.get("token") == self.token:
            delete_files([self.path])
        else:
            LOG.warning("the lock %s was taken over by %s while this run held it", self.path,
                        self.describe(holder or {}))
