"""FireCaffe's reduction tree: a binomial tree sums the gradients at rank 0 in ceil(log2 p)
rounds, then broadcasts the sum back down the same tree in as many rounds (paper, Sec. 3.2).

Each round every active rank sends or receives the whole contiguous buffer once (mpi4py's buffer
API, ``Isend``/``Irecv`` on the numpy array itself, no pickling; on the way up cut into a few 8 MB
pieces so that the receiver's add overlaps the transfer), so the time is 2·ceil(log2 p)·|W|/BW
(Eq. 4). Works for any p, not only powers of two: a rank whose partner would be ``>= p`` simply
sits the round out. Waiting polls politely (``comm.wait_all``) instead of spinning on a core.
"""
from __future__ import annotations

import numpy as np


def reduce_rounds(p: int) -> int:
    """ceil(log2 p): the depth of the binomial tree of p ranks."""
    return max(0, int(p - 1).bit_length())


#: a large message is cut into pieces of this many bytes so that the receiver adds piece k while
#: piece k+1 is still on the wire (the add then costs only the last piece's time)
REDUCE_PIECE_BYTES = 8 * 1024 * 1024


def message_pieces(n: int, itemsize: int) -> list[tuple[int, int]]:
    step = max(1, REDUCE_PIECE_BYTES // itemsize)
    return [(a, min(a + step, n)) for a in range(0, n, step)] or [(0, 0)]


def tree_reduce(comm, buf: np.ndarray, tmp: np.ndarray | None = None, root: int = 0, tag: int = 0) -> None:
    """Sum ``buf`` over every rank into ``buf`` of ``root`` (other ranks' ``buf`` is left holding
    partial sums). Rank with virtual index v receives from v+1, v+2, v+4, ... (while those
    exist and v has no lower bit set), then sends its partial sum to v - lowbit(v)."""
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1:
        return
    from .comm import wait_all
    pieces = message_pieces(buf.size, buf.itemsize)
    v = (rank - root) % p
    mask = 1
    while mask < p:
        if v & mask:
            dest = (v - mask + root) % p
            wait_all([comm.Isend(buf[a:b], dest=dest, tag=tag) for a, b in pieces])
            return
        if v + mask < p:
            if tmp is None:
                tmp = np.empty_like(buf)
            src = (v + mask + root) % p
            reqs = [comm.Irecv(tmp[a:b], source=src, tag=tag) for a, b in pieces]
            for k, (a, b) in enumerate(pieces):   # pieces arrive in order (MPI's non-overtaking)
                wait_all([reqs[k]])
                np.add(buf[a:b], tmp[a:b], out=buf[a:b])
        mask <<= 1


def tree_broadcast(comm, buf: np.ndarray, root: int = 0, tag: int = 0) -> None:
    """Broadcast ``buf`` of ``root`` down the binomial tree: receive from the parent, then send
    to the children, largest subtree first (so every round doubles the ranks holding the sum)."""
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1:
        return
    from .comm import wait_all
    v = (rank - root) % p
    mask = 1
    while mask < p:
        if v & mask:
            wait_all([comm.Irecv(buf, source=(v - mask + root) % p, tag=tag)])
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:
        if v + mask < p:
            wait_all([comm.Isend(buf, dest=(v + mask + root) % p, tag=tag)])
        mask >>= 1


def tree_allreduce(comm, buf: np.ndarray, tmp: np.ndarray | None = None, tag: int = 0) -> None:
    """In-place sum of ``buf`` over all ranks: reduce to rank 0, broadcast back (binomial tree).

    Every rank ends with the very bytes rank 0 computed, so all ranks apply identical updates.
    """
    tree_reduce(comm, buf, tmp, root=0, tag=tag)
    tree_broadcast(comm, buf, root=0, tag=tag)


def tree_model_seconds(nbytes: float, p: int, bandwidth: float) -> float:
    """Eq. 4 as the implementation runs it: 2·ceil(log2 p)·|W|/BW."""
    return 2 * reduce_rounds(p) * nbytes / bandwidth

