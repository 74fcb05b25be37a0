"""Caffe's data tools: convert_imageset, compute_image_mean and convert_mnist_data.

The databases they write are byte-for-byte what BVLC Caffe writes (same keys, same serialised
Datum), so BVLC Caffe reads ours and we read theirs. convert_imageset decodes, resizes and writes the
images on a process pool; the parent logs and checks in list order.
"""
from __future__ import annotations

import gzip
import logging
import multiprocessing
import os
import re
import shutil
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..errors import CaffeError
from ..proto import caffe_pb2
from .datum import datum_pixels, guess_encoding, read_image_to_datum
from .db import LEVELDB, LevelDBWriter, LMDBWriter, iter_db, open_writer, parse_datum, resolve_backend

log = logging.getLogger("pycaffe_fc.data")


def _info(msg: str, src: str) -> None:
    log.info(msg, extra={"caffe_src": src})


# -- convert_imageset -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _ImageJob:
    root: str
    resize_height: int
    resize_width: int
    is_color: bool
    encoded: bool
    encode_type: str


def _convert_one(job: _ImageJob, name: str, label: int) -> bytes | str:
    """The serialised Datum of one list line, or why it was skipped."""
    path = job.root + name
    if not os.path.isfile(path):
        return "missing"
    problem = incomplete_image(path)
    if problem:
        return problem
    enc = job.encode_type
    if job.encoded and not enc:
        enc = guess_encoding(name)
    datum = read_image_to_datum(path, label, job.resize_height, job.resize_width,
                                job.is_color, enc)
    return "not decodable" if datum is None else datum.SerializeToString()


