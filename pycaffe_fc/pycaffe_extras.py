"""pycaffe's Net conveniences (python/caffe/pycaffe.py) and the rest of _caffe.cpp's surface.

``install(Net)`` attaches them as methods, as pycaffe attaches ``Net.forward_all`` and friends to
the Boost.Python class: ``net.forward_all(**{'data': images})`` runs the net batch by batch over any
number of inputs (the last batch padded with zeros, the padding dropped from the outputs),
``net.forward_backward_all`` does the same with backward, ``net.set_input_arrays(data, labels)``
feeds the net's MemoryData layer, ``net.save_hdf5``/``load_hdf5`` write and read Caffe's HDF5
weights, ``net.before_forward(fn)``/``after_forward``/``before_backward``/``after_backward`` add
Net::Callbacks called with the layer index.

Module-level names of _caffe.cpp: ``Timer``, ``NCCL``/``has_nccl`` (this installation has no NCCL:
fc-caffe's data parallelism is MPI), ``solver_count``/``solver_rank``/``set_*``,
``set_multiprocess``, ``init_log``/``log``; ``Solver.share_weights(net)``.
"""
from __future__ import annotations

import logging
import time
from itertools import zip_longest
from typing import Callable, Iterator, Sequence

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


def save_hdf5(net, filename: str) -> None:
    """pycaffe Net.save_hdf5 (Net::ToHDF5 without diffs): ``data/<layer>/<i>`` float32 datasets."""
    from .proto.hdf5 import write_net_hdf5
    write_net_hdf5(net, str(filename), write_diff=False)


def load_hdf5(net, filename: str) -> None:
    """pycaffe Net.load_hdf5 (Net::CopyTrainedLayersFromHDF5): weights by layer name; layers of
    the file absent from the net are ignored, a blob count or shape mismatch is an error."""
    from .proto.hdf5 import read_hdf5_weights
    filename = str(filename)
    names = set(net._layer_names)
    for name, arrays in read_hdf5_weights(filename):
        if name in names:
            net._copy_layer_blobs(name, arrays, filename)


def _callback_adder(which: str):
    def add(net, fn: Callable[[int], object]) -> None:
        if isinstance(fn, NCCL):
            return  # pycaffe's Net_add_nccl overload: a no-op where Caffe was built without NCCL
        if not callable(fn):
            raise TypeError(f"Net.{which} needs a callable taking the layer index, got {type(fn).__name__}")
        net.callbacks[which].append(fn)
    add.__name__ = which
    add.__doc__ = (f"pycaffe Net.{which}(fn): call ``fn(layer_index)`` {which.replace('_', ' ')} of every "
                   f"layer, as Net::add_{which} (callbacks run in the order they were added).")
    return add


# -- module-level names of _caffe.cpp --------------------------------------------------------------
class Timer:
    """caffe::Timer as pycaffe exposes it: ``start()``, ``stop()`` and the ``ms`` property.

    ``ms`` stops a running timer first and is 0 (with Caffe's warning) when it never ran; in GPU
    mode start and stop wait for the device, as Caffe's CUDA-event timer measures device work."""

    def __init__(self) -> None:
        self._running = False
        self._has_run = False
        self._start = 0.0
        self._elapsed_ms = 0.0

    @staticmethod
    def _sync() -> None:
        from . import backend as be
        if be.mode() == be.GPU:  # pragma: no cover - GPU only
            be.cupy.cuda.Device().synchronize()

    def start(self) -> None:
        if not self._running:
            self._sync()
            self._start = time.perf_counter()
            self._running = True
            self._has_run = True

    def stop(self) -> None:
        if self._running:
            self._sync()
            self._elapsed_ms = (time.perf_counter() - self._start) * 1e3
            self._running = False

    @property
    def ms(self) -> float:
        if not self._has_run:
            from .solvers import log as glog
            glog.warning("Timer has never been run before reading time.", "benchmark.cpp:64")
            return 0.0
        if self._running:
            self.stop()
        return self._elapsed_ms


def has_nccl() -> bool:
    """Whether this installation has NCCL: never (fc-caffe's data parallelism is MPI's)."""
    return False


