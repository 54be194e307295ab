"""Files created only if absent, and the lock that rests on them: one build of a dataset at a time.

`create_exclusive` creates a file in one step that fails when one of that name exists (O_EXCL
locally, a generation precondition on gs://); `FileLock` holds a lock by creating its file that way,
names its holder in it, and takes over a lock whose holder is gone. Paths go through
`tfrecord_schema.paths`, local or remote alike.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import uuid

from tfrecord_schema import paths
from tfrecord_schema.remote_fs import gcs_client

LOG = logging.getLogger(__name__)


def create_exclusive(path: str, data: bytes) -> None:
    """Writes `data` to a new file `path`, in one step that fails with FileExistsError when a file of
    that name exists, even against a writer on another machine at the same moment.

    Locally `O_CREAT | O_EXCL`. On gs:// an upload with the precondition `ifGenerationMatch=0`
    (google-cloud-storage, which Beam's gcp extra installs): Cloud Storage creates the object only
    when none exists (the test suite's emulator ignores preconditions: there only the existence check
    before the upload is exercised). Other remote schemes have no such precondition here: an existence check, then
    a write, with a small window in which two writers both succeed.
    """
    if not paths.is_remote(path):
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

        if paths.isfile(path):  # the common case, at the cost of one request; the precondition covers the race
            raise FileExistsError(f"{path}: exists")
        bucket, _, name = path[len("gs://"):].partition("/")
        try:
            gcs_client().bucket(bucket).blob(name).upload_from_string(data, if_generation_match=0)
        except exceptions.PreconditionFailed as err:
            raise FileExistsError(f"{path}: exists") from err
        return
    if paths.isfile(path):
        raise FileExistsError(f"{path}: exists")
    LOG.debug("%s: no create-if-absent precondition for this scheme; checked, then written", path)
    paths.write_atomic(path, data)


class LockHeld(FileExistsError):
    """A lock file exists and its holder may still be running; `holder` is what it wrote."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


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
            "pid": os.getpid(), "host": socket.gethostname(), "process_start": paths.process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:]),
            "token": self.token}).encode()

    def read(self) -> dict | None:
        """What the lock file holds, None when there is none ({} when unreadable)."""
        if paths.is_remote(self.path) and not paths.isfile(self.path):
            return None
        try:
            data = paths.read_bytes(self.path)
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
        return not paths.process_running(holder["pid"], holder.get("process_start"))

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
        if paths.is_remote(self.path):
            paths.delete_files([self.path])  # no rename on a bucket; the window between read and delete is small
            return
        moved = paths.temporary_name(self.path)
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
            paths.delete_files([self.path])
        else:
            LOG.warning("the lock %s was taken over by %s while this run held it", self.path,
                        self.describe(holder or {}))
