"""Record order of list-based data layers (ImageData, HDF5Data): in order or shuffled, endlessly.

Caffe's ImageDataLayer shuffles its list at setup when ``shuffle: true`` and again each time it
wraps around; HDF5DataLayer shuffles the file order per epoch and the rows of a file each time it
is loaded. Here each of those permutations is keyed by (the layer's seed, the epoch or load
number) with the counter-based generator (pycaffe_fc.rng), so the record at any global stream
position is computed directly: a resumed run or a worker picks up at any position without
replaying the shuffles before it. ``take(n)`` returns the next n record indices, vectorised.
"""
from __future__ import annotations

import re

import numpy as np

from .. import rng as rngmod
from ..errors import CaffeError


def _key_of(key) -> int:
    # an int key, or (for callers of the former API) a numpy Generator to draw one from
    if key is None:
        return int(rngmod.get_rng().integers(0, 2 ** 63))
    if isinstance(key, np.random.Generator):
        return int(key.integers(0, 2 ** 63))
    return int(key)


class IndexStream:
    """Indices 0..n-1 in order (or a fresh keyed permutation each epoch when shuffling),
    forever, starting at ``start`` of epoch 0 (ImageData's rand_skip)."""

    def __init__(self, n: int, shuffle: bool = False, key=None, start: int = 0) -> None:
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.key = _key_of(key) if self.shuffle else 0
        self.start = int(start)
        self.pos = 0  # records taken so far (stream position, after the start)
        self._orders: dict[int, np.ndarray] = {}

    def order_of(self, epoch: int) -> np.ndarray:
        """The record order of ``epoch`` (0-based)."""
        if not self.shuffle:
            return np.arange(self.n)
        o = self._orders.get(epoch)
        if o is None:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            o = self._orders[epoch] = rngmod.permutation(rngmod.make_key(self.key, "epoch", epoch), self.n)
        return o

    @property
    def order(self) -> np.ndarray:
        return self.order_of(self.epoch)

    @property
    def epoch(self) -> int:
        return (self.start + self.pos) // self.n

    @property
    def cur(self) -> int:
        return (self.start + self.pos) % self.n

    def indices(self, positions) -> np.ndarray:
        """The record indices at stream ``positions`` (any order, vectorised per epoch)."""
        a = self.start + np.asarray(positions, dtype=np.int64)
        epochs, idx = a // self.n, a % self.n
        if not self.shuffle:
            return idx
        out = np.empty_like(idx)
        for e in np.unique(epochs):  # a batch spans one or two epochs
            m = epochs == e
            out[m] = self.order_of(int(e))[idx[m]]
        return out

    def take(self, count: int) -> np.ndarray:
        out = self.indices(self.pos + np.arange(int(count)))
        self.pos += int(count)
        return out


class FileRowStream:
    """HDF5DataLayer's order: files (shuffled per epoch), the rows of each (shuffled per load)."""

    def __init__(self, rows_per_file: list[int], shuffle: bool = False, key=None) -> None:
        self.rows = np.asarray([int(r) for r in rows_per_file], dtype=np.int64)
        self.shuffle = bool(shuffle)
        self.key = _key_of(key) if self.shuffle else 0
        self.files = IndexStream(len(self.rows), self.shuffle, rngmod.make_key(self.key, "files"))
        self.total = int(self.rows.sum())
        self.pos = 0

    def locate(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """(file index, row index) arrays of the records at stream ``positions``."""
        q = np.asarray(positions, dtype=np.int64)
        nf = len(self.rows)
        epochs, r = q // self.total, q % self.total
        files = np.empty_like(q)
        rows = np.empty_like(q)
        for e in np.unique(epochs):  # per epoch: which file slot, which row of that load
            m = epochs == e
            order = self.files.order_of(int(e))
            ends = np.cumsum(self.rows[order])
            slot = np.searchsorted(ends, r[m], side="right")
            within = r[m] - (ends[slot] - self.rows[order][slot])
            f = order[slot]
            if self.shuffle:
                for s in np.unique(slot):  # each load of a file gets its own row permutation
                    ms = slot == s
                    load = int(e) * nf + int(s)
                    perm = rngmod.permutation(rngmod.make_key(self.key, "rows", load), int(self.rows[order[s]]))
                    within[ms] = perm[within[ms]]
            files[m], rows[m] = f, within
        return files, rows

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(file index, row index) arrays for the next ``count`` records."""
        out = self.locate(self.pos + np.arange(int(count)))
        self.pos += int(count)
        return out


_ATOI = re.compile(r"\s*([+-]?\d+)")


def read_list_file(path: str, what: str) -> list[tuple[str, int]]:
    """The (file name, label) lines of a Caffe list file: name up to the last space, atoi label."""
    try:
        with open(path, "r", encoding="utf-8", newline=None) as f:
            text = f.read()
    except OSError as e:
        raise CaffeError(f"{what}: cannot open list file '{path}' ({e.strerror})") from None
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        pos = line.rfind(" ")
        m = _ATOI.match(line[pos + 1:])
        lines.append((line[:pos] if pos >= 0 else line, int(m.group(1)) if m else 0))
    return lines
