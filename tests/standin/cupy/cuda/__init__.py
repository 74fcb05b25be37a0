"""cupy.cuda stand-in: one pretend device, streams, events, pinned host memory."""
import numpy as _numpy

import cupy_standin as _standin
from cupy.cuda import runtime  # noqa: F401
from cupy_standin.core import MemoryPointer  # noqa: F401


def is_available():
    try:
        return runtime.getDeviceCount() > 0
    except runtime.CUDARuntimeError:
        return False


class Device:
    """cupy.cuda.Device: ``use()``, ``synchronize()``, context manager, ``compute_capability``."""

    def __init__(self, device=None):
        self.id = runtime.getDevice() if device is None else int(device)

    def use(self):
        runtime.setDevice(self.id)

    def synchronize(self):
        runtime._check(self.id)
        _standin.record("syncs")

    @property
    def compute_capability(self):
        p = runtime.getDeviceProperties(self.id)
        return f"{p['major']}{p['minor']}"

    @property
    def mem_info(self):
        return runtime.memGetInfo()

    def __enter__(self):
        self._prev = runtime.getDevice()
        self.use()
        return self

    def __exit__(self, *exc):
        runtime.setDevice(self._prev)

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def get_device_id():
    return runtime.getDevice()


class Stream:
    """cupy.cuda.Stream: work is issued in order; ``synchronize()`` waits for it (a host sync)."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None, device_id=-1):
        self.ptr = 0 if null else id(self)

    def synchronize(self):
        _standin.record("syncs")

    def use(self):
        global _current
        _current = self
        return self

    def __enter__(self):
        global _current
        self._prev = _current
        _current = self
        return self

    def __exit__(self, *exc):
        global _current
        _current = self._prev

    def record(self, event=None):
        event = Event() if event is None else event
        return event

    def wait_event(self, event):
        pass

    def done(self):
        return True


class ExternalStream(Stream):
    pass


Stream.null = Stream(null=True)
_current = Stream.null


def get_current_stream(device_id=-1):
    return _current


class Event:
    """cupy.cuda.Event: ``record``/``synchronize`` (a host sync)/``done``."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        import time
        self._t = time.perf_counter()

    def record(self, stream=None):
        import time
        self._t = time.perf_counter()

    def synchronize(self):
        _standin.record("syncs")

    @property
    def done(self):
        return True


def get_elapsed_time(start_event, end_event):
    return (end_event._t - start_event._t) * 1000.0


class PinnedMemory:
    def __init__(self, size, flags=0):
        self.size = int(size)
        self._buf = bytearray(self.size)
        self.ptr = int(_numpy.frombuffer(self._buf, _numpy.uint8).__array_interface__["data"][0]) if size else 0


class PinnedMemoryPointer(bytearray):
    """cupy.cuda.PinnedMemoryPointer: host memory usable as a buffer (``numpy.frombuffer``)."""

    def __init__(self, mem, offset=0):
        super().__init__(mem.size - offset)
        self.mem = mem
        self.ptr = mem.ptr + offset

    def __int__(self):
        return self.ptr


def alloc_pinned_memory(size):
    """Page-locked host memory of ``size`` bytes (here: ordinary host memory)."""
    return PinnedMemoryPointer(PinnedMemory(size))


class MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


class PinnedMemoryPool:
    def free_all_blocks(self):
        pass

    def n_free_blocks(self):
        return 0


_pool = MemoryPool()
_pinned_pool = PinnedMemoryPool()
