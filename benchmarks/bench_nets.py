#!/usr/bin/env python3
"""Forward+backward speed of whole nets on the CPU, against numpy's GEMM rate and BVLC Caffe.

For LeNet (batch 64), cifar10_quick (batch 100), NiN-ImageNet and GoogLeNet (batch 8, 224x224)
this times ``forward`` then ``backward`` with ``force_backward: true`` (so the input gradient is
computed too, as in ``caffe time`` on the ``*_fb`` nets of ../shared/caffe-reference), in TRAIN
phase as ``caffe time`` builds its net, after 2 s of warm-up passes. It counts the nets' FLOPs (a
multiply-add is 2 FLOPs; Convolution, Deconvolution and InnerProduct forward; backward counted as
2x forward for the weight and input gradients) and prints the achieved GFLOP/s beside numpy's
float32 GEMM rate (np.matmul of 1024x1024 matrices) measured just before each timed pass, their
ratio, the GEMM rate at the net's largest GEMM shape, and BVLC Caffe's own time from timing.json
with our ratio to it. On a machine shared with other jobs both rates drift: the headline ratio is
best pass against best GEMM measurement (each the run's estimate of the quiet machine), and the
median over passes of each pass against the GEMM rate measured just before it is shown beside.

Usage (from the repository root):

    python benchmarks/bench_nets.py                      # all four nets
    python benchmarks/bench_nets.py --nets nin --iters 5 --per-layer

Nothing here changes the BLAS thread count; run it as the tests run (OpenBLAS, 2 threads here).
pycaffe_fc is imported before numpy, as the `fc-caffe` command does, so that its worker threads
(im2col, col2im, pooling: see pycaffe_fc/threads.py) do not race OpenBLAS's idle spin.
A benchmark only: it asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# before numpy, as in `fc-caffe`: pycaffe_fc settles the BLAS's idle spin before numpy loads it
import pycaffe_fc  # noqa: E402,F401
import numpy as np  # noqa: E402

SHARED = os.environ.get("FC_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
REF = os.path.join(SHARED, "caffe-reference")

# key: (prototxt, batch, timing.json key, target fraction of the GEMM rate)
NETS = {
    "lenet": (os.path.join(SHARED, "caffe-models/mnist_lenet/lenet.prototxt"), 64, "lenet_b64", 0.30),
    "cifar10_quick": (os.path.join(SHARED, "caffe-models/cifar10/cifar10_quick.prototxt"), 100,
                      "cifar10_quick_b100", 0.30),
    "nin": (os.path.join(REF, "timing/nin_imagenet_b8.prototxt"), 8, "nin_imagenet_b8", 0.60),
    "googlenet": (os.path.join(REF, "timing/googlenet_b8.prototxt"), 8, "googlenet_b8", 0.45),
}


def gemm_rate(m: int, k: int, n: int, seconds: float = 0.6) -> float:
    """Best-of-runs float32 np.matmul rate in GFLOP/s for (m, k) x (k, n)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    np.matmul(a, b, out=c)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2.0 * m * k * n / best / 1e9


def load_net(path: str, batch: int):
    """The prototxt with its Input batch set and force_backward on, built in TRAIN phase."""
    import pycaffe_fc as caffe
    from benchnet import input_net_param

    net = caffe.Net(input_net_param(path, batch), caffe.TRAIN)
    net.keep_forward_columns()  # as `fc-caffe time` and the Solver's training net do
    return net


