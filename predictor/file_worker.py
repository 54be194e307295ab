"""The worker side of `predictor.file_processes`: one process that reads files into model windows and
writes them from the model's outputs.

A worker runs `_worker_main` in a fresh interpreter ('spawn') and imports numpy, scipy, soundfile
and soxr only, never Keras, TensorFlow or JAX (it reports what it loaded when it starts). It
reads each file it is handed with `read_frames` and `Track` and sends the windows that are ready
to the main process; the model's outputs for them come back, and `Track` and `FileSink` write the
file (the functions the threaded path runs). It ignores SIGINT: the main process tells it when to
stop, and it then removes the temporaries of the files it was writing; it also exits if the main
process dies.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np

from predictor.audio_io import AudioError
from predictor.file_stream import FileJob, FileSink, read_frames
from predictor.high_band import HighBandGain
from predictor.overlap_add import Track, WindowGeometry
from predictor.streaming import StreamGeometry, StreamTrack

# Seconds between a blocked process's checks that the other side is still there.
POLL_SECONDS = 0.5
# Seconds the workers get to remove their temporaries and exit before they are terminated.
STOP_SECONDS = 10.0
# Modules that must never be imported by a worker.
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to read and write files as `enhance_files` would (picklable)."""

    geometry: WindowGeometry | StreamGeometry
    downmix: bool
    block_seconds: float
    keep_model_rate: bool
    high_band_gain: HighBandGain | None
    credit: int


@dataclasses.dataclass
class _InFlight:
    """A file in a worker: read, waiting for the model's outputs, or being written."""

    job: FileJob
    track: Track | StreamTrack
    reader: Any  # the `_read_frames` generator, None once read to its end
    windows: collections.deque = dataclasses.field(default_factory=collections.deque)  # (channel, index) sent
    sink: FileSink | None = None
    failed: bool = False


def _worker_main(w: int, tasks: Any, results: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    sender = _Sender(results)
    try:
        _Worker(w, tasks, sender, stop).run()
    except Exception:  # reported to the main process, which raises it
        sender.send(("error", w, traceback.format_exc()))
    finally:
        sender.close()


class _Sender:
    """Sends a worker's messages from a thread of its own, so that the worker computes on while the
    main process is busy with the model and not reading (as a multiprocessing queue's feeder does,
    but through the worker's own pipe)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="predictor-sender", daemon=True)
        self._thread.start()

    def send(self, message: tuple) -> None:
        self._queue.put(message)

    def close(self) -> None:
        """Sends what is queued (while the main process reads: it does until the workers have stopped)."""
        self._queue.put(None)
        self._thread.join(STOP_SECONDS)
        self._connection.close()

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self._connection.send(message)
            except OSError:  # the main process is gone
                return


class _Worker:
    """One worker process: reads files into model windows, writes them from the model's outputs."""

    def __init__(self, w: int, tasks: Any, results: Any, stop: Any) -> None:
        self.w, self.tasks, self.results, self.stop = w, tasks, results, stop
        self.settings: WorkerSettings | None = None  # the run's, with each "run" task
        self.files: dict[int, _InFlight] = {}
        self.to_read: collections.deque[int] = collections.deque()
        self.outstanding = 0  # windows sent whose model outputs have not come back
        self.received = 0  # messages taken from `tasks`
        self.last_progress = 0.0

    def run(self) -> None:
        # What every file needs is imported with this module, so start-up is over when it says ready.
        frameworks = sorted(m for m in FRAMEWORKS if m in sys.modules)
        self.results.send(("ready", self.w, os.getpid(), frameworks, time.time()))
        try:
            while not self.stop.is_set():
                message = self._get(block=False)
                if message is None:
                    if self.to_read and self.outstanding < self.settings.credit:
                        self._read_block()
                        continue
                    self.results.send(("waiting", self.w, self.received))
                    message = self._get(block=True)
                    if message is None:
                        return
                if message[0] == "stop":
                    return
                self._handle(message)
        finally:
            for state in self.files.values():  # stopped early: remove the temporaries, close the inputs
                if state.sink is not None:
                    state.sink.abort()
                if state.reader is not None:
                    state.reader.close()

    def _get(self, block: bool) -> tuple | None:
        """The next task; None when there is none (block=False), or when told to stop or orphaned."""
        while True:
            try:
                message = self.tasks.get(block=block, timeout=POLL_SECONDS if block else None)
                self.received += 1
                return message
            except queue.Empty:
                if not block:
                    return None
            if self.stop.is_set() or not _parent_alive():
                return None

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "run":
            # What a run left: the windows of files that failed after the last file was done, which
            # were never run (a run's last predictions come before the next "run" task).
            for state in self.files.values():
                if state.sink is not None:
                    state.sink.abort()
            self.files.clear()
            self.to_read.clear()
            self.outstanding = 0
            self.settings = message[1]
        elif kind == "file":
            _, index, job = message
            s = self.settings
            reader = read_frames(job, s.geometry, s.downmix, s.block_seconds, s.high_band_gain)
            # A streaming model's "windows" are a block's frames per channel, run with the file's state.
            self.files[index] = _InFlight(job, s.geometry.track(index), reader)
            self.to_read.append(index)
        elif kind == "predictions":
            _, index, outputs = message
            self.outstanding -= len(outputs)
            state = self.files[index]
            for prediction in outputs:
                channel, window = state.windows.popleft()
                state.track.add(channel, window, prediction)
            if state.failed:
                if not state.windows and state.reader is None:
                    del self.files[index]
                return
            self._write(index, state)
        else:
            raise RuntimeError(f"internal error: unknown task {kind!r}")

    def _read_block(self) -> None:
        index = self.to_read[0]
        state = self.files[index]
        job, item = next(state.reader)
        if isinstance(item, AudioError):
            self._finish_reading(state)
            state.failed = True
            if state.sink is not None:  # it failed part way through: drop what was written of it
                state.sink.abort()
                state.sink = None
            self.results.send(("failed", self.w, index, item.reason, str(item), True))
            if not state.windows:
                del self.files[index]
            return
        ready = state.track.add_frames(item)
        windows = None
        if ready:
            windows = np.stack([state.track.window(channel, window) for _, channel, window in ready])
            state.windows.extend((channel, window) for _, channel, window in ready)
            self.outstanding += len(ready)
        last = item.layout is not None
        if last:
            self._finish_reading(state)
        if windows is not None or last:
            self.results.send(("windows", self.w, index, windows, last))
        if not ready:  # frames that complete no window may still end a file whose windows have all run
            self._write(index, state)

    def _finish_reading(self, state: _InFlight) -> None:
        self.to_read.popleft()
        state.reader.close()  # closes the input file
        state.reader = None

    def _write(self, index: int, state: _InFlight) -> None:
        """Writes what the windows run so far complete; the last block commits the file."""
        block = state.track.take_joined()
        if block is None:
            return
        if state.sink is None:
            state.sink = FileSink(state.job, self.settings.geometry, self.settings.keep_model_rate)
            state.job.sink = state.sink  # the reader stops at the sink's first failed write (`read_frames`)
        error = state.sink.push(block)
        job = state.job
        if block.last:
            del self.files[index]
            self.results.send(("done", self.w, index, error, job.num_samples, job.sample_rate))
            return
        now = time.monotonic()
        if now - self.last_progress > 1.0:
            self.last_progress = now
            self.results.send(("progress", self.w, index, state.sink.seconds_written, job.seconds))


def _parent_alive() -> bool:
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()
