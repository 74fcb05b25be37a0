"""One numerical gradient checker for every layer (as Caffe's GradientChecker).

The objective is L = sum_i <top_i.data, R_i> with fixed random R_i, so dL/dtop_i = R_i; the
analytic bottom and parameter gradients from ``Backward`` are compared with central differences.
"""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from pycaffe_fc.blob import Blob
from pycaffe_fc.layers.base import TRAIN, create_layer
from pycaffe_fc.proto import caffe_pb2


def make_layer(text: str, phase: int = TRAIN):
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    return create_layer(lp, phase)


def make_blobs(arrays) -> list[Blob]:
    out = []
    for a in arrays:
        b = Blob(np.shape(a))
        b.data[...] = a
        out.append(b)
    return out


def setup_layer(text: str, bottom_arrays, n_top: int = 1, phase: int = TRAIN):
    layer = make_layer(text, phase)
    bottom = make_blobs(bottom_arrays)
    top = [Blob() for _ in range(n_top)]
    layer.SetUp(bottom, top)
    return layer, bottom, top


def check_gradient(text: str, bottom_arrays, n_top: int = 1, check_bottom=None, step: float = 1e-2,
                   threshold: float = 1e-2, seed: int = 0, max_checks: int = 80, phase: int = TRAIN,
                   kink: float | None = None, layer_hook=None, top_weights=None):
    """Assert analytic == numerical gradients for the bottoms in ``check_bottom`` (default all)
    and every parameter blob. ``kink``: skip points where a bottom value is within ``kink`` of a
    non-differentiable point at 0 (ReLU-like layers). Returns the layer for further checks."""
    rng = np.random.default_rng(seed)
    layer, bottom, top = setup_layer(text, bottom_arrays, n_top, phase)
    if layer_hook:
        layer_hook(layer)
    check_bottom = range(len(bottom)) if check_bottom is None else check_bottom
    layer.Forward(bottom, top)
    weights = top_weights or [rng.standard_normal(t.shape).astype(np.float32) for t in top]

    def objective() -> float:
        layer.Forward(bottom, top)
        return float(sum((t.data.astype(np.float64) * w).sum() for t, w in zip(top, weights)))

    def analytic():
        layer.Forward(bottom, top)
        for t, w in zip(top, weights):
            t.diff[...] = w
        for b in layer.blobs:
            b.diff[...] = 0
        for b in bottom:
            b.diff[...] = 0
        layer.Backward(top, [i in check_bottom for i in range(len(bottom))], bottom)
        return [b.diff.copy() for b in bottom], [b.diff.copy() for b in layer.blobs]

    bdiffs, pdiffs = analytic()
    targets = [(bottom[i], bdiffs[i], f"bottom {i}") for i in check_bottom]
    targets += [(b, d, f"param {j}") for j, (b, d) in enumerate(zip(layer.blobs, pdiffs))]
    for blob, grad, what in targets:
        # blob.data is fetched before each write (pycaffe's mutable_cpu_data): in GPU mode a host
        # array held across a forward would be stale, exactly as in Caffe
        size = blob.count
        idx = np.arange(size)
        if size > max_checks:
            idx = rng.choice(size, max_checks, replace=False)
        for k in idx:
            orig = float(blob.data.reshape(-1)[k])
            if kink is not None and abs(orig) < kink:
                continue
            blob.data.reshape(-1)[k] = orig + step
            plus = objective()
            blob.data.reshape(-1)[k] = orig - step
            minus = objective()
            blob.data.reshape(-1)[k] = orig
            num = (plus - minus) / (2 * step)
            ana = float(grad.reshape(-1)[k])
            scale = max(abs(num), abs(ana), 1.0)
            assert abs(num - ana) <= threshold * scale, (
                f"{layer.type} {what}[{k}]: analytic {ana:.6g} vs numerical {num:.6g}")
    return layer


def run_layer(text: str, x, top_diff, in_place: bool = False, phase: int = TRAIN):
    """Forward then backward of a one-bottom layer, optionally in place (top is the bottom blob);
    returns (top data, bottom diff, parameter diffs), for comparing the two modes."""
    layer = make_layer(text, phase)
    b = make_blobs([x])[0]
    t = b if in_place else Blob()
    layer.SetUp([b], [t])
    layer.Forward([b], [t])
    y = t.data.copy()
    t.diff[...] = top_diff
    for p in layer.blobs:
        p.diff[...] = 0
    layer.Backward([t], [True], [b])
    return y, b.diff.copy(), [p.diff.copy() for p in layer.blobs]
