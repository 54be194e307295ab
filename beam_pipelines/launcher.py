"""The launcher of the dataset job (`run_dataset`): it checks the output and its free space, holds
the build lock, plans (`planning.make_plan`), runs the pipeline (`pipeline.build_pipeline`, on the
runner that `runners.run_pipeline` sets up) in the build folder, and moves the finished build into
place (`output_layout`). An interrupted build keeps its folder, which the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Sequence

from beam_pipelines import output_layout as layout
from beam_pipelines import interrupts, runners
from beam_pipelines.pipeline import PROBLEMS_FILE, build_pipeline
from beam_pipelines.options import SOURCES, DatasetOptions
from beam_pipelines.planning import estimate_bytes, make_plan
from beam_pipelines.source_job import build_source_pipeline
from tfrecord_schema import locks, paths
from tfrecord_schema.dataset import Dataset, ShardedStore
from tfrecord_schema.sources import SourceStore

LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def _beam_errors_unlogged():
    """Beam logs a failing bundle's traceback as an error and then raises it: the error that ends
    the job is reported once, by the caller (one line for a full disk or Ctrl-C, the traceback for a
    bug). With --verbose (apache_beam at DEBUG) everything is logged."""
    logger = logging.getLogger("apache_beam")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _interrupted(err: BaseException) -> bool:
    """True for Ctrl-C: a KeyboardInterrupt here, or one in a Beam worker (re-raised in the launcher as
    a RuntimeError naming it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, KeyboardInterrupt) or (isinstance(err, RuntimeError) and
                                                  str(err).startswith("KeyboardInterrupt")):
            return True
        err = err.__cause__ or err.__context__
    return False


def run_dataset(opts: DatasetOptions, beam_args: Sequence[str] = (), workers: int | None = None,
                arguments: dict | None = None, assume_yes: bool = False, break_lock: bool = False) -> ShardedStore:
    """Builds the dataset described by `opts`; returns it opened (its dataset_info.json written beside the
    shards): a `Dataset`, or with `opts.kind` "sources" a `tfrecord_schema.sources.SourceStore`.

    The job writes into a sibling build folder (`OUTPUT.incomplete`); only a finished dataset replaces
    what `opts.output` held, so a failed or killed build leaves an existing dataset as it was.
    `assume_yes` accepts an estimated size larger than the free space of a local output.

    One build of an output runs at a time: it holds `OUTPUT.incomplete.lock` (pid, host, start time,
    command) from before the output is checked until it ends, however it ends. A second build of the
    same output is refused with the first one named; a lock left by a process of this host that no
    longer runs is taken over, and `break_lock` takes over any lock (a holder on a crashed machine).
    """
    started = time.time()
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be a positive number of local processes (None: one per core). "
                         f"Received: workers={workers!r}")
    inputs = {"voice_dir": opts.voice_dirs, "noise_dir": opts.noise_dirs, "rir_dir": opts.rir_dirs}
    layout.check_output(opts.output, opts.overwrite, inputs=inputs)
    # A source store's size is known once its inputs are decoded: it is not estimated.
    estimate = 0 if opts.kind == SOURCES else estimate_bytes(opts.num_examples, opts.config, opts.split_fractions,
                                                              opts.write_audio, opts.compression)
    layout.check_space(opts.output, estimate, assume_yes)
    if runners.is_dask(beam_args):
        runners.require_dask()
    lock = layout.build_lock(opts.output)
    try:
        lock.acquire(break_lock=break_lock)
    except locks.LockHeld:
        raise
    except OSError as err:
        if paths.is_no_space(err):
            raise layout.no_space(opts.output, lock.path, resumes=False) from err
        raise PermissionError(f"output={opts.output!r}: cannot create the build lock {lock.path} ({err}).") from err
    try:
        # Again, now that no other build of this output can start or finish meanwhile.
        layout.check_output(opts.output, opts.overwrite, inputs=inputs)
        return _build(opts, beam_args, workers or os.cpu_count() or 1, arguments or {}, estimate, started)
    finally:
        lock.release()


def _build(opts: DatasetOptions, beam_args: Sequence[str], workers: int, arguments: dict, estimate: int,
           started: float) -> ShardedStore:
    plan = make_plan(opts)
    if opts.kind == SOURCES:
        LOG.info("%d voice files, %d noise files, %d room impulse responses; a source store at %d Hz",
                 len(plan.voices), len(plan.noises), len(plan.rirs), opts.sample_rate)
    else:
        LOG.info("%d voice files, %d noise files; %s examples in %d chunks, about %s", len(plan.voices),
                 len(plan.noises), plan.counts, plan.num_chunks, paths.format_bytes(estimate))
    graph = build_source_pipeline if opts.kind == SOURCES else build_pipeline
    build_dir = layout.start_build(opts.output, plan.fingerprint(opts), inputs=plan.identities)
    try:
        # On an external Dask cluster the job's tasks outlive a killed launcher: they ask for it by
        # its client name before writing, so a killed build does not go on writing into a folder
        # that the next run (which takes over the dead launcher's lock) resumes.
        beam_args, launcher = runners.dask_client_name(beam_args)
        with _beam_errors_unlogged():
            runners.run_pipeline(lambda p: graph(p, opts, plan, arguments, started, build_dir, launcher),
                                 beam_args, workers)
        problems_path = paths.join(build_dir, PROBLEMS_FILE)
        if paths.isfile(problems_path):
            raise ValueError("\n".join(json.loads(paths.read_bytes(problems_path))))
    except BaseException as err:
        if _interrupted(err):
            # Ctrl-C reaches the workers too (a terminal signals the whole process group): the
            # launcher may see their KeyboardInterrupt as a RuntimeError before its own.
            # `speech-enhance` says so in its one line; no other line while the command stops.
            LOG.debug("interrupted: the same command resumes the build, reusing what %s holds", build_dir)
            # A worker stopped in the middle of a file leaves its temporary: removed once it has ended.
            interrupts.wait_for_local_workers(interrupts.WORKER_GRACE_SECONDS + 1.0)
            paths.remove_stale_temporaries(build_dir, log=False)
            if isinstance(err, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt() from err
        if paths.is_no_space(err):
            # The finished chunks stay valid: keep them for the rerun once space is freed.
            raise layout.no_space(opts.output, build_dir) from None
        # Nothing of a failed build is worth keeping, and the old dataset (if any) was not touched.
        paths.delete_tree(build_dir)
        raise
    try:
        layout.replace_with_build(build_dir, opts.output)
    except OSError as err:
        if paths.is_no_space(err):
            raise layout.no_space(opts.output, build_dir) from None
        raise
    if opts.kind == SOURCES:
        store = SourceStore.open(opts.output)
        LOG.info("source store written to %s in %.1f s: %s segments; %d inputs rejected%s", opts.output,
                 time.time() - started, {name: store.num_examples(name) for name in store.splits},
                 store.info.rejects["count"], f" {store.info.rejects['by_reason']}" if store.info.rejects["count"] else "")
        return store
    dataset = Dataset.open(opts.output)
    rejects, reused = dataset.info.rejects, dataset.info.chunks_reused
    # Counts from dataset_info.json, not from Beam metrics (which not every runner reports).
    LOG.info("dataset written to %s in %.1f s: %s; %d inputs rejected%s%s", opts.output, time.time() - started,
             {name: dataset.num_examples(name) for name in dataset.splits}, rejects["count"],
             f" {rejects['by_reason']}" if rejects["count"] else "",
             f"; {reused} of {plan.num_chunks} chunks reused from an interrupted run" if reused else "")
    return dataset
