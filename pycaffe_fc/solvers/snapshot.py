"""Snapshots as Caffe writes them (Solver::Snapshot, SGDSolver::SnapshotSolverState*).

``<prefix>_iter_<N>.caffemodel`` (a binary NetParameter, with diffs when ``snapshot_diff``) and
``<prefix>_iter_<N>.solverstate`` (a binary SolverState: iter, learned_net, history, current_step);
or, with ``snapshot_format: HDF5``, ``.caffemodel.h5`` and ``.solverstate.h5`` in Caffe's HDF5
layout. Every file is written atomically (temporary file in the same directory, fsync, rename), and
the model before the state, so an interrupted snapshot never damages the previous one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeError
from ..proto import caffe_pb2

BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
HDF5 = caffe_pb2.SolverParameter.HDF5


@dataclass
class SolverStateRecord:
    """The contents of a .solverstate(.h5): what Restore gives back to the solver."""

    iter: int
    learned_net: str | None
    current_step: int
    history: list[np.ndarray] = field(default_factory=list)


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """Solver::SnapshotFilename: ``prefix + "_iter_" + N + extension``."""
    return f"{prefix}_iter_{int(iteration)}{extension}"


def write_model(net, path: str, fmt: int, write_diff: bool) -> None:
    """Solver::SnapshotToBinaryProto / SnapshotToHDF5 (the caller picks the file name)."""
    if fmt == HDF5:
        from ..proto.hdf5 import write_net_hdf5
        write_net_hdf5(net, path, write_diff)
    else:
        from ..proto.io import write_proto_binary
        write_proto_binary(net.to_proto(write_diff=write_diff), path)


def write_state(path: str, fmt: int, record: SolverStateRecord) -> None:
    """SGDSolver::SnapshotSolverStateToBinaryProto / ToHDF5."""
    if fmt == HDF5:
        from ..proto.hdf5 import write_hdf5_solverstate
        write_hdf5_solverstate(path, record.iter, record.learned_net or "", record.current_step,
                               record.history)
        return
    from ..proto.io import array_to_blobproto, write_proto_binary
    state = caffe_pb2.SolverState()
    state.iter = int(record.iter)
    state.learned_net = record.learned_net or ""
    state.current_step = int(record.current_step)
    for h in record.history:
        state.history.add().CopyFrom(array_to_blobproto(np.asarray(h, dtype=np.float32)))
    write_proto_binary(state, path)


def read_state(path: str) -> SolverStateRecord:
    """Solver::Restore's reading side: ``.h5`` files as HDF5, anything else as a binary proto."""
    path = str(path)
    if path.endswith(".h5"):
        from ..proto.hdf5 import read_hdf5_solverstate
        d = read_hdf5_solverstate(path)
        return SolverStateRecord(d["iter"], d["learned_net"], d["current_step"], d["history"])
    from ..proto.io import blobproto_to_array, read_proto_binary
    state = read_proto_binary(path, caffe_pb2.SolverState)
    history = [blobproto_to_array(b).astype(np.float32) for b in state.history]
    return SolverStateRecord(state.iter, state.learned_net if state.HasField("learned_net") else None,
                             state.current_step, history)


def resolve_learned_net(learned_net: str, state_path: str) -> str:
    """The model a solver state names. Caffe opens it as written (relative to the CWD of the run
    that wrote it); when that path does not exist from here, the file of the same name next to
    the .solverstate is used instead, so a snapshot directory can be moved."""
    if os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.path.abspath(state_path)), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise CaffeError(f"{state_path}: learned_net '{learned_net}' not found")
