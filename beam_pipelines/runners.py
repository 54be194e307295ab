"""Which Beam runner runs the dataset job and `predict --runner`: local defaults, runner names, the
Dask cluster, and running a pipeline to its end (`run_pipeline`).

The job's graph (`pipeline.build_pipeline`) is the same on every runner; this module only turns the
command line's Beam options into `PipelineOptions` and, for Beam's DaskRunner, provides the cluster:

* no `--runner`: Beam's FnApiRunner, one process per worker (`--workers`);
* `--runner DaskRunner --dask_client_address tcp://HOST:PORT`: an existing dask.distributed cluster;
* `--runner DaskRunner` alone: a `LocalCluster` on 127.0.0.1 with `--workers` worker processes of one
  thread each, started here and closed at the end.

On Dask the job's progress lines (logger `beam_pipelines`) are forwarded from the workers to the
launcher's log, and `--dask_npartitions` defaults to the cluster's thread count: Beam's DaskRunner
otherwise puts every `beam.Create` of fewer than 128 elements into one task, i.e. one worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

from beam_pipelines import interrupts

LOG = logging.getLogger(__name__)

# Beam's runner registry knows no short name for the DaskRunner; the command line accepts one.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_SHORT_NAMES = {"DaskRunner": DASK_RUNNER}
_LOGGER_NAME = "beam_pipelines"  # the job's own progress lines
_CONNECT_SECONDS = 20  # waiting for a scheduler that does not answer (--dask_connection_timeout)


def _option_value(args: Sequence[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in `args` (the last one given), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def _has_option(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def runner_of(beam_args: Sequence[str]) -> str | None:
    """The runner named in `beam_args` (short names expanded), None when none is named."""
    name = _option_value(beam_args, "--runner")
    return _SHORT_NAMES.get(name, name) if name else None


def is_dask(beam_args: Sequence[str]) -> bool:
    return runner_of(beam_args) == DASK_RUNNER


def require_dask() -> None:
    """Raises ImportError, saying what to install, when Beam's DaskRunner cannot be imported."""
    try:
        import dask.distributed  # noqa: F401
        from apache_beam.runners.dask import dask_runner  # noqa: F401
    except ImportError as err:
        raise ImportError(f"--runner DaskRunner needs dask.distributed ({err}): "
                          "pip install 'speech-enhance[dask]'") from err


def default_beam_args(beam_args: Sequence[str], workers: int) -> list[str]:
    """Beam's options for this job: the user's, with short runner names expanded and local defaults.

    Default runner: FnApiRunner, one process per worker (Beam's DirectRunner may try to download the
    Prism runner, which offline machines cannot).
    """
    args: list[str] = []
    skip = False
    for i, arg in enumerate(beam_args):
        if skip:
            skip = False
            continue
        if arg == "--runner" and i + 1 < len(beam_args):
            args.append(f"--runner={_SHORT_NAMES.get(beam_args[i + 1], beam_args[i + 1])}")
            skip = True
        elif arg.startswith("--runner="):
            args.append(f"--runner={_SHORT_NAMES.get(arg[9:], arg[9:])}")
        else:
            args.append(arg)
    if not _has_option(args, "--runner"):
        args.append("--runner=FnApiRunner")
        if workers > 1:
            args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        else:
            args += ["--direct_running_mode=in_memory"]
    if not (_has_option(args, "--save_main_session") or _has_option(args, "--no_save_main_session")):
        # Every DoFn and function of the job lives in the installed package and pickles by reference;
        # the launcher's __main__ (a console script) is not worth shipping to workers.
        args.append("--no_save_main_session")
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        # Worker processes: the job's own progress lines, Beam's warnings and errors.
        args += ["--default_sdk_harness_log_level=WARNING",
                 '--sdk_harness_log_level_overrides={"beam_pipelines": "INFO"}']
    return args


def _progress_level_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class ProgressLogLevel(WorkerPlugin):
        """Lets the job's INFO lines through on a worker (a worker's loggers start at WARNING), so
        that `Client.forward_logging` can bring them to the launcher."""

        def setup(self, worker) -> None:
            self.previous = logging.getLogger(_LOGGER_NAME).level
            logging.getLogger(_LOGGER_NAME).setLevel(logging.INFO)

        def teardown(self, worker) -> None:
            logging.getLogger(_LOGGER_NAME).setLevel(getattr(self, "previous", logging.NOTSET))

    return ProgressLogLevel()


