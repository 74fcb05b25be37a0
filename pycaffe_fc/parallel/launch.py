"""``train_parallel(args)``: FireCaffe's data-parallel ``fc-caffe train``, one MPI rank per worker.

Under an MPI launcher (``mpiexec -n N fc-caffe train ...``) every rank trains with
MPI.COMM_WORLD. Started on its own with ``--gpus N`` (N > 1), it starts the N ranks itself:
``mpiexec -n N <python> -m pycaffe_fc train <the same flags>``, with the mpiexec installed beside
the Python interpreter (the ``mpich`` wheel) or on PATH, and waits for them.

Each rank: picks its device (rank r -> local GPU r mod devices, else the CPU), reads its share of
every batch (``data.sharding.set_shard``), builds the solver (only rank 0 logs, tests and
snapshots), checks that every rank was given the same solver and net, starts from rank 0's
weights, and all-reduces the gradients each iteration (``allreduce.GradientSync``). Any failure
on any rank ends the whole job with ``rank r: reason`` and a non-zero exit.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

from ..errors import CaffeError
from . import comm as pcomm

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input", "Python")
_ACTIONS = ("none", "stop", "snapshot")


# -- the self-launch ---------------------------------------------------------------------------
def find_mpiexec() -> str:
    """``$MPIEXEC``, else the mpiexec beside ``sys.executable`` (the mpich wheel), else PATH."""
    env = os.environ.get("MPIEXEC")
    if env:
        return env
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise CaffeError("--gpus N > 1 needs MPI: no mpiexec beside the Python interpreter or on PATH "
                         "(pip install mpich mpi4py, or start the ranks with mpiexec yourself)")
    return found


def train_argv(args: argparse.Namespace) -> list[str]:
    """The ``fc-caffe train`` flags that reproduce ``args`` (those differing from the defaults)."""
    from ..commands import train as train_cmd
    parser = argparse.ArgumentParser(add_help=False)
    train_cmd.add_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:  # argparse has no public iterator over its actions
        if not action.option_strings or action.dest == "help" or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        opt = action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if value == action.const:
                argv.append(opt)
            continue
        if isinstance(action, argparse._AppendAction):
            for v in value:
                argv += [opt, str(v)]
            continue
        if value is None:
            continue
        argv += [opt, str(value)]
    # --overlap/--no-overlap share a dest: say which one explicitly.
    if hasattr(args, "overlap") and "--no-overlap" not in argv and "--overlap" not in argv:
        argv.append("--overlap" if args.overlap else "--no-overlap")
    return argv


def self_launch(args: argparse.Namespace, workers: int, timeout: float | None = None) -> int:
    """Start ``workers`` ranks through mpiexec and wait; the exit status is the job's.

    mpiexec ends every rank as soon as one dies or aborts; should it not, this watcher kills the
    job's process group. Ctrl-C reaches every rank (same terminal process group)."""
    mpiexec = find_mpiexec()
    cmd = [mpiexec, "-n", str(workers), sys.executable, "-m", "pycaffe_fc", "train", *train_argv(args)]
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # N ranks on one node: one BLAS thread pool each of cores/N threads, not N pools of all cores.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    _root_log(f"Starting {workers} data-parallel workers: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=env)
    start = time.monotonic()
    try:
        while True:
            try:
                return _exit_status(proc.wait(timeout=1.0))
            except subprocess.TimeoutExpired:
                if timeout is not None and time.monotonic() - start > timeout:
                    _kill(proc)
                    raise CaffeError(f"the {workers} workers did not finish within {timeout:.0f} s; killed")
    except KeyboardInterrupt:
        try:
            return _exit_status(proc.wait(timeout=30))
        except subprocess.TimeoutExpired:
            _kill(proc)
            return 130


