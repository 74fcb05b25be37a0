"""Run under ``mpiexec -n P`` from a work directory holding the LeNet solver set-up:
K iterations with P data-parallel workers must equal K iterations of one worker on the same
samples (the global batch split P ways), for every --sync mode, with and without the overlap.

usage: mpi_equivalence.py SOLVER INIT_WEIGHTS K [MODES]   (MODES comma-separated)
Prints one line per case on rank 0: ``CASE <mode> overlap=<0|1> rel=<weights> upd=<update>``,
then ``OK`` or ``FAILED``.

With FC_CAFFE_TEST_MODE=gpu (the CuPy stand-in on PYTHONPATH) every rank trains in GPU mode, and
each case also checks that the gradients crossed between device and host in two copies per
bucket per iteration (the stand-in counts the transfers made by the gradient buffer).
"""
from __future__ import annotations

import os
import sys

import numpy as np
from mpi4py import MPI

from pycaffe_fc.data.sharding import clear_shard, set_shard
from pycaffe_fc.parallel.allreduce import SYNC_MODES, GradientBuffer, GradientSync, broadcast_weights
from pycaffe_fc.parallel.comm import init_world
from pycaffe_fc.solvers import get_solver, read_solver_file

GPU = os.environ.get("FC_CAFFE_TEST_MODE", "cpu") == "gpu"
cupy_standin = None
if GPU:
    from pycaffe_fc import backend
    backend.set_mode_gpu()
    try:  # the stand-in counts transfers; the real CuPy (FC_CAFFE_CUPY=real) does not
        import cupy_standin
    except ImportError:
        pass

comm = MPI.COMM_WORLD
world = init_world(comm)
solver_path, init_weights, K = sys.argv[1], sys.argv[2], int(sys.argv[3])
modes = sys.argv[4].split(",") if len(sys.argv) > 4 else list(SYNC_MODES)


def build(rank: int, size: int, iter_size: int = 1):
    param = read_solver_file(solver_path)
    param.iter_size = iter_size
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    param.ClearField("weights")
    param.weights.append(init_weights)
    if size > 1:
        set_shard(rank, size, split_batch=True, seed=1701)
    else:
        clear_shard()
    s = get_solver(param, rank=rank, is_root=rank == 0)
    clear_shard()
    return s


def weights(solver) -> np.ndarray:
    return GradientBuffer(solver.net, 1 << 62).gather_data()


# the single-worker reference (rank 0 only), per iter_size
reference = {}
if world.is_root:
    for iter_size in (1, 2):
        s = build(0, 1, iter_size)
        w0 = weights(s)
        s.step(K)
        reference[iter_size] = (w0, weights(s))
comm.Barrier()

cases = [(m, ov, 1) for m in modes for ov in (False, True)] + [(modes[0], True, 2)]
failed = False
for mode, overlap, iter_size in cases:
    s = build(world.rank, world.size, iter_size)
    broadcast_weights(world, s.net)
    gs = GradientSync(s, world, mode=mode, overlap=overlap, segment_bytes=8192,
                      bucket_bytes=64 * 1024 if overlap else None, check_sync=2)
    s.add_callback(gs.on_start, gs.on_gradients_ready)
    if cupy_standin is not None:
        cupy_standin.reset()
    s.step(K)
    copies, copies_ok = "", True
    if cupy_standin is not None:
        # the gradient buffer's own transfers: one down and one up per bucket and iteration
        n = sum(c for site, c in cupy_standin.sites("transfers").items() if "parallel/allreduce.py" in site)
        want = 2 * len(gs.buffer.buckets) * K
        copies_ok = comm.allreduce(int(n != want)) == 0  # on every rank
        copies = f" copies={n}/{want}"
    gs.verify_in_sync()
    gs.close()
    w = weights(s)
    if world.is_root:
        w0, w1 = reference[iter_size]
        rel = float(np.linalg.norm(w - w1) / np.linalg.norm(w1))
        upd = float(np.linalg.norm((w - w0) - (w1 - w0)) / np.linalg.norm(w1 - w0))
        ok = rel < 1e-5 and upd < 1e-5 and copies_ok
        failed |= not ok
        print(f"CASE {mode} overlap={int(overlap)} iter_size={iter_size} buckets={len(gs.buffer.buckets)} "
              f"rel={rel:.3g} upd={upd:.3g}{copies} {'ok' if ok else 'BAD'}", flush=True)
    comm.Barrier()
if world.is_root:
    print("FAILED" if failed else "OK", flush=True)
