"""The flat gradient buffer, the ``--sync`` algorithms, and the solver callback that all-reduces.

As Caffe's P2PSync/NCCL callbacks do, after the iter_size forward/backward passes and before
ApplyUpdate (``on_gradients_ready``) every worker's parameter gradients are summed over all
workers and scaled by 1/p, giving every worker the gradient of the global mean loss; then every
worker applies the same update. The gradients travel as one contiguous float32 host buffer laid
out in backward order (or a few large buckets of it), never one message per blob.

With ``overlap``, a bucket starts its reduction as soon as the backward pass has produced all of
its gradients (Net.set_after_backward), from the last layer backwards, on a communication thread
(MPI releases the GIL), so the communication hides behind the rest of the backward pass.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import backend
from ..blob import HEAD_AT_CPU, HEAD_AT_GPU
from ..errors import CaffeError
from .comm import World, check_same_everywhere, mpi
from .pipelined import PipelinedTreeAllreduce
from .ps import ps_allreduce
from .tree import tree_allreduce

SYNC_MODES = ("tree", "ps", "mpi", "pipelined-tree")
DEFAULT_BUCKET_BYTES = 4 * 1024 * 1024
MIN_BUCKET_BYTES = 256 * 1024


def default_bucket_bytes(total_bytes: int) -> int:
    """Overlap buckets: about a quarter of the gradients (so that small nets still get a few),
    within [256 KiB, 4 MiB]: large enough to keep messages efficient, small enough that the
    first ones leave while most of the backward pass is still to run."""
    return int(min(DEFAULT_BUCKET_BYTES, max(MIN_BUCKET_BYTES, total_bytes // 4)))

Allreduce = Callable[[np.ndarray, int], None]


def make_allreduce(comm, mode: str = "tree", segment_bytes: int | None = None) -> Allreduce:
    """``f(buf, tag)``: in-place sum of a float32 numpy buffer over every rank of ``comm``.

    tree: binomial reduction tree (FireCaffe); ps: parameter server at rank 0; mpi: MPI's own
    Allreduce; pipelined-tree: segments streamed through two binary trees.
    """
    scratch = _Scratch()
    if mode == "tree":
        def run_tree(buf: np.ndarray, tag: int = 0) -> None:
            tree_allreduce(comm, buf, scratch.get(buf), tag=tag)
        return run_tree
    if mode == "ps":
        def run_ps(buf: np.ndarray, tag: int = 0) -> None:
            ps_allreduce(comm, buf, scratch.get(buf), tag=tag)
        return run_ps
    if mode == "mpi":
        MPI = mpi()

        def run_mpi(buf: np.ndarray, tag: int = 0) -> None:
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return run_mpi
    if mode == "pipelined-tree":
        return PipelinedTreeAllreduce(comm, segment_bytes=segment_bytes)
    raise CaffeError(f"--sync must be one of {', '.join(SYNC_MODES)}, got '{mode}'")


class _Scratch:
    """One receive buffer, grown to the largest bucket and sliced for smaller ones."""

    def __init__(self) -> None:
        self.a = np.empty(0, np.float32)

    def get(self, like: np.ndarray) -> np.ndarray:
        if self.a.size < like.size or self.a.dtype != like.dtype:
            self.a = np.empty(like.size, like.dtype)
        return self.a[:like.size]


# -- the flat buffer ---------------------------------------------------------------------------
@dataclass
class Bucket:
    """A contiguous range [start, end) of the flat buffer holding whole parameters."""

    index: int
    start: int
    end: int
    params: list[int] = field(default_factory=list)   # learnable param ids
    ready_layer: int = 0                               # ready once backward has passed this layer


class GradientBuffer:
    """All learnable parameters' gradients as one float32 host buffer, in backward order.

    A parameter's gradient is complete once backward has run every layer that uses it (shared
    parameters have several), i.e. after the lowest such layer; parameters are laid out by that
    layer, last layer first, and cut into buckets of about ``bucket_bytes``.

    On a GPU (a net built in GPU mode), as Caffe's parallel.cpp flattens the parameters into one
    device buffer, each bucket is one contiguous device array and every parameter's device diff
    is a view into it, so the layers accumulate their gradients straight into the buckets; the
    host buffer is pinned memory, and a bucket goes down in one copy and comes back in one (two
    transfers per bucket per iteration, instead of two per parameter). On the CPU the diffs are
    copied into and out of the host buffer parameter by parameter, as before.
    """

    def __init__(self, net, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.net = net
        params = net.learnable_params
        last_user = [len(net.layers)] * len(params)    # lowest layer id using each param
        for net_pid, (layer_id, _) in enumerate(net.param_layer_indices):
            lid = net.learnable_param_ids[net_pid]
            last_user[lid] = min(last_user[lid], layer_id)
        self.ready_layer = last_user
        order = sorted(range(len(params)), key=lambda i: (-last_user[i], i))
        self.order = order
        self.offsets: dict[int, tuple[int, int]] = {}
        pos = 0
        for i in order:
            self.offsets[i] = (pos, pos + params[i].count)
            pos += params[i].count
        self.size = pos
        self.on_device = bool(getattr(net, "on_device", False)) and backend.cupy is not None
        self.flat = _pinned_zeros(pos) if self.on_device else np.zeros(pos, np.float32)
        self.buckets: list[Bucket] = []
        cur: Bucket | None = None
        limit = max(1, int(bucket_bytes) // 4)
        for i in order:
            a, b = self.offsets[i]
            if cur is None or cur.end - cur.start >= limit:
                cur = Bucket(len(self.buckets), a, a, [], last_user[i])
                self.buckets.append(cur)
            cur.end = b
            cur.params.append(i)
            cur.ready_layer = min(cur.ready_layer, last_user[i])
        self._bucket_of = {i: bk for bk in self.buckets for i in bk.params}
        self.device_buckets: list = []  # bound at the first gather or scatter of gradients
        self._views: dict[int, object] = {}

    @property
    def nbytes(self) -> int:
        return self.size * 4

    # -- the device buckets (GPU mode) -----------------------------------------------------
    def _bind_device_buckets(self) -> None:
        """One device array per bucket; each parameter's device diff becomes a view into it
        (Caffe's apply_buffers), keeping its current value. Blobs sharing a parameter's diff
        share its SyncedMemory, so they follow."""
        cp = backend.cupy
        self.device_buckets = [cp.zeros(bk.end - bk.start, np.float32) for bk in self.buckets]
        for bk in self.buckets:
            for i in bk.params:
                self._bind(i)

    def _bind(self, i: int) -> None:
        bk = self._bucket_of[i]
        a, b = self.offsets[i]
        blob = self.net.learnable_params[i]
        view = self.device_buckets[bk.index][a - bk.start:b - bk.start].reshape(blob.shape)
        with backend.device_side(True):
            current = blob.diff  # the device values (copied up once if the host had newer ones)
            if current is not view:
                view[...] = current
        _set_device_diff(blob, view)
        self._views[i] = view

    def _bound(self, bucket: Bucket) -> None:
        """Bind the buckets on first use (a buffer used only for the weights never binds), and
        re-bind parameters whose diff memory was replaced since (e.g. a reshape or set_diff)."""
        if not self.device_buckets:
            self._bind_device_buckets()
            return
        params = self.net.learnable_params
        for i in bucket.params:
            if _device_diff(params[i]) is not self._views[i]:
                self._bind(i)

    def gather_bucket(self, bucket: Bucket) -> None:
        """The bucket's gradients into the host buffer: one device-to-host copy on a GPU."""
        if not self.on_device:
            self.gather(bucket.params)
            return
        self._bound(bucket)
        params = self.net.learnable_params
        for i in bucket.params:
            _device_head(params[i])  # a diff last written on the host goes up first (rare)
        self.device_buckets[bucket.index].get(out=self.flat[bucket.start:bucket.end])

    def scatter_bucket(self, bucket: Bucket, scale: float = 1.0) -> None:
        """``scale`` times the bucket's host buffer back into the diffs: one host-to-device copy."""
        if not self.on_device:
            self.scatter(scale, bucket.params)
            return
        self._bound(bucket)
        host = self.flat[bucket.start:bucket.end]
        if scale != 1:
            np.multiply(host, np.float32(scale), out=host)  # on the host: no kernel launch
        self.device_buckets[bucket.index].set(host)
        params = self.net.learnable_params
        for i in bucket.params:
            _mark_device_newer(params[i])

    def gather(self, param_ids=None) -> None:
        """Copy the gradients (blob diffs; device memory on a GPU) into the host buffer."""
        if self.on_device and param_ids is None:
            for bk in self.buckets:
                self.gather_bucket(bk)
            return
        params = self.net.learnable_params
        for i in (self.order if param_ids is None else param_ids):
            a, b = self.offsets[i]
            self.flat[a:b] = backend.to_numpy(params[i].diff).reshape(-1)

    def scatter(self, scale: float = 1.0, param_ids=None) -> None:
        """Write ``scale`` times the buffer back into the blob diffs (Caffe scales the summed
        gradient by 1/solver_count: the gradient of the global mean loss)."""
        if self.on_device and param_ids is None:
            for bk in self.buckets:
                self.scatter_bucket(bk, scale)
            return
        params = self.net.learnable_params
        s = np.float32(scale)
        for i in (self.order if param_ids is None else param_ids):
            a, b = self.offsets[i]
            blob = params[i]
            src = self.flat[a:b].reshape(blob.shape)
            if s != 1:
                src = src * s
            if isinstance(blob.diff, np.ndarray):
                blob.diff[...] = src
            else:
                blob.diff[...] = backend.get_array_module(blob.diff).asarray(src)

    def gather_data(self) -> np.ndarray:
        """The weights (blob data) in the same layout, as a new host array."""
        params = self.net.learnable_params
        out = np.empty(self.size, np.float32)
        for i in self.order:
            a, b = self.offsets[i]
            out[a:b] = backend.to_numpy(params[i].data).reshape(-1)
        return out

    def scatter_data(self, flat: np.ndarray) -> None:
        params = self.net.learnable_params
        for i in self.order:
            a, b = self.offsets[i]
            blob = params[i]
            src = flat[a:b].reshape(blob.shape)
            if isinstance(blob.data, np.ndarray):
                blob.data[...] = src
            else:
                blob.data[...] = backend.get_array_module(blob.data).asarray(src)


def _pinned_zeros(n: int) -> np.ndarray:
    """A float32 host array in page-locked memory (device copies run at full speed)."""
    import cupyx  # type: ignore
    a = cupyx.empty_pinned((n,), np.float32)
    a[...] = 0
    return a


# The bucket binding works on a Blob's diff SyncedMemory (blob.py): the device array is replaced
# in place, as Caffe's SyncedMemory::set_gpu_data, so every blob sharing that memory follows.
def _set_device_diff(blob, view) -> None:
    mem = blob._fm
    mem.gpu = view
    mem.head = HEAD_AT_GPU


def _device_diff(blob):
    return blob._fm.gpu


def _device_head(blob) -> None:
    mem = blob._fm
    if mem.head == HEAD_AT_CPU:
        mem.to_gpu()  # copies into the bound view (SyncedMemory keeps a contiguous device array)


def _mark_device_newer(blob) -> None:
    blob._fm.head = HEAD_AT_GPU


def broadcast_weights(world: World, net) -> None:
    """Every rank starts from rank 0's weights (as Caffe's P2PSync/NCCL broadcast the root
    solver's parameters before training): ranks may have drawn different random fillers."""
    if world.size == 1:
        return
    gb = GradientBuffer(net, bucket_bytes=1 << 62)
    flat = gb.gather_data()
    world.comm.Bcast(flat, root=0)
    gb.scatter_data(flat)


def weights_checksum(net, solver=None) -> str:
    """A hash of every updated weight (learnable params with a non-zero lr_mult; BatchNorm's
    running statistics have lr_mult 0 and are per worker) plus the solver's iteration."""
    import hashlib
    h = hashlib.sha256()
    for blob, lr in zip(net.learnable_params, net.params_lr):
        if lr != 0:
            h.update(np.ascontiguousarray(backend.to_numpy(blob.data)).tobytes())
    if solver is not None:
        h.update(str(getattr(solver, "iter", 0)).encode())
    return h.hexdigest()[:16]


# -- communication thread for the overlap ------------------------------------------------------
class _CommThread:
    """Runs the chosen all-reduce on buckets, in submission order, beside the backward pass."""

    def __init__(self, allreduce: Allreduce) -> None:
        self.allreduce = allreduce
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._run, name="fc-caffe-allreduce", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                buf, tag = item
                if self.error is None:
                    t0 = time.perf_counter()
                    self.allreduce(buf, tag)
                    self.busy_s += time.perf_counter() - t0
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
                self.error = e
            finally:
                self.q.task_done()

    def submit(self, buf: np.ndarray, tag: int) -> None:
        self.q.put((buf, tag))

    def wait(self) -> None:
        self.q.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=5)


