#!/usr/bin/env python3
"""convert_imageset throughput: images/s with a pool of 2 processes against 1 (target >= 1.7x).

Generates a few thousand JPEG and PNG images (smooth colour patterns plus noise, random sizes, so
decoding and resizing cost what photos cost) in a temporary folder, then converts them with
``resize_height/width`` as ImageNet preparation does, once per process count, into fresh LMDBs.

Usage (from the repository root):

    python benchmarks/bench_convert_imageset.py                 # 3000 images, 1 and 2 processes
    python benchmarks/bench_convert_imageset.py --images 1000 --processes 1 2 --json out.json

A benchmark only: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def make_images(folder: str, n: int, seed: int = 0, min_side: int = 160, max_side: int = 320) -> str:
    """n images (alternately JPEG and PNG) under folder/images and a Caffe list file; its path."""
    import cv2
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    lines = []
    for i in range(n):
        h, w = (int(s) for s in rng.integers(min_side, max_side + 1, 2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        f = rng.uniform(0.02, 0.2, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * xx + (c + 1) * f[(c + 1) % 3] * yy) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        ext = "jpg" if i % 2 else "png"
        name = f"images/img_{i:05d}.{ext}"
        cv2.imwrite(os.path.join(folder, name), img)
        lines.append(f"{name} {i % 1000}")
    path = os.path.join(folder, "list.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _cpu_s() -> float:
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(folder: str, list_file: str, processes: int, size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) to convert every image."""
    import cv2

    from pycaffe_fc.data.convert import convert_imageset
    cv2.setNumThreads(1)  # as in the pool's workers: one OpenCV thread per process
    db = os.path.join(folder, f"db_p{processes}_{time.time_ns()}")
    c0, t0 = _cpu_s(), time.perf_counter()
    convert_imageset(folder + "/", list_file, db, resize_height=size, resize_width=size,
                     processes=processes, progress=False)
    return time.perf_counter() - t0, _cpu_s() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=128, help="resize_height = resize_width")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per process count")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fc-bench-convert-") as tmp:
        t0 = time.perf_counter()
        lst = make_images(tmp, a.images)
        print(f"generated {a.images} images in {time.perf_counter() - t0:.1f} s")
        run(tmp, lst, max(a.processes), a.size)  # warm the page cache
        results, cores_used = {}, {}
        load = os.getloadavg()[0]
        for p in a.processes:
            wall, cpu = min(run(tmp, lst, p, a.size) for _ in range(a.repeats))
            results[p] = a.images / wall
            cores_used[p] = cpu / wall
            print(f"processes={p}: {results[p]:8.1f} images/s ({wall:.2f} s, {cores_used[p]:.2f} cores busy)")
        print(f"load average of the machine: {load:.2f} before, {os.getloadavg()[0]:.2f} after "
              f"({os.cpu_count()} cores; other work competing for them lowers the speed-up)")
    base = results.get(1)
    speedups = {p: r / base for p, r in results.items()} if base else {}
    for p, s in speedups.items():
        if p != 1:
            print(f"speed-up of {p} processes over 1: {s:.2f}x (target >= 1.7x for 2)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"images": a.images, "size": a.size, "images_per_s": results, "speedup": speedups,
                       "cores_busy": cores_used, "cpus": os.cpu_count(), "loadavg_before": load}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
