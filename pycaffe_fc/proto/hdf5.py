"""Weights and solver state in Caffe's HDF5 layout (net.cpp ToHDF5 / CopyTrainedLayersFromHDF5,
sgd_solver.cpp SnapshotSolverStateToHDF5 / RestoreSolverStateFromHDF5, util/hdf5.cpp).

``.caffemodel.h5``: a group ``data`` with one group per layer of the net (layers without
parameters too), each holding datasets ``"0"``, ``"1"``... (float32, the blob's shape); a shared
parameter is stored only by its owner. With ``snapshot_diff`` a group ``diff`` holds every
parameter's gradient the same way.

``.solverstate.h5``: ``iter`` and ``current_step`` (int32, shape (1,)), ``learned_net`` (a
null-terminated fixed-length string), and a group ``history`` with datasets ``"0"``..``"K-1"``.

Files are written to a temporary name in the target's directory, fsync'ed and renamed over the
target, so a crash never leaves a half-written snapshot in place of a good one. Each starts with
a 512-byte HDF5 user block (which the HDF5 library skips, so Caffe reads the file as usual)
holding the SHA-256 and length of the rest of the file; it is verified before HDF5 parses the
file, so a truncated or bit-flipped snapshot is an error, never a silent load (nor a hang inside
HDF5 on damaged metadata). A file without one (Caffe's) is read as it is.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import CaffeError
from .io import atomic_write


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover
        raise CaffeError("HDF5 snapshots need h5py (pip install h5py)") from None
    return h5py


def _write_atomic_h5(path, write: Callable) -> None:
    h5py = _h5py()

    def write_file(tmp: str) -> None:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
            write(f)
        _seal(tmp)

    atomic_write(path, write_file)


#: bytes of the HDF5 user block in which fc-caffe records the checksum of the rest of the file
USERBLOCK = 512
_SEAL_MAGIC = b"fc-caffe sha256 "
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _digest_after_userblock(f) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    f.seek(USERBLOCK)
    for chunk in iter(lambda: f.read(1 << 22), b""):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _seal(tmp: str) -> None:
    """Write ``fc-caffe sha256 <hex> <length>`` into the user block of a closed HDF5 file."""
    with open(tmp, "r+b") as f:
        digest, n = _digest_after_userblock(f)
        f.seek(0)
        f.write(_SEAL_MAGIC + digest.encode("ascii") + b" %d\n" % n)


def _check_seal(path) -> None:
    """Verify the checksum in the user block of one of fc-caffe's HDF5 files (a file whose HDF5
    superblock is at offset 0, as Caffe writes them, has none and passes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(USERBLOCK + len(_HDF5_SIGNATURE))
            if not head.startswith(_SEAL_MAGIC):
                if head[USERBLOCK:] == _HDF5_SIGNATURE:  # our layout, but the seal is damaged
                    raise CaffeError(f"{path}: damaged HDF5 file: its checksum block is unreadable")
                return
            try:
                fields = head[len(_SEAL_MAGIC):head.index(b"\n")].split(b" ")
                want, want_n = fields[0].decode("ascii"), int(fields[1])
                if len(want) != 64 or len(fields) != 2:
                    raise ValueError
            except (ValueError, IndexError, UnicodeDecodeError):
                raise CaffeError(f"{path}: damaged HDF5 file: its checksum block is unreadable") from None
            digest, n = _digest_after_userblock(f)
    except OSError as e:
        raise CaffeError(f"{path}: cannot read ({e.strerror or e})") from None
    if n < want_n:
        raise CaffeError(f"{path}: truncated HDF5 file: {n} of its {want_n} bytes are there")
    if n > want_n:
        raise CaffeError(f"{path}: damaged HDF5 file: {n - want_n} bytes more than the {want_n} its "
                         "checksum covers")
    if digest != want:
        raise CaffeError(f"{path}: damaged HDF5 file: SHA-256 checksum mismatch (the file was changed "
                         "or corrupted after fc-caffe wrote it)")


def _reading(path, read):
    """``read(f)`` on the open file after checking its checksum; the errors of a damaged file
    (HDF5's own, or a missing or mis-typed dataset) become one CaffeError naming it."""
    if os.path.isfile(path):
        _check_seal(path)
    with _open(path) as f:
        try:
            return read(f)
        except CaffeError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise CaffeError(f"{path}: damaged HDF5 file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _open(path):
    h5py = _h5py()
    if not os.path.exists(path):
        raise CaffeError(f"{path}: file not found")
    if os.path.isdir(path):
        raise CaffeError(f"{path}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CaffeError(f"{path}: not an HDF5 file ({str(e).splitlines()[0]})") from None


def _save_string(f, name: str, s: str) -> None:
    # H5LTmake_dataset_string: a scalar C string of strlen+1 bytes, null-terminated.
    h5py = _h5py()
    raw = s.encode("utf-8")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    ds = h5py.h5d.create(f.id, name.encode(), tid, space)
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw + b"\0", dtype=f"S{len(raw) + 1}"), mtype=tid)


def _load_string(f, name: str) -> str:
    v = f[name][()]
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0]
    if isinstance(v, bytes):
        v = v.split(b"\0", 1)[0].decode("utf-8")
    return str(v)


def _load_int(f, name: str, path) -> int:
    if name not in f:
        raise CaffeError(f"{path}: no dataset '{name}'")
    return int(np.asarray(f[name][()]).reshape(-1)[0])


