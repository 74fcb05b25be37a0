"""Reading and writing Caffe protos: prototxt, binary protos, BlobProto <-> ndarray.

The counterpart of Caffe's src/caffe/util/io.cpp (ReadProtoFromTextFile,
ReadProtoFromBinaryFile, WriteProtoToTextFile, WriteProtoToBinaryFile and the
Read*ParamsFrom*FileOrDie wrappers, which run the upgrade chain) and of pycaffe's
caffe.io.blobproto_to_array / array_to_blobproto. Where Caffe would CHECK-fail,
these raise CaffeError with a one-line message naming the file.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.proto import upgrade

M = TypeVar("M", bound=pb_message.Message)
PathLike = str | os.PathLike

# text_format.ParseError's text starts with "LINE:COL : "; we re-emit the
# position in the compiler style "path:line:col: message" instead.
_POSITION_PREFIX = re.compile(r"^\d+:\d+\s*:\s*")


def _read_bytes(path: PathLike) -> bytes:
    # Caffe: CHECK_NE(fd, -1) << "File not found: " << filename.
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CaffeError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CaffeError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise CaffeError(f"{path}: cannot read ({e.strerror})") from None


def parse_prototxt(text: str, message: M, source_name: str = "<string>") -> M:
    """Parse prototxt `text` into `message` (cleared first); errors name source:line:col."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = _POSITION_PREFIX.sub("", str(e))
        where = f"{source_name}:{line}:{col}" if line is not None else source_name
        raise CaffeError(f"{where}: {msg}") from None
    return message


def read_prototxt(path: PathLike, message: M | type[M]) -> M:
    """Parse a text-format proto file, as Caffe's ReadProtoFromTextFile.

    `message` is a message instance (filled in place and returned) or a message
    class (a new instance is returned).
    """
    msg = message() if isinstance(message, type) else message
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaffeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_prototxt(text, msg, str(path))


def read_proto_binary(path: PathLike, message: M | type[M]) -> M:
    """Parse a binary proto file, as Caffe's ReadProtoFromBinaryFile."""
    msg = message() if isinstance(message, type) else message
    raw = _read_bytes(path)
    try:
        msg.ParseFromString(raw)
    except pb_message.DecodeError as e:
        raise CaffeError(
            f"{path}: not a binary {msg.DESCRIPTOR.name} ({e})") from None
    return msg


def read_net_param(path: PathLike) -> caffe_pb2.NetParameter:
    """Read a net prototxt and upgrade it, as Caffe's ReadNetParamsFromTextFileOrDie."""
    net = read_prototxt(path, caffe_pb2.NetParameter)
    upgrade.upgrade_net_as_needed(net, str(path))
    return net


def read_net_param_binary(path: PathLike, upgrade_net: bool = True) -> caffe_pb2.NetParameter:
    """Read a binary NetParameter (.caffemodel), as Caffe's ReadNetParamsFromBinaryFileOrDie.

    Like Caffe, old-format models (V0/V1 `layers`, net inputs) are upgraded;
    pass upgrade_net=False to get the message exactly as stored.
    """
    net = read_proto_binary(path, caffe_pb2.NetParameter)
    if upgrade_net:
        upgrade.upgrade_net_as_needed(net, str(path))
    return net


def read_solver_param(path: PathLike) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt and upgrade it, as Caffe's ReadSolverParamsFromTextFileOrDie."""
    solver = read_prototxt(path, caffe_pb2.SolverParameter)
    if not upgrade.upgrade_solver_as_needed(solver, str(path)):
        # Caffe: CHECK(UpgradeSolverAsNeeded(...)) << "Failed to upgrade solver ...".
        raise CaffeError(f"{path}: failed to upgrade solver from old style to new style")
    return solver


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Have ``write(tmp_path)`` fill a temporary file beside ``path``, fsync it and rename it over
    ``path``: a crash or a full disk never leaves a truncated snapshot where a good one used to be."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise CaffeError(f"{path}: cannot write ({e.strerror})") from None
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # an interrupted write must not leave its temporary behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CaffeError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def _write_atomic(path: PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_proto_binary(msg: pb_message.Message, path: PathLike) -> None:
    """Serialize `msg` to `path` atomically, as Caffe's WriteProtoToBinaryFile."""
    _write_atomic(path, msg.SerializeToString())


def write_proto_text(msg: pb_message.Message, path: PathLike) -> None:
    """Write `msg` in text format to `path` atomically, as Caffe's WriteProtoToTextFile."""
    _write_atomic(path, text_format.MessageToString(msg).encode("utf-8"))


def read_blobproto(path: PathLike) -> caffe_pb2.BlobProto:
    """Read a binary BlobProto (e.g. a mean .binaryproto), as ReadProtoFromBinaryFileOrDie."""
    return read_proto_binary(path, caffe_pb2.BlobProto)


def blobproto_shape(bp: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The blob's shape as Caffe's Blob::FromProto reads it.

    Any of the legacy num/channels/height/width fields being set wins (a 4-d
    shape); otherwise `shape.dim` is used.
    """
    if any(bp.HasField(f) for f in ("num", "channels", "height", "width")):
        return (bp.num, bp.channels, bp.height, bp.width)
    return tuple(int(d) for d in bp.shape.dim)


def blobproto_to_array(bp: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """Blob contents as an ndarray, as pycaffe's caffe.io.blobproto_to_array.

    Values come from `double_data` when present (float64), else `data`
    (float32), as Blob::FromProto prefers double_data; likewise for diffs.
    """
    shape = blobproto_shape(bp)
    if return_diff:
        values = (np.asarray(bp.double_diff, dtype=np.float64) if len(bp.double_diff)
                  else np.asarray(bp.diff, dtype=np.float32))
    else:
        values = (np.asarray(bp.double_data, dtype=np.float64) if len(bp.double_data)
                  else np.asarray(bp.data, dtype=np.float32))
    count = int(np.prod(shape, dtype=np.int64))
    if values.size != count:
        # Caffe: CHECK_EQ(count_, proto.data_size()).
        what = "diff" if return_diff else "data"
        raise CaffeError(
            f"BlobProto shape {list(shape)} needs {count} values but {what} has {values.size}")
    return values.reshape(shape)


def fill_blobproto(bp: caffe_pb2.BlobProto, arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """Blob::ToProto: write shape, data and (optionally) diff into ``bp`` as float32."""
    arr = np.asarray(arr)
    bp.Clear()
    bp.shape.dim.extend(int(d) for d in arr.shape)
    bp.data.extend(arr.astype(np.float32, copy=False).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise CaffeError(f"diff shape {list(diff.shape)} differs from data shape {list(arr.shape)}")
        bp.diff.extend(diff.astype(np.float32, copy=False).ravel().tolist())
    return bp


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """An ndarray as a BlobProto with `shape` set, as pycaffe's caffe.io.array_to_blobproto."""
    return fill_blobproto(caffe_pb2.BlobProto(), arr, diff)
