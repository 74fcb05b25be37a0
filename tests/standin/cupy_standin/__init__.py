"""A strict CuPy stand-in that runs on the CPU, for testing GPU mode without a GPU.

Put ``tests/standin`` first on ``sys.path``/``PYTHONPATH`` and ``import cupy`` finds the stand-in
(``tests/conftest.py`` does that when ``FC_CAFFE_TEST_MODE=gpu``). Its rules, those of CuPy 14:

- ``cupy.ndarray`` wraps a private numpy array and is *not* a numpy subclass; numpy functions given
  one raise ``TypeError`` (CuPy's "Implicit conversion to a NumPy array is not allowed");
- host numpy arrays (other than 0-d) given to its functions or operators raise ``TypeError``;
  assigned into its arrays, ``ValueError`` ("non-scalar numpy.ndarray cannot be used for fill");
  ``cupy.asarray``/``cupy.array``/``ndarray.set`` accept them, and count a transfer;
- only the names and keyword arguments that CuPy 14 has exist (``facts.json``, extracted from
  the cupy-cuda12x 14.2.0 wheel by ``tests/standin/extract_facts.py``);
- ``ElementwiseKernel``/``ReductionKernel``/``RawKernel``/``RawModule`` raise when called.

It counts, by call site (the first frame outside the stand-in, ``"path:line"``):
kernel launches (each array-producing or in-place operation one, a reduction one, a ``cupy.fuse``d
call one; views and ``empty`` none), host<->device transfers (``asarray``/``array`` of host data,
``asnumpy``, ``get``, ``set``, host index arrays) and host synchronisations (``float``/``int``/
``bool``/``item``/``tolist``, ``get``, ``asnumpy``, stream/device/event ``synchronize``, and the
operations whose result size depends on the data: ``nonzero``, boolean masks, ``unique``...).

The counter API (this module; it is not part of the ``cupy`` namespace)::

    import cupy_standin
    cupy_standin.reset()
    ... run something ...
    c = cupy_standin.counts()          # Counts(launches=..., transfers=..., syncs=...)
    cupy_standin.sites("transfers")    # collections.Counter {"path:line": n}
    with cupy_standin.counting() as c: # c filled in on exit with the counts inside the block
        ...
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from typing import NamedTuple

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/standin
_KINDS = ("launches", "transfers", "syncs")
_lock = threading.Lock()
_sites: dict[str, collections.Counter] = {k: collections.Counter() for k in _KINDS}
_fusing = threading.local()


class Counts(NamedTuple):
    launches: int
    transfers: int
    syncs: int

    def __sub__(self, other):  # type: ignore[override]
        return Counts(*(a - b for a, b in zip(self, other)))


def _site() -> str:
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_ROOT):
        f = f.f_back
    if f is None:
        return "?"
    return f"{f.f_code.co_filename}:{f.f_lineno}"


def record(kind: str, n: int = 1) -> None:
    """Count ``n`` events of ``kind`` at the caller's call site (used by the stand-in itself)."""
    if kind == "launches" and getattr(_fusing, "depth", 0):
        return  # inside a cupy.fuse'd call: the call counts once
    site = _site()
    with _lock:
        _sites[kind][site] += n


def reset() -> None:
    """Zero every counter."""
    with _lock:
        for c in _sites.values():
            c.clear()


def counts() -> Counts:
    """The totals since the last reset."""
    with _lock:
        return Counts(*(sum(_sites[k].values()) for k in _KINDS))


def sites(kind: str) -> collections.Counter:
    """A copy of the per-call-site counter of ``kind`` ("launches", "transfers" or "syncs")."""
    if kind not in _sites:
        raise ValueError(f"unknown counter {kind!r}; one of {_KINDS}")
    with _lock:
        return collections.Counter(_sites[kind])


class _Delta:
    launches = transfers = syncs = 0
    sites: dict


@contextlib.contextmanager
def counting():
    """Count what the block does: yields an object whose launches/transfers/syncs (and ``sites``,
    kind -> Counter) are set when the block exits."""
    before = {k: sites(k) for k in _KINDS}
    d = _Delta()
    try:
        yield d
    finally:
        d.sites = {}
        for k in _KINDS:
            diff = sites(k)
            diff.subtract(before[k])
            diff = collections.Counter({s: n for s, n in diff.items() if n})
            d.sites[k] = diff
            setattr(d, k, sum(diff.values()))


def report(top: int = 10) -> str:
    """A printable summary: totals and the busiest call sites of each kind."""
    lines = []
    for k in _KINDS:
        c = sites(k)
        lines.append(f"{k}: {sum(c.values())}")
        for s, n in c.most_common(top):
            lines.append(f"    {n:6d}  {s}")
    return "\n".join(lines)


def device_count() -> int:
    """How many devices the stand-in pretends to have: FC_CUPY_STANDIN_DEVICES (default 1); 0
    makes ``cupy.cuda.runtime.getDeviceCount()`` raise as CuPy does on a machine without a GPU."""
    try:
        return int(os.environ.get("FC_CUPY_STANDIN_DEVICES", "1"))
    except ValueError:
        return 1