# -- weights ------------------------------------------------------------------------------------
def write_hdf5_weights(path, layers: Sequence[tuple[str, Sequence[tuple[np.ndarray, np.ndarray | None]]]],
                       write_diff: bool = False) -> None:
    """Net::ToHDF5. ``layers`` is ``[(layer_name, [(data or None, diff), ...]), ...]`` in net order;
    ``data`` is None for a parameter the layer does not own (shared), which Caffe leaves out."""

    def write(f):
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for name, blobs in layers:
            # A '/' in a layer name (GoogLeNet's "conv1/7x7_s2") nests groups, which Caffe's
            # H5Gcreate2 refuses (BVLC/caffe#4267); read_hdf5_weights joins the path back.
            gd = _layer_group(data, name, bool(blobs), path)
            gf = _layer_group(diff, name, bool(blobs), path) if diff is not None else None
            for j, (d, g) in enumerate(blobs):
                if d is not None:
                    gd.create_dataset(str(j), data=np.asarray(d, dtype=np.float32))
                if gf is not None:
                    gf.create_dataset(str(j), data=np.asarray(g, dtype=np.float32))

    _write_atomic_h5(path, write)


def _layer_group(parent, name: str, has_blobs: bool, path):
    if name in parent:
        g = parent[name]
        if has_blobs and any(isinstance(v, _h5py().Dataset) for v in g.values()):
            raise CaffeError(f"{path}: two layers named '{name}' have parameters; HDF5 snapshots need "
                             "distinct layer names (use snapshot_format: BINARYPROTO)")
        return g
    return parent.create_group(name)


def write_net_hdf5(net, path, write_diff: bool = False) -> None:
    """Write a Net's parameters as Caffe's ``Net::ToHDF5`` does."""
    from ..backend import to_numpy
    owned = set()
    for i, owner in enumerate(net.param_owners):
        if owner == -1:
            owned.add(net.param_layer_indices[i])
    layers = []
    for lid, (name, layer) in enumerate(zip(net._layer_names, net.layers)):
        blobs = []
        for j, b in enumerate(layer.blobs):
            d = to_numpy(b.data) if (lid, j) in owned else None
            blobs.append((d, to_numpy(b.diff) if write_diff else None))
        layers.append((name, blobs))
    write_hdf5_weights(path, layers, write_diff)


def read_hdf5_weights(path) -> Iterator[tuple[str, list[np.ndarray]]]:
    """Net::CopyTrainedLayersFromHDF5's source side: ``(layer_name, [arrays])`` for each layer group
    under ``data``, arrays in index order ``"0"``, ``"1"``... A shared parameter is stored only by
    its owner: a gap in the numbering is None, and a sharing layer may list fewer arrays than it
    has blobs. Nested groups are layer names with '/' in them. The whole file is read (and its
    checksum verified) before the first layer is given out."""
    def read(f):
        if "data" not in f:
            raise CaffeError(f"{path}: error reading weights: no group 'data'")
        layers = list(_walk_layers(f["data"], "", path))
        if not layers:
            raise CaffeError(f"{path}: no layers in group 'data' (not a .caffemodel.h5)")
        return layers

    return iter(_reading(path, read))


def _walk_layers(group, prefix: str, path) -> Iterator[tuple[str, list[np.ndarray]]]:
    h5py = _h5py()
    for key in group:
        item = group[key]
        if not isinstance(item, h5py.Group):
            continue
        name = prefix + key
        datasets = [k for k, v in item.items() if isinstance(v, h5py.Dataset)]
        if not all(k.isdigit() for k in datasets):
            raise CaffeError(f"{path}: layer '{name}': unexpected datasets {sorted(datasets)} (expected 0, 1, ...)")
        n = max((int(k) + 1 for k in datasets), default=0)
        arrays = [np.asarray(item[str(j)][()], dtype=np.float32) if str(j) in datasets else None
                  for j in range(n)]
        yield name, arrays
        yield from _walk_layers(item, name + "/", path)


# -- solver state -------------------------------------------------------------------------------
def write_hdf5_solverstate(path, iteration: int, learned_net: str, current_step: int,
                           history: Sequence[np.ndarray], extra: Callable | None = None) -> None:
    """SGDSolver::SnapshotSolverStateToHDF5; ``extra(f)`` adds fc-caffe's own datasets (the
    resume state), which Caffe's reader ignores."""

    def write(f):
        f.create_dataset("iter", data=np.array([iteration], dtype=np.int32))
        _save_string(f, "learned_net", learned_net)
        f.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h, dtype=np.float32))
        if extra is not None:
            extra(f)

    _write_atomic_h5(path, write)


def read_hdf5_solverstate(path, extra: Callable | None = None) -> dict:
    """SGDSolver::RestoreSolverStateFromHDF5's reading side: iter, learned_net (or None),
    current_step and the history arrays in order; ``extra(f)``'s result (fc-caffe's own
    datasets) under ``"extra"`` when given."""
    if extra is None:
        return _reading(path, _read_solverstate)

    def read(f):
        out = _read_solverstate(f)
        out["extra"] = extra(f)
        return out

    return _reading(path, read)


def _read_solverstate(f) -> dict:
    path = f.filename
    out = {"iter": _load_int(f, "iter", path),
           "learned_net": _load_string(f, "learned_net") if "learned_net" in f else None,
           "current_step": _load_int(f, "current_step", path)}
    if "history" not in f:
        raise CaffeError(f"{path}: error reading history: no group 'history'")
    g = f["history"]
    out["history"] = [np.asarray(g[str(i)][()], dtype=np.float32) for i in range(len(g))
                      if str(i) in g]
    if len(out["history"]) != len(g):
        raise CaffeError(f"{path}: history datasets are not numbered 0..{len(g) - 1}")
    return out
