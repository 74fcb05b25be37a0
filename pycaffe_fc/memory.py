"""How much memory an allocation may take, checked before it is made.

Caffe's SyncedMemory simply calls malloc/cudaMalloc and dies when they fail; numpy on Linux may
instead succeed lazily (overcommit) and have the process killed later by the OOM killer, or raise
a MemoryError traceback from deep inside a layer. A Blob that is about to grow asks
``check_blob_allocation`` first, so ``pad: 100000`` is one line naming the blob and the bytes; the
Net adds the layer's name. ``FC_CAFFE_NO_MEMORY_CHECK=1`` turns the check off (swap, or a
kernel known to overcommit safely).
"""
from __future__ import annotations

import os

from .errors import CaffeError

#: allocations below this are not checked (reading /proc/meminfo costs more than they do)
CHECK_ABOVE = 64 << 20


class AllocationError(CaffeError):
    """An allocation that cannot fit in the memory available; the Net prefixes the layer."""


def available_memory() -> int | None:
    """Bytes of host memory available now: /proc/meminfo's MemAvailable, capped by the cgroup's
    remaining limit (a container sees the host's meminfo); None where neither is known."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            room = max(0, int(limit) - usage)
            avail = room if avail is None else min(avail, room)
        break
    return avail


def available_device_memory() -> int | None:
    """Free bytes on the current GPU (driver's free memory plus what CuPy's pool holds unused)."""
    try:
        import cupy
        free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())
    except Exception:
        return None


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def check_allocation(nbytes: int, what: str, on_device: bool = False) -> None:
    """Raise AllocationError when ``nbytes`` more bytes cannot fit in the memory available now."""
    if nbytes < CHECK_ABOVE or os.environ.get("FC_CAFFE_NO_MEMORY_CHECK"):
        return
    avail = available_device_memory() if on_device else available_memory()
    if avail is not None and nbytes > avail:
        where = "GPU memory" if on_device else "memory"
        raise AllocationError(f"{what} needs {format_bytes(nbytes)}, more than the "
                              f"{format_bytes(avail)} of {where} available")


def check_blob_allocation(name: str, shape, itemsize: int = 4, copies: int = 2,
                          on_device: bool = False) -> None:
    """Blob::Reshape growing to ``shape``: its data and diff (``copies``) of ``itemsize`` bytes."""
    count = 1
    for s in shape:
        count *= int(s)
    what = f"blob '{name}'" if name else "parameter blob"  # parameters have no blob name
    check_allocation(count * itemsize * copies,
                     f"{what} of shape {[int(s) for s in shape]}" + (" (data and diff)" if copies == 2 else ""),
                     on_device)
