"""PyTorch datasets over a dataset's shards, through the shard indexes (no TensorFlow).

    from readers.torch_data import RecordDataset, StreamDataset
    loader = DataLoader(RecordDataset("data/demo", "train"), batch_size=32, shuffle=True, num_workers=2)
    loader = DataLoader(StreamDataset("data/demo", "train", batch_size=32, shuffle=True, seed=0),
                        batch_size=None, num_workers=2)

`RecordDataset` is map-style: item i is record i of the split (shard by shard, in record order),
read by offset, so any sampler shuffles exactly (globally) and `DistributedSampler` shares it out.
`StreamDataset` is iterable: it reads runs of consecutive records with one request each, shares
the runs out between DataLoader workers and distributed ranks (every record to exactly one of
them), shuffles runs by (seed, epoch) and records through a buffer, and decodes whole batches.

Both yield what `trainer.input_pipeline.make_dataset` yields for the U-Net family: (x, y) float32
[frames, bins, 1] per example ([B, frames, bins, 1] per batch), or (x, y, weights) with
loss_weighting="magnitude"; with `raw=True`, a dict of every feature (spectrograms in the stored
dtype, metadata as str/int/float) instead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from readers.store import (
    ALL_KEYS,
    IndexedSplit,
    check_positive,
    check_reader_loss,
    decode_batch,
    model_io,
    model_keys,
    stream_positions,
    stream_records,
    stream_runs,
)
from readers.shared_memory import shared_batch
from tfrecord_schema import paths
from tfrecord_schema.dataset import Dataset
from trainer.targets import check_loss_weighting, check_target

logger = logging.getLogger(__name__)


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(value)
    if isinstance(value, np.ndarray):
        return value.tolist()  # strings: a list, as default_collate makes of them
    return value


class _Outputs:
    """What a reader returns from decoded records: model (x, y[, w]) or every raw feature."""

    def __init__(self, config, target: str, loss_weighting: str, raw: bool, loss: str = "huber") -> None:
        self.config, self.target, self.loss_weighting, self.raw = config, check_target(target), \
            check_loss_weighting(loss_weighting), raw
        self.loss = check_reader_loss(loss)
        self.keys = ALL_KEYS if raw else model_keys(self.target, self.loss)

    def batch(self, records: Sequence[bytes]) -> Any:
        decoded = decode_batch(records, self.config, self.keys)
        if self.raw:
            return {k: _to_torch(v) for k, v in decoded.items()}
        arrays = model_io(_float32(decoded), self.config, self.target, self.loss_weighting, self.loss)
        if torch.utils.data.get_worker_info() is not None:
            return shared_batch(arrays)
        return tuple(torch.from_numpy(a) for a in arrays)

    def example(self, records: Sequence[bytes]) -> list[Any]:
        """Per-example outputs of a batch decoded at once."""
        decoded = decode_batch(records, self.config, self.keys)
        if self.raw:
            return [{k: (v[b].item() if v[b].ndim == 0 and v.dtype.kind in "fiu" else
                         str(v[b]) if v.dtype.kind == "U" else torch.from_numpy(v[b]))
                     for k, v in decoded.items()} for b in range(len(records))]
        arrays = model_io(_float32(decoded), self.config, self.target, self.loss_weighting, self.loss)
        return [tuple(torch.from_numpy(a[b]) for a in arrays) for b in range(len(records))]


_GRAIN = 32768  # at::internal::GRAIN_SIZE: smaller copies run inline, not on torch's intra-op threads


def _float32(decoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decoded spectrograms as float32, converted by torch: the same values as numpy's cast (every
    float16 is a float32), about 10x faster; `model_io` then skips its own cast. Converted a few
    examples at a time, below torch's parallel grain, so each call runs on the calling thread
    (the readers convert on several threads at once)."""
    for key, array in decoded.items():
        if array.dtype != np.float16:
            continue
        out = torch.empty(array.shape, dtype=torch.float32)
        source = torch.from_numpy(array)
        step = max(1, _GRAIN // max(1, array[0].size))
        for i in range(0, len(array), step):
            out[i: i + step].copy_(source[i: i + step])
        decoded[key] = out.numpy()
    return decoded


def _check_threads(threads: Any) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads must be a non-negative integer. Received: threads={threads!r}")
    return threads


class _ThreadPool:
    """A thread pool created on first use in each process (DataLoader workers are forked or spawned)
    and left out of pickles."""

    def __init__(self, threads: int) -> None:
        self.threads, self._pid, self._pool = threads, None, None

    def get(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():
            self._pid, self._pool = os.getpid(), concurrent.futures.ThreadPoolExecutor(self.threads, "readers")
        return self._pool

    def __getstate__(self) -> dict[str, Any]:
        return {"threads": self.threads, "_pid": None, "_pool": None}


class RecordDataset(torch.utils.data.Dataset):
    """Map-style dataset: item i is record i of `split`, read by offset through the shard index.

    Args:
        dataset: dataset directory (local or gs://), uncompressed and indexed, or its open `Dataset`.
        split: "train", "valid" or "test".
        target, loss_weighting: as `trainer.input_pipeline.make_dataset` (U-Net family).
        loss: "huber" (default), or "snr" / "si-sdr": y is then the packed noisy and clean spectra
            [frames, bins, 4] the waveform losses score (`trainer.waveform_loss`).
        raw: return a dict of every feature instead of (x, y).
        threads: read and decode each sampled batch (`__getitems__`) on this many threads.

    `__getitems__` decodes a sampler's whole batch at once (DataLoader calls it when present) and
    returns its examples. A list of indices as the item (`DataLoader(ds, sampler=BatchSampler(...),
    batch_size=None)`) returns the batch itself, as `StreamDataset` makes it: no per-example split,
    no collation (in a DataLoader worker, straight into the shared memory it leaves by).
    """

    def __init__(self, dataset: str | os.PathLike | Dataset, split: str = "train", *, target: str = "noise",
                 loss_weighting: str = "none", loss: str = "huber", raw: bool = False, threads: int = 0) -> None:
        self.records = IndexedSplit(dataset, split)
        self.outputs = _Outputs(self.records.config, target, loss_weighting, raw, loss)
        self.threads = _check_threads(threads)
        self._pool = _ThreadPool(max(1, self.threads))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | Sequence[int]) -> Any:
        if isinstance(index, (list, tuple, range, np.ndarray, torch.Tensor)) and np.ndim(index) == 1:
            return self._read_batch([self.records.position(i) for i in index])
        return self.outputs.example([self.records.read(index)])[0]

    def _read_batch(self, indices: Sequence[int]) -> Any:
        if self.threads < 2 or len(indices) < 2 * self.threads:
            return self.outputs.batch([self.records.read(i) for i in indices])
        step = -(-len(indices) // self.threads)
        parts = [indices[i: i + step] for i in range(0, len(indices), step)]
        records = [r for part in self._pool.get().map(self._read, parts) for r in part]
        return self.outputs.batch(records)

    def _read(self, indices: Sequence[int]) -> list[bytes]:
        return [self.records.read(i) for i in indices]

    def _read_decode(self, indices: Sequence[int]) -> list[Any]:
        return self.outputs.example([self.records.read(i) for i in indices])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        if self.threads < 2 or len(indices) < 2 * self.threads:
            return self._read_decode(indices)
        step = -(-len(indices) // self.threads)
        parts = [indices[i: i + step] for i in range(0, len(indices), step)]
        return [example for part in self._pool.get().map(self._read_decode, parts) for example in part]


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size). Received: rank={rank}, world_size={world_size}")
    return rank, world_size


class StreamDataset(torch.utils.data.IterableDataset):
    """Iterable dataset streaming a split: use with `DataLoader(ds, batch_size=None, num_workers=N)`.

    Records are read in runs of `run_length` consecutive records of a shard (one request each). The
    runs are dealt out round robin to the rank's DataLoader workers and to the ranks (rank r, worker
    w of W is consumer r * W + w), so in one pass every record reaches exactly one consumer; the
    batch counts of ranks may then differ by one.

    Args:
        dataset, split, target, loss_weighting, loss, raw: as `RecordDataset`.
        batch_size: examples per yielded batch (decoded at once); None yields single examples.
        shuffle: shuffle the run order by (seed, epoch) and the records through a buffer.
        shuffle_buffer: records held in the shuffle buffer (per consumer); for local shards the
            buffer holds their positions and a record is read as it leaves (the same order).
        seed: with `epoch`, fixes the order: the same seed, epoch, workers and ranks give the
            same examples in the same order.
        epoch: the first epoch's number (see `set_epoch`); a repeated stream counts on.
        repeat: start the next epoch when one ends, forever (training with fixed steps per epoch).
        drop_remainder: drop each consumer's last partial batch.
        rank, world_size: this process's place among distributed ranks (default: from
            torch.distributed when it is initialised, else 0 of 1).
        run_length: records per read request.
        threads: decode batches on this many threads of the iterating process, up to 2 x threads
            batches ahead (0: decode in the iterating thread); with `DataLoader(num_workers=0)`,
            no worker processes at all.

    In DataLoader worker processes, (x, y[, w]) batches are written into shared-memory blocks that
    are reused once the training process has freed every tensor over them (`readers.shared_memory`):
    new shared memory for every batch, as torch would send it, costs about as much as decoding it.
    """

    def __init__(self, dataset: str | os.PathLike | Dataset, split: str = "train", *, batch_size: int | None = None,
                 shuffle: bool = False, shuffle_buffer: int = 2048, seed: int = 0, epoch: int = 0,
                 repeat: bool = False, drop_remainder: bool = False, target: str = "noise",
                 loss_weighting: str = "none", loss: str = "huber", raw: bool = False, rank: int | None = None,
                 world_size: int | None = None, run_length: int = 32, threads: int = 0) -> None:
        super().__init__()
        self.records = IndexedSplit(dataset, split)
        self.outputs = _Outputs(self.records.config, target, loss_weighting, raw, loss)
        self.batch_size = None if batch_size is None else check_positive("batch_size", batch_size)
        self.shuffle_buffer = check_positive("shuffle_buffer", shuffle_buffer)
        self.run_length = check_positive("run_length", run_length)
        self.shuffle, self.seed, self.epoch, self.repeat = shuffle, int(seed), int(epoch), repeat
        self.drop_remainder = drop_remainder
        self.rank, self.world_size = rank, world_size
        self.threads = _check_threads(threads)
        self._pool = _ThreadPool(max(1, self.threads))
        self._local = not paths.is_remote(self.records.dataset_dir)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (as `DistributedSampler.set_epoch`); call it before
        each epoch to reshuffle when the DataLoader's workers are not persistent."""
        self.epoch = int(epoch)

    def _consumer(self) -> tuple[int, int]:
        rank, world_size = _distributed(self.rank, self.world_size)
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return rank * workers + worker_id, world_size * workers

    def __iter__(self) -> Iterator[Any]:
        consumer, consumers = self._consumer()
        epoch = self.epoch
        while True:
            runs = stream_runs(self.records, consumer, consumers, epoch=epoch, seed=self.seed, shuffle=self.shuffle,
                               run_length=self.run_length)
            rng = np.random.default_rng([self.seed, epoch, consumer])
            if self.shuffle and self._local:
                # The buffer holds positions; each record is read as it leaves (same order as records).
                yield from self._decoded(stream_positions(runs, shuffle_buffer=self.shuffle_buffer, rng=rng),
                                         positions=True)
            else:
                read_runs = None
                if self.threads and self.batch_size is not None:  # runs read ahead on the threads too
                    read_runs = _in_order(self._read_run, runs, self._pool.get(), 2 * self.threads)
                records = stream_records(self.records, runs, shuffle=self.shuffle, shuffle_buffer=self.shuffle_buffer,
                                         rng=rng, read_runs=read_runs)
                yield from self._decoded(records, positions=False)
            if not self.repeat:
                return
            epoch += 1

    def _decoded(self, items: Iterator[Any], positions: bool) -> Iterator[Any]:
        """The outputs of `items`, records or (`positions`) the positions of records to read: batches,
        decoded ahead on the threads when there are some, or single examples."""
        decode = self._read_batch if positions else self.outputs.batch
        if self.batch_size is None:
            for item in items:
                yield self.outputs.example([self.records.read(item) if positions else item])[0]
        elif self.threads:
            yield from _in_order(decode, self._batches(items), self._pool.get(), 2 * self.threads)
        else:
            for batch in self._batches(items):
                yield decode(batch)

    def _read_batch(self, positions: Sequence[int]) -> Any:
        return self.outputs.batch([self.records.read(i) for i in positions])

    def _read_run(self, run: tuple[int, int]) -> list[bytes]:
        return self.records.read_run(*run)

    def _batches(self, items: Iterator[Any]) -> Iterator[list[Any]]:
        pending: list[Any] = []
        for item in items:
            pending.append(item)
            if len(pending) == self.batch_size:
                yield pending
                pending = []
        if pending and not self.drop_remainder:
            yield pending


def _in_order(fn, items: Iterator[Any], pool: concurrent.futures.ThreadPoolExecutor, depth: int) -> Iterator[Any]:
    """fn(item) for each item, computed on `pool` up to `depth` ahead (numpy and file reads release
    the GIL), yielded in order: a prefetch that keeps decoding while the caller trains."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
