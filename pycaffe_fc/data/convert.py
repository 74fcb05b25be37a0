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
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import CaffeError
from ..proto import caffe_pb2
from .datum import datum_pixels, guess_encoding, read_image_to_datum
from .db import LMDBWriter, iter_lmdb, resolve_backend

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


def _convert_one(job: _ImageJob, name: str, label: int) -> bytes | None:
    enc = job.encode_type
    if job.encoded and not enc:
        enc = guess_encoding(name)
    datum = read_image_to_datum(job.root + name, label, job.resize_height, job.resize_width,
                                job.is_color, enc)
    return None if datum is None else datum.SerializeToString()


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


def _convert_chunk(chunk: tuple[int, list[tuple[str, int]]]) -> list[tuple[int, tuple[int, int] | None]]:
    """Convert and write lines ``start..`` of the list; per line, its size info or None (unreadable)."""
    start, lines = chunk
    job = _worker["job"]
    puts, info = [], []
    for i, (name, label) in enumerate(lines, start):
        value = _convert_one(job, name, label)
        info.append((i, None if value is None else _record_info(value)))
        if value is not None:
            puts.append((f"{i:08d}_{name}".encode(), value))
    if puts:
        if _worker["env"] is None:
            import lmdb
            # no fsync per commit: the parent syncs once at the end
            _worker["env"] = lmdb.open(_worker["db_name"], map_size=_MAP_SIZE, sync=False, meminit=False)
        _put_all(_worker["env"], puts)
    return info


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


def read_image_list(path: str) -> list[tuple[str, int]]:
    """convert_imageset's list file: "relative/path label" lines; the label follows the last space."""
    from .stream import read_list_file
    return read_list_file(path, "convert_imageset")


def convert_imageset(root_folder: str, list_file: str, db_name: str, *, resize_height: int = 0,
                     resize_width: int = 0, gray: bool = False, shuffle: bool = False,
                     encoded: bool = False, encode_type: str = "", check_size: bool = False,
                     backend: str = "lmdb", processes: int = 2, progress: bool = True,
                     rng: np.random.Generator | None = None) -> int:
    """tools/convert_imageset: images + labels into an LMDB of Datum under keys
    ``%08d_<relative path>`` (i = line number in the list); returns the number of records written.

    ``encode_type`` without ``encoded`` still stores encoded images, as Caffe does. Unreadable
    images are logged and skipped. With ``processes`` > 1 the images are decoded and written by a
    pool of worker processes; ``check_size`` then reports a size mismatch once all are written."""
    resolve_backend(backend, db_name, "convert_imageset", writing=True)
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
    data_size = None
    pool = writer = None
    try:
        per_task = max(1, min(CHUNK, len(lines) // (4 * max(1, processes))))
        chunks = [(s, lines[s:s + per_task]) for s in range(0, len(lines), per_task)]
        if processes > 1 and len(chunks) > 1:
            LMDBWriter(db_name).close()  # create it; the workers open it themselves
            ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            pool = ctx.Pool(processes, initializer=_worker_init, initargs=(db_name, job))
            results = pool.imap(_convert_chunk, chunks)
        else:
            writer = LMDBWriter(db_name)
            results = ([(i, _convert_one(job, n, lab)) for i, (n, lab) in enumerate(ls, s)] for s, ls in chunks)
        for chunk_result in results:
            for line_id, value in chunk_result:
                name = lines[line_id][0]
                if bar is not None:
                    bar.update(1)
                if value is None:
                    log.error(f"Could not open or find file {root_folder + name}",
                              extra={"caffe_src": "io.cpp:80"})
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
        else:
            pool.close()
            pool.join()
            pool = None
            _sync(db_name)
        if count % 1000:
            _info(f"Processed {count} files.", "convert_imageset.cpp:152")
    finally:
        if writer is not None:  # stopped by an error: what was committed stays, as in Caffe
            writer.env.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
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
    resolve_backend(backend, db_name, "compute_image_mean")
    total = None
    shape = None
    count = 0
    records = iter_lmdb(db_name, "compute_image_mean")
    _info("Starting iteration", "compute_image_mean.cpp:70")
    for key, value in records:
        d = caffe_pb2.Datum()
        d.ParseFromString(value)
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
    with LMDBWriter(db_name) as db:
        for i in range(n):
            datum.data = images[i].tobytes()
            # Caffe reads the label as a char: bytes above 127 become negative labels
            datum.label = int(np.int8(labels[i]))
            db.put(f"{i:08d}", datum.SerializeToString())
    _info(f"Processed {n} files.", "convert_mnist_data.cpp:136")
    return n
