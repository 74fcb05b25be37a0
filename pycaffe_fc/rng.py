"""The process-wide random generator, as Caffe's ``Caffe::rng_stream``.

``caffe.set_random_seed`` and the solver's ``random_seed`` reseed it, so runs with the same seed are
bitwise repeatable on the CPU. Fillers, Dropout and data transforms draw from it.
"""
from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Reseed every random draw of fc-caffe (fillers, dropout, mirror/crop, shuffles)."""
    global _rng
    _rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)


def get_rng() -> np.random.Generator:
    return _rng
