"""Random numbers: Caffe's process stream, and fc-caffe's counter-based per-sample streams.

The process stream is Caffe's ``Caffe::rng_stream``: ``caffe.set_random_seed`` and the solver's
``random_seed`` reseed it, so runs with the same seed are bitwise repeatable. Fillers draw from it.

Per-sample randomness (random crops and mirrors, dropout masks, stochastic pooling, shuffles) is
an fc-caffe extension beyond BVLC Caffe: it is not drawn from a stream whose position depends on
what was drawn before, but computed by a counter-based generator, ``value = mix(key, counter)``.
The key is made of (seed, layer, phase, draw number), the counter of the global sample index (and
the element within the sample). So p data-parallel workers draw for their samples exactly what
one worker draws for the same samples, and a resumed run draws what the uninterrupted run would.
The mix is SplitMix64's finaliser over ``key + counter * golden gamma``, computed with uint64 array
arithmetic against ``xp``, so dropout masks are made on the device in GPU mode.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

_rng = np.random.default_rng()
#: the seed keyed streams derive from: the solver's random_seed (the same on every worker), or
#: None when no seed was given (each layer then draws one from the process stream).
_common_seed: int | None = None
#: how many times set_random_seed was called: streams that follow it restart on a change
_generation = 0


def set_random_seed(seed: int, *, common: int | None = None) -> None:
    """Reseed every random draw of fc-caffe (fillers, dropout, mirror/crop, shuffles).

    ``common`` (default: ``seed``) keys the counter-based streams; data-parallel workers seed
    their process streams with random_seed + rank (as Caffe's solver_rank) but share ``common``."""
    global _rng, _common_seed, _generation
    _rng = np.random.default_rng(int(seed) & _MASK)
    _common_seed = int(seed if common is None else common) & _MASK
    _generation += 1


def get_rng() -> np.random.Generator:
    return _rng


def common_seed() -> int | None:
    """The seed of the counter-based streams set by ``set_random_seed``, or None."""
    return _common_seed


def process_state() -> dict:
    """The process stream's state (numpy's bit generator state), for a solver snapshot."""
    return _rng.bit_generator.state


def set_process_state(state: dict) -> None:
    """Put the process stream back where ``process_state`` found it."""
    _rng.bit_generator.state = state


# -- the counter-based generator ------------------------------------------------------------------
def mix64(x: int) -> int:
    """SplitMix64's finaliser of one 64-bit integer (Python ints, for keys)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def make_key(*parts: Any) -> int:
    """A 64-bit key from integers and strings (strings hashed with BLAKE2b, the same in every
    process, unlike Python's ``hash``)."""
    k = 0x243F6A8885A308D3
    for p in parts:
        if isinstance(p, (str, bytes)):
            b = p.encode() if isinstance(p, str) else p
            v = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little")
        else:
            v = int(p) & _MASK
        k = mix64((k ^ v) + _GAMMA)
    return k


def random_bits(xp, key: int, counters, overwrite: bool = False) -> Any:
    """Uniform uint64 values, one per counter: ``mix(key + (counter + 1) * gamma)``, vectorised.

    ``counters`` is an integer array (numpy or CuPy; the result lives on the same module ``xp``);
    with ``overwrite`` a uint64 ``counters`` array is turned into the result in place."""
    u64 = xp.uint64
    z = counters if overwrite and counters.dtype == u64 else xp.array(counters, dtype=u64, copy=True)
    z += u64(1)
    z *= u64(_GAMMA)
    z += u64(int(key) & _MASK)
    t = xp.empty_like(z)
    xp.right_shift(z, u64(30), out=t)
    z ^= t
    z *= u64(_M1)
    xp.right_shift(z, u64(27), out=t)
    z ^= t
    z *= u64(_M2)
    xp.right_shift(z, u64(31), out=t)
    z ^= t
    return z


def random_integers(xp, key: int, counters, high) -> Any:
    """Integers in [0, high) per counter (``high`` a scalar or an array of the counters' shape);
    the modulo bias of a 64-bit draw is below 2^-40 for any image size."""
    z = random_bits(xp, key, counters)
    return (z % xp.asarray(high, dtype=xp.uint64)).astype(xp.int64)


def random_uniform(xp, key: int, counters, dtype=np.float32, overwrite: bool = False) -> Any:
    """Uniform floats in [0, 1) per counter (the top 24 bits for float32, 53 for float64)."""
    z = random_bits(xp, key, counters, overwrite)
    bits = 24 if np.dtype(dtype) == np.float32 else 53
    z >>= xp.uint64(64 - bits)
    out = z.astype(dtype)
    out *= np.dtype(dtype).type(2.0 ** -bits)
    return out


def keep_threshold(ratio: float) -> int:
    """The uint64 threshold T with P(bits >= T) = 1 - ratio (Caffe's Bernoulli(1 - ratio))."""
    return min(int(float(ratio) * 2.0 ** 64), _MASK)


def permutation(key: int, n: int) -> np.ndarray:
    """A uniformly random permutation of range(n) keyed by ``key`` (argsort of keyed draws)."""
    return np.argsort(random_bits(np, key, np.arange(n, dtype=np.uint64)), kind="stable")


class LayerStream:
    """A layer's counter-based stream: a seed (saved in snapshots) and the number of draws made.

    ``next_key()`` gives the key of the layer's next draw (e.g. one dropout mask per forward);
    the values of a draw are then ``random_*(xp, key, counters)`` with the global sample indices
    as counters. A stream that ``follows`` the process seed (layers that draw at forward time,
    as Caffe's Dropout draws from rng_stream) restarts from draw 0 under the new common seed when
    ``set_random_seed`` is called after it was made."""

    def __init__(self, seed: int, name: str, phase: int, follow: bool = False) -> None:
        self.name = name
        self.phase = int(phase)
        self.follow = bool(follow)
        self._gen = _generation
        self.draws = 0
        self.reseed(seed)

    def _sync(self) -> None:
        if self.follow and self._gen != _generation:
            self._gen = _generation
            self.reseed(_common_seed if _common_seed is not None else self.seed)
            self.draws = 0

    def state(self) -> tuple[int, int]:
        """(seed, draws) of the next draw, for a snapshot."""
        self._sync()
        return self.seed, self.draws

    def restore(self, seed: int, draws: int) -> None:
        self._gen = _generation
        self.reseed(seed)
        self.draws = int(draws)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed) & _MASK
        self.base = make_key(self.seed, self.name, self.phase)

    def key(self, *parts: Any) -> int:
        """A fixed sub-key of this stream (e.g. for crops, which are keyed by sample position)."""
        return make_key(self.base, *parts)

    def next_key(self) -> int:
        self._sync()
        k = make_key(self.base, "draw", self.draws)
        self.draws += 1
        return k


def stream_seed(shard_seed: int | None = None) -> int:
    """The seed of a new layer stream: the data-parallel job's common seed (the same on every
    worker: the solver's random_seed, or a fixed one), else the common seed of
    ``set_random_seed`` (so runs with a random_seed repeat), else a draw from the process stream
    (then saved in snapshots so a resumed run keeps it)."""
    if shard_seed is not None:
        return int(shard_seed) & _MASK
    if _common_seed is not None:
        return _common_seed
    return int(_rng.integers(0, 2 ** 63))


def attach_stream(layer) -> LayerStream:
    """The layer's counter-based stream (``layer.random_stream``), made on first use: for layers
    that draw at forward time (stochastic pooling, Python layers); it follows the process seed."""
    st = getattr(layer, "random_stream", None)
    if st is None:
        from .shard import shard_seed
        st = layer.random_stream = LayerStream(stream_seed(shard_seed()), layer.name, layer.phase, follow=True)
    return st


def unit_counters(xp, shape, phase: int):
    """Each unit's global index in a blob of ``shape`` whose axis 0 is the samples: global sample
    index x units per sample + unit, so a worker's share of a batch gets the one-worker indices."""
    from .shard import global_rows
    shape = tuple(int(s) for s in shape)
    n = shape[0] if shape else 1
    per = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = global_rows(n, phase, xp=xp)
    return (rows[:, None] * xp.uint64(per) + xp.arange(per, dtype=xp.uint64)[None, :]).reshape(shape)


def layer_uniform(layer, xp, shape) -> Any:
    """float32 uniforms in [0, 1) of ``shape`` (axis 0 the samples) for one forward of ``layer``:
    its stream's next draw, counted by global unit index (worker-count invariant)."""
    key = attach_stream(layer).next_key()
    return random_uniform(xp, key, unit_counters(xp, shape, layer.phase), overwrite=True)

