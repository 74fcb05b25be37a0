"""pycaffe's Net conveniences (python/caffe/pycaffe.py): batched forward/backward, MemoryData input.

``install(Net)`` attaches them as methods, as pycaffe attaches ``Net.forward_all`` and friends to
the Boost.Python class: ``net.forward_all(**{'data': images})`` runs the net batch by batch over any
number of inputs (the last batch padded with zeros, the padding dropped from the outputs),
``net.forward_backward_all`` does the same with backward, ``net.set_input_arrays(data, labels)``
feeds the net's MemoryData layer.
"""
from __future__ import annotations

from itertools import zip_longest
from typing import Iterator, Sequence

import numpy as np

from . import backend
from .errors import CaffeError


def _batch_size(net) -> int:
    # pycaffe: the first dimension of the net's first blob.
    if not net._blobs:
        raise CaffeError(f"net '{net.name}': no blobs to batch over")
    return int(net._blobs[0].shape[0])


def batches(net, blobs: dict) -> Iterator[dict]:
    """pycaffe's Net._batch: ``blobs`` cut into the net's batch size, the last batch zero-padded."""
    if not blobs:
        return
    nums = {name: len(a) for name, a in blobs.items()}
    num = next(iter(nums.values()))
    if any(n != num for n in nums.values()):
        raise CaffeError(f"net '{net.name}': inputs of different lengths {nums}")
    bs = _batch_size(net)
    full, remainder = divmod(num, bs)
    for b in range(full):
        yield {name: a[b * bs:(b + 1) * bs] for name, a in blobs.items()}
    if remainder:
        padded = {}
        for name, a in blobs.items():
            a = np.asarray(a)
            pad = np.zeros((bs - remainder,) + a.shape[1:], a.dtype)
            padded[name] = np.concatenate([a[-remainder:], pad])
        yield padded


def _collect(store: dict, outs: dict) -> None:
    for name, arr in outs.items():
        # copy: the blob's memory is reused by the next batch
        store.setdefault(name, []).append(np.array(backend.to_numpy(arr)))


def _package(store: dict, keys, num: int | None) -> dict:
    out = {}
    for name in keys:
        parts = store.get(name, [])
        a = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
        out[name] = a[:num] if num is not None else a
    return out


def _num_items(kwargs: dict) -> int | None:
    return len(next(iter(kwargs.values()))) if kwargs else None


def forward_all(net, blobs: Sequence[str] | None = None, **kwargs) -> dict:
    """pycaffe Net.forward_all: forward every batch of the given inputs; outputs (and ``blobs``)
    concatenated over the batches, padding discarded."""
    keys = set(net.outputs) | set(blobs or ())
    store: dict = {}
    if not kwargs:
        _collect(store, net.forward(blobs=blobs))
    for batch in batches(net, kwargs):
        _collect(store, net.forward(blobs=blobs, **batch))
    return _package(store, keys, _num_items(kwargs))


def forward_backward_all(net, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None,
                         **kwargs) -> tuple[dict, dict]:
    """pycaffe Net.forward_backward_all: per batch, forward the inputs given in kwargs and backward
    the output diffs given in kwargs; returns (outputs, input diffs), padding discarded."""
    out_keys = set(net.outputs) | set(blobs or ())
    diff_keys = set(net.inputs) | set(diffs or ())
    fwd = {k: v for k, v in kwargs.items() if k in net.inputs}
    bwd = {k: v for k, v in kwargs.items() if k in net.outputs}
    unknown = set(kwargs) - set(fwd) - set(bwd)
    if unknown:
        raise CaffeError(f"net '{net.name}': {sorted(unknown)} are neither inputs {net.inputs} "
                         f"nor outputs {net.outputs}")
    outs: dict = {}
    grads: dict = {}
    for fb, bb in zip_longest(batches(net, fwd), batches(net, bwd), fillvalue={}):
        _collect(outs, net.forward(blobs=blobs, **fb))
        _collect(grads, net.backward(diffs=diffs, **bb))
    num = _num_items(kwargs)
    return _package(outs, out_keys, num), _package(grads, diff_keys, num)


def set_input_arrays(net, data: np.ndarray, labels: np.ndarray) -> None:
    """pycaffe Net.set_input_arrays: hand (data, labels) to the net's first MemoryData layer
    (1-d labels become N x 1 x 1 x 1, as pycaffe reshapes them)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = np.ascontiguousarray(labels[:, None, None, None])
    for layer in net.layers:
        if layer.type == "MemoryData":
            layer.set_input_arrays(data, labels)
            return
    raise CaffeError(f"net '{net.name}': set_input_arrays needs a MemoryData layer, the net has none")


def install(net_class: type) -> None:
    """Attach these conveniences to ``net_class`` (idempotent), as pycaffe.py does."""
    net_class.forward_all = forward_all
    net_class.forward_backward_all = forward_backward_all
    net_class.set_input_arrays = set_input_arrays
    net_class._batch = batches
