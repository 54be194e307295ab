"""How a DataLoader worker process hands its batches to the training process: written into blocks
of shared memory that return to the worker once the training process has freed every tensor over
them (`readers.torch_data`'s datasets send their (x, y[, w]) batches this way; `_SlotPool` says why).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Sequence

import numpy as np
import torch

_POOL_BLOCKS = 8  # shared-memory blocks per worker: more than the batches a DataLoader keeps in flight


class _SlotPool:
    """Shared-memory blocks a DataLoader worker process writes its batches into, reused once the
    training process has let go of them.

    New shared memory costs a page fault per 4 KB on first touch, which is about as costly as
    decoding the batch (benchmarks/readers.py): torch hands every batch over in a new block. Here a
    block returns to its worker when every tensor over it has been freed in the training process
    (which then writes the block's number into a pipe the worker reads), so the pages are touched
    once per worker. When no block is free (the consumer keeps batches), a batch goes out in new
    shared memory as torch would send it; a batch of another size likewise."""

    def __init__(self, blocks: int) -> None:
        self.blocks, self.token = blocks, f"{os.getpid()}-{id(self)}-{time.monotonic_ns()}"
        self.storages: list[torch.UntypedStorage] = []
        self.free: list[int] = []
        self.seen: set[int] = set()  # blocks the training process has mapped (it acknowledged them)
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.lock = threading.Lock()  # StreamDataset(threads=N) in a worker writes batches on N threads

    def take(self, nbytes: int) -> int | None:
        """A free block of `nbytes` (a new one while fewer than `blocks` exist), or None."""
        with self.lock:
            try:
                for block in os.read(self.read_fd, 4096):
                    self.free.append(block)
                    self.seen.add(block)
            except BlockingIOError:
                pass
            for i, block in enumerate(self.free):
                if self.storages[block].nbytes() == nbytes:
                    return self.free.pop(i)
            if len(self.storages) < self.blocks:
                self.storages.append(torch.UntypedStorage._new_shared(nbytes))  # as default_collate does in workers
                return len(self.storages) - 1
            return None

    def message(self, block: int) -> tuple[torch.UntypedStorage | None, Any]:
        """What a batch in `block` carries besides its number: the block's shared memory and the
        pipe's end, each until the training process has shown (by acknowledging) that it has them."""
        import multiprocessing.reduction

        with self.lock:
            storage = None if block in self.seen else self.storages[block]
            ack = None if self.seen else multiprocessing.reduction.DupFd(self.write_fd)
        return storage, ack


_POOL: dict[int, _SlotPool] = {}  # per worker process, by pid
_POOL_LOCK = threading.Lock()


def shared_batch(arrays: Sequence[np.ndarray]) -> Any:
    """A DataLoader worker's batch, written into a block of its `_SlotPool` (float32 arrays), or as
    tensors for torch to share."""
    if any(a.dtype != np.float32 for a in arrays):
        return tuple(torch.from_numpy(a) for a in arrays)
    with _POOL_LOCK:
        pool = _POOL.get(os.getpid())
        if pool is None:
            pool = _POOL[os.getpid()] = _SlotPool(_POOL_BLOCKS)
    nbytes = 4 * sum(a.size for a in arrays)
    block = pool.take(nbytes)
    if block is None:
        return tuple(torch.from_numpy(a) for a in arrays)
    flat = torch.empty(0, dtype=torch.float32).set_(pool.storages[block])
    tensors, at = [], 0
    for a in arrays:
        view = flat[at: at + a.size]
        view.copy_(torch.from_numpy(a).reshape(-1))
        tensors.append(view.view(a.shape))
        at += a.size
    return _PooledBatch(pool, block, tensors)


class _PooledBatch:
    """A batch in a pool block, on its way out of a worker: unpickled in the training process as a
    tuple of tensors over the block (`_receive`). A collate_fn in the worker can unpack and index it
    as that tuple; it is no tuple itself, which the DataLoader's `default_convert` would rebuild as
    a list (and the block would not come back: after `_POOL_BLOCKS` such batches, torch's own
    hand-over takes over)."""

    def __init__(self, pool: _SlotPool, block: int, tensors: list[torch.Tensor]) -> None:
        self.pool, self.block, self.tensors = pool, block, tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index):
        return self.tensors[index]

    def __iter__(self):
        return iter(self.tensors)

    def __reduce__(self):
        storage, ack = self.pool.message(self.block)
        return _receive, (self.pool.token, self.block, storage, ack, [tuple(t.shape) for t in self.tensors])


class _Acknowledge:
    """The training process's end of a pool's pipe; closed when no batch of the pool is left."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    def __call__(self, block: int) -> None:
        try:
            os.write(self.fd, bytes([block]))
        except OSError:  # the worker has ended
            pass


# In the training process: {pool token: (pid, _Acknowledge, {block: numpy view of its shared memory})}.
_RECEIVED: dict[str, tuple[int, _Acknowledge | None, dict[int, np.ndarray]]] = {}
_RECEIVED_LOCK = threading.Lock()


def _receive(token: str, block: int, storage: torch.UntypedStorage | None, ack: Any,
             shapes: list[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    with _RECEIVED_LOCK:
        entry = _RECEIVED.get(token)
        if entry is None:
            for other, (pid, _, _) in list(_RECEIVED.items()):  # forget pools of ended workers
                if not _alive(pid):
                    del _RECEIVED[other]
            entry = _RECEIVED[token] = (int(token.split("-")[0]), None, {})
        if ack is not None:
            fd = ack.detach()
            if entry[1] is None:
                entry = _RECEIVED[token] = (entry[0], _Acknowledge(fd), entry[2])
            else:
                os.close(fd)
        pid, acknowledge, blocks = entry
        if storage is not None and block not in blocks:
            blocks[block] = torch.empty(0, dtype=torch.float32).set_(storage).numpy()
    if acknowledge is None or block not in blocks:
        raise RuntimeError(f"readers.torch_data: a batch of DataLoader worker {pid} arrived before its shared "
                           "memory did; report this as a bug")
    # A view of the block that lives exactly as long as some tensor over it: when it is freed, the block
    # goes back to the worker.
    view = blocks[block][:]
    weakref.finalize(view, acknowledge, block)
    flat = torch.frombuffer(view, dtype=torch.float32)
    out, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[at: at + n].view(shape))
        at += n
    return tuple(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
