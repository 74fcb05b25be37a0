"""MPI setup for data-parallel training: launcher detection, the world, devices, faults, checks.

FireCaffe runs one worker per GPU, one MPI rank each. This module only knows ranks and bytes:
which launcher started us, which device a rank drives (Caffe's ``solver_rank`` -> device), how a
failing rank takes the whole job down instead of leaving the others blocked in a receive, and the
start-up check that every rank was given the same solver and net.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from .. import backend
from ..errors import CaffeError

#: environment variables by which MPI launchers tell a process the world size and its rank
#: (MPICH/Intel MPI hydra: PMI_*; Open MPI: OMPI_COMM_WORLD_*; MVAPICH: MV2_*; PMIx: PMIX_RANK).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_UNIVERSE_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


def launcher_world_size() -> int:
    """World size announced by an enclosing mpiexec/mpirun (1 when started on our own).

    Read from the environment, so it costs nothing and never initialises MPI.
    """
    for var in _SIZE_VARS:
        v = os.environ.get(var)
        if v and v.strip().isdigit():
            return int(v)
    return 1


def launcher_rank() -> int:
    """Rank announced by an enclosing launcher (0 when started on our own)."""
    for var in _RANK_VARS:
        v = os.environ.get(var)
        if v and v.strip().isdigit():
            return int(v)
    return 0


def under_launcher() -> bool:
    """True when an MPI launcher started this process as part of a job of more than one rank."""
    return launcher_world_size() > 1


def mpi():
    """The ``mpi4py.MPI`` module (importing it initialises MPI: done only for parallel runs)."""
    try:
        from mpi4py import MPI  # noqa: WPS433 - deliberately lazy
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise CaffeError(f"data-parallel training needs mpi4py and an MPI library (pip install mpi4py mpich): {e}")
    return MPI


@dataclass
class World:
    """The ranks of one data-parallel job (Caffe's solver_count / solver_rank)."""

    comm: Any
    rank: int
    size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self.comm.Barrier()


def init_world(comm=None) -> World:
    """The world of this job: MPI.COMM_WORLD (or ``comm``), with rank and size."""
    if comm is None:
        comm = mpi().COMM_WORLD
    return World(comm=comm, rank=comm.Get_rank(), size=comm.Get_size())


# -- waiting ---------------------------------------------------------------------------------
#: A rank waiting for a message first polls for SPIN_S, then sleeps SLEEP_S between polls: a
#: blocked MPI call would spin on a core the whole time, taking it from the backward pass that
#: runs beside the communication thread (and from other ranks sharing the node's cores). The
#: sleeps cost at most a fraction of a millisecond per message.
SPIN_S = 0.0005
SLEEP_S = 0.0002
#: A message that makes no progress for this long means a peer is gone or the network is stuck:
#: the rank raises (and so aborts the job) instead of waiting for ever. 0 waits for ever.
COMM_TIMEOUT_S = float(os.environ.get("FC_CAFFE_COMM_TIMEOUT", "600"))


def _stuck(start: float) -> None:
    if COMM_TIMEOUT_S > 0 and time.perf_counter() - start > COMM_TIMEOUT_S:
        raise CaffeError(f"a gradient message made no progress for {COMM_TIMEOUT_S:.0f} s: a peer is gone "
                         "or the network is stuck (FC_CAFFE_COMM_TIMEOUT sets this limit)")


def wait_all(requests: list) -> None:
    """MPI_Waitall, polling politely, with the COMM_TIMEOUT_S watchdog."""
    if not requests:
        return
    Request = mpi().Request
    start = time.perf_counter()
    while not Request.Testall(requests):
        now = time.perf_counter()
        if now - start > SPIN_S:
            time.sleep(SLEEP_S)
            _stuck(start)


def wait_some(requests: list) -> list[int]:
    """MPI_Waitsome, polling politely: the indices of the requests that completed."""
    Request = mpi().Request
    start = time.perf_counter()
    while True:
        done = Request.Testsome(requests)
        if done is None or len(done):
            return list(done or [])
        if time.perf_counter() - start > SPIN_S:
            time.sleep(SLEEP_S)
            _stuck(start)


# -- devices ---------------------------------------------------------------------------------
def local_rank(comm) -> int:
    """This rank's index among the ranks on the same node (shared-memory split of the world)."""
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    MPI = mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def select_device(world: World, gpus: list[int] | None = None) -> str:
    """Caffe's multi-GPU device choice: rank r drives local GPU ``gpus[lr]`` (or ``lr`` mod the
    node's device count, lr = local rank); without GPUs every worker computes on the CPU.

    Returns a one-line description for the log.
    """
    if backend.cupy is not None:
        backend.require_gpu("--gpus")  # CuPy is there but cannot run: say what is missing
    n_dev = backend.gpu_available()
    if n_dev == 0:
        backend.set_mode_cpu()
        return "CPU (no GPU visible)"
    lr = local_rank(world.comm)
    dev = gpus[lr % len(gpus)] if gpus else lr
    dev %= n_dev
    backend.set_device(dev)
    backend.set_mode_gpu()
    return f"GPU {dev} (local rank {lr} of a node with {n_dev} devices)"


# -- faults ----------------------------------------------------------------------------------
_installed = False
ABORT_GRACE_S = 0.5


def fail(world: World, reason: str, code: int = 1) -> None:
    """Report ``rank r: reason`` on stderr and abort the whole job, so no rank waits forever
    for a message from this one (MPI_Abort kills every rank; mpiexec then exits non-zero).
    Only the job's first failing rank prints (``jobcontrol.claim_error_line``), and MPI_Abort's
    own banner is silenced: one mistake, one line."""
    from . import jobcontrol
    try:
        sys.stdout.flush()
    except Exception:
        pass
    msg = f"fc-caffe train: rank {world.rank}: {reason}"
    if jobcontrol.claim_error_line():
        try:
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()
        except Exception:
            pass
    # mpiexec stops forwarding a job's output once it is aborted: give it a moment to pass the
    # first failing rank's line on (a quiet rank waits as long, so its abort cannot cut it off).
    time.sleep(ABORT_GRACE_S)
    jobcontrol.silence_stderr()
    try:
        world.comm.Abort(code)
    finally:  # Abort does not return; should it, never let this rank linger.
        os._exit(code)


def describe_exception(exc: BaseException) -> str:
    """A one-line reason for an exception: CaffeError's own message, else type and text."""
    context = getattr(exc, "caffe_context", None)  # a user's Python layer: layer, verb and line
    if context:
        return f"error: {context}"
    if isinstance(exc, CaffeError):
        return f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def install_fault_handlers(world: World) -> None:
    """An uncaught exception in any thread of any rank aborts the whole job with the rank and
    the reason (instead of the others blocking in a receive for ever)."""
    global _installed
    if _installed or world.size == 1:
        return
    _installed = True

    def hook(exc_type, exc, tb):
        if os.environ.get("FC_CAFFE_TRACEBACK"):
            traceback.print_exception(exc_type, exc, tb)
        fail(world, describe_exception(exc.with_traceback(tb)))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        hook(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = hook
    threading.excepthook = thread_hook


def run_or_abort(world: World, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; any exception (a CaffeError included) on a multi-rank job aborts every rank
    with ``rank r: reason`` and a non-zero exit, within seconds."""
    try:
        return fn()
    except SystemExit as e:
        if world.size > 1 and e.code not in (0, None):
            fail(world, f"exit {e.code}", code=int(e.code) if isinstance(e.code, int) else 1)
        raise
    except BaseException as e:  # noqa: BLE001 - every failure must take the job down
        if world.size == 1:
            raise
        if os.environ.get("FC_CAFFE_TRACEBACK"):
            traceback.print_exc()
        fail(world, describe_exception(e))


def finalize(deadline_s: float = 30.0, code: int = 0) -> None:
    """MPI_Finalize now, once every rank is done (after a barrier), with a deadline: should the
    MPI library hang while closing its connections (seen rarely with UCX over TCP), the process
    leaves with ``code`` after ``deadline_s`` seconds rather than keep the job alive for ever."""
    MPI = mpi()
    if MPI.Is_finalized():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass

    def expire() -> None:
        time.sleep(deadline_s)
        os._exit(code)

    threading.Thread(target=expire, name="fc-caffe-finalize-deadline", daemon=True).start()
    MPI.Finalize()


# -- consistency checks ------------------------------------------------------------------------
def digest_messages(*messages) -> str:
    """A short hash of protobuf messages (deterministic serialisation) or bytes."""
    h = hashlib.sha256()
    for m in messages:
        if m is None:
            h.update(b"\0")
        elif isinstance(m, (bytes, bytearray)):
            h.update(m)
        else:
            h.update(m.SerializeToString(deterministic=True))
        h.update(b"\1")
    return h.hexdigest()[:16]


def check_same_everywhere(world: World, value: str, what: str) -> None:
    """Every rank must hold the same ``value`` (a digest); else a CaffeError on every rank
    naming the ranks that differ from rank 0."""
    if world.size == 1:
        return
    values = world.comm.allgather(value)
    bad = [r for r, v in enumerate(values) if v != values[0]]
    if bad:
        raise CaffeError(f"{what} differs between ranks: rank 0 has {values[0]}, "
                         + ", ".join(f"rank {r} has {values[r]}" for r in bad))
