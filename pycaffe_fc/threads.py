"""Worker threads for the memory-bound array loops of the CPU path.

Caffe's CPU path is multi-threaded only inside its BLAS; its im2col, col2im and pooling loops run
on one core, and so would numpy's. Here those loops are cut into independent ranges (disjoint
images, channels or output positions, so no two threads write the same element) and run on a
small thread pool: numpy releases the GIL inside its copies and ufuncs, so the ranges really run
side by side.

The thread count follows ``FC_CAFFE_NUM_THREADS``, else ``OMP_NUM_THREADS`` (which the MPI
launcher sets to cores/ranks, as for the BLAS), else the cores this process may run on; it is 1
when numpy was imported before pycaffe_fc with OpenBLAS's default idle spin (see ``_blas``). On CuPy
the work is one range: the GPU parallelises each call itself.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads: int | None = None
_local = threading.local()


def _default_threads() -> int:
    from . import _blas
    explicit = os.environ.get("FC_CAFFE_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    if not _blas.short_spin:
        # the BLAS's threads keep spinning after each GEMM and would take the cores the loops
        # need (numpy was loaded before pycaffe_fc could shorten the spin): one thread is faster
        return 1
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """How many threads the CPU loops use."""
    global _threads
    if _threads is None:
        _threads = _default_threads()
    return _threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the CPU loops from now on (1: everything on the calling thread)."""
    global _threads, _pool
    with _lock:
        _threads = max(1, int(n))
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            # the calling thread is a worker too
            _pool = ThreadPoolExecutor(max_workers=max(1, num_threads() - 1), thread_name_prefix="fc-caffe-cpu")
        return _pool


def _forget_pool_in_child() -> None:
    # a forked child has none of the parent's threads: it starts a pool of its own when needed
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) as at most ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def run_ranges(fn: Callable[[int, int], None], n: int, xp=np, *, min_size: int = 1) -> None:
    """Call ``fn(lo, hi)`` on ranges covering [0, n) exactly once each.

    On numpy the ranges (one per thread) run on the worker threads. ``min_size`` is the least
    work worth a thread; below it, or with one thread, or on CuPy, or when already inside a
    worker, it is one call. ``fn`` must write only what its own range owns.
    """
    threads = num_threads() if xp is np else 1
    if threads <= 1 or n < 2 * max(min_size, 1) or getattr(_local, "inside", False):
        fn(0, n)
        return
    ranges = split(n, min(threads, n // max(min_size, 1)))
    pending = iter(ranges)
    take = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        # every participant pulls ranges until none is left; the calling thread is one of them
        # (one hand-off fewer)
        _local.inside = True
        try:
            while not errors:
                with take:
                    r = next(pending, None)
                if r is None:
                    return
                fn(*r)
        except BaseException as exc:
            errors.append(exc)
        finally:
            _local.inside = False

    helpers = [_executor().submit(work) for _ in range(min(threads, len(ranges)) - 1)]
    work()
    for f in helpers:  # wait for all: they write into arrays the caller owns
        f.result()
    if errors:
        raise errors[0]
