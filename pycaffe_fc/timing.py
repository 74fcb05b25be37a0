"""Per-layer forward/backward timing, as ``caffe time`` (tools/caffe.cpp: time())."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import backend
from .net import Net


@dataclass
class NetTiming:
    """Average milliseconds per iteration, per layer and in total."""

    layer_names: list[str]
    layer_types: list[str]
    forward_ms: list[float]
    backward_ms: list[float]
    iterations: int
    iteration_ms: list[float] = field(default_factory=list)

    @property
    def forward_total_ms(self) -> float:
        return sum(self.forward_ms)

    @property
    def backward_total_ms(self) -> float:
        return sum(self.backward_ms)


def _sync() -> None:
    if backend.mode() == backend.GPU:  # pragma: no cover - GPU only
        backend.cupy.cuda.Device().synchronize()


def time_net(net: Net, iterations: int = 50, warmup: bool = True) -> NetTiming:
    """Time every layer's Forward and Backward like ``caffe time``: one untimed forward/backward
    first, then ``iterations`` passes; Backward runs on every layer with its bottom_need_backward
    flags, as Caffe's tool does."""
    n = len(net.layers)
    fwd = [0.0] * n
    bwd = [0.0] * n
    per_iter = []
    if warmup:
        net.forward_from_to()
        net.backward_from_to()
    for _ in range(iterations):
        t_iter = time.perf_counter()
        for i, layer in enumerate(net.layers):
            t = time.perf_counter()
            layer.Forward(net.bottom_vecs[i], net.top_vecs[i])
            _sync()
            fwd[i] += time.perf_counter() - t
        for i in range(n - 1, -1, -1):
            t = time.perf_counter()
            net.layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            _sync()
            bwd[i] += time.perf_counter() - t
        per_iter.append((time.perf_counter() - t_iter) * 1e3)
    scale = 1e3 / max(iterations, 1)
    return NetTiming(list(net._layer_names), [l.type for l in net.layers],
                     [f * scale for f in fwd], [b * scale for b in bwd], iterations, per_iter)
