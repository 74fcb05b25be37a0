#!/usr/bin/env python3
"""Kernel launches, host<->device transfers and host synchronisations per net in GPU mode.

No GPU is needed: the nets run on the strict CuPy stand-in (tests/standin), which counts every
kernel launch, transfer and host synchronisation by call site. From Python each launch costs
about 10 µs, about the whole work of a small layer on a modern GPU, so the count is what decides
GPU-mode speed for small batches; a host synchronisation stalls the queue, a transfer crosses PCIe.

Rows (steady state: counted on the second pass, after a warm-up pass that allocates):

- ``lenet train``: one LeNet training iteration (``solver.step(1)``: data layer, forward,
  backward, SGD update, smoothed loss and display) on the Fashion-MNIST LMDB of
  ../shared/caffe-reference/solver;
- ``lenet train, 2 buckets``: the same with the data-parallel gradient callback of a one-rank
  world forced to reduce its buckets (an identity all-reduce): 2 transfers per bucket;
- ``cifar10_quick``, ``nin``, ``googlenet``: one forward+backward with ``force_backward`` (input
  gradient included), TRAIN phase as ``caffe time``, batch 100, 8 and 8 (224x224).

Budgets (issue 12): NiN <= 250 launches, GoogLeNet <= 1,100, a LeNet training iteration <= 2
host synchronisations; the table shows them beside the counts. ``--sites N`` lists each row's N
busiest call sites. A benchmark: it prints, and exits 1 only when a budget is exceeded.

    python3 benchmarks/bench_gpu_launches.py [--nets nin,googlenet] [--sites 10]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STANDIN = os.path.join(ROOT, "tests", "standin")
for p in (STANDIN, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)
sys.path.remove(STANDIN)
sys.path.insert(0, STANDIN)  # the stand-in, never a real CuPy, is what counts

import cupy  # noqa: E402
import cupy_standin  # noqa: E402
import numpy as np  # noqa: E402

import pycaffe_fc as caffe  # noqa: E402

SHARED = os.environ.get("FC_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
REF = os.path.join(SHARED, "caffe-reference")
SOLVER_DIR = os.path.join(REF, "solver")
# name: (prototxt, batch, launch budget)
NETS = {
    "cifar10_quick": (os.path.join(SHARED, "caffe-models/cifar10/cifar10_quick.prototxt"), 100, None),
    "nin": (os.path.join(REF, "timing/nin_imagenet_b8.prototxt"), 8, 250),
    "googlenet": (os.path.join(REF, "timing/googlenet_b8.prototxt"), 8, 1100),
}
LENET_SYNC_BUDGET = 2


def _counted(fn, warmup: int = 1):
    """fn() run ``warmup`` times, then once counted: (Counts, {kind: Counter of sites})."""
    for _ in range(warmup):
        fn()
    cupy_standin.reset()
    fn()
    counts = cupy_standin.counts()
    sites = {k: collections.Counter(cupy_standin.sites(k)) for k in ("launches", "transfers", "syncs")}
    return counts, sites


def count_net(path: str, batch: int):
    """One forward+backward (force_backward, TRAIN) of the prototxt at ``batch``."""
    from benchnet import input_net_param

    net = caffe.Net(input_net_param(path, batch), caffe.TRAIN)
    net.keep_forward_columns()  # as `fc-caffe time` and the Solver's training net
    rng = np.random.default_rng(0)
    for name in net.inputs:
        b = net.blobs[name]
        b.data[...] = rng.standard_normal(b.shape).astype(np.float32)
    for name in net.outputs:
        b = net.blobs[name]
        b.diff[...] = rng.standard_normal(b.shape).astype(np.float32)

    def fwd_bwd():
        # Net::Forward/Backward as `caffe time` runs them: nothing is read back on the host
        net.Forward()
        net.Backward()

    return _counted(fwd_bwd)


def _lenet_solver(work: str):
    from pycaffe_fc.solvers import get_solver, read_solver_file

    for name in ("lenet_train.prototxt", "lenet_init.caffemodel"):
        shutil.copy(os.path.join(SOLVER_DIR, name), work)
    shutil.copytree(os.path.join(SOLVER_DIR, "fmnist640_train_lmdb"), os.path.join(work, "fmnist640_train_lmdb"))
    param = read_solver_file(os.path.join(SOLVER_DIR, "sgd_solver.prototxt"))
    param.net = os.path.join(work, "lenet_train.prototxt")
    param.snapshot = 0
    param.snapshot_after_train = False
    param.solver_mode = param.GPU
    with contextlib.redirect_stdout(io.StringIO()):  # the solver's start-up log is not the table
        return get_solver(param)


def count_lenet(buckets: int = 0):
    """One LeNet training iteration; with ``buckets``, under the data-parallel gradient callback
    (a one-rank world whose all-reduce is the identity, forced to run) with that many buckets."""
    from pycaffe_fc.parallel.allreduce import GradientSync
    from pycaffe_fc.parallel.comm import World

    work = tempfile.mkdtemp(prefix="fc-launches-")
    cwd = os.getcwd()
    os.chdir(work)  # the net's LMDB source is relative
    try:
        solver = _lenet_solver(work)
        sync = None
        if buckets:
            total = sum(b.count for b in solver.net.learnable_params) * 4
            world = World(comm=None, rank=0, size=2)  # size 2: the callback reduces; the "reduce" is identity
            sync = GradientSync(solver, world, mode="tree", bucket_bytes=-(-total // buckets),
                                allreduce=lambda buf, tag: None)
            solver.add_callback(sync.on_start, sync.on_gradients_ready)
        result = _counted(lambda: solver.step(1))
        nb = len(sync.buffer.buckets) if sync is not None else 0
        if sync is not None:
            sync.close()
        return result, nb
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


def _status(value: int, budget) -> str:
    if budget is None:
        return ""
    return "ok" if value <= budget else "OVER"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="launches, transfers and host syncs per net in GPU mode (stand-in)")
    ap.add_argument("--nets", default="lenet,cifar10_quick,nin,googlenet",
                    help="comma-separated, of: lenet, " + ", ".join(NETS))
    ap.add_argument("--sites", type=int, default=0, help="list each row's N busiest call sites")
    ap.add_argument("--batch", type=int, default=0,
                    help="override the nets' batch (the counts do not depend on it; the tests use 1 for speed)")
    args = ap.parse_args(argv)
    wanted = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in wanted if n != "lenet" and n not in NETS]
    if unknown:
        ap.error(f"unknown net(s): {', '.join(unknown)}")
    caffe.set_mode_gpu()
    rows, over = [], False
    details = []
    if "lenet" in wanted:
        (c, sites), _ = count_lenet()
        over |= c.syncs > LENET_SYNC_BUDGET
        rows.append(["lenet train b64", "step(1)", c.launches, "", c.transfers, "", c.syncs, f"<= {LENET_SYNC_BUDGET}",
                     _status(c.syncs, LENET_SYNC_BUDGET)])
        details.append(("lenet train", sites))
        (c, sites), nb = count_lenet(buckets=2)
        budget_t = c.transfers  # reported: 2 per bucket plus the data batch going up
        rows.append([f"lenet train b64, {nb} buckets", "step(1)+sync", c.launches, "", budget_t,
                     f"2x{nb} + data", c.syncs, "", ""])
        details.append((f"lenet train, {nb} buckets", sites))
    for name in wanted:
        if name == "lenet":
            continue
        path, batch, budget = NETS[name]
        batch = args.batch or batch
        c, sites = count_net(path, batch)
        over |= budget is not None and c.launches > budget
        rows.append([f"{name} b{batch}", "fwd+bwd", c.launches, f"<= {budget}" if budget else "", c.transfers, "",
                     c.syncs, "", _status(c.launches, budget)])
        details.append((name, sites))
    headers = ["net", "pass", "launches", "budget", "transfers", "expected", "syncs", "budget", ""]
    print(_table(headers, rows))
    if args.sites:
        for name, sites in details:
            print(f"\n{name}: busiest call sites")
            for kind in ("launches", "transfers", "syncs"):
                for site, n in sites[kind].most_common(args.sites):
                    print(f"  {kind:9s} {n:5d}  {os.path.relpath(site, ROOT) if site.startswith(ROOT) else site}")
    return 1 if over else 0


def _table(headers, rows) -> str:
    cells = [list(map(str, headers))] + [[str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
