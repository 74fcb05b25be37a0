"""``caffe train`` for one process (tools/caffe.cpp ``train()``), as a library function.

Data-parallel training reuses it: ``prepare(solver_param)`` may edit the SolverParameter before
anything is built (e.g. a per-worker batch size), and ``setup(solver)`` runs after the solver is
built and before training, so a caller can register gradient callbacks or broadcast weights.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Iterable

from ..errors import CaffeError
from ..proto import caffe_pb2
from .log import info
from .solver import NONE, SNAPSHOT, SNAPSHOT_STOP, STOP, Solver, as_solver_param

EFFECTS = (STOP, SNAPSHOT, NONE)


class SignalHandler:
    """caffe::SignalHandler: SIGINT and SIGHUP become solver actions ("stop", "snapshot", "none")
    polled by the solver once per iteration; the previous handlers come back on ``restore()``.

    fc-caffe adds SIGTERM (what a scheduler sends before it kills a job): snapshot, then stop; a
    second SIGTERM kills the process at once, as SIGTERM does in Caffe (a process stuck where no
    iteration ends would otherwise never die of it).
    ``relayed`` (data-parallel ranks) also takes SIGALRM as SIGINT and SIGUSR1 as SIGHUP: the
    launcher relays those, because MPICH's mpiexec dies on SIGHUP (and SIGUSR2) and answers a
    second SIGINT by killing the job; it passes SIGALRM and SIGUSR1 on to every rank."""

    def __init__(self, sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT, *,
                 relayed: bool = False) -> None:
        for e in (sigint_effect, sighup_effect):
            if e not in EFFECTS:
                raise CaffeError(f"Invalid signal effect \"{e}\" was specified (stop, snapshot or none)")
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.effects[signal.SIGTERM] = SNAPSHOT_STOP
        if relayed and hasattr(signal, "SIGUSR1"):
            self.effects[signal.SIGALRM] = sigint_effect
            self.effects[signal.SIGUSR1] = sighup_effect
        self.pending: list[int] = []
        self.terms_seen: set[int] = set()
        self.previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.effects:
                self.previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            if signal.SIGTERM in self.terms_seen:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self.terms_seen.add(signal.SIGTERM)
        self.pending.append(signum)

    def action(self) -> str:
        """GetActionFunction: the effect of the oldest signal not yet handled, else "none"."""
        while self.pending:
            effect = self.effects.get(self.pending.pop(0), NONE)
            if effect != NONE:
                return effect
        return NONE

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def train(solver, snapshot: str | None = None, weights: str | None = None, *, level: int = 0,
          stages: Iterable[str] = (), prepare: Callable[[caffe_pb2.SolverParameter], None] | None = None,
          setup: Callable[[Solver], None] | None = None,
          rank: int = 0, is_root: bool = True, sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT,
          handle_signals: bool = True) -> Solver:
    """Train as ``caffe train --solver S [--snapshot X | --weights A,B] [--level L --stage s]``.

    ``solver`` is a solver prototxt path or a SolverParameter. ``snapshot`` resumes from a
    .solverstate(.h5); ``weights`` fine-tunes from comma-separated .caffemodel files (copied into
    the train and test nets). ``rank`` offsets ``random_seed`` as Caffe's solver_rank does;
    ``is_root`` False makes a silent worker (no logs, tests or snapshots). Returns the solver after
    ``Solve()``.
    """
    if snapshot and weights:
        raise CaffeError("Give a snapshot to resume training or weights to finetune but not both.")
    param: caffe_pb2.SolverParameter = as_solver_param(solver)
    param.train_state.level = int(level)
    for s in stages:
        param.train_state.stage.append(s)
    if snapshot:
        param.ClearField("weights")
    elif weights:
        param.ClearField("weights")
        param.weights.append(weights)
    if prepare is not None:
        prepare(param)
    from . import get_solver
    handler = SignalHandler(sigint_effect, sighup_effect) if handle_signals else None
    try:
        s = get_solver(param, rank=rank, is_root=is_root)
        if handler is not None:
            s.set_action_function(handler.action)
        if setup is not None:
            setup(s)
        if snapshot:
            if s.is_root:
                info(f"Resuming from {snapshot}", "caffe.cpp:231")
            s.restore(snapshot)
        if s.is_root:
            info("Starting Optimization", "caffe.cpp:239")
        s.solve()
        if s.is_root:
            info("Optimization Done.", "caffe.cpp:250")
        return s
    finally:
        if handler is not None:
            handler.restore()