@contextlib.contextmanager
def dask_cluster(beam_args: Sequence[str], workers: int) -> Iterator[list[str]]:
    """For `--runner DaskRunner`: yields `beam_args` completed with the scheduler's address and a
    partition count, with the job's log lines forwarded from the workers while the block runs.

    Connects to `--dask_client_address` (or `--dask_scheduler_file`) when given; otherwise starts a
    LocalCluster (127.0.0.1, `workers` worker processes, one thread each) and closes it when the
    block ends.
    """
    require_dask()
    import dask
    from distributed import Client, LocalCluster

    args = list(beam_args)
    address = _option_value(args, "--dask_client_address")
    scheduler_file = _option_value(args, "--dask_scheduler_file")
    if logging.getLogger("distributed").getEffectiveLevel() < logging.WARNING:
        # The scheduler of a local cluster runs in this process: its INFO lines would drown the job's.
        logging.getLogger("distributed").setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        if address is None and scheduler_file is None:
            # Spawned, never forked: a forked child of a process that has used gcsfs can hang.
            stack.enter_context(dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}))
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None))
            address = cluster.scheduler_address
            args.append(f"--dask_client_address={address}")
            LOG.info("started a local Dask cluster at %s: %d worker processes", address, workers)
        timeout = _option_value(args, "--dask_connection_timeout")
        timeout = int(timeout) if timeout and timeout.isdigit() else _CONNECT_SECONDS
        where = f"--dask_client_address {address}" if address else f"--dask_scheduler_file {scheduler_file}"
        try:
            client = stack.enter_context(Client(address, scheduler_file=None if address else scheduler_file,
                                                set_as_default=False, timeout=timeout))
        except OSError as err:
            raise ValueError(f"{where}: no Dask scheduler answered ({err}). Start one (`dask scheduler`, then "
                             "`dask worker ADDRESS` on each machine), or leave the flag out for a local cluster "
                             "of --workers processes.") from err
        threads = sum(client.nthreads().values())
        LOG.info("Dask scheduler %s: %d workers, %d threads", client.scheduler.address, len(client.nthreads()),
                 threads)
        if not (_has_option(args, "--dask_npartitions") or _has_option(args, "--dask_partition_size")):
            args.append(f"--dask_npartitions={max(1, threads or workers)}")
        client.register_plugin(_progress_level_plugin(), name="speech-enhance-progress-level")
        client.forward_logging(_LOGGER_NAME, level=logging.INFO)
        try:
            yield args
        finally:
            with contextlib.suppress(Exception):  # the cluster may be gone; nothing left to undo then
                client.unforward_logging(_LOGGER_NAME)
                client.unregister_worker_plugin("speech-enhance-progress-level")


class _DropWorkerNotes(logging.Filter):
    """Drops the warning every local Beam worker process logs at start-up about a missing
    semi-persistent directory: it concerns user-registered schema types, which our jobs have none of."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No semi_persistent_directory found" not in record.getMessage()


def quiet_beam_logs() -> None:
    """Beam's own INFO chatter off (a level set on purpose, as `speech-enhance -v` does, is kept), and
    the local workers' start-up note dropped."""
    if logging.getLogger("apache_beam").level == logging.NOTSET:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logger = logging.getLogger("apache_beam.runners.portability.local_job_service")
    if not any(isinstance(f, _DropWorkerNotes) for f in logger.filters):
        logger.addFilter(_DropWorkerNotes())


