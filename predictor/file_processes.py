"""The file side of `enhance_files` in worker processes, for machines where the model outruns threads.

With `file_processes=N` (`speech-enhance predict --file-processes N`), N worker processes each take
whole files: read and resample a block at a time, split off the high band, the STFT and the model's
input windows (`predictor.file_stream.read_frames`, `Track`); and, once the model's outputs for those
windows come back, their weighted overlap-add, the inverse STFT, resampling back, the high band
and the atomic write (`Track`, `FileSink`). These are the functions the threaded path runs, so the
outputs are the same to float rounding; only which windows share a model batch differs. The main
process only lists the files, batches the windows of all files and runs the model.

Why: numpy, soxr and libsndfile release the GIL, but the Python around them does not, so the
threads of one process cap the file side (measured on 16 cores: about 1,470x real time without a
model); processes do not share a GIL.

What travels: each window's model input (float32 [frames, bins], 66 kB at 8 kHz) to the main
process and the model's output for it back, pickled through `multiprocessing` queues; a file's
STFT, high band and samples stay in its worker. Each worker has at most `credit` windows (and a block's) waiting
for the model, so memory stays bounded whatever the model's speed; when every worker waits for
the model, the main process runs the batch it has, padded to `batch_size` (a batch shape the model
has seen, so an accelerator never retraces).

`FileProcesses` starts the workers; `enhance_files` starts and stops its own, or uses one started
earlier (`speech-enhance predict` starts them before it loads the model, so that their start-up
is hidden) and leaves it running for the next folder.

Workers are started with the 'spawn' method (never forked from a process where TensorFlow or JAX
may already run) and import numpy, scipy, soundfile and soxr only, never Keras, TensorFlow or
JAX (each reports what it loaded when it starts). They ignore SIGINT: on KeyboardInterrupt or any
error the main process tells them to stop, and they remove the temporaries of the files they were
writing and exit; they also exit if the main process dies (`predictor.file_worker`).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from predictor.file_stream import FileJob
from predictor.file_worker import POLL_SECONDS, STOP_SECONDS, WorkerSettings, _worker_main

INTERRUPTED_STOP_SECONDS = 2.0  # what the workers get to stop after Ctrl-C before they are terminated

if TYPE_CHECKING:
    from predictor.enhance import Enhancer

logger = logging.getLogger(__name__)

# The start method: a fresh interpreter per worker, safe after the model's framework has started.
START_METHOD = "spawn"
# Model windows a worker may have waiting for the model: at least this many, and enough that all
# workers together hold `BATCHES_IN_FLIGHT` batches (one running, the next ones filling).
MIN_CREDIT = 64
BATCHES_IN_FLIGHT = 3
# Files handed to a worker that it has not finished reading: the one it reads and the next.
FILES_AHEAD = 2


class FileProcessError(RuntimeError):
    """A file process died (killed, out of memory) or failed; the message says which and how."""


def check_file_processes(file_processes: Any) -> None:
    """Refuses (ValueError) what `enhance_files(file_processes=...)` cannot take."""
    if isinstance(file_processes, FileProcesses):
        if file_processes.closed:
            raise ValueError("file_processes was stopped (after an error or by close()); start new FileProcesses. "
                             f"Received: file_processes={file_processes!r}")
        return
    if isinstance(file_processes, bool) or not isinstance(file_processes, int) or file_processes < 0:
        raise ValueError("file_processes must be an integer >= 0: the worker processes that read, transform and "
                         "write the files around the model (0: threads in this process instead), or "
                         f"FileProcesses. Received: file_processes={file_processes!r}")


def credit_per_worker(batch_size: int, processes: int) -> int:
    """Windows a worker may have waiting for the model."""
    return max(MIN_CREDIT, -(-BATCHES_IN_FLIGHT * batch_size // processes))


class FileProcesses:
    """N worker processes for the file side of `enhance_files`, started once and used for one or more folders.

    `enhance_files(..., file_processes=N)` starts and stops its own; start one yourself to overlap
    the workers' start-up (a fresh interpreter each, about half a second) with loading the model, or
    to use the same workers for several folders:

        with FileProcesses(8) as processes:
            enhancer = Enhancer.from_model_dir(model_dir)
            enhance_files(enhancer, "in/", "out/", file_processes=processes)

    A script that starts them must do so under `if __name__ == "__main__":` (each worker imports the
    main module again, as 'spawn' does). After an error or a KeyboardInterrupt in a run the workers
    are stopped (they remove their temporaries) and the object cannot be used again.
    """

    def __init__(self, processes: int) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be a positive integer. Received: processes={processes!r}")
        self.started = time.time()  # wall clock: the workers say when they were ready by it
        self.startup_seconds: float | None = None  # until every worker was ready
        self._ready_at = 0.0
        ctx = multiprocessing.get_context(START_METHOD)
        # Tasks go out through queues (a put never blocks: a feeder thread writes them). Each worker
        # answers through a pipe of its own, which only it writes: a worker that dies, even half-way
        # through a message, closes it, and the reader here sees the end instead of waiting forever.
        self._tasks = [ctx.Queue() for _ in range(processes)]
        pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]
        self._results = [reader for reader, _ in pipes]
        self._open = {reader: w for w, reader in enumerate(self._results)}
        self._inbox: collections.deque[tuple] = collections.deque()
        self._stop = ctx.Event()
        self._workers = [ctx.Process(target=_worker_main, args=(w, self._tasks[w], writer, self._stop),
                                     name=f"predictor-files-{w}", daemon=True) for w, (_, writer) in enumerate(pipes)]
        self._sent = [0] * processes  # messages sent to each worker
        self._waiting = [-1] * processes  # messages a worker had received when it last said it waits
        self._ready = [False] * processes
        self.closed = False
        try:
            for worker in self._workers:
                worker.start()
        except BaseException:
            self.close()
            raise
        finally:
            for _, writer in pipes:
                writer.close()  # the workers hold the write ends

    @property
    def processes(self) -> int:
        return len(self._workers)

    def __enter__(self) -> "FileProcesses":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_ready(self) -> float:
        """Waits until every worker has started; returns the seconds since they were started."""
        try:
            while not all(self._ready):
                self._receive()
        except BaseException:
            self.close()
            raise
        return self.startup_seconds

    def run(self, enhancer: Enhancer, jobs: Sequence[FileJob], settings: WorkerSettings, *,
            on_failed: Callable[[FileJob, str, str], None], on_done: Callable[[FileJob, str | None], None],
            on_progress: Callable[[FileJob, float], None]) -> None:
        """Denoises `jobs`: the workers do the file side, this process batches windows and runs the model.

        Calls `on_failed(job, reason, message)` for a file that cannot be used, `on_done(job, error)`
        when a file's output is committed (error None) or could not be written (error says why), and
        `on_progress(job, seconds_written)` now and then while a file is being written. Returns once
        every job is done or failed; raises what went wrong in the model, in a worker, or a
        KeyboardInterrupt, after stopping the workers.
        """
        if self.closed:
            raise ValueError("these file processes were stopped (after an error or by close()); start new ones")
        if not jobs:
            return
        try:
            for w in range(self.processes):
                self._send(w, ("run", settings))
            _Batcher(self, enhancer, jobs, on_failed, on_done, on_progress).run()
        except KeyboardInterrupt:
            # Ctrl-C: the command stops at once and quietly; what a terminated worker was writing is
            # removed by the caller's clean-up of dead writers' temporaries.
            self.close(grace=INTERRUPTED_STOP_SECONDS, quiet=True)
            raise
        except BaseException:
            self.close()
            raise

    def close(self, grace: float = STOP_SECONDS, quiet: bool = False) -> None:
        """Stops the workers (they remove their temporaries) and waits `grace` seconds for them;
        terminates stragglers (with a warning, unless `quiet`)."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()  # seen between tasks
        for q in self._tasks:
            q.put(("stop",))  # wakes a worker that waits for a task
        deadline = time.monotonic() + grace
        running = [worker for worker in self._workers if worker.pid is not None]
        while time.monotonic() < deadline and any(worker.is_alive() for worker in running):
            # Read what they still send, so that none waits on a full pipe instead of stopping.
            ready = multiprocessing.connection.wait([*self._open, *(worker.sentinel for worker in running)], 0.1)
            for reader in ready:
                if reader in self._open:
                    try:
                        reader.recv()
                    except (EOFError, OSError):
                        del self._open[reader]
        for worker in self._workers:
            if worker.is_alive():
                logger.log(logging.DEBUG if quiet else logging.WARNING, "file process %s did not stop in %.0f s: "
                           "terminating it", worker.name, grace)
                worker.terminate()
                worker.join(2.0)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
        for worker in running:
            worker.join()
        for q in self._tasks:
            q.cancel_join_thread()  # what a worker will never read must not hold up this process's exit
            q.close()
        for reader in self._results:
            reader.close()

    def _send(self, w: int, message: tuple) -> None:
        self._tasks[w].put(message)
        self._sent[w] += 1

    def _all_waiting(self) -> bool:
        """Whether every worker has handled every task sent to it and waits for another."""
        return all(waiting == sent for waiting, sent in zip(self._waiting, self._sent))

    def _receive(self) -> tuple | None:
        """The next message for a run; None after POLL_SECONDS without one. Handles start-up and errors."""
        if not self._inbox:
            for reader in multiprocessing.connection.wait(list(self._open), POLL_SECONDS):
                try:
                    self._inbox.append(reader.recv())
                except (EOFError, OSError):  # it died
                    self._check_alive(wait=2.0)
                    raise FileProcessError(f"file process {self._open[reader]} closed its pipe unexpectedly")
            if not self._inbox:
                self._check_alive()
                return None
        message = self._inbox.popleft()
        kind, w = message[0], message[1]
        if kind == "waiting":
            self._waiting[w] = message[2]
        elif kind == "ready":
            self._ready[w] = True
            self._ready_at = max(self._ready_at, message[4])
            logger.debug("file process %d (pid %d) ready; machine-learning modules loaded: %s", w, message[2],
                         ", ".join(message[3]) or "none")
            if message[3]:
                logger.warning("file process %d imported %s, which it should not need", w, ", ".join(message[3]))
            if all(self._ready):
                self.startup_seconds = self._ready_at - self.started
                logger.info("%d file processes ready after %.2f s", self.processes, self.startup_seconds,
                            extra={"startup_seconds": self.startup_seconds})
        elif kind == "error":
            raise FileProcessError(f"file process {w} failed:\n{message[2]}")
        else:
            return message
        return None

    def _check_alive(self, wait: float = 0.0) -> None:
        """Raises FileProcessError if a worker has ended; waits up to `wait` seconds for one to end."""
        if wait:
            multiprocessing.connection.wait([worker.sentinel for worker in self._workers], wait)
        for w, worker in enumerate(self._workers):
            if not worker.is_alive():
                code = worker.exitcode
                why = (f"killed by signal {-code} (out of memory?)" if code is not None and code < 0 else
                       f"exit code {code}; its error is above. A script that starts file processes must do so "
                       "under `if __name__ == '__main__':` (they import the main module again)")
                raise FileProcessError(f"file process {w} (pid {worker.pid}) ended unexpectedly: {why}")


