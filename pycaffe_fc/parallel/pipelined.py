"""Pipelined reduction trees: the gradient buffer cut into segments that stream through the tree.

The binomial tree of ``tree.py`` moves the whole buffer one level per round, so its time grows
with log2 p. Cutting the buffer into segments lets every level work at once: a rank adds segment
k of its children and forwards it up while segment k+1 is still arriving, and the root sends each
finished segment back down at once, so reduction and broadcast overlap (as NCCL's trees do).

A single binary tree still makes an interior rank send 3·|W| (|W| up, |W| to each of two children).
So, like NCCL, two binary trees share the work: even segments go through tree A (an in-order
binary tree over the ranks), odd segments through tree B (tree A with every rank shifted by one),
and a rank that is interior in one tree is a leaf in the other. Every rank then sends at most
2·|W| in total (|W|/2 up in each tree, plus |W|/2 to each of at most two children in one of them),
and the time tends to 2·|W|/BW for any p, plus the pipeline's fill of about 2·depth segments.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: segments in flight per child before the parent has consumed the earlier ones
DEFAULT_WINDOW = 8
MIN_SEGMENT_BYTES = 64 * 1024
MAX_SEGMENT_BYTES = 4 * 1024 * 1024


def inorder_binary_tree(p: int) -> list[int]:
    """Parent of each rank (-1 for the root) in the in-order binary tree over ranks 0..p-1.

    With 1-based labels i = rank+1, node i with lowest set bit b has children i ± b/2 and its
    parent is i+b or i-b (whichever has lowest bit 2b), as in a perfect binary search tree of
    1..2^k-1; labels beyond p are skipped by climbing on to the next ancestor, which keeps every
    rank at most two children for any p. The root is the largest power of two <= p.
    """
    if p < 1:
        raise ValueError("p must be >= 1")
    root = 1 << (p.bit_length() - 1)
    parent = [-1] * p
    for i in range(1, p + 1):
        j = i
        while j != root:
            b = j & -j
            j = j + b if not (j & (b << 1)) else j - b
            if j <= p:
                parent[i - 1] = j - 1
                break
    return parent


def shifted(parent: list[int], shift: int = 1) -> list[int]:
    """The same tree with rank r playing the role of rank (r - shift) mod p."""
    p = len(parent)
    out = [-1] * p
    for r, q in enumerate(parent):
        out[(r + shift) % p] = -1 if q < 0 else (q + shift) % p
    return out


def double_binary_trees(p: int) -> list[list[int]]:
    """NCCL-style pair of complementary binary trees (parents arrays) over p ranks."""
    a = inorder_binary_tree(p)
    return [a] if p <= 1 else [a, shifted(a, 1)]


def children_of(parent: list[int]) -> list[list[int]]:
    ch: list[list[int]] = [[] for _ in parent]
    for r, q in enumerate(parent):
        if q >= 0:
            ch[q].append(r)
    return ch


def tree_depth(parent: list[int]) -> int:
    depth = 0
    for r in range(len(parent)):
        d, q = 0, r
        while parent[q] >= 0:
            q, d = parent[q], d + 1
        depth = max(depth, d)
    return depth


def max_send_volume(trees: list[list[int]]) -> float:
    """The largest number of |W| any rank sends when the segments alternate between ``trees``."""
    p = len(trees[0])
    vol = [0.0] * p
    for parent in trees:
        ch = children_of(parent)
        for r in range(p):
            vol[r] += ((parent[r] >= 0) + len(ch[r])) / len(trees)
    return max(vol)


def choose_segment_bytes(nbytes: int, p: int, depth: int | None = None) -> int:
    """Segment size from the buffer size and p: the pipeline's fill (about 2·depth segments on
    top of the 2·|W| streamed) is kept near 5% of the total, within [64 KiB, 4 MiB]."""
    if depth is None:
        depth = tree_depth(inorder_binary_tree(max(p, 1)))
    seg = int(0.05 * nbytes / max(1, depth))
    seg = max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, seg))
    return max(4, seg // 4 * 4)


@dataclass
class _Plan:
    n: int
    seg: int                          # elements per segment
    bounds: list[tuple[int, int]]
    trees: list[list[int]]
    children: list[list[list[int]]] = field(default_factory=list)


class PipelinedTreeAllreduce:
    """In-place sum over all ranks, streamed in segments through two complementary binary trees.

    ``segment_bytes`` None chooses it from the buffer size and p (``choose_segment_bytes``).
    Every rank ends with the bytes its tree's root computed, so all ranks agree bit for bit.
    """

    def __init__(self, comm, segment_bytes: int | None = None, window: int = DEFAULT_WINDOW) -> None:
        self.comm = comm
        self.segment_bytes = segment_bytes
        self.window = max(1, int(window))
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._slots: dict[tuple[int, int], np.ndarray] = {}
        from .comm import mpi
        self._MPI = mpi()
        ub = comm.Get_attr(self._MPI.TAG_UB)
        self._tag_ub = int(ub) if ub else 32767

    def plan(self, n: int, itemsize: int = 4) -> _Plan:
        p = self.comm.Get_size()
        trees = double_binary_trees(p)
        seg_bytes = self.segment_bytes or choose_segment_bytes(n * itemsize, p, max(tree_depth(t) for t in trees))
        seg = max(1, int(seg_bytes) // itemsize)
        key = (n, seg)
        if key not in self._plans:
            bounds = [(a, min(a + seg, n)) for a in range(0, n, seg)]
            self._plans[key] = _Plan(n, seg, bounds, trees, [children_of(t) for t in trees])
        return self._plans[key]

    def _slot(self, t: int, j: int, seg: int, dtype) -> np.ndarray:
        key = (t, j)
        s = self._slots.get(key)
        if s is None or s.shape[1] < seg or s.dtype != dtype:
            s = np.empty((self.window, seg), dtype)
            self._slots[key] = s
        return s

    def __call__(self, buf: np.ndarray, tag: int = 0) -> None:
        from .comm import wait_some
        comm = self.comm
        p, me = comm.Get_size(), comm.Get_rank()
        if p == 1 or buf.size == 0:
            return
        plan = self.plan(buf.size, buf.itemsize)
        T, W = len(plan.trees), self.window
        bounds = plan.bounds
        ub = self._tag_ub

        def tg(s: int) -> int:
            return (tag + s) % ub

        pending: dict[int, tuple] = {}     # request handle id -> (request, action, args)
        next_id = [0]

        def post(req, action, *args) -> None:
            pending[next_id[0]] = (req, action, args)
            next_id[0] += 1

        segs_of = [list(range(t, len(bounds), T)) for t in range(T)]
        got = [0] * len(bounds)            # children's contributions received per segment
        slots = {}

        def post_child_recv(t: int, k: int) -> None:
            s = segs_of[t][k]
            a, b = bounds[s]
            for j, c in enumerate(plan.children[t][me]):
                slot = slots[(t, j)]
                post(comm.Irecv(slot[k % W, :b - a], source=c, tag=tg(s)), on_child, t, k)

        def send_down(t: int, s: int) -> None:
            a, b = bounds[s]
            for c in plan.children[t][me]:
                post(comm.Isend(buf[a:b], dest=c, tag=tg(s)), None)

        def segment_summed(t: int, s: int) -> None:
            a, b = bounds[s]
            parent = plan.trees[t][me]
            if parent < 0:
                send_down(t, s)
            else:
                post(comm.Isend(buf[a:b], dest=parent, tag=tg(s)), on_sent_up, t, s)

        def on_child(t: int, k: int) -> None:
            s = segs_of[t][k]
            got[s] += 1
            ch = plan.children[t][me]
            if got[s] < len(ch):
                return
            a, b = bounds[s]
            for j in range(len(ch)):   # in child order: the same rounding on every run
                np.add(buf[a:b], slots[(t, j)][k % W, :b - a], out=buf[a:b])
            if k + W < len(segs_of[t]):
                post_child_recv(t, k + W)
            segment_summed(t, s)

        def on_sent_up(t: int, s: int) -> None:
            # The parent only sends segment s down after it has all of our partial sum, so the
            # result may land in place now that our send of it is complete.
            a, b = bounds[s]
            post(comm.Irecv(buf[a:b], source=plan.trees[t][me], tag=tg(s)), on_down, t, s)

        def on_down(t: int, s: int) -> None:
            send_down(t, s)

        for t in range(T):
            ch = plan.children[t][me]
            for j in range(len(ch)):
                slots[(t, j)] = self._slot(t, j, plan.seg, buf.dtype)
            if ch:
                for k in range(min(W, len(segs_of[t]))):
                    post_child_recv(t, k)
            else:
                for s in segs_of[t]:
                    segment_summed(t, s)

        while pending:
            keys = list(pending)
            reqs = [pending[k][0] for k in keys]
            done = wait_some(reqs)
            for i in done:
                _, action, args = pending.pop(keys[i])
                if action is not None:
                    action(*args)


def pipelined_model_seconds(nbytes: float, p: int, bandwidth: float, segment_bytes: float | None = None) -> float:
    """2·|W|/BW for the two trees' streams, plus the pipeline's fill of 2·depth segments."""
    if p <= 1:
        return 0.0
    trees = double_binary_trees(p)
    depth = max(tree_depth(t) for t in trees)
    seg = segment_bytes or choose_segment_bytes(int(nbytes), p, depth)
    return (max_send_volume(trees) * nbytes + 2 * depth * seg) / bandwidth