def no_timed_flushes_on_fnapi() -> None:
    """Turns off the timed flushing of the streams through which Beam's FnApiRunner sends each
    bundle's input to its worker processes, which loses input under load (Beam 2.77).

    The runner's data servicer is built with `worker_handlers.DATA_BUFFER_TIME_LIMIT_MS` (1000), so
    each input stream (`data_plane.TimeBasedBufferingClosableOutputStream`) has a thread that
    flushes it every second: it takes the buffer (`get()`), hands it to the send queue (a protobuf
    copy of up to hundreds of MB, and a wait when 100 MB are queued) and then empties it
    (`_clear()`). The runner thread keeps writing the input's remaining chunks meanwhile (one per
    data message a worker sent, ~10 MB; `write` takes no lock), and a chunk written between the two
    calls is emptied with the buffer: its elements never reach the worker, with no error. Which
    elements go missing depends on timing, hence losses only under load. With 0 the streams are
    size-buffered (`SizeBasedBufferingClosableOutputStream`), which the runner flushes only on
    close, from the writing thread: no thread, no race. The workers' own streams (output to the
    runner) already default to 0. Read when a pipeline starts its gRPC server, so set before
    `Pipeline.run`; it concerns this process (the launcher, where FnApiRunner runs) only.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


def dask_client_name(beam_args: Sequence[str]) -> tuple[list[str], str | None]:
    """For a DaskRunner job: `beam_args` with a `--dask_client_name` unique to this launch (unless one
    is given), and that name, which `launcher_gone` looks for; (`beam_args`, None) for other runners."""
    args = list(beam_args)
    if not is_dask(args):
        return args, None
    name = _option_value(args, "--dask_client_name")
    if not name:
        name = f"speech-enhance-{uuid.uuid4().hex[:12]}"
        args.append(f"--dask_client_name={name}")
    return args, name


_LAUNCHER_CHECK_SECONDS = 1.0  # how long a worker trusts its last answer
_launcher_seen: dict[str, tuple[float, bool]] = {}


def launcher_gone(client_name: str | None) -> bool:
    """On a Dask worker: whether the launcher of the job, whose Dask client is named `client_name`
    (`dask_client_name`), has left the scheduler (stopped, killed, or its machine gone). False
    anywhere else, or for None.

    Why: a job's tasks outlive its launcher on an external cluster. Beam's DaskRunner computes side
    inputs from inside a task through a client of the worker, which keeps the whole graph wanted
    when the launcher's own futures are released or cancelled, and a running task cannot be stopped
    from outside. The tasks that write outputs ask this first and stop instead.
    """
    if not client_name:
        return False
    try:
        from distributed import get_client, get_worker

        get_worker()
    except (ImportError, ValueError):  # not in a Dask worker
        return False
    now = time.monotonic()
    seen = _launcher_seen.get(client_name)
    if seen is not None and now - seen[0] < _LAUNCHER_CHECK_SECONDS:
        return not seen[1]
    prefix = f"Client-{client_name}-"

    def connected(dask_scheduler) -> bool:  # runs on the scheduler, which need not have this package
        return any(str(client).startswith(prefix) for client in dask_scheduler.clients)

    alive = bool(get_client().run_on_scheduler(connected))
    _launcher_seen[client_name] = (now, alive)
    return not alive


class LauncherGoneError(RuntimeError):
    """Raised in a Dask task whose launcher has left: the job stops instead of writing on."""


def stop_if_launcher_gone(launcher: str | None, unwritten: str) -> None:
    """Raises `LauncherGoneError` on a Dask worker whose job's launcher (Dask client `launcher`) has
    left, before the task writes: an external cluster would otherwise write outputs minutes after the
    user stopped the run. `unwritten` says what is then not written, for the worker's log."""
    if launcher_gone(launcher):
        raise LauncherGoneError(f"the launcher of this job (Dask client {launcher}) has stopped: {unwritten}")


def run_pipeline(build: Callable[[Any], Any], beam_args: Sequence[str], workers: int) -> None:
    """Runs to its end the pipeline that `build(p)` adds to a fresh `beam.Pipeline`, on the runner
    `beam_args` names: FnApiRunner defaults for `workers` processes (`default_beam_args`), or, for
    DaskRunner without a cluster address, a LocalCluster started and closed here (`dask_cluster`).
    Beam's logs are quieted first (`quiet_beam_logs`); DaskRunner's own dask.distributed client is
    closed afterwards, whatever happened.

    Ctrl-C (or SIGTERM under `speech-enhance`) raises KeyboardInterrupt here, whatever Beam wrapped
    it in, after the local worker processes have been stopped; on Dask the job's tasks are
    cancelled on the cluster first (`cancel_dask_job`), so that none writes after the launcher has
    gone."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    quiet_beam_logs()
    no_timed_flushes_on_fnapi()
    with interrupts.interruptions_recorded() as interruption:
        try:
            with contextlib.ExitStack() as stack:
                if is_dask(beam_args):
                    beam_args = stack.enter_context(dask_cluster(beam_args, workers))
                options = PipelineOptions(default_beam_args(beam_args, workers))
                p = beam.Pipeline(runner=interrupts.local_runner(options), options=options)
                build(p)
                result = p.run()
                try:
                    result.wait_until_finish()
                except BaseException:
                    cancel_dask_job(result)
                    raise
                finally:
                    client = getattr(result, "client", None)
                    if client is not None:
                        client.close()
        except BaseException as err:
            if interruption.raised is not None and err is not interruption.raised:
                raise interruption.raised from err
            raise


def cancel_dask_job(result: Any) -> None:
    """Cancels the futures of a DaskRunner job (`result`: its `DaskRunnerResult`) on the cluster, so
    that an external cluster does not run the job on after its launcher has stopped. Does nothing
    for another runner's result, or when the cluster cannot be reached."""
    futures, client = getattr(result, "futures", None), getattr(result, "client", None)
    if futures is None or client is None:
        return
    try:
        client.cancel(futures, force=True)
        LOG.info("cancelled the job's tasks on the Dask cluster")
    except Exception as err:  # the cluster may be gone: nothing left to cancel then
        LOG.debug("could not cancel the Dask job: %s", err)
