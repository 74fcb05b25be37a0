"""Blob: Caffe's N-d array pair (data and diff) with a shape, each half a SyncedMemory.

As in Caffe, reshaping to a smaller or equal count keeps the memory, a larger count reallocates;
in-place layers and shared parameters use the very same Blob object.

SyncedMemory (syncedmem.cpp): each of data and diff keeps a host copy and, in GPU mode, a device
copy, with a head saying where the current values are (UNINITIALIZED, HEAD_AT_CPU, HEAD_AT_GPU,
SYNCED). ``cpu_data()``/``gpu_data()`` copy only when the head is on the other side (and leave it
SYNCED); the ``mutable_`` forms also move the head to their side, since the caller may write.

Which side ``blob.data``/``blob.diff`` give depends on who asks (``backend.on_device()``): Python
code, as pycaffe, gets the host array (``mutable_cpu_data``); a layer computing on the device (the
Layer wrapper enters the device side for it, as Caffe dispatches to ``Forward_gpu``), the solver's
update and the Net's own passes get the device array (``mutable_gpu_data``). In CPU mode no device
copy ever exists and the head stays at the host.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from . import backend
from .errors import CaffeError
from .memory import check_blob_allocation

MAX_BLOB_AXES = 32

# SyncedMemory::SyncedHead
UNINITIALIZED, HEAD_AT_CPU, HEAD_AT_GPU, SYNCED = 0, 1, 2, 3
HEAD_NAMES = {UNINITIALIZED: "UNINITIALIZED", HEAD_AT_CPU: "HEAD_AT_CPU", HEAD_AT_GPU: "HEAD_AT_GPU",
              SYNCED: "SYNCED"}

_tls = backend._side  # thread-local: .device is True while code computes on the device side
_DEVICE_THREADS = backend._DEVICE_THREADS  # [threads on the device side]: 0 -> host side everywhere


def _device_side() -> bool:
    return bool(_DEVICE_THREADS[0] and _tls.device)


class SyncedMemory:
    """syncedmem.hpp: a host array and a device array of one shape, and the head between them.
    Blobs sharing data (Blob::ShareData) share this object, so a write on either side through one
    of them moves the head for all."""

    __slots__ = ("cpu", "gpu", "head", "shape", "dtype")

    def __init__(self, shape: tuple, dtype=np.float32, cpu=None, gpu=None, head: int = UNINITIALIZED) -> None:
        self.shape, self.dtype = shape, dtype
        self.cpu, self.gpu, self.head = cpu, gpu, head

    def to_cpu(self) -> None:
        """SyncedMemory::to_cpu."""
        h = self.head
        if h == UNINITIALIZED:
            if self.cpu is None:
                self.cpu = np.zeros(self.shape, self.dtype)
            else:
                self.cpu[...] = 0
            self.head = HEAD_AT_CPU
        elif h == HEAD_AT_GPU:
            g = self.gpu
            if self.cpu is None or not self.cpu.flags.c_contiguous:
                self.cpu = np.empty(g.shape, g.dtype)
            if g.flags.c_contiguous:
                g.get(out=self.cpu)
            else:
                backend.cupy.ascontiguousarray(g).get(out=self.cpu)
            self.head = SYNCED

    def to_gpu(self) -> None:
        """SyncedMemory::to_gpu."""
        h = self.head
        cp = backend.cupy
        if cp is None:
            raise CaffeError("a device copy was asked for but CuPy is not available (set_mode_gpu first)")
        if h == UNINITIALIZED:
            if self.gpu is None:
                self.gpu = cp.zeros(self.shape, self.dtype)
            else:
                self.gpu.fill(0)
            self.head = HEAD_AT_GPU
        elif h == HEAD_AT_CPU:
            c = self.cpu
            if self.gpu is None or not self.gpu.flags.c_contiguous:
                self.gpu = cp.empty(c.shape, c.dtype)
            self.gpu.set(c if c.flags.c_contiguous else np.ascontiguousarray(c))
            self.head = SYNCED


def _new_mem(shape: tuple) -> SyncedMemory:
    return SyncedMemory(shape)


def _host_mem(array: np.ndarray) -> SyncedMemory:
    return SyncedMemory(array.shape, array.dtype, cpu=array, head=HEAD_AT_CPU)


def _device_mem(array) -> SyncedMemory:
    return SyncedMemory(array.shape, array.dtype, gpu=array, head=HEAD_AT_GPU)


class Blob:
    """A float32 ``data``/``diff`` pair of one shape (caffe::Blob)."""

    # _hd/_hf, _gd/_gf: this blob's shaped views of its memories' host/device arrays, valid while
    # _hdb/_hfb/_gdb/_gfb (the arrays they were made from) are still the memories' arrays.
    __slots__ = ("_shape", "_count", "_dm", "_fm", "_hd", "_hdb", "_hf", "_hfb", "_gd", "_gdb", "_gf", "_gfb",
                 "name", "__weakref__")

    def __init__(self, shape: Sequence[int] = (), name: str = "") -> None:
        self._shape: tuple[int, ...] = (-1,)
        self._count = -1
        self.name = name
        self.reshape(shape)

    # -- shape -------------------------------------------------------------------------
    def reshape(self, *shape) -> None:
        """Blob::Reshape. Accepts ``reshape(2, 3)`` or ``reshape((2, 3))`` (pycaffe)."""
        if len(shape) == 1 and isinstance(shape[0], Iterable):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if shape == self._shape:
            return
        if len(shape) > MAX_BLOB_AXES:
            raise CaffeError(f"blob '{self.name}': {len(shape)} axes exceed the limit {MAX_BLOB_AXES}")
        if any(s < 0 for s in shape):
            raise CaffeError(f"blob '{self.name}': negative dimension in shape {list(shape)}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count != self._count:
            check_blob_allocation(self.name, shape, on_device=bool(backend.mode()))  # before, not after
            self._dm = _new_mem(shape)
            self._fm = _new_mem(shape)
            self._count = count
        self._shape = shape
        self._drop_views()
        if not backend.mode():
            self._dm.to_cpu()  # CPU mode: allocate now, as before SyncedMemory (no lazy first touch)
            self._fm.to_cpu()

    def _drop_views(self) -> None:
        self._hd = self._hdb = self._hf = self._hfb = None
        self._gd = self._gdb = self._gf = self._gfb = None

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
        return self._count

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

    # -- Caffe's accessors (Blob::cpu_data, mutable_gpu_diff, ...) ---------------------------
    def _host_data(self):
        m = self._dm
        if m.head != HEAD_AT_CPU and m.head != SYNCED:
            m.to_cpu()
        a = m.cpu
        if self._hdb is not a:
            self._hd = a if a.shape == self._shape else _shaped(a, self._shape)
            self._hdb = a
        return self._hd

    def _host_diff(self):
        m = self._fm
        if m.head != HEAD_AT_CPU and m.head != SYNCED:
            m.to_cpu()
        a = m.cpu
        if self._hfb is not a:
            self._hf = a if a.shape == self._shape else _shaped(a, self._shape)
            self._hfb = a
        return self._hf

    def _dev_data(self):
        m = self._dm
        if m.head != HEAD_AT_GPU and m.head != SYNCED:
            m.to_gpu()
        a = m.gpu
        if self._gdb is not a:
            self._gd = a if a.shape == self._shape else _shaped(a, self._shape)
            self._gdb = a
        return self._gd

    def _dev_diff(self):
        m = self._fm
        if m.head != HEAD_AT_GPU and m.head != SYNCED:
            m.to_gpu()
        a = m.gpu
        if self._gfb is not a:
            self._gf = a if a.shape == self._shape else _shaped(a, self._shape)
            self._gfb = a
        return self._gf

    def cpu_data(self) -> np.ndarray:
        """Blob::cpu_data: the host values, copied down only if the device has newer ones (read only:
        writes through it are not seen by the device side)."""
        return self._host_data()

    def mutable_cpu_data(self) -> np.ndarray:
        """Blob::mutable_cpu_data: the host array, which the caller may write (head moves to the host)."""
        a = self._host_data()
        self._dm.head = HEAD_AT_CPU
        return a

    def gpu_data(self):
        """Blob::gpu_data: the device values, copied up only if the host has newer ones (read only)."""
        return self._dev_data()

    def mutable_gpu_data(self):
        """Blob::mutable_gpu_data: the device array, which the caller may write (head moves to the device)."""
        a = self._dev_data()
        self._dm.head = HEAD_AT_GPU
        return a

    def cpu_diff(self) -> np.ndarray:
        return self._host_diff()

    def mutable_cpu_diff(self) -> np.ndarray:
        a = self._host_diff()
        self._fm.head = HEAD_AT_CPU
        return a

    def gpu_diff(self):
        return self._dev_diff()

    def mutable_gpu_diff(self):
        a = self._dev_diff()
        self._fm.head = HEAD_AT_GPU
        return a

    def overwrite_cpu_data(self) -> np.ndarray:
        """mutable_cpu_data for a caller that overwrites every element (pycaffe's ``forward(data=x)``):
        the device values are not copied down first."""
        m = self._dm
        if m.head == HEAD_AT_GPU:
            m.head = HEAD_AT_CPU if m.cpu is not None else UNINITIALIZED
        return self.mutable_cpu_data()

    def overwrite_cpu_diff(self) -> np.ndarray:
        m = self._fm
        if m.head == HEAD_AT_GPU:
            m.head = HEAD_AT_CPU if m.cpu is not None else UNINITIALIZED
        return self.mutable_cpu_diff()

    @property
    def data_head(self) -> int:
        """SyncedMemory::head() of the data (UNINITIALIZED, HEAD_AT_CPU, HEAD_AT_GPU, SYNCED)."""
        return self._dm.head

    @property
    def diff_head(self) -> int:
        return self._fm.head

    # -- data: the side of the caller ----------------------------------------------------
    @property
    def data(self):
        """pycaffe's ``blob.data``: the host array (mutable_cpu_data); the device array for code
        computing on the device side (layers in GPU mode, the solver's update)."""
        if _DEVICE_THREADS[0] and _tls.device:
            a = self._dev_data()
            self._dm.head = HEAD_AT_GPU
            return a
        m = self._dm
        if m.head == 1 and self._hdb is m.cpu:  # HEAD_AT_CPU, view current: the CPU mode's path
            return self._hd
        return self.mutable_cpu_data()

    @data.setter
    def data(self, value) -> None:
        backend.assign(self.data, value)

    @property
    def diff(self):
        """pycaffe's ``blob.diff`` (mutable_cpu_diff); the device array on the device side."""
        if _DEVICE_THREADS[0] and _tls.device:
            a = self._dev_diff()
            self._fm.head = HEAD_AT_GPU
            return a
        m = self._fm
        if m.head == 1 and self._hfb is m.cpu:
            return self._hf
        return self.mutable_cpu_diff()

    @diff.setter
    def diff(self, value) -> None:
        backend.assign(self.diff, value)

    def set_data(self, array) -> None:
        """Replace the data array itself (same shape), e.g. with a freshly computed one; a numpy
        array becomes the host copy (Blob::set_cpu_data), a device array the device copy
        (set_gpu_data). This blob stops sharing its former data memory."""
        if tuple(array.shape) != self._shape:
            raise CaffeError(f"blob '{self.name}': data of shape {list(array.shape)}, expected {list(self._shape)}")
        self._dm = _host_mem(_contiguous(array)) if isinstance(array, np.ndarray) \
            else _device_mem(_contiguous(array))
        self._hd = self._hdb = self._gd = self._gdb = None

    def set_diff(self, array) -> None:
        if tuple(array.shape) != self._shape:
            raise CaffeError(f"blob '{self.name}': diff of shape {list(array.shape)}, expected {list(self._shape)}")
        self._fm = _host_mem(_contiguous(array)) if isinstance(array, np.ndarray) \
            else _device_mem(_contiguous(array))
        self._hf = self._hfb = self._gf = self._gfb = None

    def share_data(self, other: "Blob") -> None:
        """Blob::ShareData: this blob's data becomes ``other``'s memory."""
        if self.count != other.count:
            raise CaffeError(f"blob '{self.name}': cannot share data with count {other.count} != {self.count}")
        if self._dm is not other._dm:
            self._dm = other._dm
            self._hd = self._hdb = self._gd = self._gdb = None

    def share_diff(self, other: "Blob") -> None:
        if self.count != other.count:
            raise CaffeError(f"blob '{self.name}': cannot share diff with count {other.count} != {self.count}")
        if self._fm is not other._fm:
            self._fm = other._fm
            self._hf = self._hfb = self._gf = self._gfb = None

    # -- math on the caller's side (Blob::Update, asum, sumsq, scale) ---------------------------
    def update(self) -> None:
        """Blob::Update: data -= diff (the solver has already scaled diff)."""
        d = self.data
        d -= self.diff

    def _xp(self):
        return backend.cupy if _device_side() else np

    def asum_data(self) -> float:
        return float(self._xp().abs(self.cpu_data() if not _device_side() else self.gpu_data()).sum())

    def asum_diff(self) -> float:
        return float(self._xp().abs(self.cpu_diff() if not _device_side() else self.gpu_diff()).sum())

    def sumsq_data(self) -> float:
        d = self.gpu_data() if _device_side() else self.cpu_data()
        return float((d.astype(np.float64) ** 2).sum())

    def sumsq_diff(self) -> float:
        d = self.gpu_diff() if _device_side() else self.cpu_diff()
        return float((d.astype(np.float64) ** 2).sum())

    def scale_diff(self, factor: float) -> None:
        d = self.diff
        d *= np.float32(factor)

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={list(self._shape)})"


def _contiguous(a):
    """``a`` itself when C-contiguous, else a contiguous copy of the same shape (0-d included)."""
    if a.flags.c_contiguous:
        return a
    return a.copy()


def _shaped(a, shape: tuple):
    """``a`` (contiguous: set_data makes it so) seen with ``shape`` (same count): a view."""
    return a.reshape(shape)
