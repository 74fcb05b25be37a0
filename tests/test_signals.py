"""Signals to a data-parallel job act on the whole job, and nothing outlives the launcher.

Real processes throughout: ``fc-caffe train --gpus 2`` (the launcher, which starts mpiexec and two
ranks) on a tiny DummyData net that trains for ever until a signal ends it. Rank 0 broadcasts its
pending action once per iteration, so the ranks snapshot or stop at the same iteration: a rank
that stopped one iteration early or late would leave the other blocked in the gradient exchange,
and the job would not end with status 0 within the timeout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proc_helpers import MPIEXEC
from proc_helpers import proc_env as _env

pytestmark = pytest.mark.skipif(not os.path.exists(MPIEXEC) or not sys.platform.startswith("linux"),
                                reason="needs mpiexec and Linux /proc")

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
display: 0
max_iter: 100000000
snapshot_prefix: "snap/tiny"
random_seed: 1
solver_mode: CPU
{extra}"""


def job_dir(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(extra=extra))
    (tmp_path / "snap").mkdir()
    return tmp_path


def start(d: Path, *flags, cmd=None) -> subprocess.Popen:
    cmd = cmd or [sys.executable, "-m", "pycaffe_fc", "train", "--solver", "solver.prototxt", "--gpus", "2"]
    err = open(d / "stderr.txt", "w")
    return subprocess.Popen([*cmd, *flags], cwd=d, env=_env(), stdout=subprocess.DEVNULL, stderr=err,
                            stdin=subprocess.DEVNULL)


def log(d: Path) -> str:
    return (d / "stderr.txt").read_text()


def wait_for(cond, timeout: float, what: str, d: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log(d)[-3000:]}" if d else ""))


def wait_training(d: Path, proc: subprocess.Popen) -> None:
    """Until rank 0 runs its iterations (and so every rank has its handlers)."""
    wait_for(lambda: "Learning Rate Policy" in log(d) or proc.poll() is not None, 60, "training", d)
    assert proc.poll() is None, log(d)[-3000:]
    time.sleep(0.3)


def snapshots(d: Path) -> list[int]:
    return sorted(int(p.name[len("tiny_iter_"):-len(".solverstate")]) for p in (d / "snap").glob("*.solverstate"))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc, as ps --forest does)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def check_complete(d: Path, it: int) -> None:
    """The snapshot of iteration ``it`` is whole: its state says ``it`` and names its model."""
    from pycaffe_fc.proto import caffe_pb2
    from pycaffe_fc.proto.io import read_net_param_binary
    state = caffe_pb2.SolverState()
    state.ParseFromString((d / "snap" / f"tiny_iter_{it}.solverstate").read_bytes())
    assert state.iter == it and state.learned_net.endswith(f"tiny_iter_{it}.caffemodel")
    model = read_net_param_binary(str(d / "snap" / f"tiny_iter_{it}.caffemodel"))
    assert [l.name for l in model.layer if l.blobs] == ["ip"]


def finish(proc: subprocess.Popen, d: Path, timeout: float = 60) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the job did not end:\n" + log(d)[-3000:])


def test_sighup_snapshots_then_sigint_stops(tmp_path):
    """Caffe's defaults, sent to the launcher alone: SIGHUP snapshots and training goes on;
    SIGINT stops (with the final snapshot of snapshot_after_train), status 0."""
    d = job_dir(tmp_path)
    proc = start(d)
    wait_training(d, proc)
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: snapshots(d), 30, "the SIGHUP snapshot", d)
    first = snapshots(d)[0]
    time.sleep(0.3)
    assert proc.poll() is None and snapshots(d) == [first], "SIGHUP must not stop training"
    os.kill(proc.pid, signal.SIGINT)
    assert finish(proc, d) == 0, log(d)[-3000:]
    text = log(d)
    assert "Optimization stopped early." in text
    final = snapshots(d)
    assert len(final) == 2 and final[0] == first and final[1] > first, final
    for it in final:
        check_complete(d, it)