def _exit_status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def _kill(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- one rank -----------------------------------------------------------------------------------
def train_parallel(args: argparse.Namespace) -> int:
    """``fc-caffe train`` with more than one worker (``--gpus``) or under an MPI launcher."""
    from ..commands.train import parse_gpus
    from .. import backend
    workers = getattr(args, "workers", None)
    devices = getattr(args, "devices", None)
    if workers is None:
        workers, devices = parse_gpus(getattr(args, "gpus", "") or "", backend.gpu_available())
    from .allreduce import SYNC_MODES
    if getattr(args, "sync", "tree") not in SYNC_MODES:
        raise CaffeError(f"--sync must be one of {', '.join(SYNC_MODES)}, got '{args.sync}'")
    if not pcomm.under_launcher():
        if workers <= 1:
            from ..commands.train import train_single
            return train_single(args)
        return self_launch(args, workers)
    world = pcomm.init_world()
    pcomm.install_fault_handlers(world)
    return pcomm.run_or_abort(world, lambda: _train_rank(args, world, workers, devices))


def _train_rank(args: argparse.Namespace, world: pcomm.World, workers: int, devices) -> int:
    from ..solvers import log as slog
    from ..solvers import read_solver_file
    from ..solvers.training import train
    from ..data.sharding import set_shard
    from .allreduce import GradientSync, broadcast_weights

    logger = slog.install()
    if not world.is_root:
        logger.setLevel(logging.WARNING)   # only rank 0 logs (Caffe::root_solver())
    where = pcomm.select_device(world, devices)
    if world.is_root:
        _root_log(f"Data-parallel training: {world.size} workers (MPI ranks), --sync {args.sync}, "
                  f"overlap {'on' if getattr(args, 'overlap', False) else 'off'}; rank 0 computes on {where}")
        if where.startswith("CPU"):
            _root_log("No GPU visible: every worker runs on the CPU.")
        if workers not in (None, world.size) and workers > 1:
            _root_log(f"--gpus asks for {workers} workers but the MPI job has {world.size} ranks: "
                      f"using {world.size}")
    split_batch = not getattr(args, "batch_per_worker", None)
    param = read_solver_file(args.solver)
    bpw = getattr(args, "batch_per_worker", None)
    if bpw not in (None, False, True):
        override_train_batch(param, int(bpw))
    set_shard(world.rank, world.size, split_batch=split_batch,
              seed=param.random_seed if param.random_seed >= 0 else 1701)

    sync_holder: list[GradientSync] = []
    agreed = _AgreedAction(world)

    def setup(solver) -> None:
        flags = f"sync={args.sync} segment={getattr(args, 'segment_bytes', None)} " \
                f"overlap={bool(getattr(args, 'overlap', False))} check={getattr(args, 'check_sync', 0)} " \
                f"split={split_batch}"
        pcomm.check_same_everywhere(world, pcomm.digest_messages(solver.param, solver.net.param, flags.encode()),
                                    "the solver, net and data-parallel flags (hash of the parsed solver + net)")
        broadcast_weights(world, solver.net)
        gs = GradientSync(solver, world, mode=args.sync, overlap=bool(getattr(args, "overlap", False)),
                          segment_bytes=getattr(args, "segment_bytes", None),
                          check_sync=getattr(args, "check_sync", 0) or 0)
        solver.add_callback(gs.on_start, gs.on_gradients_ready)
        sync_holder.append(gs)
        agreed.attach(solver)
        if world.is_root:
            _log_batches(solver, world, split_batch, gs)

    solver = train(param, snapshot=args.snapshot or None, weights=args.weights or None,
                   level=getattr(args, "level", 0), stages=_stages(args), setup=setup,
                   rank=world.rank, is_root=world.is_root,
                   sigint_effect=getattr(args, "sigint_effect", "stop"),
                   sighup_effect=getattr(args, "sighup_effect", "snapshot"))
    gs = sync_holder[0]
    if gs.check_sync:
        gs.verify_in_sync()
    gs.close()
    if world.is_root and gs.stats.iterations:
        st = gs.stats
        _root_log(f"Gradient all-reduce ({args.sync}, {gs.buffer.nbytes} bytes, "
                  f"{len(gs.buffer.buckets)} bucket(s)): {1e3 * st.comm_s / st.iterations:.2f} ms per "
                  f"iteration on the training thread, {1e3 * st.reduce_s / st.iterations:.2f} ms reducing")
    world.barrier()
    pcomm.finalize()
    return 0


def override_train_batch(param, batch: int) -> None:
    """``--batch-per-worker B``: the TRAIN data layers' batch_size becomes B on every worker."""
    from ..proto import caffe_pb2
    from ..proto.io import read_net_param
    if batch < 1:
        raise CaffeError(f"--batch-per-worker must be positive, got {batch}")
    if param.HasField("net"):
        net = read_net_param(param.net)
        param.ClearField("net")
        param.net_param.CopyFrom(net)
    elif param.HasField("train_net"):
        net = read_net_param(param.train_net)
        param.ClearField("train_net")
        param.train_net_param.CopyFrom(net)
    net = param.net_param if param.HasField("net_param") else param.train_net_param
    for lp in net.layer:
        if lp.include and not any(r.phase == caffe_pb2.TRAIN for r in lp.include if r.HasField("phase")):
            continue
        for field in ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param"):
            if lp.HasField(field):
                getattr(lp, field).batch_size = batch


class _AgreedAction:
    """SIGINT/SIGHUP effects agreed by every rank: rank 0's pending action is broadcast once per
    iteration (after the all-reduce), so all ranks stop or snapshot at the same iteration instead
    of one waiting for ever for the others."""

    def __init__(self, world: pcomm.World) -> None:
        self.world = world
        self.local = None
        self.pending = "none"

    def attach(self, solver) -> None:
        self.local = solver.action_function
        solver.set_action_function(self._action)
        solver.add_callback(lambda: None, self._agree)

    def _agree(self) -> None:
        mine = self.local() if self.local is not None else "none"
        if self.world.size > 1:
            mine = self.world.comm.bcast(mine if self.world.is_root else None, root=0)
        self.pending = mine if mine in _ACTIONS else "none"

    def _action(self) -> str:
        a, self.pending = self.pending, "none"
        return a


def _stages(args) -> list[str]:
    return [s for arg in getattr(args, "stage", []) or [] for s in str(arg).split(",") if s]


def _log_batches(solver, world: pcomm.World, split_batch: bool, gs) -> None:
    net = solver.net
    iter_size = max(1, solver.param.iter_size)
    for i, layer in enumerate(net.layers):
        if layer.type not in DATA_LAYER_TYPES or not net.top_vecs[i]:
            continue
        plan = getattr(layer, "plan", None)
        local = plan.local_batch if plan is not None else net.top_vecs[i][0].shape[0]
        glob = local * world.size
        _root_log(f"Data layer '{net._layer_names[i]}': per-worker batch {local} x {world.size} workers = "
                  f"global batch {glob} ({'split of the prototxt batch' if split_batch else '--batch-per-worker'}); "
                  f"effective batch {glob} x iter_size {iter_size} = {glob * iter_size}")
    _root_log(f"Gradients: {gs.buffer.nbytes} bytes in {len(gs.buffer.buckets)} bucket(s), "
              f"all-reduced with --sync {gs.mode} and scaled by 1/{world.size}")


def _root_log(msg: str) -> None:
    from ..solvers.log import info
    info(msg, "parallel.cpp:0")


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience entry
    """``python -m pycaffe_fc.parallel.launch <train flags>``: same as ``fc-caffe train``."""
    from ..cli import main as cli_main
    return cli_main(["train", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
