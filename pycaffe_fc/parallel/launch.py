"""``train_parallel(job)``: FireCaffe's data-parallel ``fc-caffe train``, one MPI rank per worker.

Under an MPI launcher (``mpiexec -n N fc-caffe train ...``) every rank trains with
MPI.COMM_WORLD. Started on its own with ``--gpus N`` (N > 1), it starts the N ranks itself:
``mpiexec -n N <python> -m pycaffe_fc train <the same flags>``, with the mpiexec installed beside
the Python interpreter (the ``mpich`` wheel) or on PATH, and waits for them.

The launcher stands for the whole job, as one Caffe process would: SIGINT and SIGHUP sent to it
act on every rank as ``--sigint_effect``/``--sighup_effect`` say, SIGTERM snapshots and stops
(relayed to mpiexec as SIGALRM, SIGUSR1 and SIGTERM, which hydra passes on to the ranks; a second
SIGTERM ends the job at once), and whatever ends the launcher, SIGKILL included, ends mpiexec and
every rank within seconds (``jobcontrol``). Rank 0's pending action is broadcast once per
iteration, so every rank snapshots or stops at the same iteration.

Each rank: picks its device (rank r -> local GPU r mod devices, else the CPU), reads its share of
every batch (``data.sharding.set_shard``), builds the solver (only rank 0 logs, tests and
snapshots), checks that every rank was given the same solver and net, starts from rank 0's
weights, and all-reduces the gradients each iteration (``allreduce.GradientSync``). Any failure
on any rank ends the whole job with one line, the first failing rank's ``rank r: reason``, and a
non-zero exit.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Sequence

import numpy as np

from ..errors import CaffeError
from .train_job import TrainJob, check_resources, train_single
from . import comm as pcomm
from . import jobcontrol

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input", "Python")
#: solver actions as the one byte rank 0 broadcasts each iteration
_ACTIONS = ("none", "snapshot", "stop", "snapshot_stop")


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


def train_argv(args: argparse.Namespace | TrainJob) -> list[str]:
    """The ``fc-caffe train`` flags that reproduce ``args`` (those differing from the defaults)."""
    job = args if isinstance(args, TrainJob) else TrainJob.from_namespace(args)
    return job.argv()


#: what the launcher sends mpiexec for each signal it receives: MPICH's mpiexec dies on SIGHUP
#: (and SIGUSR2) and takes a second SIGINT as "kill everything", so those two travel as SIGUSR1
#: and SIGALRM, which it passes on (ranks take them as SIGHUP and SIGINT); SIGTERM as itself.
RELAYED = {signal.SIGINT: signal.SIGALRM, signal.SIGHUP: signal.SIGUSR1, signal.SIGTERM: signal.SIGTERM}


class _Relay:
    """The launcher's signal handlers: queue each signal, pass it to mpiexec once every rank has
    its handlers in place; a second SIGTERM asks for the job's end at once."""

    def __init__(self, job_dir: str, workers: int) -> None:
        self.job_dir = job_dir
        self.workers = workers
        self.queue: list[int] = []
        self.terms = 0
        self.kill_now = False
        self.previous: dict[int, object] = {}
        self.ready = False
        if threading.current_thread() is threading.main_thread():
            for sig in RELAYED:
                self.previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            self.terms += 1
            if self.terms > 1:
                self.kill_now = True
                return
        self.queue.append(signum)

    def flush(self, proc: subprocess.Popen) -> None:
        if not self.queue:
            return
        if not self.ready:
            self.ready = jobcontrol.count_ready(self.job_dir) >= self.workers
            if not self.ready:
                return
        while self.queue:
            sig = self.queue.pop(0)
            try:
                os.kill(proc.pid, RELAYED[sig])
            except ProcessLookupError:
                return

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class _BannerFilter:
    """mpiexec's stdout, passed through line by line, except hydra's eleven-line "BAD TERMINATION
    OF ONE OF YOUR APPLICATION PROCESSES" banner (a rank killed by a signal), which becomes one
    line on stderr naming the process and the signal."""

    def __init__(self, out, err) -> None:
        self.out, self.err = out, err
        self.held: list[str] = []
        self.info: dict[str, str] = {}
        self.in_banner = False

    def feed(self, line: str) -> None:
        stripped = line.strip()
        if self.in_banner:
            m = re.search(r"PID (\d+) RUNNING AT (\S+)|EXIT CODE: (\d+)|EXIT STRING: (.*)$", stripped)
            if m:
                for key, value in zip(("pid", "host", "code", "why"), m.groups()):
                    if value:
                        self.info[key] = value.strip()
            if stripped.startswith("Please see the FAQ page"):
                self._summary()
            return
        if stripped == "" or set(stripped) == {"="}:
            self.held.append(line)
            return
        if stripped.startswith("=") and "BAD TERMINATION" in stripped:
            self.in_banner, self.held = True, []
            return
        self._release()
        self._write(self.out, line)

    def close(self) -> None:
        if self.in_banner:
            self._summary()
        self._release()

    def _summary(self) -> None:
        i = self.info
        why = i.get("why") or f"exit code {i.get('code', '?')}"
        self._write(self.err, f"fc-caffe train: a worker (pid {i.get('pid', '?')} on {i.get('host', '?')}) "
                              f"ended: {why}; mpiexec ended the others\n")
        self.in_banner, self.info = False, {}

    def _release(self) -> None:
        for held in self.held:
            self._write(self.out, held)
        self.held = []

    @staticmethod
    def _write(stream, text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass


def _pump(src, out, err) -> None:
    f = _BannerFilter(out, err)
    for raw in iter(src.readline, b""):
        f.feed(raw.decode(errors="replace"))
    f.close()


def _child_setup():
    """preexec_fn for mpiexec: the kernel sends it SIGKILL when the launcher dies (hydra's
    proxies then end every rank), whatever killed the launcher."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
        except (OSError, AttributeError):  # pragma: no cover
            prctl = None
    parent = os.getpid()

    def setup() -> None:
        if prctl is not None:
            prctl(jobcontrol.PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the launcher died before prctl took effect
                os._exit(1)
    return setup


def self_launch(args: argparse.Namespace | TrainJob, workers: int, timeout: float | None = None) -> int:
    """Start ``workers`` ranks through mpiexec and wait; the exit status is the job's.

    mpiexec runs in a session of its own (so a terminal's Ctrl-C reaches the launcher once, which
    relays it), dies with the launcher (PR_SET_PDEATHSIG), and is killed on any way out of here."""
    job = args if isinstance(args, TrainJob) else TrainJob.from_namespace(args)
    mpiexec = find_mpiexec()
    cmd = [mpiexec, "-n", str(workers), sys.executable, "-m", "pycaffe_fc", "train", *job.argv()]
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # N ranks on one node: one BLAS thread pool each of cores/N threads, not N pools of all cores.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    _root_log(f"Starting {workers} data-parallel workers: {' '.join(cmd)}")
    with tempfile.TemporaryDirectory(prefix="fc-caffe-job-") as job_dir:
        env.update(jobcontrol.launcher_env(job_dir, uuid.uuid4().hex[:12]))
        relay = _Relay(job_dir, workers)
        proc = None
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    start_new_session=True, preexec_fn=_child_setup())
            pump = threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, sys.stderr),
                                    name="fc-caffe-mpiexec-stdout", daemon=True)
            pump.start()
            start = time.monotonic()
            while True:
                relay.flush(proc)
                if relay.kill_now:
                    _kill(proc)
                    sys.stderr.write("fc-caffe train: a second SIGTERM: the job was killed without a snapshot\n")
                    return 143
                try:
                    rc = proc.wait(timeout=0.2)
                    pump.join(timeout=5)  # the last lines (and a banner's summary) first
                    return _exit_status(rc)
                except subprocess.TimeoutExpired:
                    if timeout is not None and time.monotonic() - start > timeout:
                        _kill(proc)
                        raise CaffeError(f"the {workers} workers did not finish within {timeout:.0f} s; killed")
        finally:
            if proc is not None and proc.poll() is None:
                _kill(proc)  # leaving early (an exception, KeyboardInterrupt): take the job along
            relay.restore()


def _exit_status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def _kill(proc: subprocess.Popen) -> None:
    """End mpiexec now: SIGKILL (hydra's proxies then kill the ranks, whose watchdogs also see
    the launcher go)."""
    try:
        proc.kill()
    except ProcessLookupError:  # pragma: no cover
        pass
    proc.wait()


# -- one rank -----------------------------------------------------------------------------------
def train_parallel(args: argparse.Namespace | TrainJob) -> int:
    """``fc-caffe train`` with more than one worker (``--gpus``) or under an MPI launcher."""
    from .. import backend
    from ..solvers.training import SignalHandler
    job = args if isinstance(args, TrainJob) else TrainJob.from_namespace(args)
    if not pcomm.under_launcher():
        job.validate()
        if job.workers <= 1:
            return train_single(job)
        _check_job_resources(job, job.workers, backend.gpu_available())
        return self_launch(job, job.workers)
    # The handlers go in before MPI starts (a relayed signal would otherwise kill the rank).
    handler = SignalHandler(job.sigint_effect, job.sighup_effect, relayed=True)
    try:
        jobcontrol.watch_launcher()
        world = pcomm.init_world()
        pcomm.install_fault_handlers(world)
        jobcontrol.mark_ready(world.rank)

        def run() -> int:
            job.validate()  # here, so that a mistake on one rank ends every rank
            return _train_rank(job, world, job.workers, job.devices, handler)
        return pcomm.run_or_abort(world, run)
    finally:
        handler.restore()


def _check_job_resources(job: TrainJob, workers: int, n_gpus: int, local_workers: int | None = None) -> None:
    """Guard rails before anything is allocated: CPU workers vs cores, blobs vs memory."""
    from ..solvers import read_solver_file
    param = read_solver_file(job.solver)
    bpw = job.batch_per_worker
    if bpw not in (None, False, True):
        override_train_batch(param, int(bpw))
    n = workers if local_workers is None else local_workers
    check_resources(param, workers=n, on_device=n_gpus > 0, split_batch=not bpw, n_gpus=n_gpus)


def _train_rank(args: TrainJob, world: pcomm.World, workers: int, devices, handler) -> int:
    from .. import backend
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
        if not jobcontrol.started_by_launcher():  # the launcher checked before starting mpiexec
            local = os.environ.get("MPI_LOCALNRANKS", "")
            _check_job_resources(args, world.size, backend.gpu_available(),
                                 local_workers=int(local) if local.isdigit() else world.size)
    split_batch = not getattr(args, "batch_per_worker", None)
    param = read_solver_file(args.solver)
    bpw = getattr(args, "batch_per_worker", None)
    if bpw not in (None, False, True):
        override_train_batch(param, int(bpw))
    set_shard(world.rank, world.size, split_batch=split_batch,
              seed=param.random_seed if param.random_seed >= 0 else 1701)

    sync_holder: list[GradientSync] = []
    agreed = _AgreedAction(world, handler)

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
                   rank=world.rank, is_root=world.is_root, handle_signals=False)
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
    """SIGINT/SIGHUP/SIGTERM effects agreed by every rank: rank 0's pending action (one byte) is
    broadcast once per iteration, after the gradient all-reduce, so all ranks snapshot or stop at
    the same iteration instead of one waiting for ever for the others. Signals reach every rank
    (hydra passes them on); the other ranks' own are dropped, rank 0's decide."""

    def __init__(self, world: pcomm.World, handler) -> None:
        self.world = world
        self.handler = handler
        self.pending = "none"
        self._code = np.zeros(1, np.int8)

    def attach(self, solver) -> None:
        solver.set_action_function(self._action)
        solver.add_callback(lambda: None, self._agree)

    def _agree(self) -> None:
        mine = self.handler.action() if self.handler is not None else "none"
        self._code[0] = _ACTIONS.index(mine) if mine in _ACTIONS else 0
        if self.world.size > 1:
            self.world.comm.Bcast(self._code, root=0)
        self.pending = _ACTIONS[int(self._code[0])]

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
