"""The parameter server the FireCaffe paper compares against (Sec. 3.1).

Rank 0 plays the server: it receives the p-1 workers' gradients one after another (in rank order,
so the sum is deterministic), adds them to its own, and sends the sum back to every worker. All
traffic crosses the server's link: time ~ (p-1)·|W|/BW in and as much out, i.e. it grows linearly
with p (Eq. 3), where the reduction tree grows with log2 p.
"""
from __future__ import annotations

import numpy as np


def ps_allreduce(comm, buf: np.ndarray, tmp: np.ndarray | None = None, tag: int = 0) -> None:
    """In-place sum of ``buf`` over all ranks through rank 0 (the parameter server)."""
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1:
        return
    from .comm import wait_all
    from .tree import message_pieces
    pieces = message_pieces(buf.size, buf.itemsize)
    if rank != 0:
        wait_all([comm.Isend(buf[a:b], dest=0, tag=tag) for a, b in pieces])
        wait_all([comm.Irecv(buf, source=0, tag=tag)])
        return
    if tmp is None:
        tmp = np.empty_like(buf)
    for r in range(1, p):
        reqs = [comm.Irecv(tmp[a:b], source=r, tag=tag) for a, b in pieces]
        for k, (a, b) in enumerate(pieces):   # add piece k while piece k+1 arrives
            wait_all([reqs[k]])
            np.add(buf[a:b], tmp[a:b], out=buf[a:b])
    wait_all([comm.Isend(buf, dest=r, tag=tag) for r in range(1, p)])


def ps_model_seconds(nbytes: float, p: int, bandwidth: float, duplex: bool = False) -> float:
    """The server's link carries (p-1)·|W| in and (p-1)·|W| out. The paper's Eq. 3 writes
    |W|·p/BW (one direction, counting the server's own copy); ``duplex=False`` gives the
    measured cost on links that do not overlap the two directions at the server."""
    one_way = (p - 1) * nbytes / bandwidth
    return one_way if duplex else 2 * one_way
