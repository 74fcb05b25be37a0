"""cupy.lib.stride_tricks stand-in: strided views of device arrays (no launch)."""
import numpy as _numpy

from cupy_standin.core import _unsupported, _w, ndarray as _ndarray


def as_strided(x, shape=None, strides=None):
    """View of ``x`` with the given shape and strides (in bytes), as CuPy's (writeable)."""
    if type(x) is not _ndarray:
        raise _unsupported(x)
    return _w(_numpy.lib.stride_tricks.as_strided(x._a, shape, strides, writeable=True))


def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    """The windows of ``x`` as a view, as CuPy's (whose views are always writeable)."""
    if type(x) is not _ndarray:
        raise _unsupported(x)
    if writeable:
        raise NotImplementedError("Writeable view is not supported.")
    return _w(_numpy.lib.stride_tricks.sliding_window_view(x._a, window_shape, axis, writeable=True))
