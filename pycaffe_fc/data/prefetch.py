"""Background prefetching of batches, as Caffe's BasePrefetchingDataLayer.

A thread keeps up to ``count`` (data_param.prefetch, 4 by default) loaded batches in a queue, so
the net only waits on decoding when the loader cannot keep up. The time the consumer spends
blocked is recorded: ``wait_s`` over ``batches`` is the data wait per iteration.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from ..errors import CaffeError


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _run(load: Callable[[], Any], q: "queue.Queue", stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            item = load()
        except BaseException as e:  # handed to the consumer, which raises it
            item = _Failure(e)
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        if isinstance(item, _Failure):
            return


class Prefetcher:
    """Runs ``load()`` on a background thread ahead of the consumer (InternalThread + queues)."""

    def __init__(self, load: Callable[[], Any], count: int = 4, name: str = "prefetch") -> None:
        self.name = name
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, int(count)))
        self._stop = threading.Event()
        # the thread holds only the loader, never the layer, so a dropped net is collected
        self._thread = threading.Thread(target=_run, args=(load, self._queue, self._stop),
                                        name=f"fc-caffe {name}", daemon=True)
        self._thread.start()
        self.wait_s = 0.0
        self.batches = 0

    def next(self) -> Any:
        """The next batch, blocking until the loader has it; a loader error is re-raised here."""
        t0 = time.perf_counter()
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise CaffeError(f"{self.name}: the prefetch thread has stopped") from None
        self.wait_s += time.perf_counter() - t0
        self.batches += 1
        if isinstance(item, _Failure):
            if isinstance(item.exc, CaffeError):
                raise CaffeError(str(item.exc)) from item.exc
            raise CaffeError(f"{self.name}: loading a batch failed: {item.exc!r}") from item.exc
        return item

    def reset_stats(self) -> None:
        self.wait_s = 0.0
        self.batches = 0

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is loading)."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)


_pool = None
_pool_lock = threading.Lock()


def decode_pool():
    """A shared thread pool for image decoding: OpenCV releases the GIL while it decodes and
    resizes, so a batch's images decode on every core while the net computes."""
    global _pool
    with _pool_lock:
        if _pool is None:
            import os
            from concurrent.futures import ThreadPoolExecutor
            _pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                       thread_name_prefix="fc-caffe decode")
        return _pool


def map_decode(fn: Callable[[Any], Any], items: list) -> list:
    """``[fn(x) for x in items]``, on the decode pool when there is more than one item."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    return list(decode_pool().map(fn, items))
