"""Training batches mixed in worker processes: on-the-fly mixing on every core of the host.

    pool = MixingProcesses(store.directory, "train", mix, augment, config, EpochPlan(steps, 256),
                           keys=("noisy_magnitude", "clean_magnitude"), processes=15)
    for batch in pool.batches(first_step=k, end_step=n): ...   # dicts of [256, frames, bins] arrays, in step order

Mixing is numpy that holds the GIL between its calls, so threads of one process share one core;
worker processes scale with the cores. Each worker opens the store itself (the processes are
spawned, not forked: the parent may run TensorFlow or JAX, which do not survive a fork) and mixes
whole batches; `batches` hands them back in step order whatever order the workers finish in, so
the batches are those of `SourceMixer.spectrograms` for `EpochPlan.batch_indices(step)`, the same
as mixing in the parent would give.
"""

from __future__ import annotations

import collections
import multiprocessing
from typing import Any, Iterator, Sequence

from mixing.on_the_fly import DEFAULT_CACHE_BYTES, EpochPlan, SourceMixer
from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.config import SpectrogramConfig

_worker: dict[str, Any] = {}  # in a worker process: its mixer and what each batch returns


def _start(directory: str, split: str, mix: MixOptions, augment: AugmentOptions | None, config: SpectrogramConfig,
           plan: EpochPlan, keys: tuple[str, ...], metadata: bool, cache_bytes: int) -> None:
    from tfrecord_schema.sources import SourceStore

    store = SourceStore.open(directory)
    _worker.update(mixer=SourceMixer.for_config(store, split, mix, config, augment, cache_bytes=cache_bytes),
                   config=config, plan=plan, keys=keys, metadata=metadata)
    _worker["mixer"].sources  # read the split's segments now, before the first batch is asked for


def _batch(step: int) -> dict[str, Any]:
    drawn = _worker["mixer"].spectrograms(_worker["plan"].batch_indices(step), _worker["config"],
                                          metadata=_worker["metadata"], keys=_worker["keys"])
    return {k: drawn[k] for k in (*_worker["keys"], *(("metadata",) if _worker["metadata"] else ()))}


class MixingProcesses:
    """Mixes the batches of global training steps in `processes` worker processes (see the module
    docstring). `keys`: the spectrograms each batch holds (of `SourceMixer.spectrograms`); with
    `metadata`, also each example's metadata dicts under "metadata"."""

    def __init__(self, directory: str, split: str, mix: MixOptions, augment: AugmentOptions | None,
                 config: SpectrogramConfig, plan: EpochPlan, keys: Sequence[str], processes: int,
                 metadata: bool = False) -> None:
        if not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be a positive integer. Received: processes={processes!r}")
        self.processes = processes
        self._args = (directory, split, mix, augment, config, plan, tuple(keys), metadata,
                      max(64 << 20, DEFAULT_CACHE_BYTES // processes))

    def batches(self, first_step: int, end_step: int) -> Iterator[dict[str, Any]]:
        """The batches of steps first_step .. end_step - 1, in order. The workers start on the first
        batch asked for and stop when the iteration ends or is dropped."""
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(self.processes, initializer=_start, initargs=self._args)
        ahead = 2 * self.processes  # batches asked for and not yet taken: bounds the memory they hold
        pending: collections.deque = collections.deque()
        try:
            step = first_step
            while step < end_step or pending:
                while step < end_step and len(pending) < ahead:
                    pending.append(pool.apply_async(_batch, (step,)))
                    step += 1
                yield pending.popleft().get()
        finally:
            pool.terminate()
            pool.join()
