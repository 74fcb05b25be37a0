"""``fc-caffe time``: per-layer forward/backward milliseconds, as ``caffe time``."""
from __future__ import annotations

import argparse
import sys

from .. import backend
from ..errors import CaffeError
from .common import add_device_arguments, add_net_state_arguments, apply_device, net_state_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model definition prototxt")
    p.add_argument("--iterations", type=int, default=50, help="the number of iterations to time")
    p.add_argument("--weights", default=None, help="optional .caffemodel to load first")
    add_net_state_arguments(p, default_phase="TRAIN")
    add_device_arguments(p)


def main(args: argparse.Namespace) -> int:
    from ..net import Net
    from ..timing import time_net

    if args.iterations <= 0:
        raise CaffeError(f"--iterations must be positive, got {args.iterations}")
    apply_device(args)
    phase, level, stages = net_state_from_args(args)
    net = Net(args.model, phase, level=level, stages=stages, weights=args.weights)
    net.keep_forward_columns()  # as the training net does: timed forward/backward pairs
    out = sys.stdout
    print(f"Performing Forward", file=out)
    print(f"Initial loss: {net.forward_from_to()}", file=out)
    print("Performing Backward", file=out)
    net.backward_from_to()
    print("*** Benchmark begins ***", file=out)
    print(f"Testing for {args.iterations} iterations.", file=out)
    t = time_net(net, args.iterations, warmup=False)
    for i, ms in enumerate(t.iteration_ms):
        print(f"Iteration: {i + 1} forward-backward time: {ms:.3f} ms.", file=out)
    print("Average time per layer: ", file=out)
    width = max((len(n) for n in t.layer_names), default=10)
    for name, f, b in zip(t.layer_names, t.forward_ms, t.backward_ms):
        print(f"{name:>{width}}\tforward: {f:.5g} ms.", file=out)
        print(f"{name:>{width}}\tbackward: {b:.5g} ms.", file=out)
    print(f"Average Forward pass: {t.forward_total_ms:.5g} ms.", file=out)
    print(f"Average Backward pass: {t.backward_total_ms:.5g} ms.", file=out)
    print(f"Average Forward-Backward: {sum(t.iteration_ms) / len(t.iteration_ms):.5g} ms.", file=out)
    print(f"Total Time: {sum(t.iteration_ms):.5g} ms.", file=out)
    print("*** Benchmark ends ***", file=out)
    print(f"(mode: {'GPU' if backend.mode() == backend.GPU else 'CPU'})", file=out)
    return 0
