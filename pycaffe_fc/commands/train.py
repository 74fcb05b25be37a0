"""``fc-caffe train``: train or fine-tune a model, as ``caffe train`` (tools/caffe.cpp).

Caffe's flags: ``--solver``, ``--snapshot`` (resume) or ``--weights`` (fine-tune, comma list),
``--gpus``, ``--level``, ``--stage``, ``--sigint_effect`` (default stop) and ``--sighup_effect``
(default snapshot). ``--gpus`` takes Caffe's device list (``0,1,2``) or ``all``, and also, as
FireCaffe's launcher does, a count ``N`` (N workers on devices 0..N-1; ``0`` keeps Caffe's meaning:
device 0, one worker). More than one worker, or running under an MPI launcher with more than one
rank, trains data-parallel (``pycaffe_fc.parallel.launch.train_parallel``) with the FireCaffe
flags ``--sync``, ``--segment-bytes``, ``--check-sync``, ``--batch-per-worker``, ``--overlap``.
Caffe's single-dash spellings (``-solver x``, gflags style) are accepted too.
"""
from __future__ import annotations

import argparse
import os

from .. import backend
from ..errors import CaffeError
from ..solvers.log import info

_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", "-solver", required=True,
                   help="the solver definition protocol buffer text file")
    p.add_argument("--snapshot", "-snapshot", default="",
                   help="a .solverstate(.h5) to resume training from")
    p.add_argument("--weights", "-weights", default="",
                   help="pretrained .caffemodel file(s) to fine-tune from, comma-separated "
                        "(cannot be given together with --snapshot)")
    p.add_argument("--gpus", "--gpu", "-gpus", "-gpu", dest="gpus", default="",
                   help="devices to use: a list '0,1,2', 'all', or a worker count N; default: the "
                        "solver's solver_mode, else the CPU")
    p.add_argument("--level", "-level", type=int, default=0, help="the train net's NetState level")
    p.add_argument("--stage", "-stage", action="append", default=[],
                   help="a train net NetState stage (repeat, or a comma-separated list)")
    p.add_argument("--sigint_effect", "-sigint_effect", default="stop",
                   choices=("stop", "snapshot", "none"),
                   help="what a SIGINT (Ctrl-C) does during training (default: stop)")
    p.add_argument("--sighup_effect", "-sighup_effect", default="snapshot",
                   choices=("stop", "snapshot", "none"),
                   help="what a SIGHUP does during training (default: snapshot)")
    g = p.add_argument_group("data-parallel training (FireCaffe)")
    g.add_argument("--sync", default="tree", choices=("tree", "ps", "mpi", "pipelined-tree"),
                   help="gradient synchronisation: reduction tree (default), parameter server, "
                        "MPI allreduce, or the pipelined tree")
    g.add_argument("--segment-bytes", dest="segment_bytes", type=int, default=None,
                   help="message segment size in bytes for the pipelined tree")
    g.add_argument("--check-sync", dest="check_sync", type=int, default=0, metavar="K",
                   help="every K iterations, check that all workers hold identical weights (0: never)")
    g.add_argument("--batch-per-worker", dest="batch_per_worker", type=int, nargs="?", const=True,
                   default=None, metavar="B",
                   help="BVLC Caffe's multi-GPU meaning: the net's batch_size (or B) is each worker's "
                        "batch (default: the net's batch_size is the global batch, split across workers)")
    g.add_argument("--overlap", dest="overlap", action="store_true", default=True,
                   help="overlap gradient communication with backward (default)")
    g.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="communicate only after the whole backward pass")


def parse_gpus(spec: str, n_devices: int) -> tuple[int, list[int] | None]:
    """``--gpus`` as (number of workers, device ids or None for the CPU).

    ``""`` -> 1 worker, no device; ``"all"`` -> every device (1 CPU worker when there is none);
    ``"0,2"`` -> 2 workers on devices 0 and 2; ``"N"`` -> N workers on devices 0..N-1 (``"0"`` is
    Caffe's device 0).
    """
    spec = (spec or "").strip()
    if not spec:
        return 1, None
    if spec == "all":
        return (n_devices, list(range(n_devices))) if n_devices else (1, None)
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    try:
        ids = [int(s) for s in parts]
    except ValueError:
        raise CaffeError(f"--gpus: expected 'all', a count N or a device list like 0,1,2; got '{spec}'") from None
    if any(i < 0 for i in ids) or not ids:
        raise CaffeError(f"--gpus: device ids and counts must be non-negative; got '{spec}'")
    if len(ids) == 1:
        n = ids[0]
        return (1, [0]) if n == 0 else (n, list(range(n)))
    if len(set(ids)) != len(ids):
        raise CaffeError(f"--gpus: device {ids} listed twice")
    return len(ids), ids


def _mpi_world_size() -> int:
    try:
        from ..parallel.comm import launcher_world_size
        return launcher_world_size()
    except ImportError:
        for var in _MPI_SIZE_VARS:
            v = os.environ.get(var, "")
            if v.isdigit():
                return int(v)
        return 1


def stages_from_args(args: argparse.Namespace) -> list[str]:
    return [s for arg in args.stage for s in arg.split(",") if s]


def main(args: argparse.Namespace) -> int:
    if args.snapshot and args.weights:
        raise CaffeError("Give a snapshot to resume training or weights to finetune but not both.")
    if not os.path.exists(args.solver):
        raise CaffeError(f"{args.solver}: file not found")
    workers, devices = parse_gpus(args.gpus, backend.gpu_available())
    args.workers, args.devices = workers, devices
    if workers > 1 or _mpi_world_size() > 1:
        from ..parallel.launch import train_parallel  # written alongside; imported only when needed
        return int(train_parallel(args) or 0)
    return train_single(args)


def train_single(args: argparse.Namespace) -> int:
    """One process: pick the device as caffe.cpp does, then ``solvers.train``."""
    from ..solvers import read_solver_file, train
    from ..proto import caffe_pb2
    param = read_solver_file(args.solver)
    devices = args.devices
    if devices is None and param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        devices = [param.device_id]  # caffe.cpp: no --gpus, solver_mode GPU -> device_id
    if devices and backend.gpu_available():
        backend.set_device(devices[0])
        backend.set_mode_gpu()
        info(f"Use GPU with device ID {devices[0]}", "caffe.cpp:215")
    else:
        backend.set_mode_cpu()
        if devices:
            info(f"No GPU available (asked for device {','.join(map(str, devices))}); running on the CPU.",
                 "caffe.cpp:197")
        info("Use CPU.", "caffe.cpp:197")
    train(param, snapshot=args.snapshot or None, weights=args.weights or None, level=args.level,
          stages=stages_from_args(args), sigint_effect=args.sigint_effect, sighup_effect=args.sighup_effect)
    return 0