class _Batcher:
    """The main process's side of one run: hands out files, batches the windows that come back, runs the model."""

    def __init__(self, pool: FileProcesses, enhancer: Enhancer, jobs: Sequence[FileJob], on_failed: Callable,
                 on_done: Callable, on_progress: Callable) -> None:
        self.pool, self.enhancer, self.jobs = pool, enhancer, jobs
        self.on_failed, self.on_done, self.on_progress = on_failed, on_done, on_progress
        self.next_job = 0
        self.reading = [0] * pool.processes  # files handed to each worker and not yet read to their end
        self.unfinished = len(jobs)
        self.pending: collections.deque[list] = collections.deque()  # [worker, file, windows, taken]
        self.pending_windows = 0
        # A streaming model runs each file's frames as they come, with the file's state (`run_stream`).
        self.streaming = hasattr(enhancer, "run_stream")
        g = enhancer.geometry
        if not self.streaming:
            self.batch = np.zeros((enhancer.batch_size, g.window_frames, g.config.num_bins, g.input_channels),
                                  np.float32)

    def run(self) -> None:
        for w in range(self.pool.processes):
            self._hand_out(w)
        while self.unfinished:
            message = self.pool._receive()
            if message is not None:
                self._handle(message)
            while self.pending_windows >= self.enhancer.batch_size:
                self._run_batch()
            if self.unfinished and self.pool._all_waiting():
                if not self.pending_windows:
                    raise RuntimeError("internal error: every file process waits for the model, but no model window "
                                       f"is pending and {self.unfinished} file(s) are not finished")
                self._run_batch()  # every worker waits for these: run them, padded to a whole batch

    def _send(self, w: int, message: tuple) -> None:
        self.pool._send(w, message)

    def _hand_out(self, w: int) -> None:
        while self.reading[w] < FILES_AHEAD and self.next_job < len(self.jobs):
            self._send(w, ("file", self.next_job, self.jobs[self.next_job]))
            self.reading[w] += 1
            self.next_job += 1

    def _handle(self, message: tuple) -> None:
        kind, w = message[0], message[1]
        if kind == "windows":
            _, _, index, windows, read_to_end = message
            if self.streaming:
                if windows is not None:
                    self._send(w, ("predictions", index, self.enhancer.run_stream(index, windows, read_to_end)))
                elif read_to_end:
                    self.enhancer.drop_stream(index)
            elif windows is not None:
                self.pending.append([w, index, windows, 0])
                self.pending_windows += len(windows)
            if read_to_end:
                self.reading[w] -= 1
                self._hand_out(w)
        elif kind == "progress":
            job = self.jobs[message[2]]
            job.seconds = message[4]
            self.on_progress(job, message[3])
        elif kind == "done":
            _, _, index, error, num_samples, sample_rate = message
            job = self.jobs[index]
            job.num_samples, job.sample_rate = num_samples, sample_rate
            self.unfinished -= 1
            self.on_done(job, error)
        elif kind == "failed":
            _, _, index, reason, text, read_to_end = message
            self.unfinished -= 1
            if self.streaming:
                self.enhancer.drop_stream(index)
            self.on_failed(self.jobs[index], reason, text)
            if read_to_end:
                self.reading[w] -= 1
                self._hand_out(w)
        else:
            raise RuntimeError(f"internal error: unknown message {kind!r} from file process {w}")

    def _run_batch(self) -> None:
        """Runs up to a batch of the pending windows (in the order they came), padded to a whole batch."""
        enhancer, batch = self.enhancer, self.batch
        size = batch.shape[0]
        n, segments = 0, []
        while n < size and self.pending:
            entry = self.pending[0]
            w, index, windows, taken = entry
            m = min(size - n, len(windows) - taken)
            batch[n: n + m] = windows[taken: taken + m]
            segments.append((w, index, n, n + m))
            n += m
            entry[3] += m
            if entry[3] == len(windows):
                self.pending.popleft()
        batch[n:] = 0.0
        self.pending_windows -= n
        y = enhancer.predict(batch)
        enhancer.windows_run += n
        for w, index, a, b in segments:
            self._send(w, ("predictions", index, y[a:b]))
