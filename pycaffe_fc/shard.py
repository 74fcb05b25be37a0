"""This process's place among the data-parallel workers: Caffe::solver_rank and solver_count,
plus how a batch is split among them (``split_batch``), whether TEST nets are split too, and the
job's common seed.

Below the data pipeline and the random streams (pycaffe_fc.rng), which both ask it: the data
layers which records to read (pycaffe_fc.data.sharding), the streams which global sample a local
row is, so that p workers draw what one worker draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CaffeError
from .proto.caffe_pb2 import TRAIN


@dataclass(frozen=True)
class Shard:
    """This worker's place among the data-parallel workers."""

    rank: int
    size: int
    split_batch: bool = True
    test: bool = False
    seed: int | None = None


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
    """This worker's Shard; None when it reads whole batches alone."""
    return _shard


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