class NCCL:
    """pycaffe's NCCL class as built without USE_NCCL: ``NCCL(solver, uid)`` constructs an object
    with no methods (no ``new_uid``, no ``bcast``); ``solver.add_callback(nccl)`` and
    ``net.after_backward(nccl)`` accept it and do nothing. Use ``fc-caffe train --gpus N`` (MPI)."""

    def __init__(self, solver, uid) -> None:
        from .solvers.solver import Solver
        # Boost.Python's signature check: (Solver, str); its ArgumentError is a TypeError
        if not isinstance(solver, Solver) or not isinstance(uid, (str, bytes)):
            raise TypeError(f"NCCL(solver, uid) takes a Solver and a str, got {type(solver).__name__} "
                            f"and {type(uid).__name__}")
        self.solver = solver
        self.uid = uid


# Caffe::solver_count_ / solver_rank_ / multiprocess_: set by the user (pycaffe's multi-GPU
# scripts) or, unset, read from the MPI launcher that started this rank of a data-parallel job.
_solver_state: dict[str, int | bool] = {}


def _launcher():
    from .parallel import comm
    return comm


def solver_count() -> int:
    """Caffe::solver_count: solvers in the job (1 alone; the MPI world size under mpiexec)."""
    return int(_solver_state.get("count", _launcher().launcher_world_size()))


def set_solver_count(val: int) -> None:
    _solver_state["count"] = int(val)


def solver_rank() -> int:
    """Caffe::solver_rank: this solver's rank (0 alone; the MPI rank under mpiexec)."""
    return int(_solver_state.get("rank", _launcher().launcher_rank()))


def set_solver_rank(val: int) -> None:
    _solver_state["rank"] = int(val)


def multiprocess() -> bool:
    """Caffe::multiprocess: solvers run in separate processes (true for an MPI job of > 1 rank)."""
    return bool(_solver_state.get("multiprocess", _launcher().launcher_world_size() > 1))


def set_multiprocess(val: bool) -> None:
    _solver_state["multiprocess"] = bool(val)


_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level: int | None = None, stderr: bool | None = None) -> None:
    """pycaffe init_log() / init_log(level) / init_log(level, stderr): glog's set-up, with
    FLAGS_minloglevel = level (0 INFO .. 3 FATAL). fc-caffe always logs to stderr (glog's
    logtostderr); ``stderr=False`` is accepted for scripts that pass it."""
    from .solvers import log as glog
    logger = glog.install()
    if level is not None:
        logger.setLevel(_GLOG_LEVELS.get(int(level), logging.CRITICAL))


def log(message: str) -> None:
    """pycaffe log(s): LOG(INFO) << s, in glog's format on stderr."""
    from .solvers import log as glog
    glog.info(str(message), "_caffe.cpp:107")


def share_weights(solver, net) -> None:
    """pycaffe Solver.share_weights(net): ``net`` uses the solver's net's parameter blobs
    (Net::ShareTrainedLayersWith), so a test net follows training without copies."""
    net.share_with(solver.net)


def _solver_add_callback(original):
    def add_callback(self, *args):
        if len(args) == 1 and isinstance(args[0], NCCL):
            return None  # pycaffe's Solver_add_nccl overload: a no-op without NCCL
        return original(self, *args)
    add_callback.__doc__ = original.__doc__
    add_callback.__wrapped__ = original
    return add_callback


def install_solver(solver_class: type) -> None:
    """Attach pycaffe's Solver extras (``share_weights``, ``add_callback(nccl)``), idempotently."""
    solver_class.share_weights = share_weights
    if not hasattr(solver_class.add_callback, "__wrapped__"):
        solver_class.add_callback = _solver_add_callback(solver_class.add_callback)


def install(net_class: type) -> None:
    """Attach these conveniences to ``net_class`` (idempotent), as pycaffe.py does."""
    net_class.forward_all = forward_all
    net_class.forward_backward_all = forward_backward_all
    net_class.set_input_arrays = set_input_arrays
    net_class._batch = batches
    net_class.save_hdf5 = save_hdf5
    # the _caffe.cpp names pycaffe.py builds its own on: index lists, per-layer blob ids, and
    # Net::ForwardFromTo / BackwardFromTo by layer index
    net_class._inputs = property(lambda self: list(self._input_ids))
    net_class._outputs = property(lambda self: list(self._output_ids))
    net_class._bottom_ids = lambda self, i: list(self.bottom_ids[i])
    net_class._top_ids = lambda self, i: list(self.top_ids[i])
    net_class._forward = lambda self, start, end: self.forward_from_to(start, end)
    net_class._backward = lambda self, start, end: self.backward_from_to(start, end)
    net_class.load_hdf5 = load_hdf5
    for which in ("before_forward", "after_forward", "before_backward", "after_backward"):
        setattr(net_class, which, _callback_adder(which))
