#!/usr/bin/env python3
"""Peak memory of one NiN-ImageNet training iteration against the bytes its blobs must hold.

Builds the NiN of ../shared/caffe-reference/timing/nin_imagenet_b8.prototxt at batch 32 (TRAIN
phase, force_backward so the input gradient is computed too, and the forward columns kept for
the backward as in the Solver's training net), runs one forward+backward pass and
reports, from tracemalloc (numpy reports its array allocations to it):

* blob bytes: data + diff of every distinct array the net's blobs and parameters own (what Caffe's
  own memory would be, before its per-layer scratch);
* peak: the highest traced allocation from before the net was built to the end of the iteration,
  and the peak of a second iteration above what was live before it (the steady state);
* their ratio (target: at most 2x), and the resident set size growth (ru_maxrss) for reference.

Usage: ``python benchmarks/bench_memory.py [--batch 32] [--net PATH]``. A benchmark, it asserts
nothing.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SHARED = os.environ.get("FC_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
NIN = os.path.join(SHARED, "caffe-reference", "timing", "nin_imagenet_b8.prototxt")

MB = 1024.0 ** 2


def blob_bytes(net) -> int:
    """data + diff bytes of every distinct array held by the net's blobs and parameters."""
    seen: set[int] = set()
    total = 0

    def add(a) -> None:
        nonlocal total
        base = a
        while getattr(base, "base", None) is not None:
            base = base.base
        if id(base) not in seen:
            seen.add(id(base))
            total += base.nbytes

    for b in list(net.blobs.values()) + [p for ps in net.params.values() for p in ps]:
        add(b.data)
        add(b.diff)
    return total


def one_iteration(net, rng) -> None:
    net.forward()
    for name in net.outputs:
        b = net.blobs[name]
        b.diff[...] = rng.standard_normal(b.shape, dtype=np.float32)
    net.backward()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--net", default=NIN)
    args = ap.parse_args(argv)
    if not os.path.exists(args.net):
        print(f"{args.net} is missing", file=sys.stderr)
        return 1

    import pycaffe_fc as caffe
    from pycaffe_fc.proto.io import read_net_param

    param = read_net_param(args.net)
    param.force_backward = True
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = args.batch
    rng = np.random.default_rng(0)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    base0, _ = tracemalloc.get_traced_memory()
    net = caffe.Net(param, caffe.TRAIN)
    net.keep_forward_columns()  # as the Solver's training net: its kept columns are counted
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape, dtype=np.float32)
    built, _ = tracemalloc.get_traced_memory()
    t = time.perf_counter()
    one_iteration(net, rng)
    t1 = time.perf_counter() - t
    after1, peak1 = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    one_iteration(net, rng)
    after2, peak2 = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    blobs = blob_bytes(net)
    first = peak1 - base0
    steady = peak2 - base0
    print(f"NiN-ImageNet, batch {args.batch}, TRAIN, force_backward (one iteration {t1:.2f} s)")
    print(f"  blobs data+diff (activations and parameters): {blobs / MB:9.1f} MB")
    print(f"  traced after building the net:                {(built - base0) / MB:9.1f} MB")
    print(f"  traced peak, build + first iteration:         {first / MB:9.1f} MB   "
          f"ratio {first / blobs:.2f}x")
    print(f"  traced peak, second iteration:                {steady / MB:9.1f} MB   "
          f"ratio {steady / blobs:.2f}x")
    print(f"  live after the iterations (blobs + scratch):  {(after2 - base0) / MB:9.1f} MB")
    print(f"  ru_maxrss growth:                             {(rss1 - rss0) / 1024.0:9.1f} MB")
    print(f"  target: peak <= 2.00x the blob bytes -> {'met' if max(first, steady) <= 2 * blobs else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