# -- the solver callback -----------------------------------------------------------------------
@dataclass
class SyncStats:
    """Where an iteration's time went, for the benchmarks: seconds summed over iterations."""

    iterations: int = 0
    comm_s: float = 0.0        # time the training thread spent in (or waiting for) communication
    reduce_s: float = 0.0      # time the all-reduce itself ran (thread time under overlap)
    copy_s: float = 0.0        # gather/scatter between blobs and the flat buffer


class GradientSync:
    """Solver callback (Caffe's Solver::Callback) summing the gradients over the workers.

    ``on_gradients_ready`` runs after the iter_size forward/backward passes and before
    ApplyUpdate: it all-reduces the flat gradient buffer, scales it by 1/p and writes it back.
    With ``overlap``, buckets are reduced on a thread as the last pass's backward produces them.
    ``check_sync`` K > 0 compares a checksum of the weights across ranks every K iterations.
    """

    def __init__(self, solver, world: World, mode: str = "tree", overlap: bool = False,
                 segment_bytes: int | None = None, bucket_bytes: int | None = None,
                 check_sync: int = 0, allreduce: Allreduce | None = None) -> None:
        self.solver = solver
        self.world = world
        self.mode = mode
        injected = allreduce is not None
        self.allreduce = allreduce if injected else make_allreduce(world.comm, mode, segment_bytes)
        if bucket_bytes is None:
            total = 4 * sum(b.count for b in solver.net.learnable_params)
            bucket_bytes = default_bucket_bytes(total) if overlap else 1 << 62
        self.buffer = GradientBuffer(solver.net, bucket_bytes)
        self.check_sync = int(check_sync or 0)
        self.iter_size = max(1, int(getattr(getattr(solver, "param", None), "iter_size", 1) or 1))
        self.stats = SyncStats()
        self.overlap = bool(overlap) and world.size > 1
        self._thread: _CommThread | None = None
        if self.overlap and not injected and mpi().Query_thread() < mpi().THREAD_SERIALIZED:
            self.overlap = False       # this MPI library cannot be driven from a second thread
        if self.overlap:
            self._thread = _CommThread(self.allreduce)
            solver.net.set_after_backward(self._after_backward)
        self._reset_step()

    # Solver::Callback -----------------------------------------------------------------
    def on_start(self) -> None:
        it = int(getattr(self.solver, "iter", 0))
        if self.check_sync and it > 0 and it % self.check_sync == 0:
            self.verify_in_sync()
        self._reset_step()

    def on_gradients_ready(self) -> None:
        if self.world.size == 1:
            return
        t0 = time.perf_counter()
        buf = self.buffer
        if self.overlap:
            for b in buf.buckets[self._next_bucket:]:
                self._submit(b)
            self._next_bucket = len(buf.buckets)
            self._thread.wait()
            reduce_s = self._thread.busy_s - self._busy_before
        else:
            tc = time.perf_counter()
            buf.gather()
            self.stats.copy_s += time.perf_counter() - tc
            tr = time.perf_counter()
            self.allreduce(buf.flat, 0)
            reduce_s = time.perf_counter() - tr
        tc = time.perf_counter()
        buf.scatter(1.0 / self.world.size)  # one copy per bucket on a GPU
        self.stats.copy_s += time.perf_counter() - tc
        self.stats.reduce_s += reduce_s
        self.stats.comm_s += time.perf_counter() - t0
        self.stats.iterations += 1

    # overlap ----------------------------------------------------------------------------
    def _reset_step(self) -> None:
        self._pass = 0
        self._last_layer = -1
        self._next_bucket = 0
        self._busy_before = self._thread.busy_s if self._thread is not None else 0.0

    def _after_backward(self, layer_id: int) -> None:
        if layer_id >= self._last_layer:   # backward restarted from the top: a new pass
            self._pass += 1
        self._last_layer = layer_id
        if self._pass < self.iter_size:    # gradients still accumulating over iter_size
            return
        buckets = self.buffer.buckets
        while self._next_bucket < len(buckets) and buckets[self._next_bucket].ready_layer >= layer_id:
            self._submit(buckets[self._next_bucket])
            self._next_bucket += 1

    def _submit(self, bucket: Bucket) -> None:
        tc = time.perf_counter()
        self.buffer.gather_bucket(bucket)  # one device-to-host copy on a GPU
        self.stats.copy_s += time.perf_counter() - tc
        self._thread.submit(self.buffer.flat[bucket.start:bucket.end], (bucket.index * 4099) % 30000)

    # checks -----------------------------------------------------------------------------
    def verify_in_sync(self) -> None:
        """--check-sync: every rank's weights must hash alike; else a clear error on every rank."""
        digest = weights_checksum(self.solver.net, self.solver)
        it = int(getattr(self.solver, "iter", 0))
        check_same_everywhere(self.world, digest, f"weight checksum at iteration {it} (--check-sync): "
                              "the workers' weights diverged;")

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()
            self._thread = None
            self.solver.net.set_after_backward(None)
