#!/usr/bin/env python3
"""Share of each training iteration spent waiting on data, with the prefetching Data layer.

Trains Caffe's LeNet (models/lenet_fashion, batch 64, SGD) and our NiN-style net (models/nin_fashion)
on the Fashion-MNIST LMDB and measures, for each,
after a warm-up, the time ``solver.step`` blocks in the Data layer's prefetcher (the queue of
``data_param.prefetch`` batches a background thread reads, decodes and transforms) against the
total time of the iterations. Target: < 5%. With ``--no-prefetch-ahead`` the queue holds a single
batch, for comparison.

The LMDB is data/fashion_mnist/fashion_mnist_train_lmdb when tools/quickstart.sh made it, else it
is built in a temporary folder from Debian's dataset-fashion-mnist (/usr/share/datasets).

Usage (from the repository root):

    python benchmarks/bench_data_wait.py [--iters 200] [--warmup 20] [--json out.json]

A benchmark only: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FMNIST = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
QUICKSTART_DB = os.path.join(ROOT, "data", "fashion_mnist", "fashion_mnist_train_lmdb")


def train_lmdb(tmp: str) -> str:
    if os.path.isfile(os.path.join(QUICKSTART_DB, "data.mdb")):
        return QUICKSTART_DB
    from pycaffe_fc.data.convert import convert_mnist_data
    db = os.path.join(tmp, "fashion_mnist_train_lmdb")
    convert_mnist_data(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"),
                       os.path.join(FMNIST, "train-labels-idx1-ubyte.gz"), db)
    return db


SOLVERS = {"lenet": "models/lenet_fashion/lenet_solver.prototxt", "nin": "models/nin_fashion/solver.prototxt"}


def make_solver(db: str, prefetch: int, solver_path: str):
    from google.protobuf import text_format

    import pycaffe_fc as caffe
    from pycaffe_fc.proto import caffe_pb2
    from pycaffe_fc.proto.io import read_net_param, read_solver_param

    sp = read_solver_param(os.path.join(ROOT, solver_path))
    net = read_net_param(os.path.join(ROOT, sp.net or sp.train_net))
    kept = [lp for lp in net.layer if not any(r.phase == caffe_pb2.TEST for r in lp.include)]
    del net.layer[:]
    net.layer.extend(kept)
    data = net.layer[0]
    data.data_param.source = db
    data.data_param.prefetch = prefetch
    sp.ClearField("net")
    sp.ClearField("train_net")
    sp.net_param.CopyFrom(net)
    for f in ("test_iter", "test_interval", "snapshot"):
        sp.ClearField(f)
    sp.display = 0
    sp.max_iter = 10 ** 9
    sp.snapshot_after_train = False
    text_format.MessageToString(sp)  # validates
    return caffe.get_solver(sp)


def measure(db: str, iters: int, warmup: int, prefetch: int, solver_path: str) -> dict:
    solver = make_solver(db, prefetch, solver_path)
    layer = solver.net.layers[0]
    solver.step(warmup)
    layer.prefetcher.reset_stats()
    t0 = time.perf_counter()
    solver.step(iters)
    total = time.perf_counter() - t0
    wait = layer.prefetcher.wait_s
    return {"solver": solver_path, "prefetch": prefetch, "iters": iters, "iter_per_s": iters / total, "iter_ms": 1000 * total / iters,
            "wait_ms_per_iter": 1000 * wait / iters, "wait_share": wait / total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--no-prefetch-ahead", action="store_true", help="also measure a 1-batch queue")
    ap.add_argument("--json", default=None)
    ap.add_argument("--nets", default="lenet,nin", help="comma list of: " + ", ".join(SOLVERS))
    a = ap.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="fc-bench-wait-") as tmp:
        db = train_lmdb(tmp)
        for name in a.nets.split(","):
            for prefetch in ([4, 1] if a.no_prefetch_ahead else [4]):
                r = measure(db, a.iters, a.warmup, prefetch, SOLVERS[name])
                results.append(r)
                print(f"{name} prefetch={prefetch}: {r['iter_per_s']:.1f} iterations/s ({r['iter_ms']:.1f} ms), "
                      f"waiting on data {r['wait_ms_per_iter']:.2f} ms/iteration = {100 * r['wait_share']:.2f}% "
                      f"(target < 5%)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
