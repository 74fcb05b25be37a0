"""Blob: Caffe's N-d array pair (data and diff) with a shape.

As in Caffe, reshaping to a smaller or equal count keeps the memory, a larger count reallocates;
in-place layers and shared parameters use the very same Blob object.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from . import backend
from .errors import CaffeError

MAX_BLOB_AXES = 32


class Blob:
    """A float32 ``data``/``diff`` pair of one shape (caffe::Blob)."""

    __slots__ = ("_shape", "_data", "_diff", "_xp", "name")

    def __init__(self, shape: Sequence[int] = (), name: str = "") -> None:
        self._xp = backend.xp()
        self._shape: tuple[int, ...] = ()
        self._data = self._xp.zeros(0, np.float32)
        self._diff = self._xp.zeros(0, np.float32)
        self.name = name
        self.reshape(shape)

    # -- shape -------------------------------------------------------------------------
    def reshape(self, *shape) -> None:
        """Blob::Reshape. Accepts ``reshape(2, 3)`` or ``reshape((2, 3))`` (pycaffe)."""
        if len(shape) == 1 and isinstance(shape[0], Iterable):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if len(shape) > MAX_BLOB_AXES:
            raise CaffeError(f"blob '{self.name}': {len(shape)} axes exceed the limit {MAX_BLOB_AXES}")
        if any(s < 0 for s in shape):
            raise CaffeError(f"blob '{self.name}': negative dimension in shape {list(shape)}")
        if shape == self._shape and self._data.shape == shape:
            return
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        xp = self._xp
        if self._data.size == count:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = xp.zeros(shape, np.float32)
            self._diff = xp.zeros(shape, np.float32)
        self._shape = shape

    def reshape_like(self, other: "Blob") -> None:
        self.reshape(other.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def count_range(self, start: int, end: int | None = None) -> int:
        """Blob::count(start, end): the product of dims in [start, end)."""
        end = self.num_axes if end is None else end
        return int(np.prod(self._shape[start:end], dtype=np.int64))

    def canonical_axis_index(self, axis: int) -> int:
        """Blob::CanonicalAxisIndex: negative axes count from the end."""
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            raise CaffeError(f"blob '{self.name}': axis {axis} out of range for shape {list(self._shape)}")
        return axis + n if axis < 0 else axis

    # legacy 4-d accessors (num, channels, height, width)
    def _legacy(self, i: int) -> int:
        if self.num_axes > 4:
            raise CaffeError(f"blob '{self.name}': legacy accessor on a {self.num_axes}-d blob")
        # Blob::LegacyShape: axes past the blob's (or before it, counting from the end) are 1.
        if i < 0:
            i += self.num_axes
        return self._shape[i] if 0 <= i < self.num_axes else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    # -- data --------------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data[...] = value

    @property
    def diff(self):
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self._diff[...] = value

    def set_data(self, array) -> None:
        """Replace the data array itself (same shape), e.g. with a freshly computed one."""
        if array.shape != self._shape:
            raise CaffeError(f"blob '{self.name}': data of shape {list(array.shape)}, expected {list(self._shape)}")
        self._data = array

    def set_diff(self, array) -> None:
        if array.shape != self._shape:
            raise CaffeError(f"blob '{self.name}': diff of shape {list(array.shape)}, expected {list(self._shape)}")
        self._diff = array

    def share_data(self, other: "Blob") -> None:
        """Blob::ShareData: this blob's data becomes ``other``'s memory."""
        if self.count != other.count:
            raise CaffeError(f"blob '{self.name}': cannot share data with count {other.count} != {self.count}")
        self._data = other._data.reshape(self._shape)

    def share_diff(self, other: "Blob") -> None:
        if self.count != other.count:
            raise CaffeError(f"blob '{self.name}': cannot share diff with count {other.count} != {self.count}")
        self._diff = other._diff.reshape(self._shape)

    def update(self) -> None:
        """Blob::Update: data -= diff (the solver has already scaled diff)."""
        self._data -= self._diff

    def asum_data(self) -> float:
        return float(self._xp.abs(self._data).sum())

    def asum_diff(self) -> float:
        return float(self._xp.abs(self._diff).sum())

    def sumsq_data(self) -> float:
        return float((self._data.astype(np.float64) ** 2).sum())

    def sumsq_diff(self) -> float:
        return float((self._diff.astype(np.float64) ** 2).sum())

    def scale_diff(self, factor: float) -> None:
        self._diff *= np.float32(factor)

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={list(self._shape)})"
