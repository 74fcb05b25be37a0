"""numpy or CuPy: the array module, the device, and the few ops that differ.

Caffe's ``Caffe::set_mode`` / ``set_device`` switch between the CPU and GPU code paths; here they
switch the array module ``xp`` that every layer writes its math against (Chainer's approach).
"""
from __future__ import annotations

import types

import numpy as np

try:  # CuPy is optional: only a GPU machine has it.
    import cupy  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    cupy = None

CPU, GPU = 0, 1
_mode = CPU
_device = 0


def set_mode_cpu() -> None:
    """As ``caffe.set_mode_cpu()``: layers compute with numpy."""
    global _mode
    _mode = CPU


def set_mode_gpu() -> None:
    """As ``caffe.set_mode_gpu()``: layers compute with CuPy on the current device."""
    global _mode
    if cupy is None:
        from .errors import CaffeError
        raise CaffeError("set_mode_gpu: CuPy is not installed (pip install 'fc-caffe[gpu]')")
    _mode = GPU
    cupy.cuda.Device(_device).use()


def set_device(device_id: int) -> None:
    """As ``caffe.set_device(i)``: the GPU used in GPU mode."""
    global _device
    _device = int(device_id)
    if cupy is not None:
        cupy.cuda.Device(_device).use()


def mode() -> int:
    return _mode


def gpu_available() -> int:
    """Number of CUDA devices visible to CuPy (0 without CuPy)."""
    if cupy is None:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def xp() -> types.ModuleType:
    """The array module of the current mode."""
    return cupy if _mode == GPU else np


def get_array_module(*arrays) -> types.ModuleType:
    """numpy or cupy, chosen from the arrays themselves."""
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return np


def to_numpy(a) -> np.ndarray:
    """A host copy (or the array itself when it already lives on the host)."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return np.asarray(a)


def asarray(a, dtype=np.float32):
    """``a`` as an array of the current module."""
    return xp().asarray(a, dtype=dtype)


_cv2 = None
_INT_MAX = 2 ** 31 - 1


def copy_transposed(dst, src) -> None:
    """dst[...] = src.T for 2-d arrays (the layout changes between (N, X) and (X, N) orders).

    numpy copies a transposed view element by element in the destination's order; when the
    source rows are a power of two apart every read lands in the same cache set and the copy
    runs at a tenth of memory speed. OpenCV's blocked transpose (opencv-python is a dependency
    already) does not have that problem, so contiguous float32 host arrays go through it.
    """
    global _cv2
    if (isinstance(dst, np.ndarray) and isinstance(src, np.ndarray) and dst.dtype == np.float32
            and src.dtype == np.float32 and dst.ndim == 2 and src.ndim == 2
            and dst.flags.c_contiguous and src.flags.c_contiguous
            and dst.shape == src.shape[::-1] and max(src.shape) <= _INT_MAX and src.size):
        if _cv2 is None:
            try:
                import cv2  # type: ignore
                _cv2 = cv2
            except ImportError:  # pragma: no cover - opencv is a declared dependency
                _cv2 = False
        if _cv2:
            _cv2.transpose(src, dst)
            return
    get_array_module(dst).copyto(dst, src.T)
