"""numpy or CuPy: the array module, the device, and the few ops that differ.

Caffe's ``Caffe::set_mode`` / ``set_device`` switch between the CPU and GPU code paths; here they
switch the array module ``xp`` that every layer writes its math against (Chainer's approach).

In GPU mode a Blob keeps a host and a device copy (blob.py, Caffe's SyncedMemory). Which one
``blob.data`` gives depends on the side the calling code computes on: the host for Python code (as
pycaffe), the device inside ``device_side(True)``, which the Layer wrapper enters around a GPU
layer's verbs as Caffe dispatches to ``Forward_gpu``, and which the solver's update enters too.
"""
from __future__ import annotations

import contextlib
import threading
import types

import numpy as np

_cupy_error = ""
try:  # CuPy is optional: only a GPU machine has it.
    import cupy  # type: ignore
except Exception as _e:  # pragma: no cover - depends on the machine
    cupy = None
    _cupy_error = " ".join(f"{type(_e).__name__}: {_e}".split())

CPU, GPU = 0, 1
_mode = CPU
_device = 0


class _Side(threading.local):
    #: True while the current thread computes on the device side (blob.data is the device array)
    device = False


_side = _Side()
#: [number of threads now on the device side]: while 0 (always, in CPU mode) blob.data need not
#: look at the thread-local flag, which keeps the CPU path's accessors as cheap as before
_DEVICE_THREADS = [0]
_count_lock = threading.Lock()


def on_device() -> bool:
    """Whether the calling thread is on the device side (``blob.data`` gives device arrays)."""
    return _side.device


@contextlib.contextmanager
def device_side(device: bool = True):
    """Run the block on the device side (``device=True``: ``blob.data``/``diff`` are the device
    arrays, mutable_gpu_data) or on the host side (``False``: numpy, mutable_cpu_data)."""
    prev = _side.device
    device = bool(device)
    if device == prev:
        yield
        return
    with _count_lock:
        _DEVICE_THREADS[0] += 1 if device else -1
    _side.device = device
    try:
        yield
    finally:
        _side.device = prev
        with _count_lock:
            _DEVICE_THREADS[0] += -1 if device else 1


def _gpu_unusable(what: str) -> str | None:
    """Why GPU mode cannot be used (one line, prefixed ``what: `` when given), or None when it can."""
    why = _why_no_gpu()
    return f"{what}: {why}" if why and what else why


def _why_no_gpu() -> str | None:
    """What is missing for GPU mode: CuPy, a working driver, a device (None: nothing)."""
    if cupy is None:
        cause = f" ({_cupy_error})" if _cupy_error and "No module named 'cupy'" not in _cupy_error else ""
        return (f"GPU mode needs CuPy, which is not installed or does not load{cause}; "
                "install it with: pip install 'fc-caffe[gpu]'")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        return f"CuPy cannot use a GPU: {msg} (is the NVIDIA driver installed and a GPU visible?)"
    if n < 1:
        return "CuPy sees no CUDA device (is a GPU visible to this process?)"
    if not 0 <= _device < n:
        return f"device {_device} does not exist ({n} CUDA device{'s' if n != 1 else ''}: 0..{n - 1})"
    return None


def require_gpu(what: str) -> None:
    """Raise the one-line CaffeError saying what GPU mode lacks (CuPy, driver, device), if anything."""
    why = _gpu_unusable(what)
    if why:
        from .errors import CaffeError
        raise CaffeError(why)


def set_mode_cpu() -> None:
    """As ``caffe.set_mode_cpu()``: layers compute with numpy."""
    global _mode
    _mode = CPU


def set_mode_gpu() -> None:
    """As ``caffe.set_mode_gpu()``: nets compute with CuPy on the current device from their next
    forward/backward on (Caffe::mode() is read at every pass; see Net._follow_mode).
    Without a usable GPU (no CuPy, no driver, no device) a one-line CaffeError says what is missing."""
    global _mode
    require_gpu("set_mode_gpu")
    _mode = GPU
    cupy.cuda.Device(_device).use()


def set_device(device_id: int) -> None:
    """As ``caffe.set_device(i)``: the GPU used in GPU mode."""
    global _device
    _device = int(device_id)
    if cupy is not None and _mode == GPU:
        require_gpu("set_device")
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


def is_device_array(a) -> bool:
    """Whether ``a`` is a CuPy (device) array."""
    return cupy is not None and isinstance(a, cupy.ndarray)


def to_numpy(a) -> np.ndarray:
    """A host copy (or the array itself when it already lives on the host)."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return np.asarray(a)


def asarray(a, dtype=np.float32):
    """``a`` as an array of the current module."""
    return xp().asarray(a, dtype=dtype)


def assign(dst, values) -> None:
    """``dst[...] = values`` where ``values`` may be host data and ``dst`` a host or device array
    (a host-to-device copy for the latter, as CuPy never converts implicitly)."""
    if isinstance(dst, np.ndarray):
        dst[...] = to_numpy(values) if is_device_array(values) else values
    elif is_device_array(values) or np.isscalar(values) or (isinstance(values, np.ndarray) and not values.ndim):
        dst[...] = values  # a device array, or a scalar CuPy fills with (no copy)
    else:
        dst[...] = cupy.asarray(np.asarray(values, dtype=dst.dtype))


def synchronize() -> None:
    """Wait for the device's queued work (cudaDeviceSynchronize); nothing in CPU mode."""
    if _mode == GPU and cupy is not None:
        cupy.cuda.Device().synchronize()


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
