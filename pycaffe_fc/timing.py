"""Per-layer forward/backward timing, as ``caffe time`` (tools/caffe.cpp: time()), with the
layer-by-layer passes and the heartbeat that let ``fc-caffe time`` say where a long pass is."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

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


class LayerProgress:
    """Where a long pass is: the layer and direction now running, read by ``Heartbeat``."""

    def __init__(self, net: Net) -> None:
        self.names = list(net._layer_names)
        self.layer = -1
        self.direction = ""
        self.iteration = 0
        self.changed = time.monotonic()

    def at(self, direction: str, layer: int) -> None:
        self.direction, self.layer = direction, layer

    def describe(self) -> str:
        if self.layer < 0:
            return "starting"
        it = f"iteration {self.iteration}, " if self.iteration else ""
        return (f"{it}{self.direction} of layer {self.layer + 1}/{len(self.names)} "
                f"'{self.names[self.layer]}'")


class Heartbeat:
    """While a pass runs, log every ``every_s`` seconds without other output which layer it is
    in, so that a huge net's first forward pass does not look hung (``caffe time`` itself is
    silent between "Performing Forward" and "Initial loss")."""

    def __init__(self, progress, log, every_s: float = 10.0) -> None:
        """``progress``: anything with ``describe()`` (a LayerProgress); ``log(msg)`` writes a line."""
        import threading
        self.progress = progress
        self.log = log
        self.every_s = every_s
        self.started = time.monotonic()
        self.last = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fc-caffe-time-heartbeat", daemon=True)

    def touch(self) -> None:
        """Something was just logged: the next heartbeat waits another ``every_s``."""
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            now = time.monotonic()
            if now - self.last >= self.every_s:
                self.log(f"... still running: {self.progress.describe()} ({now - self.started:.0f} s so far)")
                self.last = now

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def forward_by_layer(net: Net, progress: LayerProgress | None = None) -> float:
    """Net::Forward one layer at a time, recording the layer in ``progress``; returns the loss."""
    loss = 0.0
    for i in range(len(net.layers)):
        if progress is not None:
            progress.at("forward", i)
        loss += net.forward_from_to(i, i)
    return loss


def backward_by_layer(net: Net, progress: LayerProgress | None = None) -> None:
    """Net::Backward one layer at a time, recording the layer in ``progress``."""
    for i in range(len(net.layers) - 1, -1, -1):
        if progress is not None:
            progress.at("backward", i)
        net.backward_from_to(i, i)


def time_net(net: Net, iterations: int = 50, warmup: bool = True,
             on_iteration: Callable[[int, float], None] | None = None,
             progress: LayerProgress | None = None) -> NetTiming:
    """Time every layer's Forward and Backward like ``caffe time``: one untimed forward/backward
    first, then ``iterations`` passes; Backward runs on every layer with its bottom_need_backward
    flags, as Caffe's tool does. ``on_iteration(k, ms)`` is called after each pass (Caffe logs
    each one as it ends); ``progress`` follows the layer now running."""
    n = len(net.layers)
    fwd = [0.0] * n
    bwd = [0.0] * n
    per_iter = []
    if warmup:
        net.forward_from_to()
        net.backward_from_to()
    for k in range(iterations):
        if progress is not None:
            progress.iteration = k + 1
        t_iter = time.perf_counter()
        for i, layer in enumerate(net.layers):
            if progress is not None:
                progress.at("forward", i)
            t = time.perf_counter()
            layer.Forward(net.bottom_vecs[i], net.top_vecs[i])
            _sync()
            fwd[i] += time.perf_counter() - t
        for i in range(n - 1, -1, -1):
            if progress is not None:
                progress.at("backward", i)
            t = time.perf_counter()
            net.layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            _sync()
            bwd[i] += time.perf_counter() - t
        per_iter.append((time.perf_counter() - t_iter) * 1e3)
        if on_iteration is not None:
            on_iteration(k + 1, per_iter[-1])
    scale = 1e3 / max(iterations, 1)
    return NetTiming(list(net._layer_names), [l.type for l in net.layers],
                     [f * scale for f in fwd], [b * scale for b in bwd], iterations, per_iter)