# -- is the image file whole? --------------------------------------------------------------------
# OpenCV decodes a JPEG cut short up to where it ends and fills the rest with grey (libjpeg only
# warns "Premature end of JPEG file"), so a truncated download would be stored as a good image.
# The container is walked instead: a JPEG must reach its EOI marker, a PNG its IEND chunk.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # in scan data: not a stuffed 0 or RSTn
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def incomplete_image(path: str) -> str | None:
    """Why a JPEG or PNG file is not whole ("truncated JPEG", "damaged PNG", ...), or None when it
    is (other formats are left to OpenCV)."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError:
        return None  # OpenCV reports it
    if buf[:2] == b"\xff\xd8":
        return _jpeg_problem(buf)
    if buf[:8] == _PNG_SIGNATURE:
        return _png_problem(buf)
    return None


def _jpeg_problem(buf: bytes) -> str | None:
    n, pos = len(buf), 2
    truncated = "truncated JPEG (ends before its EOI marker)"
    while True:
        if pos >= n:
            return truncated
        if buf[pos] != 0xFF:
            return "damaged JPEG (no marker where one is due)"
        while pos < n and buf[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return truncated
        code = buf[pos]
        pos += 1
        if code == 0xD9:  # EOI: whatever follows (camera trailers) is not image data
            return None
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length
            continue
        if pos + 2 > n:
            return truncated
        length = int.from_bytes(buf[pos:pos + 2], "big")
        if length < 2:
            return "damaged JPEG (segment length below 2)"
        pos += length
        if pos > n:
            return truncated
        if code == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            m = _JPEG_NEXT_MARKER.search(buf, pos)
            if m is None:
                return truncated
            pos = m.start()


def _png_problem(buf: bytes) -> str | None:
    n, pos = len(buf), 8
    while True:
        if pos + 8 > n:
            return "truncated PNG (ends before its IEND chunk)"
        length, kind = struct.unpack_from(">I4s", buf, pos)
        end = pos + 12 + length
        if end > n:
            return "truncated PNG (ends before its IEND chunk)"
        if zlib.crc32(buf[pos + 4:end - 4]) != struct.unpack_from(">I", buf, end - 4)[0]:
            return f"damaged PNG (CRC mismatch in chunk {kind.decode('latin-1')!r})"
        if kind == b"IEND":
            return None
        pos = end


def _record_info(value: bytes) -> tuple[int, int]:
    """(channels*height*width, len(data)) of a serialised Datum, for --check_size."""
    d = caffe_pb2.Datum()
    d.ParseFromString(value)
    return d.channels * d.height * d.width, len(d.data)


# Pool workers decode, resize and serialise their chunk of lines and write it to the LMDB
# themselves (LMDB serialises writers), so the parent only orders logs and checks: the records are
# the same as a sequential run's, whatever the order in which the chunks are committed.
_worker: dict = {}
CHUNK = 32  # lines per task (fewer for short lists, so that every worker gets some)


def _worker_init(db_name: str, job: _ImageJob) -> None:
    try:  # one OpenCV thread per worker process: the pool is the parallelism
        import cv2
        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass
    _worker.update(db_name=db_name, job=job, env=None)


def _convert_chunk(chunk: tuple[int, list[tuple[str, int]]]) -> list[tuple[int, tuple[int, int] | str]]:
    """Convert and write lines ``start..`` of the list; per line, its size info or why it was skipped."""
    start, lines = chunk
    job = _worker["job"]
    puts, info = [], []
    for i, (name, label) in enumerate(lines, start):
        value = _convert_one(job, name, label)
        info.append((i, value if isinstance(value, str) else _record_info(value)))
        if not isinstance(value, str):
            puts.append((f"{i:08d}_{name}".encode(), value))
    if puts:
        if _worker["env"] is None:
            import lmdb
            # no fsync per commit: the parent syncs once at the end
            _worker["env"] = lmdb.open(_worker["db_name"], map_size=_MAP_SIZE, sync=False, meminit=False)
        _put_all(_worker["env"], puts)
    return info


def _convert_values(chunk: tuple[int, list[tuple[str, int]]]) -> list[tuple[int, bytes | str]]:
    """Convert lines ``start..`` of the list; per line, its serialised Datum or why it was skipped
    (the parent writes them: a LevelDB is open in one process only)."""
    start, lines = chunk
    return [(i, _convert_one(_worker["job"], name, label)) for i, (name, label) in enumerate(lines, start)]


_MAP_SIZE = 1 << 40  # address space only: the file grows with the data (Caffe's old LMDB_MAP_SIZE)


def _put_all(env, puts) -> None:
    import lmdb
    while True:
        try:
            with env.begin(write=True) as txn:
                for k, v in puts:
                    txn.put(k, v)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)
        except lmdb.MapResizedError:  # another worker grew the map: adopt its size
            env.set_mapsize(0)


_LIST_LINE = re.compile(r"^(?P<name>.*?)[ \t]+(?P<label>\S+)$")
_INT32 = re.compile(r"^[+-]?\d+$")


def read_image_list(path: str) -> list[tuple[str, int]]:
    """convert_imageset's list file: "relative/path label" lines; the label follows the last space.

    Caffe reads the label with atoi, so "zero" or a missing label silently becomes 0; here a label
    that is not an int32 is an error naming the list file and line."""
    try:
        with open(path, "r", encoding="utf-8", newline=None) as f:
            text = f.read()
    except OSError as e:
        raise CaffeError(f"convert_imageset: cannot open list file '{path}' ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise CaffeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line:
            continue
        m = _LIST_LINE.match(line)
        if m is None or not m.group("name"):
            raise CaffeError(f"{path}:{number}: expected 'path label', got '{line}'")
        label = m.group("label")
        if not _INT32.match(label) or not -2**31 <= int(label) < 2**31:
            raise CaffeError(f"{path}:{number}: label '{label}' is not an integer (int32)")
        lines.append((m.group("name"), int(label)))
    return lines


def convert_imageset(root_folder: str, list_file: str, db_name: str, *, resize_height: int = 0,
                     resize_width: int = 0, gray: bool = False, shuffle: bool = False,
                     encoded: bool = False, encode_type: str = "", check_size: bool = False,
                     backend: str = "lmdb", processes: int = 2, progress: bool = True,
                     rng: np.random.Generator | None = None) -> int:
    """tools/convert_imageset: images + labels into an LMDB or a LevelDB (``backend``) of Datum
    under keys ``%08d_<relative path>`` (i = line number in the list); returns the number of
    records written.

    ``encode_type`` without ``encoded`` still stores encoded images, as Caffe does. Missing,
    undecodable and truncated images (a JPEG without its EOI marker, a PNG without IEND, which
    OpenCV would decode half-grey) are logged and skipped; a summary line ends the run, and when
    no image could be converted the empty database is removed and a CaffeError raised. With
    ``processes`` > 1 the images are decoded and written by a pool of worker processes;
    ``check_size`` then reports a size mismatch once all are written."""
    leveldb = resolve_backend(backend, db_name, "convert_imageset", writing=True) == LEVELDB
    if os.path.exists(db_name):
        raise CaffeError(f"convert_imageset: {db_name}: already exists; remove it or choose another DB name")
    lines = read_image_list(list_file)
    if shuffle:
        _info("Shuffling data", "convert_imageset.cpp:86")
        from ..rng import get_rng
        order = (rng or get_rng()).permutation(len(lines))
        lines = [lines[i] for i in order]
    _info(f"A total of {len(lines)} images.", "convert_imageset.cpp:89")
    if encode_type and not encoded:
        _info("encode_type specified, assuming encoded=true.", "convert_imageset.cpp:92")
    job = _ImageJob(root_folder, max(0, int(resize_height)), max(0, int(resize_width)), not gray,
                    bool(encoded), encode_type)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(lines), unit="img", desc="convert_imageset", leave=False,
                       disable=None)  # shown on a terminal only
        except ImportError:  # pragma: no cover
            bar = None
    count = 0
    skipped: Counter = Counter()
    data_size = None
    pool = writer = None
    try:
        per_task = max(1, min(CHUNK, len(lines) // (4 * max(1, processes))))
        chunks = [(s, lines[s:s + per_task]) for s in range(0, len(lines), per_task)]
        if processes > 1 and len(chunks) > 1:
            # one process at a time may open a LevelDB: its workers hand the records back instead
            if leveldb:
                writer = LevelDBWriter(db_name)
            else:
                LMDBWriter(db_name).close()  # create it; the workers open it themselves
            ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            pool = ctx.Pool(processes, initializer=_worker_init, initargs=(db_name, job))
            results = pool.imap(_convert_values if leveldb else _convert_chunk, chunks)
        else:
            writer = open_writer(backend, db_name, "convert_imageset")
            results = ([(i, _convert_one(job, n, lab)) for i, (n, lab) in enumerate(ls, s)] for s, ls in chunks)
        for chunk_result in results:
            for line_id, value in chunk_result:
                name = lines[line_id][0]
                if bar is not None:
                    bar.update(1)
                if isinstance(value, str):
                    skipped[value] += 1
                    if value in ("missing", "not decodable"):
                        log.error(f"Could not open or find file {root_folder + name}",
                                  extra={"caffe_src": "io.cpp:80"})
                    else:
                        log.error(f"{root_folder + name}: {value}; skipped",
                                  extra={"caffe_src": "convert_imageset.cpp:130"})
                    continue
                if writer is not None:
                    writer.put(f"{line_id:08d}_{name}", value)
                    size, nbytes = _record_info(value) if check_size else (0, 0)
                else:
                    size, nbytes = value
                if check_size:
                    if data_size is None:
                        data_size = size
                    elif nbytes != data_size:
                        raise CaffeError(f"convert_imageset: {name}: incorrect data field size "
                                         f"{nbytes} (expected {data_size})")
                count += 1
                if count % 1000 == 0:
                    _info(f"Processed {count} files.", "convert_imageset.cpp:145")
        if writer is not None:
            writer.close()
            writer = None
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
            if not leveldb:
                _sync(db_name)
        if count % 1000:
            _info(f"Processed {count} files.", "convert_imageset.cpp:152")
    finally:
        if writer is not None:  # stopped by an error: what was committed stays, as in Caffe
            (writer.db if leveldb else writer.env).close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    why = ", ".join(f"{k} {reason}" for reason, k in sorted(skipped.items()))
    summary = f"converted {count} of {len(lines)} images" + (f"; skipped {sum(skipped.values())}: {why}"
                                                             if skipped else "")
    if count == 0:
        shutil.rmtree(db_name, ignore_errors=True)  # an empty database would only be trained on by mistake
        raise CaffeError(f"convert_imageset: {list_file}: no image converted ({summary}); "
                         f"{db_name} was not kept")
    (log.warning if skipped else log.info)(summary[0].upper() + summary[1:] + ".",
                                           extra={"caffe_src": "convert_imageset.cpp:153"})
    return count


def _sync(db_name: str) -> None:
    import lmdb
    env = lmdb.open(db_name, map_size=_MAP_SIZE)
    env.sync(True)
    env.close()


# -- compute_image_mean ---------------------------------------------------------------------------
def compute_image_mean(db_name: str, output: str | None = None, backend: str = "lmdb"):
    """tools/compute_image_mean: the mean of every record (decoded when encoded) as a
    (1,C,H,W) BlobProto with num/channels/height/width set; returns (mean (C,H,W), channel means).

    The sum is accumulated in float32 record after record, as Caffe accumulates in the
    BlobProto's float data, so the result is bit-identical to Caffe's."""
    total = None
    shape = None
    count = 0
    records = iter_db(db_name, backend, "compute_image_mean")
    _info("Starting iteration", "compute_image_mean.cpp:70")
    for key, value in records:
        d = parse_datum(value, key, db_name, "compute_image_mean")
        px = datum_pixels(d, what=f"compute_image_mean: record '{key.decode(errors='replace')}'")
        if total is None:
            shape = px.shape
            total = np.zeros(px.size, dtype=np.float32)
        if px.size != total.size:
            raise CaffeError(f"compute_image_mean: record '{key.decode(errors='replace')}': incorrect data "
                             f"field size {px.size} (expected {total.size})")
        total += px.reshape(-1).astype(np.float32)
        count += 1
        if count % 10000 == 0:
            _info(f"Processed {count} files.", "compute_image_mean.cpp:97")
    if count % 10000:
        _info(f"Processed {count} files.", "compute_image_mean.cpp:101")
    mean = (total / np.float32(count)).astype(np.float32)
    bp = caffe_pb2.BlobProto()
    bp.num, (bp.channels, bp.height, bp.width) = 1, shape
    bp.data.extend(mean.tolist())
    if output:
        from ..proto.io import write_proto_binary
        _info(f"Write to {output}", "compute_image_mean.cpp:108")
        write_proto_binary(bp, output)
    c = shape[0]
    _info(f"Number of channels: {c}", "compute_image_mean.cpp:114")
    mean = mean.reshape(shape)
    dim = shape[1] * shape[2]
    channel_means = []
    for ch in range(c):
        # float32 running sum over the channel's pixels, in order, as Caffe's loop
        s = np.cumsum(mean[ch].reshape(-1), dtype=np.float32)[-1] if dim else np.float32(0)
        channel_means.append(float(np.float32(s) / np.float32(dim)))
        _info(f"mean_value channel [{ch}]: {channel_means[-1]:.6g}", "compute_image_mean.cpp:119")
    return mean, channel_means


# -- convert_mnist_data ---------------------------------------------------------------------------
def _open_maybe_gzip(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
    """An IDX file (raw or gzip) as an array of its dims; magic 2051 images, 2049 labels."""
    try:
        with _open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) < 4:
                raise CaffeError(f"{path}: not an IDX file (too short)")
            magic = struct.unpack(">I", head)[0]
            if expected_magic is not None and magic != expected_magic:
                what = "image" if expected_magic == 2051 else "label"
                raise CaffeError(f"{path}: incorrect {what} file magic {magic} (expected {expected_magic})")
            if magic >> 8 != 0x08:
                raise CaffeError(f"{path}: IDX data type 0x{magic >> 8:02x} is not unsigned byte")
            ndim = magic & 0xFF
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            n = int(np.prod(dims, dtype=np.int64))
            buf = f.read(n)
    except OSError as e:
        raise CaffeError(f"{path}: cannot read ({e})") from None
    if len(buf) != n:
        raise CaffeError(f"{path}: truncated IDX file ({len(buf)} of {n} bytes)")
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def convert_mnist_data(images_path: str, labels_path: str, db_name: str, backend: str = "lmdb") -> int:
    """examples/mnist/convert_mnist_data: IDX images and labels into an LMDB of 1xRxC uint8 Datum
    under keys ``%08d``; returns the number of records."""
    resolve_backend(backend, db_name, "convert_mnist_data", writing=True)
    images = read_idx(images_path, 2051)
    labels = read_idx(labels_path, 2049)
    if images.shape[0] != labels.shape[0]:
        raise CaffeError(f"convert_mnist_data: {images.shape[0]} images but {labels.shape[0]} labels")
    n, rows, cols = images.shape
    _info(f"A total of {n} items.", "convert_mnist_data.cpp:108")
    _info(f"Rows: {rows} Cols: {cols}", "convert_mnist_data.cpp:109")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = 1, rows, cols
    with open_writer(backend, db_name, "convert_mnist_data") as db:
        for i in range(n):
            datum.data = images[i].tobytes()
            # Caffe reads the label as a char: bytes above 127 become negative labels
            datum.label = int(np.int8(labels[i]))
            db.put(f"{i:08d}", datum.SerializeToString())
    _info(f"Processed {n} files.", "convert_mnist_data.cpp:136")
    return n
