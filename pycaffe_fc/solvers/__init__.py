"""Solvers: Caffe's training loop, its six update rules, learning-rate policies and snapshots.

``caffe.get_solver(path)`` builds the solver named by the file's ``type`` (or legacy
``solver_type``); ``caffe.SGDSolver(path)`` and friends build one rule directly (as pycaffe).
``train(...)`` is ``caffe train`` for one process, reused by data-parallel training.

fc-caffe extension: the SolverParameter fields ``warmup_iter`` and ``warmup_start_lr_ratio``
(numbers 1000 and 1001; BVLC Caffe's caffe.proto does not have them, so a solver file using them is
fc-caffe only) give a
linear learning-rate warm-up from ``base_lr * warmup_start_lr_ratio`` to the policy's rate over
the first ``warmup_iter`` iterations (see lr_policy.py).
"""
from __future__ import annotations

from ..errors import CaffeError
from .lr_policy import learning_rate
from .solver import Solver, as_solver_param, read_solver_file
from .training import train
from .updates import (SOLVER_REGISTRY, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                      RMSPropSolver, SGDSolver)

__all__ = ["get_solver", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "SOLVER_REGISTRY", "learning_rate", "train",
           "read_solver_file"]


def get_solver(solver, *, rank: int = 0, is_root: bool = True) -> Solver:
    """SolverRegistry::CreateSolver: the solver of the parameter's ``type`` ("SGD", "Nesterov",
    "AdaGrad", "RMSProp", "AdaDelta", "Adam"), from a solver prototxt path or a SolverParameter."""
    param = as_solver_param(solver)
    cls = SOLVER_REGISTRY.get(param.type)
    if cls is None:
        raise CaffeError(f"Unknown solver type: {param.type} (known types: {', '.join(SOLVER_REGISTRY)})")
    return cls(param, rank=rank, is_root=is_root)
