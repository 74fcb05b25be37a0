"""Reading and writing Caffe protos: prototxt, binary protos, BlobProto <-> ndarray.

The counterpart of Caffe's src/caffe/util/io.cpp (ReadProtoFromTextFile,
ReadProtoFromBinaryFile, WriteProtoToTextFile, WriteProtoToBinaryFile and the
Read*ParamsFrom*FileOrDie wrappers, which run the upgrade chain) and of pycaffe's
caffe.io.blobproto_to_array / array_to_blobproto. Where Caffe would CHECK-fail,
these raise CaffeError with a one-line message naming the file.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import tempfile
import threading
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
    """Parse a binary proto file, as Caffe's ReadProtoFromBinaryFile.

    A NetParameter or SolverState written by fc-caffe starts with its checksum (fields
    fc_checksum/fc_checksummed_bytes, which BVLC's parser skips); it is verified here, so a
    truncated or bit-flipped snapshot is an error instead of a silently wrong load. Files
    without one (BVLC Caffe's) are read as they are. The checksum fields are cleared after
    verification, so a message written back never carries a stale one."""
    msg = message() if isinstance(message, type) else message
    raw = _read_bytes(path)
    body = _verified_body(raw, msg, path)
    try:
        msg.ParseFromString(body)
    except pb_message.DecodeError as e:
        raise CaffeError(
            f"{path}: not a binary {msg.DESCRIPTOR.name} ({e}; the file is truncated or damaged)") from None
    except RecursionError:  # a damaged file can nest messages without end
        raise CaffeError(f"{path}: not a binary {msg.DESCRIPTOR.name} (nesting too deep; damaged)") from None
    if _has_checksum_fields(msg):
        msg.ClearField("fc_checksum")
        msg.ClearField("fc_checksummed_bytes")
    return msg


# -- checksums of fc-caffe's own .caffemodel / .solverstate ----------------------------------------
def _has_checksum_fields(msg: pb_message.Message) -> bool:
    return "fc_checksum" in msg.DESCRIPTOR.fields_by_name


def _checksum_header(msg: pb_message.Message, body: bytes) -> bytes:
    """The serialized fc_checksum (SHA-256 of ``body``) and fc_checksummed_bytes fields.

    Written before the body: protobuf readers accept fields in any order and BVLC's skips these
    unknown ones, and a file cut short then no longer matches the length it announces."""
    head = type(msg)()
    head.fc_checksum = hashlib.sha256(body).digest()
    head.fc_checksummed_bytes = len(body)
    return head.SerializeToString()


_CHECKSUM_TAG = b"\x92\x3f\x20"  # field 1010, length-delimited, 32 bytes
_LENGTH_TAG = b"\x98\x3f"  # field 1011, varint, at offset 35


def _looks_checksummed(raw: bytes) -> bool:
    # 3 of the header's 5 fixed bytes suffice, so that a bit flipped in a tag cannot pass a damaged
    # file off as one without a checksum; Caffe's files start with field 1, 2 or 100 instead.
    fixed = ((0, 0x92), (1, 0x3F), (2, 0x20), (35, 0x98), (36, 0x3F))
    return sum(i < len(raw) and raw[i] == b for i, b in fixed) >= 3


def _verified_body(raw: bytes, msg: pb_message.Message, path: PathLike) -> bytes:
    """``raw`` without its checksum header, after checking it; ``raw`` itself when there is none."""
    if not (_has_checksum_fields(msg) and _looks_checksummed(raw)):
        return raw
    head = type(msg)()
    # the header is field 1010 (35 bytes) then field 1011 (2-byte tag, varint of at most 10 bytes)
    n = 35 + 2
    while n < min(len(raw), 35 + 12) and raw[n] & 0x80:
        n += 1
    n += 1
    try:
        head.ParseFromString(raw[:n])
    except pb_message.DecodeError:
        head.Clear()
    if len(head.fc_checksum) != 32 or not head.HasField("fc_checksummed_bytes") \
            or raw[:3] != _CHECKSUM_TAG or raw[35:37] != _LENGTH_TAG:
        raise CaffeError(f"{path}: damaged {msg.DESCRIPTOR.name}: its checksum header is unreadable")
    body = raw[n:]
    want = head.fc_checksummed_bytes
    if len(body) < want:
        raise CaffeError(f"{path}: truncated {msg.DESCRIPTOR.name}: {len(body)} of its {want} bytes "
                         "are there")
    if len(body) > want:
        raise CaffeError(f"{path}: damaged {msg.DESCRIPTOR.name}: {len(body) - want} bytes more than "
                         f"the {want} its checksum covers")
    if hashlib.sha256(body).digest() != head.fc_checksum:
        raise CaffeError(f"{path}: damaged {msg.DESCRIPTOR.name}: SHA-256 checksum mismatch (the file "
                         "was changed or corrupted after fc-caffe wrote it)")
    return body


def serialize_with_checksum(msg: pb_message.Message) -> bytes:
    """``msg`` serialized, preceded by its checksum fields when its type has them
    (NetParameter, SolverState); other messages serialize as they are."""
    if not _has_checksum_fields(msg):
        return msg.SerializeToString()
    if msg.HasField("fc_checksum") or msg.HasField("fc_checksummed_bytes"):
        copy = type(msg)()
        copy.CopyFrom(msg)
        copy.ClearField("fc_checksum")
        copy.ClearField("fc_checksummed_bytes")
        msg = copy
    body = msg.SerializeToString()
    return _checksum_header(msg, body) + body


def read_net_param(path: PathLike) -> caffe_pb2.NetParameter:
    """Read a net prototxt and upgrade it, as Caffe's ReadNetParamsFromTextFileOrDie."""
    net = read_prototxt(path, caffe_pb2.NetParameter)
    if not (len(net.layer) or len(net.layers) or len(net.input)):
        # Caffe would build (and test, and "train") an empty net: surely a wrong or empty file
        raise CaffeError(f"{path}: no layers in this net prototxt (empty file?)")
    upgrade.upgrade_net_as_needed(net, str(path))
    return net


def read_net_param_binary(path: PathLike, upgrade_net: bool = True) -> caffe_pb2.NetParameter:
    """Read a binary NetParameter (.caffemodel), as Caffe's ReadNetParamsFromBinaryFileOrDie.

    Like Caffe, old-format models (V0/V1 `layers`, net inputs) are upgraded;
    pass upgrade_net=False to get the message exactly as stored.
    """
    net = read_proto_binary(path, caffe_pb2.NetParameter)
    if not len(net.layer) and not len(net.layers):
        # an empty file parses as an empty NetParameter: "loading" it would keep random weights
        raise CaffeError(f"{path}: no layers in this NetParameter (empty file or not a .caffemodel)")
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
    """Have ``write(tmp_path)`` fill a temporary file beside ``path``, fsync it, give it the
    umask's permissions, rename it over ``path`` and fsync the directory: a crash or a full disk
    never leaves a truncated snapshot where a good one used to be.

    The temporary (``.<name>.<pid>.<random>.tmp``) is removed on any failure, on SIGTERM or SIGHUP
    arriving during the write too (when they would otherwise kill the process and this is the
    main thread); one left by a ``kill -9`` is removed by ``remove_stale_temporaries``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise CaffeError(f"{path}: cannot write ({e.strerror})") from None
    restore = _raise_on_fatal_signals()
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; a snapshot is an ordinary file: 0666 less the umask, as open() does
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_directory(directory)
    except BaseException as e:  # an interrupted write must not leave its temporary behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, _FatalSignal):
            restore()
            signal.signal(e.signum, signal.SIG_DFL)
            os.kill(os.getpid(), e.signum)  # die of it as we would have without the handler
        if isinstance(e, OSError):
            raise CaffeError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    finally:
        restore()


class _FatalSignal(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_on_fatal_signals() -> Callable[[], None]:
    """While a temporary exists, SIGTERM/SIGHUP left at their default (kill) raise instead, so the
    temporary is removed before the process dies; handlers someone installed are left alone."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum, frame):
        raise _FatalSignal(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        while previous:
            sig, h = previous.popitem()
            signal.signal(sig, h)

    return restore


def _umask() -> int:
    try:  # Linux publishes it, which avoids setting it (os.umask is process-wide, racy in threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # the rename is durable only once the directory entry is on disk
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename still happened
    finally:
        os.close(fd)


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def remove_stale_temporaries(prefix: PathLike) -> list[str]:
    """Remove the temporaries ``atomic_write`` left beside snapshots ``<prefix>_iter_...`` by
    processes that no longer run (a ``kill -9`` during a snapshot); returns the removed paths.
    Those of a live process (another run writing right now) are left alone."""
    prefix = str(prefix)
    directory = os.path.dirname(prefix) or "."
    stem = os.path.basename(prefix)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TEMPORARY.match(name)
        if not m or not m.group("name").startswith(stem + "_iter_"):
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and pid_exists(pid):
            continue
        full = os.path.join(directory, name)
        try:
            os.unlink(full)
            removed.append(full)
        except OSError:
            pass
    return removed


def pid_exists(pid: int) -> bool:
    """kill(pid, 0): True while a process ``pid`` exists (a zombie too), even one of another user."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_proto_binary(msg: pb_message.Message, path: PathLike) -> None:
    """Serialize `msg` to `path` atomically, as Caffe's WriteProtoToBinaryFile; a NetParameter or
    SolverState is preceded by its checksum (see ``read_proto_binary``)."""
    _write_atomic(path, serialize_with_checksum(msg))


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


def blobproto_to_array(bp: caffe_pb2.BlobProto, return_diff: bool = False,
                       what: str = "BlobProto") -> np.ndarray:
    """Blob contents as an ndarray, as pycaffe's caffe.io.blobproto_to_array.

    Values come from `double_data` when present (float64), else `data`
    (float32), as Blob::FromProto prefers double_data; likewise for diffs.
    ``what`` names the blob in errors (file, layer, index).
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
        kind = "diff" if return_diff else "data"
        raise CaffeError(f"{what}: shape {list(shape)} needs {count} values but {kind} has "
                         f"{values.size} (truncated or damaged blob)")
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


# Tokens of the protobuf text format, enough to find where a field sits: comments, quoted strings,
# braces, identifiers, anything else one character at a time.
_TEXT_TOKEN = re.compile(r"""#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[{}<>:]|[A-Za-z_][\w.]*|\S""")


def locate_layer(path: PathLike, layer_name: str, type_name: str) -> str | None:
    """``path:line:col`` of the ``type:`` of the layer named ``layer_name`` (of type ``type_name``)
    in a net prototxt, for errors that must point at the file; None when it cannot be found."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    layers: list[dict] = []  # per top-level layer block: its name, type and the type's position
    depth, current, expect_block = 0, None, False
    tokens = [m for m in _TEXT_TOKEN.finditer(text) if not m.group().startswith("#")]
    for i, m in enumerate(tokens):
        tok = m.group()
        if tok in "{<" and len(tok) == 1:
            depth += 1
            if depth == 1 and expect_block:
                current = {"name": None, "type": None, "pos": None}
                layers.append(current)
            expect_block = False
        elif tok in "}>" and len(tok) == 1:
            depth -= 1
            if depth == 0:
                current = None
        elif depth == 0:
            expect_block = tok in ("layer", "layers") or (expect_block and tok == ":")
        elif depth == 1 and current is not None and tok in ("name", "type") and i + 2 < len(tokens):
            colon, value = tokens[i + 1].group(), tokens[i + 2].group()
            if colon == ":" and value[:1] in "\"'":
                current[tok] = value[1:-1]
                if tok == "type":
                    line = text.count("\n", 0, m.start()) + 1
                    col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
                    current["pos"] = (line, col)
    for want_name in (True, False):
        for lay in layers:
            if lay["type"] == type_name and lay["pos"] and (not want_name or lay["name"] == layer_name):
                return f"{path}:{lay['pos'][0]}:{lay['pos'][1]}"
    return None
