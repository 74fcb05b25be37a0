"""``fc-caffe device_query``: what compute devices fc-caffe can use."""
from __future__ import annotations

import argparse
import os

from .. import backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", default=None, help="device id to query (default: all)")


def main(args: argparse.Namespace) -> int:
    n = backend.gpu_available()
    print(f"CPU: {os.cpu_count()} cores (numpy {__import__('numpy').__version__})")
    if not n:
        print("GPU: none (CuPy not installed or no CUDA device); fc-caffe runs on the CPU")
        return 0
    ids = range(n) if args.gpu in (None, "all") else [int(args.gpu)]
    for i in ids:
        props = backend.cupy.cuda.runtime.getDeviceProperties(i)
        print(f"Device id: {i}\n  Name: {props['name'].decode()}\n  Total global memory: {props['totalGlobalMem']}")
    return 0