def test_flags_choose_the_effects_and_sigterm_snapshots_and_stops(tmp_path):
    """--sighup_effect none ignores SIGHUP, --sigint_effect snapshot snapshots on SIGINT; SIGTERM
    snapshots and stops even with snapshot_after_train: false."""
    d = job_dir(tmp_path, "snapshot_after_train: false\n")
    proc = start(d, "--sigint_effect", "snapshot", "--sighup_effect", "none")
    wait_training(d, proc)
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None and snapshots(d) == []
    os.kill(proc.pid, signal.SIGINT)
    wait_for(lambda: snapshots(d), 30, "the SIGINT snapshot", d)
    time.sleep(0.2)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc, d) == 0, log(d)[-3000:]
    its = snapshots(d)
    assert len(its) == 2 and its[1] > its[0], its
    for it in its:
        check_complete(d, it)
    assert "Optimization stopped early." in log(d)


def test_signals_to_a_users_own_mpiexec(tmp_path):
    """``mpiexec -n 2 fc-caffe train``: hydra passes SIGUSR1 (our SIGHUP: hydra itself dies on
    SIGHUP) and SIGTERM on to the ranks, which agree on the iteration."""
    d = job_dir(tmp_path)
    proc = start(d, cmd=[MPIEXEC, "-n", "2", sys.executable, "-m", "pycaffe_fc", "train", "--solver",
                         "solver.prototxt"])
    wait_training(d, proc)
    os.kill(proc.pid, signal.SIGUSR1)
    wait_for(lambda: snapshots(d), 30, "the SIGUSR1 snapshot", d)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc, d) == 0, log(d)[-3000:]
    its = snapshots(d)
    assert len(its) == 2 and its[1] > its[0], its
    check_complete(d, its[1])


# Whatever ends the launcher, mpiexec, hydra's proxy and every rank are gone within 10 s: ten
# runs, mostly SIGKILL (nothing of the launcher's own can run), while the ranks start (at several
# moments of their start-up) and while they train.
KILLS = [("KILL", 0.0), ("KILL", 0.3), ("KILL", 0.6), ("KILL", 1.0), ("TERM", 0.2), ("INT", 0.5),
         ("KILL", "training"), ("KILL", "training"), ("TERM TERM", "training"), ("INT", "training")]


@pytest.mark.parametrize("how,when", KILLS, ids=[f"{i}-{k.replace(' ', '')}-{w}" for i, (k, w) in enumerate(KILLS)])
def test_nothing_outlives_the_launcher(tmp_path, how, when):
    d = job_dir(tmp_path)
    proc = start(d)
    # the launcher, mpiexec, hydra's proxy and the two ranks
    wait_for(lambda: len(descendants(proc.pid)) >= 4 or proc.poll() is not None, 60, "the ranks", d)
    if when == "training":
        wait_training(d, proc)
    else:
        time.sleep(when)
    tree = descendants(proc.pid)
    assert len(tree) >= 4, tree
    for sig in how.split():
        os.kill(proc.pid, getattr(signal, f"SIG{sig}"))
        time.sleep(0.1)
    finish(proc, d, timeout=30)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(alive(p) for p in tree):
        time.sleep(0.05)
    left = [p for p in tree if alive(p)]
    for p in left:  # do not leave them to the next test
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"still running 10 s after the launcher ended ({how} at {when}): {left}"


def test_sigterm_once_asks_twice_kills():
    """One process: the first SIGTERM is the solver action "snapshot_stop"; a second kills at
    once (a process stuck where no iteration ends must still die of it)."""
    code = ("import os, signal, time\n"
            "from pycaffe_fc.solvers.training import SignalHandler\n"
            "h = SignalHandler()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "print(h.action(), h.action(), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(10)\n"
            "print('still alive', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGTERM, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "snapshot_stop none\n"
