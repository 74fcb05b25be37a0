"""Record order of list-based data layers (ImageData, HDF5Data): in order or shuffled, endlessly.

Caffe's ImageDataLayer shuffles its list at setup when ``shuffle: true`` and again each time it
wraps around; HDF5DataLayer shuffles the file order per epoch and the rows of a file each time it
is loaded. ``take(n)`` returns the next n record indices of that endless sequence, vectorised.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import CaffeError


class IndexStream:
    """Indices 0..n-1 in order (or a fresh permutation each epoch when shuffling), forever."""

    def __init__(self, n: int, shuffle: bool = False, rng: np.random.Generator | None = None,
                 start: int = 0) -> None:
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        self.cur = int(start)
        self.epoch = 0

    def take(self, count: int) -> np.ndarray:
        parts = []
        while count > 0:
            t = min(self.n - self.cur, count)
            parts.append(self.order[self.cur:self.cur + t])
            self.cur += t
            count -= t
            if self.cur == self.n:
                self._wrap()
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _wrap(self) -> None:
        self.cur = 0
        self.epoch += 1
        if self.shuffle:
            self.order = self.rng.permutation(self.n)


class FileRowStream:
    """HDF5DataLayer's order: files (shuffled per epoch), the rows of each (shuffled per load)."""

    def __init__(self, rows_per_file: list[int], shuffle: bool = False,
                 rng: np.random.Generator | None = None) -> None:
        self.rows = [int(r) for r in rows_per_file]
        self.shuffle = bool(shuffle)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.files = IndexStream(len(self.rows), shuffle, self.rng)
        self._file = int(self.files.take(1)[0])
        self._row_stream = self._rows_of(self._file)

    def _rows_of(self, f: int) -> IndexStream:
        return IndexStream(self.rows[f], self.shuffle, self.rng)

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(file index, row index) arrays for the next ``count`` records."""
        files, rows = [], []
        while count > 0:
            rs = self._row_stream
            t = min(rs.n - rs.cur, count)
            files.append(np.full(t, self._file))
            rows.append(rs.take(t))
            count -= t
            if rs.cur == 0:  # this file is exhausted: on to the next (reloaded and reshuffled)
                if len(self.rows) > 1:
                    self._file = int(self.files.take(1)[0])
                    self._row_stream = self._rows_of(self._file)
        if not files:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(files), np.concatenate(rows)


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
