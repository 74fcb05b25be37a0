"""LMDB reading and writing, as Caffe's util/db_lmdb.cpp (python-lmdb underneath).

Caffe's databases are directories holding ``data.mdb`` (and ``lock.mdb``); records are serialised
Datum messages under string keys, read back in key order. LevelDB is not supported: convert it to
LMDB. Readers open the database read-only without the lock file, so a read-only or shared folder
is never written to.
"""
from __future__ import annotations

import os
import threading
from typing import Iterator

from ..errors import CaffeError
from ..proto import caffe_pb2

try:
    import lmdb  # type: ignore
except Exception:  # pragma: no cover - python-lmdb is a dependency
    lmdb = None

LEVELDB, LMDB = caffe_pb2.DataParameter.LEVELDB, caffe_pb2.DataParameter.LMDB

#: Caffe commits a write transaction every 1000 records (convert_imageset, convert_mnist_data).
COMMIT_EVERY = 1000


def _need_lmdb() -> None:
    if lmdb is None:  # pragma: no cover
        raise CaffeError("python-lmdb is required for LMDB databases (pip install lmdb)")


def is_lmdb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


def resolve_backend(backend, path: str, what: str, explicit: bool = True, writing: bool = False) -> int:
    """The backend to open ``path`` with. LEVELDB is refused with advice to convert; when the
    prototxt left ``backend`` at its LEVELDB default but ``path`` is an LMDB, LMDB is used."""
    if isinstance(backend, str):
        name = backend.strip().upper()
        if name not in ("LMDB", "LEVELDB"):
            raise CaffeError(f"{what}: unknown backend '{backend}' (lmdb or leveldb)")
        backend = LMDB if name == "LMDB" else LEVELDB
    if backend == LMDB:
        return LMDB
    if not explicit and is_lmdb(path):
        return LMDB
    if writing:
        raise CaffeError(f"{what}: backend LEVELDB is not supported, write LMDB instead (--backend lmdb)")
    raise CaffeError(f"{what}: backend LEVELDB is not supported, convert '{path}' to LMDB "
                     f"(e.g. fc-caffe convert_imageset --backend lmdb) and set backend: LMDB")


_envs: dict[str, list] = {}
_envs_lock = threading.Lock()


def open_lmdb(path: str, what: str = "lmdb"):
    """Open an existing LMDB read-only without locking; a missing or empty one is a CaffeError.

    python-lmdb allows one Environment per database per process, so readers of the same database
    (a train and a test net, say) share it; give it back with ``release_lmdb``."""
    _need_lmdb()
    if not os.path.isdir(path):
        raise CaffeError(f"{what}: cannot open LMDB '{path}': no such directory")
    if not is_lmdb(path):
        raise CaffeError(f"{what}: cannot open LMDB '{path}': no data.mdb in it")
    real = os.path.realpath(path)
    with _envs_lock:
        if real in _envs:
            _envs[real][1] += 1
            return _envs[real][0]
        try:
            env = lmdb.open(path, readonly=True, lock=False, subdir=True, readahead=False,
                            max_readers=128, meminit=False)
        except lmdb.Error as e:
            raise CaffeError(f"{what}: cannot open LMDB '{path}': {e}") from None
        if env.stat()["entries"] == 0:
            env.close()
            raise CaffeError(f"{what}: LMDB '{path}' is empty")
        _envs[real] = [env, 1]
        return env


def release_lmdb(env) -> None:
    """Give back an Environment from ``open_lmdb``; the last user closes it."""
    with _envs_lock:
        for real, entry in list(_envs.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] == 0:
                    del _envs[real]
                    env.close()
                return


def iter_lmdb(path: str, what: str = "lmdb") -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of an LMDB in key order, as Caffe's cursor walks it (the database is
    opened, and a missing one reported, at the call, not at the first ``next``)."""
    env = open_lmdb(path, what)
    return _iter_env(env)


def _iter_env(env) -> Iterator[tuple[bytes, bytes]]:
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor().iternext(keys=True, values=True)
    finally:
        release_lmdb(env)


def lmdb_entries(path: str, what: str = "lmdb") -> int:
    env = open_lmdb(path, what)
    try:
        return int(env.stat()["entries"])
    finally:
        release_lmdb(env)


class LMDBStream:
    """Caffe's DB cursor for a data layer: records in key order, endlessly, restarting from the
    first after the last ("Restarting data prefetching from start"). Positions count records
    read since the start, across restarts, so sharded readers can pick theirs out of the stream."""

    def __init__(self, path: str, what: str = "lmdb") -> None:
        self.path = path
        self.what = what
        self.env = open_lmdb(path, what)
        self.size = int(self.env.stat()["entries"])
        self._txn = None
        self._cursor = None
        self.pos = 0  # stream position of the record under the cursor
        self.restarts = 0

    def first_value(self) -> bytes:
        """The first record, read on a short transaction of its own (for shape inference)."""
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor()
            cur.first()
            return bytes(cur.value())

    def _open(self) -> None:
        # The cursor's transaction is created lazily in the reading (prefetch) thread.
        self._txn = self.env.begin(buffers=False)
        self._cursor = self._txn.cursor()
        self._cursor.first()

    def value_at(self, position: int) -> tuple[bytes, bytes]:
        """(key, value) at stream ``position`` (positions must not decrease)."""
        if self._cursor is None:
            self._open()
        if position < self.pos:
            raise ValueError(f"LMDB stream positions must not decrease ({position} < {self.pos})")
        cur = self._cursor
        steps = position - self.pos
        if steps >= self.size:  # whole epochs skipped: land on the same record
            self.restarts += steps // self.size
            steps %= self.size
        for _ in range(steps):
            if not cur.next():
                cur.first()
                self.restarts += 1
        self.pos = position
        return cur.key(), cur.value()

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = self._cursor = None
        if self.env is not None:
            release_lmdb(self.env)
            self.env = None


class LMDBWriter:
    """db::LMDB opened NEW: creates the directory (an existing one is an error, as Caffe's mkdir
    check), puts records, commits every ``COMMIT_EVERY``, grows the map when it fills."""

    def __init__(self, path: str, map_size: int = 1 << 26) -> None:
        _need_lmdb()
        if os.path.exists(path):
            raise CaffeError(f"{path}: already exists; remove it or choose another DB name")
        try:
            os.makedirs(path, mode=0o744)
        except OSError as e:
            raise CaffeError(f"{path}: cannot create directory ({e.strerror})") from None
        self.path = path
        self.env = lmdb.open(path, map_size=map_size, subdir=True, meminit=False)
        self._pending: list[tuple[bytes, bytes]] = []
        self.count = 0

    def put(self, key: bytes | str, value: bytes) -> None:
        if isinstance(key, str):
            key = key.encode()
        self._pending.append((key, value))
        self.count += 1
        if len(self._pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        if not self._pending:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
                break
            except lmdb.MapFullError:
                # db_lmdb.cpp DoubleMapSize: the aborted transaction is retried on a bigger map
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        self._pending.clear()

    def close(self) -> None:
        self.commit()
        self.env.sync()
        self.env.close()

    def __enter__(self) -> "LMDBWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.env.close()
