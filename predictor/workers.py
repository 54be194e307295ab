"""Threads around the model: a pool with in-order prefetching, and read-ahead of several iterators.

numpy, scipy.fft, soxr and libsndfile release the GIL, so reading, resampling, the STFT and
writing overlap the model's work when run here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from typing import Any, Callable, Iterable, Iterator


class Workers:
    """A thread pool with in-order prefetching; with 0 threads every task runs at once, inline."""

    def __init__(self, threads: int) -> None:
        self._executor = (concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="predictor")
                          if threads else None)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # handed to whoever asks for the result, as the executor would
            future.set_exception(err)
        return future

    def prefetch(self, fn: Callable, items: Iterable, depth: int) -> Iterator:
        """fn(item) for each item, in order, computed up to `depth` items ahead of the consumer."""
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        for item in items:
            pending.append(self.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Readahead:
    """Runs iterators in background threads and yields their items in order, one iterator after another.

    Up to `threads` iterators run at once, each at most `depth` items ahead of the consumer: the
    files of a folder are decoded and resampled this way, several at a time and each in order,
    while the model runs. The threads are its own, so they never wait on a task queued behind
    them. With 0 threads the iterators run inline, in the consumer's thread.

    A consumer that stops early must close the generator `chain` returns (`close()`), which stops
    the threads: an exception that passes through the consumer keeps the generator alive in its
    traceback, and the interpreter would wait for the threads at exit.
    """

    _END = object()

    def __init__(self, threads: int, depth: int) -> None:
        self.threads, self.depth = threads, depth

    def chain(self, iterators: Iterable[Iterator]) -> Iterator:
        if not self.threads:
            for iterator in iterators:
                yield from iterator
            return
        stop = threading.Event()
        executor = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="predictor-read")
        running: collections.deque[tuple[queue.Queue, concurrent.futures.Future]] = collections.deque()
        source = iter(iterators)

        def start_next() -> None:
            iterator = next(source, None)
            if iterator is not None:
                items: queue.Queue = queue.Queue(self.depth)
                running.append((items, executor.submit(self._produce, iterator, items, stop)))

        try:
            for _ in range(self.threads):
                start_next()
            while running:
                items, future = running[0]
                while (item := items.get()) is not self._END:
                    yield item
                running.popleft()
                future.result()  # raises what went wrong in the iterator
                start_next()
        finally:
            stop.set()  # a consumer that stops early releases the threads waiting to hand on items
            executor.shutdown(wait=True, cancel_futures=True)

    @classmethod
    def _produce(cls, iterator: Iterator, items: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in iterator:
                if not put(item):
                    return
        finally:
            if stop.is_set() and hasattr(iterator, "close"):
                iterator.close()  # stopped early: its `finally` closes what it holds open (an input file)
            put(cls._END)


def done_in_order(pending: collections.deque, keep: int) -> Iterator[tuple[Any, Any]]:
    """Pops (key, future) pairs from the left while done, or while more than `keep` are waiting."""
    while pending and (pending[0][1].done() or len(pending) > keep):
        key, future = pending.popleft()
        yield key, future.result()


def run_after(previous: concurrent.futures.Future | None, fn: Callable, *args: Any) -> Any:
    """fn(*args) once `previous` is done: a file's writes, submitted in order, run in order.

    A pool takes tasks first in, first out, so `previous` has started before this one: waiting on it
    cannot deadlock.
    """
    if previous is not None:
        previous.result()
    return fn(*args)
