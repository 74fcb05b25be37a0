"""``fc-caffe time``: per-layer forward/backward milliseconds, as ``caffe time``.

The log is Caffe's (tools/caffe.cpp ``time()``, glog lines on stderr): "Use CPU.", each layer's
top shapes and the running "Memory required for data", "Performing Forward", "Initial loss",
"Performing Backward", "*** Benchmark begins ***", one "Iteration: k forward-backward time" line
per pass as it ends, then the per-layer table and the averages. Before the net is built, the
blobs' size is estimated from the prototxt alone and a warning names the bytes when they will not
fit in memory; while a pass runs, a line every 10 s names the layer it is in, so a huge net does
not look hung.
"""
from __future__ import annotations

import argparse

from .. import backend
from ..errors import CaffeError
from .common import add_device_arguments, add_net_state_arguments, apply_device, net_state_from_args

#: seconds without output after which a running pass says where it is
HEARTBEAT_S = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model definition prototxt")
    p.add_argument("--iterations", type=int, default=50, help="the number of iterations to time")
    p.add_argument("--weights", default=None, help="optional .caffemodel to load first")
    add_net_state_arguments(p, default_phase="TRAIN")
    add_device_arguments(p)


def _ms(ms: float, gpu: bool) -> str:
    # Caffe's CPU Timer counts whole milliseconds (boost's total_milliseconds); its GPU one, floats.
    return f"{ms:.6g}" if gpu else str(int(ms))


def main(args: argparse.Namespace) -> int:
    from ..net import Net
    from ..proto.io import read_net_param
    from ..solvers.log import info
    from ..timing import Heartbeat, LayerProgress, backward_by_layer, forward_by_layer, time_net
    from ..parallel.train_job import check_memory, estimate_memory

    if args.iterations <= 0:
        raise CaffeError(f"--iterations must be positive, got {args.iterations}")
    phase, level, stages = net_state_from_args(args)
    param = read_net_param(args.model)
    param.state.phase, param.state.level = phase, level
    del param.state.stage[:]
    param.state.stage.extend(stages)
    apply_device(args)
    gpu = backend.mode() == backend.GPU
    if gpu:
        info(f"Use GPU with device ID {0 if args.gpu == 'all' else int(str(args.gpu).split(',')[0])}",
             "caffe.cpp:339")
    else:
        info("Use CPU.", "caffe.cpp:343")
    # before anything is allocated: will the blobs fit?
    check_memory(estimate_memory(param, phase=phase), on_device=gpu, what=f"net '{param.name or args.model}'")
    with Heartbeat(_Stage("setting up the net's layers and filling its weights"),
                   lambda m: info(m, "caffe.cpp:0"), HEARTBEAT_S):
        net = Net(args.model, phase, level=level, stages=stages, weights=args.weights)
    net.keep_forward_columns()  # as the training net does: timed forward/backward pairs
    _log_setup(net, info)

    progress = LayerProgress(net)
    with Heartbeat(progress, lambda m: info(m, "caffe.cpp:0"), HEARTBEAT_S) as beat:
        def log(msg: str, src: str) -> None:
            info(msg, src)
            beat.touch()

        log("Performing Forward", "caffe.cpp:351")
        loss = forward_by_layer(net, progress)
        log(f"Initial loss: {loss:.6g}", "caffe.cpp:356")
        log("Performing Backward", "caffe.cpp:357")
        backward_by_layer(net, progress)
        log("*** Benchmark begins ***", "caffe.cpp:365")
        log(f"Testing for {args.iterations} iterations.", "caffe.cpp:366")
        t = time_net(net, args.iterations, warmup=False, progress=progress,
                     on_iteration=lambda k, ms: log(f"Iteration: {k} forward-backward time: {_ms(ms, gpu)} ms.",
                                                    "caffe.cpp:394"))
    info("Average time per layer: ", "caffe.cpp:397")
    for name, f, b in zip(t.layer_names, t.forward_ms, t.backward_ms):
        info(f"{name:>10}\tforward: {f:.6g} ms.", "caffe.cpp:400")
        info(f"{name:>10}\tbackward: {b:.6g} ms.", "caffe.cpp:403")
    total = sum(int(ms) if not gpu else ms for ms in t.iteration_ms)
    info(f"Average Forward pass: {t.forward_total_ms:.6g} ms.", "caffe.cpp:408")
    info(f"Average Backward pass: {t.backward_total_ms:.6g} ms.", "caffe.cpp:410")
    info(f"Average Forward-Backward: {total / len(t.iteration_ms):.6g} ms.", "caffe.cpp:412")
    info(f"Total Time: {_ms(total, gpu)} ms.", "caffe.cpp:414")
    info("*** Benchmark ends ***", "caffe.cpp:415")
    return 0


class _Stage:
    """A heartbeat's description of a step that is not a pass through the layers."""

    def __init__(self, what: str) -> None:
        self.what = what

    def describe(self) -> str:
        return self.what


def _log_setup(net, info) -> None:
    """Net::Init's per-layer lines: each layer's top shapes and the running total of top-blob
    bytes ("Memory required for data", data only, as Caffe counts it)."""
    used = 0
    for name, tops in zip(net._layer_names, net.top_vecs):
        info(f"Setting up {name}", "net.cpp:124")
        for blob in tops:
            count = 1
            for d in blob.shape:
                count *= d
            info(f"Top shape: {' '.join(str(d) for d in blob.shape)} ({count})", "net.cpp:131")
            used += count
        info(f"Memory required for data: {used * 4}", "net.cpp:139")
