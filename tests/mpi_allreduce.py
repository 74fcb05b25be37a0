"""Run under ``mpiexec -n P``: every --sync all-reduce against a plain sum.

Checks, for buffers of several sizes (empty, tiny, not a multiple of the segment, several
segments, several buckets), that each mode leaves every rank with the exact sum of
integer-valued data (exact in float32), the sum of random data to float32 rounding, and the
very same bytes on every rank. Prints ``OK <p>`` on rank 0 when all pass.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np
from mpi4py import MPI

from pycaffe_fc.parallel import tree
from pycaffe_fc.parallel.allreduce import SYNC_MODES, make_allreduce

tree.REDUCE_PIECE_BYTES = 4096  # the tree's reduce then cuts the larger buffers into many pieces

comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
SIZES = (0, 1, 7, 1000, 50_003)


def data(n: int, r: int, integer: bool) -> np.ndarray:
    g = np.random.default_rng(1000 * n + r)
    if integer:
        return g.integers(-1000, 1000, n).astype(np.float32)
    return g.standard_normal(n).astype(np.float32)


failures = []
for mode in SYNC_MODES:
    # small segments so that even the mid-sized buffers stream through many of them
    ar = make_allreduce(comm, mode, segment_bytes=4096 if mode == "pipelined-tree" else None)
    for n in SIZES:
        for integer in (True, False):
            buf = data(n, rank, integer)
            want = np.sum([data(n, r, integer).astype(np.float64) for r in range(p)], axis=0) if n else np.zeros(0)
            ar(buf, 7)
            err = float(np.max(np.abs(buf - want))) if n else 0.0
            tol = 0.0 if integer else 1e-5 * max(1.0, float(np.max(np.abs(want))) if n else 1.0)
            digests = comm.allgather(hashlib.sha256(buf.tobytes()).hexdigest())
            if err > tol:
                failures.append(f"{mode} n={n} integer={integer}: max error {err} > {tol} on rank {rank}")
            if len(set(digests)) != 1:
                failures.append(f"{mode} n={n} integer={integer}: ranks disagree")
# several all-reduces back to back, as the buckets of one iteration, with distinct buffers
for mode in SYNC_MODES:
    ar = make_allreduce(comm, mode, segment_bytes=2048 if mode == "pipelined-tree" else None)
    bufs = [data(5000 + k, rank, True) for k in range(4)]
    for k, b in enumerate(bufs):
        ar(b, k)
    for k, b in enumerate(bufs):
        want = np.sum([data(5000 + k, r, True) for r in range(p)], axis=0)
        if not np.array_equal(b, want):
            failures.append(f"{mode}: bucket {k} wrong")

# the watchdog: a message that never comes raises instead of waiting for ever
if p > 1 and rank == 0:
    from pycaffe_fc.errors import CaffeError
    from pycaffe_fc.parallel import comm as pcomm
    pcomm.COMM_TIMEOUT_S = 0.3
    req = comm.Irecv(np.empty(4, np.float32), source=1, tag=999)
    try:
        pcomm.wait_all([req])
        failures.append("wait_all did not time out")
    except CaffeError as e:
        if "made no progress" not in str(e):
            failures.append(f"unexpected timeout message: {e}")
    req.Cancel()
    req.Wait()

allf = comm.gather(failures, root=0)
if rank == 0:
    flat = [f for fs in allf for f in fs]
    for f in flat:
        print("FAIL", f)
    print("OK" if not flat else "FAILED", p)
    sys.stdout.flush()
comm.Barrier()
sys.exit(0)