def layer_flops(net) -> tuple[dict[str, float], tuple[int, int, int]]:
    """Forward FLOPs of each Convolution/Deconvolution/InnerProduct layer, and the net's largest
    GEMM as (M, K, N) (for a GEMM-rate measurement at a size typical of the net)."""
    flops: dict[str, float] = {}
    biggest, big_shape = 0.0, (1024, 1024, 1024)
    for name, layer, bottoms, tops in zip(net._layer_names, net.layers, net.bottom_vecs, net.top_vecs):
        if layer.type in ("Convolution", "Deconvolution"):
            w = layer.blobs[0].shape
            k = int(np.prod(w[1:]))
            if layer.type == "Convolution":
                positions = tops[0].count // tops[0].shape[layer.geom.channel_axis]
                m = w[0]
            else:
                positions = bottoms[0].count // bottoms[0].shape[layer.geom.channel_axis]
                m = w[0]
                k = int(np.prod(w[1:]))
            f = 2.0 * m * k * positions * len(bottoms)
            shape = (m // layer.group, k, positions)
        elif layer.type == "InnerProduct":
            rows = layer.m
            f = 2.0 * rows * layer.k * layer.num_output
            shape = (rows, layer.k, layer.num_output)
        else:
            continue
        flops[name] = f
        if f > biggest:
            biggest, big_shape = f, shape
    return flops, big_shape


class GemmProbe:
    """A short np.matmul 1024^3 measurement, repeated next to every timed pass: on a machine
    shared with other jobs the GEMM rate drifts, and the pass is judged against the rate of the
    moment (best of three ~10 ms products)."""

    def __init__(self, n: int = 1024) -> None:
        rng = np.random.default_rng(1)
        self.a = rng.standard_normal((n, n), dtype=np.float32)
        self.b = rng.standard_normal((n, n), dtype=np.float32)
        self.c = np.empty((n, n), np.float32)
        self.flop = 2.0 * n ** 3

    def __call__(self, reps: int = 3) -> float:
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            np.matmul(self.a, self.b, out=self.c)
            best = min(best, time.perf_counter() - t)
        return self.flop / best / 1e9


def time_net(net, iters: int, per_layer: bool, probe: GemmProbe, warmup_s: float = 2.0):
    """Time ``iters`` forward+backward passes after ``warmup_s`` seconds of them (at least one
    pass). Returns per-pass lists of
    forward ms, backward ms and the GEMM rate measured just before the pass, and per layer the
    best forward and backward ms."""
    rng = np.random.default_rng(0)
    for name in net.inputs:
        b = net.blobs[name]
        b.data[...] = rng.standard_normal(b.shape, dtype=np.float32)
    outs = net.outputs

    def set_top_diffs():
        for name in outs:
            b = net.blobs[name]
            b.diff[...] = rng.standard_normal(b.shape, dtype=np.float32) if b.count > 1 else 1.0

    layer_ms: dict[str, list] = defaultdict(lambda: [[], []])
    if per_layer:
        for i, layer in enumerate(net.layers):
            _instrument(layer, net._layer_names[i], layer_ms)
    # warm up for a while, not one pass: on a VM whose cores sat idle, wake-ups of the other
    # core stay slow for the first second or so, which the many short thread hand-offs of the
    # small nets feel (a training run is long past that)
    t_end = time.perf_counter() + warmup_s
    while True:
        net.forward()
        set_top_diffs()
        net.backward()
        if time.perf_counter() >= t_end:
            break
    layer_ms.clear()
    fwd, bwd, gemm = [], [], []
    for _ in range(iters):
        gemm.append(probe())
        t0 = time.perf_counter()
        net.forward()
        t1 = time.perf_counter()
        set_top_diffs()
        t2 = time.perf_counter()
        net.backward()
        t3 = time.perf_counter()
        fwd.append((t1 - t0) * 1e3)
        bwd.append((t3 - t2) * 1e3)
    return fwd, bwd, gemm, {k: (min(v[0]), min(v[1]) if v[1] else 0.0) for k, v in layer_ms.items()}


def _instrument(layer, name, acc) -> None:
    f, b = layer.Forward, layer.Backward

    def forward(bottom, top):
        t = time.perf_counter()
        r = f(bottom, top)
        acc[name][0].append((time.perf_counter() - t) * 1e3)
        return r

    def backward(top, prop, bottom):
        t = time.perf_counter()
        b(top, prop, bottom)
        acc[name][1].append((time.perf_counter() - t) * 1e3)

    layer.Forward, layer.Backward = forward, backward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of " + ", ".join(NETS))
    ap.add_argument("--iters", type=int, default=0, help="timed passes per net (default: 20 for LeNet, "
                                                         "10 for cifar10_quick, 5 for NiN and GoogLeNet)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed passes first (default 2)")
    ap.add_argument("--per-layer", action="store_true", help="also print each layer's forward/backward ms")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)

    timing = {}
    tpath = os.path.join(REF, "timing.json")
    if os.path.exists(tpath):
        with open(tpath) as f:
            timing = json.load(f).get("nets_force_backward", {})

    probe = GemmProbe()
    peak = gemm_rate(1024, 1024, 1024)
    print(f"numpy {np.__version__} float32 GEMM (np.matmul 1024x1024x1024): {peak:.1f} GFLOP/s at start")
    default_iters = {"lenet": 20, "cifar10_quick": 10, "nin": 5, "googlenet": 5}
    rows = []
    for key in [k.strip() for k in args.nets.split(",") if k.strip()]:
        if key not in NETS:
            print(f"unknown net '{key}' (choose from {', '.join(NETS)})", file=sys.stderr)
            return 2
        path, batch, tkey, target = NETS[key]
        if not os.path.exists(path):
            print(f"{key}: {path} is missing, skipped")
            continue
        net = load_net(path, batch)
        flops, shape = layer_flops(net)
        total_flops = 3.0 * sum(flops.values())  # forward + backward (weights and input gradients)
        typical = gemm_rate(*shape, seconds=0.3)
        iters = args.iters or default_iters.get(key, 5)
        fwd, bwd, gemm, per_layer = time_net(net, iters, args.per_layer, probe, args.warmup)
        total = [f + b for f, b in zip(fwd, bwd)]
        rates = [total_flops / (t / 1e3) / 1e9 for t in total]
        ratios = [r / g for r, g in zip(rates, gemm)]
        best = int(np.argmin(total))
        caffe_ms = timing.get(tkey, {}).get("avg_forward_backward_ms")
        best_gemm = max(max(gemm), peak)
        row = dict(net=key, batch=batch, iters=iters, fwd_ms=fwd[best], bwd_ms=bwd[best], total_ms=total[best],
                   mean_total_ms=float(np.mean(total)), ms_per_image=total[best] / batch,
                   gflop_per_pass=total_flops / 1e9, gflops=rates[best], gemm_best=best_gemm,
                   ratio=rates[best] / best_gemm, ratio_median=float(np.median(ratios)),
                   ratio_max=float(np.max(ratios)), gemm_typical=typical, typical_shape=list(shape),
                   target=target, caffe_ms=caffe_ms,
                   caffe_gflops=(total_flops / (caffe_ms / 1e3) / 1e9) if caffe_ms else None)
        if per_layer:
            # each layer's best pass is likelier to have met a quiet moment than a whole pass
            layer_sum = sum(f + b for f, b in per_layer.values())
            row.update(layer_best_sum_ms=layer_sum,
                       layer_best_ratio=total_flops / (layer_sum / 1e3) / 1e9 / best_gemm)
        rows.append(row)
        if args.per_layer:
            print(f"\n{key}: per layer, best of {iters} (ms forward / backward)")
            for name in net._layer_names:
                if name in per_layer:
                    f, b = per_layer[name]
                    extra = ""
                    if name in flops and f + b:
                        extra = f"  {3 * flops[name] / ((f + b) / 1e3) / 1e9:6.1f} GFLOP/s"
                    print(f"  {name:40s} {f:8.2f} {b:8.2f}{extra}")
        del net

    print()
    hdr = (f"{'net':14s} {'batch':>5s} {'fwd ms':>8s} {'bwd ms':>8s} {'ms/img':>7s} {'GFLOP':>6s} "
           f"{'GFLOP/s':>8s} {'GEMM':>6s} {'ratio':>6s} {'median':>6s} {'target':>6s} {'GEMM@net':>8s} "
           f"{'Caffe ms':>9s} {'Caffe GF/s':>10s} {'ours/Caffe':>10s}")
    print(hdr)
    for r in rows:
        caffe = f"{r['caffe_ms']:9.1f} {r['caffe_gflops']:10.1f} {r['total_ms'] / r['caffe_ms']:10.2f}" \
            if r["caffe_ms"] else f"{'-':>9s} {'-':>10s} {'-':>10s}"
        print(f"{r['net']:14s} {r['batch']:5d} {r['fwd_ms']:8.1f} {r['bwd_ms']:8.1f} {r['ms_per_image']:7.2f} "
              f"{r['gflop_per_pass']:6.2f} {r['gflops']:8.1f} {r['gemm_best']:6.1f} {r['ratio']:6.0%} "
              f"{r['ratio_median']:6.0%} {r['target']:6.0%} {r['gemm_typical']:8.1f} {caffe}")
    for r in rows:
        if "layer_best_sum_ms" in r:
            print(f"{r['net']}: sum of per-layer best forward+backward {r['layer_best_sum_ms']:.1f} ms -> "
                  f"ratio {r['layer_best_ratio']:.0%} of the best GEMM rate")
    print("\nfwd/bwd ms, ms/img, GFLOP/s: the fastest pass. GEMM: the best np.matmul 1024^3 GFLOP/s of the run "
          "(one\nmeasurement before each pass); ratio: fastest-pass GFLOP/s / that GEMM rate (both best-of: what a "
          "quiet\nmachine gives); median: median over the passes of each pass's GFLOP/s / the GEMM rate just before it;"
          "\nGEMM@net: np.matmul at the net's largest GEMM shape; Caffe: BVLC Caffe `caffe time` with "
          "force_backward\n(timing.json, same FLOP count); ours/Caffe: time ratio of the fastest pass (<1 is faster).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
