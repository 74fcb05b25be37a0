"""LMDB and LevelDB reading and writing, as Caffe's util/db_lmdb.cpp and util/db_leveldb.cpp
(python-lmdb and plyvel underneath).

Caffe's databases are directories holding ``data.mdb`` (and ``lock.mdb``), or LevelDB's
``CURRENT``/``MANIFEST-*``/``*.ldb`` files; records are serialised Datum messages under string keys,
read back in key order. LMDB readers open the database read-only without the lock file, so a
read-only or shared folder is never written to. LevelDB has no read-only mode and lets one process
at a time open a database: a reader that finds it locked (another rank of a data-parallel job)
reads a private clone of it (hard links to LevelDB's immutable table files).
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Iterator

from google.protobuf import message as pb_message

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
    """The backend to open ``path`` with (LMDB or LEVELDB). When the prototxt left ``backend`` at
    its LEVELDB default but ``path`` is an LMDB, LMDB is used; LEVELDB asked for explicitly on a
    folder that holds an LMDB is an error naming both."""
    if isinstance(backend, str):
        name = backend.strip().upper()
        if name not in ("LMDB", "LEVELDB"):
            raise CaffeError(f"{what}: unknown backend '{backend}' (lmdb or leveldb)")
        backend = LMDB if name == "LMDB" else LEVELDB
    if backend == LMDB:
        return LMDB
    if not writing and is_lmdb(path):
        if not explicit:
            return LMDB
        raise CaffeError(f"{what}: '{path}' is an LMDB but backend LEVELDB was asked for (set backend: LMDB)")
    return LEVELDB


# LMDB's meta pages (mdb.c MDB_meta, 64-bit little-endian): pages 0 and 1 each hold, after the
# 16-byte page header, the magic, the version, the map address and size, two MDB_db records (the
# first's md_pad is the page size), the last page number in use and the transaction id.
_MDB_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<IIQQ IHHQQQQQ IHHQQQQQ QQ")
_PAGE_HEADER = 16


def check_lmdb_file(path: str, what: str = "lmdb") -> None:
    """Check ``path``/data.mdb against its own meta pages before it is memory-mapped: a file
    shorter than the pages its newest meta page uses (a truncated copy) would otherwise kill the
    reader with SIGBUS at the first read of a missing page; a file that is not an LMDB at all
    would fail deeper down."""
    data = os.path.join(path, "data.mdb")
    try:
        size = os.path.getsize(data)
        with open(data, "rb") as f:
            head = f.read(_PAGE_HEADER + _META.size)
            if len(head) < _PAGE_HEADER + _META.size:
                raise CaffeError(f"{what}: {data}: not an LMDB ({size} bytes, too short for its meta page)")
            first = _META.unpack_from(head, _PAGE_HEADER)
            if first[0] != _MDB_MAGIC:
                raise CaffeError(f"{what}: {data}: not an LMDB (no LMDB magic number in its first page)")
            psize = first[4]
            if psize < 512 or psize & (psize - 1):
                raise CaffeError(f"{what}: {data}: damaged LMDB (page size {psize})")
            f.seek(psize)
            second = f.read(_PAGE_HEADER + _META.size)
    except OSError as e:
        raise CaffeError(f"{what}: {data}: cannot read ({e.strerror or e})") from None
    metas = [first]
    if len(second) == _PAGE_HEADER + _META.size:
        m = _META.unpack_from(second, _PAGE_HEADER)
        if m[0] == _MDB_MAGIC:
            metas.append(m)
    # LMDB uses the meta page with the larger transaction id
    last_pg = max(metas, key=lambda m: m[-1])[-2]
    need = (last_pg + 1) * psize
    if size < need:
        raise CaffeError(f"{what}: {data}: truncated LMDB ({size} bytes, its pages need {need})")


def parse_datum(value: bytes, key: bytes | str, source: str, what: str = "lmdb") -> caffe_pb2.Datum:
    """A record's value as the Datum Caffe's DataLayer parses; a value that is not one (a database
    of something else) is a CaffeError naming the database and the key."""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    d = caffe_pb2.Datum()
    try:
        d.ParseFromString(value)
    except (pb_message.DecodeError, RecursionError) as e:
        raise CaffeError(f"{what}: {source}: record '{key}' is not a Datum ({e})") from None
    if not d.encoded and d.channels * d.height * d.width == 0:
        raise CaffeError(f"{what}: {source}: record '{key}' is not a Datum (channels x height x width "
                         f"= {d.channels}x{d.height}x{d.width} with {len(d.data) or len(d.float_data)} values)")
    return d


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
        check_lmdb_file(path, what)
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
        return self.first_record()[1]

    def first_record(self) -> tuple[bytes, bytes]:
        """(key, value) of the first record, read on a short transaction of its own."""
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor()
            cur.first()
            return bytes(cur.key()), bytes(cur.value())

    def _open(self) -> None:
        # The cursor's transaction is created lazily in the reading (prefetch) thread.
        self._txn = self.env.begin(buffers=False)
        self._cursor = self._txn.cursor()
        self._cursor.first()

    def value_at(self, position: int) -> tuple[bytes, bytes]:
        """(key, value) at stream ``position``; going back (a resumed run's data layer starting
        over from its saved position) rewinds to the first record and walks from there."""
        if self._cursor is not None and position < self.pos:
            self._txn.abort()
            self._txn = self._cursor = None
            self.pos = 0
        if self._cursor is None:
            self._open()
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


class _DBWriter:
    """What db::LMDB and db::LevelDB opened NEW share: a new path (an existing one is an error),
    ``put`` buffering records as a db::Transaction, written every ``COMMIT_EVERY`` and at
    ``close``; leaving a ``with`` block on an exception closes without writing the rest."""

    def __init__(self, path: str) -> None:
        if os.path.exists(path):
            raise CaffeError(f"{path}: already exists; remove it or choose another DB name")
        self.path = path
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
        self._write(self._pending)
        self._pending.clear()

    def _write(self, records: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._abort()


class LMDBWriter(_DBWriter):
    """db::LMDB opened NEW: creates the directory (an existing one is an error, as Caffe's mkdir
    check), puts records, commits every ``COMMIT_EVERY``, grows the map when it fills."""

    def __init__(self, path: str, map_size: int = 1 << 26) -> None:
        _need_lmdb()
        super().__init__(path)
        try:
            os.makedirs(path, mode=0o744)
        except OSError as e:
            raise CaffeError(f"{path}: cannot create directory ({e.strerror})") from None
        self.env = lmdb.open(path, map_size=map_size, subdir=True, meminit=False)

    def _write(self, records: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in records:
                        txn.put(k, v)
                break
            except lmdb.MapFullError:
                # db_lmdb.cpp DoubleMapSize: the aborted transaction is retried on a bigger map
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        self.commit()
        self.env.sync()
        self.env.close()

    def _abort(self) -> None:
        self.env.close()


# -- LevelDB (util/db_leveldb.cpp) ---------------------------------------------------------------
#: db::LevelDB::Open's options: 64 KiB blocks, a 256 MiB write buffer, at most 100 open files
#: (compression left at LevelDB's default, snappy).
LEVELDB_OPTIONS = dict(block_size=65536, write_buffer_size=268435456, max_open_files=100)


def _plyvel():
    try:
        import plyvel  # type: ignore
    except ImportError:  # pragma: no cover - plyvel is a dependency
        raise CaffeError("plyvel is required for LevelDB databases (pip install plyvel)") from None
    return plyvel


def is_leveldb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "CURRENT"))


def _clone_leveldb(path: str) -> str:
    # Table files never change once written: hard links (copies across file systems) of them and
    # copies of the small CURRENT/MANIFEST/log files make a consistent private database.
    import shutil
    import tempfile
    clone = tempfile.mkdtemp(prefix="fc-caffe-leveldb-")
    for name in os.listdir(path):
        src, dst = os.path.join(path, name), os.path.join(clone, name)
        if name == "LOCK" or not os.path.isfile(src):
            continue
        if name.endswith((".ldb", ".sst")):
            try:
                os.link(src, dst)
                continue
            except OSError:
                pass
        shutil.copyfile(src, dst)
    return clone


class LevelDBReader:
    """db::LevelDB opened READ: an existing database (missing or empty is a CaffeError); a
    database another process holds is read through a private clone, removed on ``close``."""

    def __init__(self, path: str, what: str = "leveldb") -> None:
        plyvel = _plyvel()
        self.path, self.what, self._clone = path, what, None
        if not os.path.isdir(path):
            raise CaffeError(f"{what}: cannot open LevelDB '{path}': no such directory")
        if not is_leveldb(path):
            raise CaffeError(f"{what}: cannot open LevelDB '{path}': no CURRENT file in it (not a LevelDB)")
        try:
            self.db = plyvel.DB(path, create_if_missing=False, **LEVELDB_OPTIONS)
        except plyvel.IOError as e:
            if "lock" not in str(e).lower():
                raise CaffeError(f"{what}: cannot open LevelDB '{path}': {e}") from None
            self._clone = _clone_leveldb(path)
            try:
                self.db = plyvel.DB(self._clone, create_if_missing=False, **LEVELDB_OPTIONS)
            except plyvel.Error as e2:
                self._remove_clone()
                raise CaffeError(f"{what}: cannot open LevelDB '{path}' (locked by another process, and "
                                 f"its clone failed: {e2})") from None
        except plyvel.Error as e:
            raise CaffeError(f"{what}: cannot open LevelDB '{path}': {e}") from None
        with self.db.iterator(include_value=False) as it:
            if next(it, None) is None:
                self.close()
                raise CaffeError(f"{what}: LevelDB '{path}' is empty")

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        with self.db.iterator() as it:
            yield from it

    def entries(self) -> int:
        with self.db.iterator(include_value=False) as it:
            return sum(1 for _ in it)

    def _remove_clone(self) -> None:
        if self._clone:
            import shutil
            shutil.rmtree(self._clone, ignore_errors=True)
            self._clone = None

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None and not db.closed:
            db.close()
        self._remove_clone()


def iter_leveldb(path: str, what: str = "leveldb") -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB in key order (opened, and a missing one reported, at the call)."""
    reader = LevelDBReader(path, what)

    def walk():
        try:
            yield from reader
        finally:
            reader.close()
    return walk()


