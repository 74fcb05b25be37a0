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
from functools import cached_property

import numpy as np

from ..errors import CaffeError
from ..proto.caffe_pb2 import TRAIN
# the worker's place lives below the random streams, which ask it too; it is set and read here as ever
from ..shard import (Shard, clear_shard, get_shard, global_row_span, global_rows,  # noqa: F401
                     set_shard, shard_seed)


@dataclass(frozen=True)
class BatchPlan:
    """What one worker reads per iteration: ``local_batch`` records at ``offsets`` of a ``block``,
    the offsets being ``first + stride * j``. Kept as two integers until first used, so that a
    batch_size too large for memory is refused promptly, by the check of the blobs it sizes."""

    local_batch: int
    block: int
    first: int = 0
    stride: int = 1

    @cached_property
    def offsets(self) -> np.ndarray:
        return self.first + self.stride * np.arange(self.local_batch)

    def positions(self, iteration: int) -> np.ndarray:
        """Stream positions this worker reads at ``iteration`` (0-based)."""
        return iteration * self.block + self.offsets


def plan_batch(batch_size: int, layer_name: str, phase: int, shard: Shard | None = None) -> BatchPlan:
    """The BatchPlan of a data layer with prototxt ``batch_size`` under the current sharding."""
    b = int(batch_size)
    if b <= 0:
        raise CaffeError(f"layer '{layer_name}': batch_size must be positive, got {b}")
    shard = get_shard() if shard is None else shard
    if shard is None or shard.size == 1 or (phase != TRAIN and not shard.test):
        return BatchPlan(b, b)
    p, r = shard.size, shard.rank
    if shard.split_batch:
        if b % p:
            raise CaffeError(f"layer '{layer_name}': batch_size {b} (the global batch) is not divisible "
                             f"by the {p} data-parallel workers")
        local = b // p
        return BatchPlan(local, b, r * local)
    return BatchPlan(b, p * b, r, p)
