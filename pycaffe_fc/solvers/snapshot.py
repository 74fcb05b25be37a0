"""Snapshots as Caffe writes them (Solver::Snapshot, SGDSolver::SnapshotSolverState*).

``<prefix>_iter_<N>.caffemodel`` (a binary NetParameter, with diffs when ``snapshot_diff``) and
``<prefix>_iter_<N>.solverstate`` (a binary SolverState: iter, learned_net, history, current_step);
or, with ``snapshot_format: HDF5``, ``.caffemodel.h5`` and ``.solverstate.h5`` in Caffe's HDF5
layout. Every file is written atomically (temporary file in the same directory, fsync, rename,
directory fsync), and the model before the state, so an interrupted snapshot never damages the
previous one; each carries a SHA-256 checksum (fields BVLC's parser skips, or an HDF5 attribute)
that loading verifies, so a damaged snapshot is an error, never a silently wrong resume.

fc-caffe extension: a state also carries each layer's data position and random stream
(SolverState fields 1000-1002, or the HDF5 group ``fc_caffe_resume``), which Caffe's readers skip;
restoring them makes a resumed run exact (Solver.stream_states / restore_streams).
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
    #: fc-caffe extension: each layer's stream state, {net, layer, seed, draws, position}
    #: (empty for a Caffe snapshot, which then resumes as Caffe does)
    layer_states: list[dict] = field(default_factory=list)
    #: fc-caffe extension: the process random stream's state (JSON), and the writer's workers
    process_rng: str | None = None
    workers: int | None = None


#: HDF5 group of the fc-caffe resume state (Caffe's reader ignores it); datasets, not
#: attributes, so that the file's checksum covers them
RESUME_GROUP = "fc_caffe_resume"
_STATE_KEYS = ("seed", "draws", "position")


def _write_resume_h5(record: SolverStateRecord):
    def extra(f) -> None:
        if not record.layer_states and record.process_rng is None:
            return
        g = f.create_group(RESUME_GROUP)
        ls = record.layer_states
        g.create_dataset("net", data=np.array([d["net"] for d in ls], dtype=np.int32))
        # fixed-length byte strings: plain bytes, which the file's checksum hashes as they are
        names = [d["layer"].encode() for d in ls]
        g.create_dataset("layer", data=np.array(names, dtype=f"S{max([len(n) for n in names] + [1])}"))
        for k in _STATE_KEYS:
            g.create_dataset(k, data=np.array([int(d[k]) for d in ls], dtype=np.uint64))
        if record.process_rng is not None:
            g.create_dataset("process_rng", data=np.bytes_(record.process_rng.encode()))
        if record.workers is not None:
            g.create_dataset("workers", data=np.array([record.workers], dtype=np.int32))
    return extra


def _read_resume_h5(f) -> dict:
    if RESUME_GROUP not in f:
        return {}
    g = f[RESUME_GROUP]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["layer"][()]]
    cols = {k: [int(v) for v in g[k][()]] for k in _STATE_KEYS}
    states = [{"net": int(n), "layer": name, **{k: cols[k][i] for k in _STATE_KEYS}}
              for i, (n, name) in enumerate(zip(g["net"][()], names))]
    rng_state = None
    if "process_rng" in g:
        v = g["process_rng"][()]
        rng_state = v.decode() if isinstance(v, bytes) else str(v)
    workers = int(g["workers"][0]) if "workers" in g else None
    return {"layer_states": states, "process_rng": rng_state, "workers": workers}


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
                               record.history, extra=_write_resume_h5(record))
        return
    from ..proto.io import array_to_blobproto, write_proto_binary
    state = caffe_pb2.SolverState()
    state.iter = int(record.iter)
    state.learned_net = record.learned_net or ""
    state.current_step = int(record.current_step)
    for h in record.history:
        state.history.add().CopyFrom(array_to_blobproto(np.asarray(h, dtype=np.float32)))
    for d in record.layer_states:
        state.fc_layer_state.add(net=int(d["net"]), layer=d["layer"], seed=int(d["seed"]),
                                 draws=int(d["draws"]), position=int(d["position"]))
    if record.process_rng is not None:
        state.fc_process_rng = record.process_rng
    if record.workers is not None:
        state.fc_workers = int(record.workers)
    write_proto_binary(state, path)


def read_state(path: str) -> SolverStateRecord:
    """Solver::Restore's reading side: ``.h5`` files as HDF5, anything else as a binary proto."""
    path = str(path)
    if path.endswith(".h5"):
        from ..proto.hdf5 import read_hdf5_solverstate
        d = read_hdf5_solverstate(path, extra=_read_resume_h5)
        _check_counters(path, d["iter"], d["current_step"])
        return SolverStateRecord(d["iter"], d["learned_net"], d["current_step"], d["history"], **d["extra"])
    from ..proto.io import blobproto_to_array, read_proto_binary
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        # an empty file parses as iter 0 with no history: not a state to resume from
        raise CaffeError(f"{path}: empty file, not a .solverstate")
    state = read_proto_binary(path, caffe_pb2.SolverState)
    _check_counters(path, state.iter, state.current_step)
    if isinstance(state.learned_net, bytes):  # protobuf hands back invalid UTF-8 as bytes
        raise CaffeError(f"{path}: learned_net is not UTF-8 text (damaged solver state)")
    history = [blobproto_to_array(b, what=f"{path}: history blob {i}").astype(np.float32)
               for i, b in enumerate(state.history)]
    layer_states = [{"net": ls.net, "layer": ls.layer, "seed": ls.seed, "draws": ls.draws,
                     "position": ls.position} for ls in state.fc_layer_state]
    return SolverStateRecord(state.iter, state.learned_net if state.HasField("learned_net") else None,
                             state.current_step, history, layer_states,
                             state.fc_process_rng if state.HasField("fc_process_rng") else None,
                             state.fc_workers if state.HasField("fc_workers") else None)


def _check_counters(path: str, iteration: int, current_step: int) -> None:
    # Caffe would resume at a negative iteration and index its multistep list with a negative step
    if iteration < 0:
        raise CaffeError(f"{path}: iter {iteration} is negative (damaged or edited solver state)")
    if current_step < 0:
        raise CaffeError(f"{path}: current_step {current_step} is negative (damaged or edited solver state)")


def remove_stale_temporaries(prefix: str) -> list[str]:
    """Remove the temporary files that snapshots of ``prefix`` interrupted by a kill left behind
    (see proto.io.atomic_write); called once when training starts."""
    from ..proto.io import remove_stale_temporaries as remove
    return remove(prefix)


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