def iter_db(path: str, backend, what: str = "db", explicit: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of an LMDB or a LevelDB, in key order."""
    if resolve_backend(backend, path, what, explicit=explicit) == LMDB:
        return iter_lmdb(path, what)
    return iter_leveldb(path, what)


class LevelDBStream:
    """LMDBStream's endless key-order cursor over a LevelDB (same positions and restarts)."""

    def __init__(self, path: str, what: str = "leveldb") -> None:
        self.path = path
        self.what = what
        self.reader = LevelDBReader(path, what)
        self.size = self.reader.entries()
        self._it = None
        self._current: tuple[bytes, bytes] | None = None
        self.pos = 0
        self.restarts = 0

    def first_value(self) -> bytes:
        return self.first_record()[1]

    def first_record(self) -> tuple[bytes, bytes]:
        with self.reader.db.iterator() as it:
            return next(it)

    def _step(self) -> None:
        nxt = next(self._it, None)
        if nxt is None:  # past the last record: from the first again, as Caffe's DataReader
            self._it.close()
            self._it = self.reader.db.iterator()
            nxt = next(self._it)
            self.restarts += 1
        self._current = nxt

    def value_at(self, position: int) -> tuple[bytes, bytes]:
        """(key, value) at stream ``position``; going back (a resumed run's data layer starting
        over from its saved position) rewinds to the first record and walks from there."""
        if self._it is not None and position < self.pos:
            self._it.close()
            self._it = None
            self.pos = 0
        if self._it is None:
            self._it = self.reader.db.iterator()
            self._current = next(self._it)
        steps = position - self.pos
        if steps >= self.size:
            self.restarts += steps // self.size
            steps %= self.size
        for _ in range(steps):
            self._step()
        self.pos = position
        return self._current

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None
        self.reader.close()


def open_stream(backend, path: str, what: str, explicit: bool = True):
    """The Data layer's record stream over ``path`` (LMDBStream or LevelDBStream)."""
    if resolve_backend(backend, path, what, explicit=explicit) == LMDB:
        return LMDBStream(path, what)
    return LevelDBStream(path, what)


class LevelDBWriter(_DBWriter):
    """db::LevelDB opened NEW (error_if_exists, Caffe's options); ``put`` adds to a write batch,
    written every ``COMMIT_EVERY`` records and at ``close``, as LevelDBTransaction::Commit."""

    def __init__(self, path: str) -> None:
        plyvel = _plyvel()
        super().__init__(path)
        try:
            self.db = plyvel.DB(path, create_if_missing=True, error_if_exists=True, **LEVELDB_OPTIONS)
        except plyvel.Error as e:
            raise CaffeError(f"{path}: cannot create LevelDB ({e})") from None

    def _write(self, records: list[tuple[bytes, bytes]]) -> None:
        with self.db.write_batch() as batch:
            for k, v in records:
                batch.put(k, v)

    def close(self) -> None:
        self.commit()
        self.db.close()

    def _abort(self) -> None:
        self.db.close()


def open_writer(backend, path: str, what: str = "db"):
    """db::GetDB(backend)->Open(path, NEW): an LMDBWriter or a LevelDBWriter."""
    if resolve_backend(backend, path, what, writing=True) == LMDB:
        return LMDBWriter(path)
    return LevelDBWriter(path)
