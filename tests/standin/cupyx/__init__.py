"""cupyx stand-in: scatter_add/max/min and pinned host arrays."""
import numpy as _numpy

from cupy_standin.core import _launch, _u, _u_index, _unsupported, ndarray as _ndarray


def scatter_add(a, slices, value):
    """a[slices] += value with repeated indices summed (one launch)."""
    if type(a) is not _ndarray:
        raise _unsupported(a)
    _launch()
    _numpy.add.at(a._a, _u_index(slices), _u(value))


def scatter_max(a, slices, value):
    if type(a) is not _ndarray:
        raise _unsupported(a)
    _launch()
    _numpy.maximum.at(a._a, _u_index(slices), _u(value))


def scatter_min(a, slices, value):
    if type(a) is not _ndarray:
        raise _unsupported(a)
    _launch()
    _numpy.minimum.at(a._a, _u_index(slices), _u(value))


def empty_pinned(shape, dtype=float, order="C"):
    """A numpy array in page-locked host memory (here: ordinary host memory)."""
    from cupy.cuda import alloc_pinned_memory
    count = int(_numpy.prod(shape, dtype=_numpy.int64)) if shape != () else 1
    dt = _numpy.dtype(dtype)
    mem = alloc_pinned_memory(count * dt.itemsize)
    return _numpy.frombuffer(mem, dt, count).reshape(shape, order=order)


def zeros_pinned(shape, dtype=float, order="C"):
    a = empty_pinned(shape, dtype, order)
    a[...] = 0
    return a


def empty_like_pinned(a, dtype=None, order="K", subok=None, shape=None):
    return empty_pinned(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros_like_pinned(a, dtype=None, order="K", subok=None, shape=None):
    return zeros_pinned(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)
