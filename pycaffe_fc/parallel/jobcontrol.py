"""Holding a data-parallel job together: no orphaned rank, one error line, signals that arrive.

``fc-caffe train --gpus N`` starts ``mpiexec`` with N ranks; this module is what the launcher and
the ranks share so that the job behaves as one process would:

- *Nothing outlives the launcher.* mpiexec gets ``PR_SET_PDEATHSIG`` (the kernel kills it when the
  launcher dies, even by SIGKILL; hydra then ends its ranks), and every rank watches the launcher's
  pid and leaves (``os._exit``) within a second of its end. Each rank also asks for SIGKILL when
  its own parent (hydra's proxy) dies.
- *Signals arrive after the handlers.* A rank writes ``ready.<rank>`` into the job folder once its
  signal handlers are in place; the launcher holds back the signals it relays until every rank is
  ready (a signal relayed earlier would kill a rank by its default action).
- *One error line.* The first failing rank claims the job's error line (an abstract Unix socket
  named after the job: the first bind wins, the kernel frees it when the rank is gone) and prints
  ``rank r: reason``; later failures stay quiet; MPI_Abort's own banner goes to /dev/null.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time

from ..proto.io import pid_exists

#: environment of the ranks started by the launcher
ENV_LAUNCHER_PID = "FC_CAFFE_LAUNCHER_PID"
ENV_LAUNCHER_START = "FC_CAFFE_LAUNCHER_START"
ENV_JOB_DIR = "FC_CAFFE_JOB_DIR"
ENV_JOB_ID = "FC_CAFFE_JOB_ID"

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig): the kernel sends ``sig`` to this process when the thread that
    forked it ends. False where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): with the pid it names one process
    for good, a reused pid has another. None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces and parentheses
    return rest[19] if len(rest) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """True while ``pid`` runs and is not a zombie (and, given ``start``, is still that process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to kill(pid, 0)
        return pid_exists(pid)
    rest = stat[stat.rfind(")") + 2:].split()
    if not rest or rest[0] in ("Z", "X"):
        return False
    return start is None or (len(rest) > 19 and rest[19] == start)


def launcher_env(job_dir: str, job_id: str) -> dict[str, str]:
    """The environment entries by which ranks know their launcher and the job's folder."""
    pid = os.getpid()
    env = {ENV_LAUNCHER_PID: str(pid), ENV_JOB_DIR: job_dir, ENV_JOB_ID: job_id}
    start = process_start_time(pid)
    if start:
        env[ENV_LAUNCHER_START] = start
    return env


def started_by_launcher() -> bool:
    return bool(os.environ.get(ENV_LAUNCHER_PID))


def watch_launcher(exit_code: int = 143) -> None:
    """In a rank started by ``fc-caffe train --gpus N``: leave at once when the launcher is gone
    (and ask the kernel for SIGKILL when hydra's proxy, our parent, dies)."""
    pid = os.environ.get(ENV_LAUNCHER_PID, "")
    if not pid.isdigit():
        return
    ppid = os.getppid()
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != ppid:  # the parent died before prctl took effect
        os._exit(exit_code)
    launcher, start = int(pid), os.environ.get(ENV_LAUNCHER_START) or None

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if not process_alive(launcher, start):
                os._exit(exit_code)

    threading.Thread(target=watch, name="fc-caffe-launcher-watch", daemon=True).start()


def mark_ready(rank: int) -> None:
    """Tell the launcher that this rank's signal handlers are in place."""
    d = os.environ.get(ENV_JOB_DIR)
    if not d:
        return
    try:
        with open(os.path.join(d, f"ready.{rank}"), "w"):
            pass
    except OSError:
        pass


def count_ready(job_dir: str) -> int:
    try:
        return sum(1 for n in os.listdir(job_dir) if n.startswith("ready."))
    except OSError:
        return 0


def job_id() -> str:
    """A name shared by the ranks of one job on one machine: the launcher's, else the MPI
    launcher's job/namespace id, else the parent (hydra's proxy) pid."""
    for var in (ENV_JOB_ID, "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME", "SLURM_STEP_ID"):
        v = os.environ.get(var)
        if v:
            if var == "SLURM_STEP_ID":
                v = f"{os.environ.get('SLURM_JOB_ID', '')}.{v}"
            return f"{var}-{v}"
    return f"ppid-{os.getppid()}"


_claim: socket.socket | None = None


def claim_error_line() -> bool:
    """True for the first rank of this job (on this machine) to fail: it prints the job's one
    error line. The claim is an abstract Unix socket, freed by the kernel with the process."""
    global _claim
    if _claim is not None:
        return True
    if not sys.platform.startswith("linux"):
        return True  # no abstract sockets: every failing rank prints its line
    name = f"\0fc-caffe-error-{os.getuid()}-{job_id()}"[:100]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(name)
    except OSError:
        s.close()
        return False
    _claim = s
    return True


def silence_stderr() -> None:
    """Send fd 2 to /dev/null (MPI_Abort's banner, hydra-forwarded noise of a dying rank)."""
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:
        pass
