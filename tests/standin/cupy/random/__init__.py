"""cupy.random stand-in: default_rng's Generator draws on the device (one launch per draw)."""
import numpy as _numpy

from cupy_standin.core import _launch, _out, _w


class Generator:
    """cupy.random.Generator (the stand-in draws with numpy's PCG64, not CuPy's XORWOW)."""

    def __init__(self, bit_generator):
        self._g = _numpy.random.default_rng(bit_generator)

    def random(self, size=None, dtype=_numpy.float64, out=None):
        _launch()
        if out is not None:
            self._g.random(out=_out(out), dtype=dtype)
            return out
        return _w(_numpy.asarray(self._g.random(size, dtype=dtype)))

    def standard_normal(self, size=None, dtype=_numpy.float64, out=None):
        _launch()
        if out is not None:
            self._g.standard_normal(out=_out(out), dtype=dtype)
            return out
        return _w(_numpy.asarray(self._g.standard_normal(size, dtype=dtype)))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=_numpy.float64):
        _launch()
        return _w(_numpy.asarray(self._g.uniform(low, high, size)).astype(dtype))

    def integers(self, low, high=None, size=None, dtype=_numpy.int64, endpoint=False):
        _launch()
        return _w(_numpy.asarray(self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint)))


def default_rng(seed=None):
    """cupy.random.default_rng."""
    return Generator(seed)
