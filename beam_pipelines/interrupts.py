"""Ctrl-C during a local Beam job: local worker processes that ignore SIGINT, and a launcher that
notes the interruption, gives the workers a moment to finish their bundles, then stops them.

A terminal sends Ctrl-C to the whole process group. Left alone, every FnApiRunner worker would die
of it with its own traceback while the launcher is still stopping; `runners.run_pipeline` runs the
workers through `local_runner` and the job inside `interruptions_recorded` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

from tfrecord_schema import paths


class _DropWorkerModeNote(logging.Filter):
    """Drops FnApiRunner's warning that worker processes want `multi_processing` mode: the runner of
    `local_runner` runs them through its own environment (the same processes) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_running_mode should be" not in record.getMessage()


def local_runner(options: Any) -> Any:
    """For FnApiRunner in `multi_processing` mode: the same runner, but with worker processes that
    ignore SIGINT. Ctrl-C in a terminal goes to the whole process group; the workers would die of it
    each with its own traceback, racing the launcher's orderly stop. The launcher stops them instead
    (`interruptions_recorded`: 2 s to finish their bundles, then SIGTERM), and they end with it if it
    dies. None for any other runner (Beam picks it by name), and off POSIX (the command is a POSIX
    shell's)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    direct = options.view_as(DirectOptions)
    if (os.name != "posix" or options.view_as(StandardOptions).runner != "FnApiRunner"
            or direct.direct_running_mode != "multi_processing"):
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import environments

    # What FnApiRunner runs for multi_processing, behind `trap '' INT` (an ignored signal stays
    # ignored across exec, and Python leaves it so). Beam starts it with a shell.
    command = f"trap '' INT; exec {shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main"
    direct.direct_running_mode = "in_memory"  # keeps the environment given here; workers stay `direct_num_workers`
    logger = logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner")
    if not any(isinstance(f, _DropWorkerModeNote) for f in logger.filters):
        logger.addFilter(_DropWorkerModeNote())
    return FnApiRunner(default_environment=environments.SubprocessSDKEnvironment.from_command_string(command))


class Interruption:
    """What `interruptions_recorded` saw: the exception its signal handler raised, if any."""

    raised: BaseException | None = None


@contextlib.contextmanager
def interruptions_recorded() -> Iterator[Interruption]:
    """Notes the KeyboardInterrupt that SIGINT (or a Python-level SIGTERM handler) raises while the
    block runs, and silences Beam's logging from then on.

    Beam wraps an exception raised inside a DoFn (a KeyboardInterrupt where the in-process
    FnApiRunner runs a bundle) in a RuntimeError, and its threads log the broken connections of
    stopping workers as errors with tracebacks; `runners.run_pipeline` raises the interruption itself
    again, so that the caller keeps what resuming needs instead of treating it as a failed job.
    """
    seen = Interruption()
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield seen
        return
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    installed = {}

    def wrap(previous: Callable) -> Callable:
        def handler(signum, frame) -> None:
            beam_logger.setLevel(logging.CRITICAL + 1)  # the stopping workers' connection errors
            # Beam's threads that watched the workers end with errors of their own: not worth a traceback.
            threading.excepthook = lambda args: None
            # Beam waits for each worker to finish its bundle before it lets the KeyboardInterrupt
            # through. Most bundles end within a moment, their files complete; one that would not
            # (a model over a long file: minutes) is ended, since the workers ignore SIGINT.
            stopper = threading.Timer(WORKER_GRACE_SECONDS, stop_local_workers)
            stopper.daemon = True
            stopper.start()
            try:
                previous(signum, frame)
            except BaseException as err:
                seen.raised = err
                raise

        return handler

    excepthook = threading.excepthook
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if callable(previous):  # the default KeyboardInterrupt, or speech-enhance's SIGTERM handler
            installed[signum] = previous
            signal.signal(signum, wrap(previous))
    try:
        yield seen
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)
        if seen.raised is None:
            beam_logger.setLevel(level)
            threading.excepthook = excepthook


WORKER_GRACE_SECONDS = 2.0  # what an interrupted run's local workers get to finish their bundles


def _local_workers() -> list[int]:
    """This process's local Beam SDK worker processes (`local_runner`'s) that have not ended, found
    through /proc (Linux; elsewhere none are found)."""
    me, workers = os.getpid(), []
    try:
        threads = os.listdir(f"/proc/{me}/task")
    except OSError:
        return []
    for tid in threads:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"sdk_worker_main" in f.read() and paths.process_running(child):
                        workers.append(child)
            except OSError:  # ended meanwhile
                continue
    return workers


def stop_local_workers() -> None:
    """Sends SIGTERM to this process's local Beam SDK worker processes (elsewhere than Linux, Beam
    stops them when their bundles end)."""
    for pid in _local_workers():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:  # ended meanwhile
            continue


def wait_for_local_workers(timeout: float) -> bool:
    """Waits up to `timeout` seconds for this process's local Beam workers to end; whether they did."""
    deadline = time.monotonic() + timeout
    while _local_workers():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
