"""Data-parallel sharding of a data layer's record stream among p workers.

A data layer reads an endless stream of records (the source in order, restarting at the end). Each
iteration consumes one *block* of it, and a worker takes its own *offsets* inside the block:

* ``split_batch=True`` (FireCaffe): the prototxt ``batch_size`` B is the GLOBAL batch. The block is
  B records and worker r takes offsets [r*B/p, (r+1)*B/p), so the p workers together read exactly
  what one worker with batch B reads, each record once per epoch. B must be divisible by p.
* ``split_batch=False`` (BVLC's multi-GPU meaning): every worker has batch B, the block is p*B
  records, and worker r takes every p-th record from r (as DataLayer::Skip keeps
  ``offset % solver_count == solver_rank``).

As in BVLC Caffe, only TRAIN-phase data layers are sharded unless ``test=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CaffeError
from ..layers.base import TRAIN


@dataclass(frozen=True)
class Shard:
    """This worker's place among the data-parallel workers."""

    rank: int
    size: int
    split_batch: bool = True
    test: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class BatchPlan:
    """What one worker reads per iteration: ``local_batch`` records at ``offsets`` of a ``block``."""

    local_batch: int
    block: int
    offsets: np.ndarray

    def positions(self, iteration: int) -> np.ndarray:
        """Stream positions this worker reads at ``iteration`` (0-based)."""
        return iteration * self.block + self.offsets


_shard: Shard | None = None


def set_shard(rank: int, size: int, split_batch: bool = True, test: bool = False,
              seed: int | None = None) -> None:
    """Make data layers built from now on read worker ``rank``'s share of each batch.

    ``seed`` (the same on every worker) seeds the layers' counter-based random streams (shuffles,
    crops, mirrors, dropout), so that every worker orders the records and draws identically even
    without a solver random_seed."""
    global _shard
    rank, size = int(rank), int(size)
    if size < 1 or not 0 <= rank < size:
        raise CaffeError(f"set_shard: rank {rank} is not in [0, {size})")
    _shard = Shard(rank, size, bool(split_batch), bool(test), seed)


def clear_shard() -> None:
    """Back to a single worker reading whole batches."""
    global _shard
    _shard = None


def get_shard() -> Shard | None:
    return _shard


def plan_batch(batch_size: int, layer_name: str, phase: int, shard: Shard | None = None) -> BatchPlan:
    """The BatchPlan of a data layer with prototxt ``batch_size`` under the current sharding."""
    b = int(batch_size)
    if b <= 0:
        raise CaffeError(f"layer '{layer_name}': batch_size must be positive, got {b}")
    shard = _shard if shard is None else shard
    if shard is None or shard.size == 1 or (phase != TRAIN and not shard.test):
        return BatchPlan(b, b, np.arange(b))
    p, r = shard.size, shard.rank
    if shard.split_batch:
        if b % p:
            raise CaffeError(f"layer '{layer_name}': batch_size {b} (the global batch) is not divisible "
                             f"by the {p} data-parallel workers")
        local = b // p
        return BatchPlan(local, b, np.arange(r * local, (r + 1) * local))
    return BatchPlan(b, p * b, r + p * np.arange(b))


def global_row_span(local_n: int, phase: int, shard: Shard | None = None) -> tuple[int, int]:
    """(start, stride): this worker's row j of ``local_n`` is sample ``start + stride * j`` of the
    iteration's global batch (what keys per-sample randomness, so p workers draw what one
    worker draws). Two integers, so the indices can be made on the device."""
    n = int(local_n)
    shard = _shard if shard is None else shard
    if shard is None or shard.size == 1 or (phase != TRAIN and not shard.test):
        return 0, 1
    if shard.split_batch:
        return shard.rank * n, 1
    return shard.rank, shard.size


def global_rows(local_n: int, phase: int, shard: Shard | None = None, xp=np):
    """The global sample indices of this worker's ``local_n`` rows (uint64, on ``xp``)."""
    start, stride = global_row_span(local_n, phase, shard)
    rows = xp.arange(int(local_n), dtype=xp.uint64)
    if stride != 1:
        rows *= xp.uint64(stride)
    if start:
        rows += xp.uint64(start)
    return rows


def shard_seed() -> int | None:
    """The data-parallel job's common seed (the same on every worker), if sharding is set."""
    return None if _shard is None else _shard.seed

