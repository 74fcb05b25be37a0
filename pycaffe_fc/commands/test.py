"""``fc-caffe test``: score a model, as ``caffe test`` (tools/caffe.cpp ``test()``).

Runs ``--iterations`` forward passes of ``--model`` with ``--weights`` (TEST phase unless
``--phase`` says otherwise), logging every output element of every batch and then their means,
with the loss-weighted value for loss outputs, in Caffe's words.
"""
from __future__ import annotations

import argparse

import numpy as np

from .. import backend
from ..errors import CaffeError
from ..solvers.log import fmt, info
from .common import add_net_state_arguments, net_state_from_args

f32 = np.float32


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-model", required=True, help="the model definition protocol buffer text file")
    p.add_argument("--weights", "-weights", required=True, help="the trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("--iterations", "-iterations", type=int, default=50, help="the number of batches to score")
    p.add_argument("--gpus", "--gpu", "-gpus", "-gpu", dest="gpus", default="",
                   help="run on this GPU (the first of a list; 'all' means device 0); default: the CPU")
    add_net_state_arguments(p, default_phase="TEST")


def score(net, iterations: int) -> tuple[float, list[tuple[str, float, float]]]:
    """The loop of caffe.cpp's test(): (mean loss, [(output name, mean score, loss weight)])."""
    scores = None
    loss = f32(0)
    names: list[str] = []
    for i in range(iterations):
        iter_loss = net.Forward()
        loss += f32(iter_loss)
        batch_names, values = [], []
        for name in net.outputs:
            v = np.asarray(backend.to_numpy(net.blobs[name].data), dtype=np.float32).ravel()
            for x in v:
                info(f"Batch {i}, {name} = {fmt(x)}", "caffe.cpp:313")
            batch_names += [name] * v.size
            values.append(v)
        batch = np.concatenate(values) if values else np.zeros(0, np.float32)
        if scores is None:
            scores, names = batch.copy(), batch_names
        else:
            scores += batch
    loss = f32(loss / f32(iterations))
    info(f"Loss: {fmt(loss)}", "caffe.cpp:318")
    lw = net.blob_loss_weights
    out = []
    for name, s in zip(names, scores if scores is not None else []):
        mean = f32(s / f32(iterations))
        w = lw[name]
        extra = f" (* {fmt(w)} = {fmt(f32(w) * mean)} loss)" if w else ""
        info(f"{name} = {fmt(mean)}{extra}", "caffe.cpp:330")
        out.append((name, float(mean), float(w)))
    return float(loss), out


def main(args: argparse.Namespace) -> int:
    from ..net import Net
    if args.iterations <= 0:
        raise CaffeError(f"--iterations must be positive, got {args.iterations}")
    gpus = (args.gpus or "").strip()
    if gpus and backend.gpu_available():
        try:
            dev = 0 if gpus == "all" else int(gpus.split(",")[0])
        except ValueError:
            raise CaffeError(f"--gpus: expected a device id, a list or 'all'; got '{gpus}'") from None
        backend.set_device(dev)
        backend.set_mode_gpu()
        info(f"Use GPU with device ID {dev}", "caffe.cpp:275")
    else:
        backend.set_mode_cpu()
        info("Use CPU.", "caffe.cpp:283")
    phase, level, stages = net_state_from_args(args)
    net = Net(args.model, phase, level=level, stages=stages)
    net.copy_from(args.weights)
    info(f"Running for {args.iterations} iterations.", "caffe.cpp:290")
    score(net, args.iterations)
    return 0
