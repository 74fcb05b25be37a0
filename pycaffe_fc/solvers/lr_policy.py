"""Learning-rate policies: Caffe's ``SGDSolver::GetLearningRate`` (sgd_solver.cpp).

The arithmetic follows Caffe's ``Dtype = float`` build and C++'s overload rules: the parameters
are float32 and float-with-float arithmetic stays float32; ``pow(float, float)`` and
``exp(float)`` are the float overloads (computed here in double and rounded once to float32, as a
correctly rounded ``powf``); ``pow(float, int)`` ("step", "exp", "multistep") is promoted to double,
and its product with ``base_lr`` is rounded to float32 at the end. This reproduces the rates BVLC
Caffe prints, to the last digit (checked against its log for "inv").

fc-caffe extension (SolverParameter fields 1000/1001, ignored by plain Caffe): ``warmup_iter``
and ``warmup_start_lr_ratio`` ramp the rate linearly from ``base_lr * warmup_start_lr_ratio`` at
iteration 0 to the policy's own rate at iteration ``warmup_iter`` (Goyal et al., 2017), after which
the policy alone decides.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import CaffeError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

f32 = np.float32


def learning_rate(param, iteration: int, current_step: int = 0, verbose: bool = False) -> tuple[float, int]:
    """The rate of update number ``iteration`` and the new ``current_step``.

    ``current_step`` is Caffe's ``current_step_``: "step" recomputes it, "multistep" advances it by
    at most one per call (and it is saved in the .solverstate), the rest leave it alone.
    ``verbose`` logs multistep's "MultiStep Status" line as Caffe does.
    """
    policy = param.lr_policy
    base_lr = f32(param.base_lr)
    gamma = f32(param.gamma)
    power = f32(param.power)
    it = int(iteration)
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        if param.stepsize <= 0:
            raise CaffeError(f"lr_policy \"step\" needs stepsize > 0 (got {param.stepsize})")
        _check_gamma(gamma, policy)
        current_step = it // param.stepsize
        rate = float(base_lr) * math.pow(float(gamma), current_step)
    elif policy == "exp":
        _check_gamma(gamma, policy)
        rate = float(base_lr) * math.pow(float(gamma), it)
    elif policy == "inv":
        _check_gamma(gamma, policy)
        # Dtype(1) + gamma * iter is float arithmetic in Caffe
        base = f32(1) + gamma * f32(it)
        rate = base_lr * _powf(base, -power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            if verbose:
                from .log import info
                info(f"MultiStep Status: Iteration {it}, step = {current_step}", "sgd_solver.cpp:62")
        rate = float(base_lr) * math.pow(float(gamma), current_step)
    elif policy == "poly":
        if param.max_iter <= 0:
            raise CaffeError(f"lr_policy \"poly\" needs max_iter > 0 (got {param.max_iter})")
        base = f32(1) - f32(it) / f32(param.max_iter)
        rate = base_lr * _powf(base, power)
    elif policy == "sigmoid":
        x = -gamma * (f32(it) - f32(param.stepsize))
        rate = base_lr * (f32(1) / (f32(1) + _expf(x)))
    elif not policy:
        raise CaffeError("solver: lr_policy is not set (one of " + ", ".join(POLICIES) + ")")
    else:
        raise CaffeError(f"Unknown learning rate policy: {policy} (known: {', '.join(POLICIES)})")
    rate = float(f32(rate))
    return apply_warmup(param, it, rate), current_step


def apply_warmup(param, iteration: int, rate: float) -> float:
    """fc-caffe extension: the linear warm-up of ``warmup_iter``/``warmup_start_lr_ratio``."""
    n = int(param.warmup_iter)
    if n <= 0 or iteration >= n:
        return rate
    start = float(f32(param.base_lr) * f32(param.warmup_start_lr_ratio))
    alpha = iteration / n
    return float(f32(start * (1.0 - alpha) + rate * alpha))


def _check_gamma(gamma, policy: str) -> None:
    if gamma < 0:
        raise CaffeError(f"lr_policy \"{policy}\" needs gamma >= 0 (got {float(gamma)})")


def _powf(base, exponent) -> np.float32:
    """C++ ``pow(float, float)``: the float overload."""
    try:
        r = math.pow(float(base), float(exponent))
    except (ValueError, OverflowError):
        r = float("nan") if base < 0 else float("inf")
    with np.errstate(over="ignore"):
        return f32(r)


def _expf(x) -> np.float32:
    """C++ ``exp(float)``: the float overload."""
    try:
        r = math.exp(float(x))
    except OverflowError:
        r = float("inf")
    with np.errstate(over="ignore"):
        return f32(r)
