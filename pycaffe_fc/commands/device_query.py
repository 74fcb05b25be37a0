"""``fc-caffe device_query``: the GPU's properties, as ``caffe device_query`` (Caffe::DeviceQuery).

Caffe logs one ``LOG(INFO)`` line per property of the device given by ``--gpu`` (Caffe's flag;
a list or ``all`` queries each device). Without a usable GPU it prints one line saying what is
missing (no CuPy, no driver, no device) and exits non-zero, as any fc-caffe user error.
"""
from __future__ import annotations

import argparse

from .. import backend
from ..errors import CaffeError

SRC = "common.cpp"  # Caffe::DeviceQuery


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", "-gpu", default=None,
                   help="device id(s) to query: an id, a comma list or 'all' (default: 0, as Caffe)")


def _ids(spec: str | None, n: int) -> list[int]:
    if spec in (None, ""):
        return [0]
    if spec == "all":
        return list(range(n))
    try:
        ids = [int(s) for s in str(spec).split(",") if s.strip()]
    except ValueError:
        raise CaffeError(f"device_query: --gpu expects a device id, a comma list or 'all'; got '{spec}'") from None
    for i in ids:
        if not 0 <= i < n:
            raise CaffeError(f"device_query: device {i} does not exist ({n} CUDA device{'s' if n != 1 else ''}"
                             f": 0..{n - 1})")
    return ids


def device_lines(device: int) -> list[str]:
    """Caffe::DeviceQuery's lines for ``device`` (cudaDeviceProp as CuPy returns it)."""
    p = backend.cupy.cuda.runtime.getDeviceProperties(device)
    name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])

    def yes(key: str) -> str:
        return "Yes" if p.get(key) else "No"

    def three(key: str) -> str:
        return ", ".join(str(v) for v in tuple(p[key])[:3])

    rows = [
        ("Device id", device), ("Major revision number", p["major"]), ("Minor revision number", p["minor"]),
        ("Name", name), ("Total global memory", p["totalGlobalMem"]),
        ("Total shared memory per block", p["sharedMemPerBlock"]), ("Total registers per block", p["regsPerBlock"]),
        ("Warp size", p["warpSize"]), ("Maximum memory pitch", p["memPitch"]),
        ("Maximum threads per block", p["maxThreadsPerBlock"]), ("Maximum dimension of block", three("maxThreadsDim")),
        ("Maximum dimension of grid", three("maxGridSize")), ("Clock rate", p["clockRate"]),
        ("Total constant memory", p["totalConstMem"]), ("Texture alignment", p["textureAlignment"]),
        ("Concurrent copy and execution", yes("deviceOverlap")),
        ("Number of multiprocessors", p["multiProcessorCount"]),
        ("Kernel execution timeout", yes("kernelExecTimeoutEnabled")),
    ]
    # Caffe pads every label to 31 columns ("Total shared memory per block: ")
    return [f"{(label + ':'):<31}{value}" for label, value in rows]


def main(args: argparse.Namespace) -> int:
    from ..solvers.log import info
    why = backend._gpu_unusable("")
    if why:
        raise CaffeError(why)
    n = backend.gpu_available()
    ids = _ids(args.gpu, n)
    info(f"Querying GPUs {args.gpu if args.gpu not in (None, '') else 0}", "caffe.cpp")
    for i in ids:
        for line in device_lines(i):
            info(line, SRC)
    return 0
