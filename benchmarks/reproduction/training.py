"""Study 1: batch size and learning rate on Fashion-MNIST, with ``fc-caffe train``.

Every setting is one real ``fc-caffe train`` run (``--gpus 4 --sync tree`` for the large batch):
this module writes a solver and net derived from a recipe under ``models/`` (data sources pointed
at the subset, batch size, rate, policy, iterations), runs it, keeps the Caffe-format log and
parses it with ``tools/parse_log.py`` into the curves and the final test top-1.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import Mode, NetRecipe, net_settings

CHANCE = 0.10  # ten classes
BLAS_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class RunSpec:
    """One training run of study 1."""

    run_id: str
    net: str                 # recipe key
    kind: str                # "baseline", "sweep", "single", "poly", "warmup" or "lars"
    batch: int               # global batch
    workers: int
    base_lr: float
    lr_policy: str
    max_iter: int
    test_interval: int
    test_iter: int
    warmup_iter: int = 0
    warmup_start_lr_ratio: float = 0.0
    power: float = 0.0
    seed: int = 1701         # the solver's random_seed (weights' initialisation)
    lars: bool = False       # fc-caffe's LARS extension (SolverParameter lars / lars_eta)
    lars_eta: float = 0.001
    repeat: bool = False     # a second seed of a setting run before

    @property
    def label(self) -> str:
        extra = {"poly": f" poly({self.power:g})", "warmup": f" warm-up {self.warmup_iter} it",
                 "single": " in one process", "lars": f" LARS(eta {self.lars_eta:g})"}.get(self.kind, "")
        seed = f" seed {self.seed}" if self.repeat else ""
        return f"batch {self.batch} lr {self.base_lr:g}{extra}{seed}"


@dataclass
class RunResult:
    """What one run measured, read from its own log."""

    spec: dict[str, Any]
    log: str
    returncode: int
    wall_s: float
    train: list[dict[str, float]] = field(default_factory=list)   # NumIters, Seconds, LearningRate, loss
    test: list[dict[str, float]] = field(default_factory=list)    # NumIters, Seconds, accuracy, loss
    final_accuracy: float | None = None
    final_test_iter: int | None = None
    diverged_at: int | None = None   # fc-caffe's solver stops at a non-finite loss
    at_chance: bool = False          # diverged, or ended within 2 points of chance
    error: str = ""


# -- planning ------------------------------------------------------------------------------------
def iterations(mode: Mode, batch: int, recipe: NetRecipe | None = None) -> tuple[int, int]:
    """(max_iter, test_interval) for the net's epochs over its subset at ``batch`` (to the nearest
    test interval): max_iter is a multiple of test_interval, so Caffe's solver tests after the
    last update too."""
    ns = net_settings(mode, recipe) if recipe is not None else None
    epochs, images = (ns.epochs, ns.train_images) if ns else (mode.epochs, mode.train_images)
    per_run = ns.tests_per_run if ns else mode.tests_per_run
    # at least two test points: Caffe's parse_log.py drops the only row of a one-row table
    total = max(2, round(epochs * images / batch))
    tests = max(2, min(per_run, total))
    interval = max(1, round(total / tests))
    return interval * tests, interval


def plan(mode: Mode, recipe: NetRecipe, baseline_lr: float, baseline_policy: str) -> list[RunSpec]:
    """The first-seed runs of one net: the small-batch baseline, the large-batch sweep (the net's
    policy), the one-process control, rates again with the poly policy, with a linear warm-up, and
    with fc-caffe's LARS. ``recipe.policy`` (with ``recipe.power``) replaces the recipe's policy in
    every run of the net."""
    ns = net_settings(mode, recipe)
    policy = ns.policy or baseline_policy
    power = ns.power if ns.power is not None else (mode.poly_power if policy == "poly" else 0.0)
    test_iter = max(1, mode.test_images // 100)
    runs: list[RunSpec] = []
    it, ti = iterations(mode, mode.small_batch, recipe)
    seed = mode.seeds[0]
    runs.append(RunSpec(f"{recipe.key}_b{mode.small_batch}_lr{baseline_lr:g}", recipe.key, "baseline",
                        mode.small_batch, 1, baseline_lr, policy, it, ti, test_iter, power=power, seed=seed))
    it, ti = iterations(mode, mode.large_batch, recipe)
    w = mode.workers
    for lr in recipe.sweep_lrs:
        runs.append(RunSpec(f"{recipe.key}_b{mode.large_batch}_lr{lr:g}", recipe.key, "sweep",
                            mode.large_batch, w, lr, policy, it, ti, test_iter, power=power, seed=seed))
    if recipe.single_lr is not None:
        # the same large batch in one process: what the reduction tree must reproduce
        runs.append(RunSpec(f"{recipe.key}_b{mode.large_batch}x1_lr{recipe.single_lr:g}", recipe.key, "single",
                            mode.large_batch, 1, recipe.single_lr, policy, it, ti, test_iter, power=power,
                            seed=seed))
    warm = max(1, round(ns.warmup_epochs * ns.train_images / mode.large_batch))
    for lr in recipe.poly_lrs:
        runs.append(RunSpec(f"{recipe.key}_b{mode.large_batch}_lr{lr:g}_poly", recipe.key, "poly",
                            mode.large_batch, w, lr, "poly", it, ti, test_iter, power=mode.poly_power, seed=seed))
    for lr in recipe.warmup_lrs:
        runs.append(RunSpec(f"{recipe.key}_b{mode.large_batch}_lr{lr:g}_warmup", recipe.key, "warmup",
                            mode.large_batch, w, lr, policy, it, ti, test_iter, power=power, seed=seed,
                            warmup_iter=min(warm, it), warmup_start_lr_ratio=mode.warmup_start_ratio))
    for lr in recipe.lars_lrs:
        runs.append(RunSpec(f"{recipe.key}_b{mode.large_batch}_lr{lr:g}_lars", recipe.key, "lars",
                            mode.large_batch, w, lr, policy, it, ti, test_iter, power=power, seed=seed,
                            lars=True, lars_eta=recipe.lars_eta))
    return runs


#: the kinds of large-batch run whose accuracy answers "does batch 1024 keep up" (not the control)
LARGE_KINDS = ("sweep", "poly", "warmup", "lars")


def repeats(mode: Mode, recipe: NetRecipe, runs: list[RunSpec], finals: list[float | None]) -> list[RunSpec]:
    """Second-seed runs: the baseline and up to ``recipe.seed_runs`` large-batch settings whose
    first-seed top-1 ended within ``mode.seed_within`` of the baseline's (best first), so that
    every 'within one point' verdict rests on the mean of two seeds."""
    if recipe.seed_runs <= 0 or len(mode.seeds) < 2:
        return []
    base = next((f for r, f in zip(runs, finals) if r.kind == "baseline"), None)
    if base is None:
        return []
    close = sorted(((f, r) for r, f in zip(runs, finals)
                    if r.kind in LARGE_KINDS and f is not None and base - f <= mode.seed_within),
                   key=lambda x: -x[0])[:recipe.seed_runs]
    if not close:
        return []
    chosen = [next(r for r in runs if r.kind == "baseline")] + [r for _, r in close]
    from dataclasses import replace
    return [replace(r, run_id=f"{r.run_id}_seed{s}", seed=s, repeat=True)
            for s in mode.seeds[1:] for r in chosen]


# -- prototxts -----------------------------------------------------------------------------------
def recipe_baseline(root: str, recipe: NetRecipe):
    """The recipe's SolverParameter (read with fc-caffe's own reader)."""
    from pycaffe_fc.proto import io
    return io.read_solver_param(os.path.join(root, recipe.solver))


def write_run_files(root: str, run_dir: str, recipe: NetRecipe, spec: RunSpec,
                    train_source: str, test_source: str) -> str:
    """The net and solver of ``spec`` under ``run_dir``; returns the solver's path."""
    from google.protobuf import text_format
    from pycaffe_fc.proto import caffe_pb2, io

    os.makedirs(run_dir, exist_ok=True)
    net = io.read_net_param(os.path.join(root, recipe.train_val))
    for layer in net.layer:
        if layer.type != "Data":
            continue
        phases = [r.phase for r in layer.include]
        if caffe_pb2.TEST in phases:
            layer.data_param.source, layer.data_param.batch_size = test_source, 100
        else:
            layer.data_param.source, layer.data_param.batch_size = train_source, spec.batch
    net_path = os.path.join(run_dir, "train_val.prototxt")
    with open(net_path, "w") as f:
        f.write(f"# {spec.label}: derived from {recipe.train_val} by benchmarks/reproduce.py\n")
        f.write(text_format.MessageToString(net))

    s = recipe_baseline(root, recipe)
    for name in ("train_net", "test_net", "train_net_param", "test_net_param", "net_param"):
        s.ClearField(name)
    s.ClearField("test_iter")
    s.ClearField("test_state")
    s.net = net_path
    s.test_iter.append(spec.test_iter)
    s.test_interval = spec.test_interval
    s.test_initialization = False
    s.max_iter = spec.max_iter
    s.base_lr = spec.base_lr
    s.lr_policy = spec.lr_policy
    if spec.lr_policy == "poly":
        s.power = spec.power
    s.display = max(1, spec.max_iter // 50)
    s.average_loss = 1
    s.snapshot = 0
    s.snapshot_after_train = False
    s.snapshot_prefix = os.path.join(run_dir, "snap")
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    s.random_seed = spec.seed
    if spec.warmup_iter:
        s.warmup_iter = spec.warmup_iter
        s.warmup_start_lr_ratio = spec.warmup_start_lr_ratio
    if spec.lars:
        s.lars = True
        s.lars_eta = spec.lars_eta
    solver_path = os.path.join(run_dir, "solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(f"# {spec.label}: derived from {recipe.solver} by benchmarks/reproduce.py\n")
        f.write(text_format.MessageToString(s))
    return solver_path


# -- running -------------------------------------------------------------------------------------
def train_command(solver: str, workers: int, sync: str = "tree") -> list[str]:
    """The ``fc-caffe train`` command line of a run (as the report prints it)."""
    cmd = [sys.executable, "-m", "pycaffe_fc", "train", "--solver", solver]
    if workers > 1:
        cmd += ["--gpus", str(workers), "--sync", sync]
    return cmd


def run_training(root: str, cmd: list[str], log_path: str, timeout: float,
                 env_extra: dict[str, str] | None = None) -> tuple[int, float]:
    """Run ``cmd`` from the repository root with its log (stderr, as GLOG_logtostderr) in
    ``log_path``; returns (exit status, wall seconds)."""
    # One BLAS thread per process: several workers share two cores, and OpenBLAS threads that
    # spin-wait on an oversubscribed machine slow a run several-fold (measured: 593 ms vs 121 ms
    # per LeNet batch of 64 with other jobs running).
    env = dict(os.environ, GLOG_logtostderr="1", PYTHONUNBUFFERED="1", **BLAS_ONE_THREAD)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if env_extra:
        env.update(env_extra)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            log.write(f"\nreproduce.py: killed after {timeout:.0f} s\n")
            rc = 124
    return rc, time.perf_counter() - t0


def parse_training_log(log_path: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(train rows, test rows) of a Caffe-format log, parsed by tools/parse_log.py."""
    parse_log = _parse_log_module()
    train, test = parse_log.parse_log(log_path)
    return [dict(r) for r in train], [dict(r) for r in test]


def _parse_log_module():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tools = os.path.join(root, "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import parse_log  # noqa: WPS433 - tools/parse_log.py, Caffe's log parser
    return parse_log


def execute(root: str, work_dir: str, recipe: NetRecipe, spec: RunSpec, train_source: str,
            test_source: str, timeout: float, log=print) -> RunResult:
    """Write, run and parse one run of study 1."""
    run_dir = os.path.join(work_dir, "runs", spec.run_id)
    solver = write_run_files(root, run_dir, recipe, spec, train_source, test_source)
    log_path = os.path.join(run_dir, "train.log")
    cmd = train_command(solver, spec.workers)
    log(f"  {spec.run_id}: {spec.max_iter} iterations of {spec.batch} "
        f"({spec.workers} worker{'s' if spec.workers > 1 else ''}) ...")
    rc, wall = run_training(root, cmd, log_path, timeout)
    res = RunResult(spec=asdict(spec) | {"label": spec.label, "command": _rel_cmd(root, cmd)},
                    log=log_path, returncode=rc, wall_s=wall)
    try:
        res.train, res.test = parse_training_log(log_path)
    except Exception as e:  # noqa: BLE001 - a broken log is reported, not fatal
        res.error = f"log not parsed: {e}"
    finals = [r for r in res.test if int(r.get("NumIters", -1)) == spec.max_iter and "accuracy" in r]
    if finals:
        res.final_accuracy = float(finals[-1]["accuracy"])
        res.final_test_iter = spec.max_iter
    res.diverged_at = diverged_iteration(log_path)
    res.at_chance = res.diverged_at is not None or (
        res.final_accuracy is not None and res.final_accuracy <= CHANCE + 0.02)
    if rc != 0 and not res.error and res.diverged_at is None:
        res.error = f"exit {rc}: " + _tail(log_path)
    acc = (f"diverged at iteration {res.diverged_at}" if res.diverged_at is not None else
           "n/a" if res.final_accuracy is None else f"{res.final_accuracy:.4f}")
    log(f"    top-1 {acc} in {wall:.0f} s" + (f"  [{res.error}]" if res.error else ""))
    return res


_DIVERGED = re.compile(r"Iteration (\d+): the training loss is (?:nan|-?inf)")


def diverged_iteration(log_path: str) -> int | None:
    """The iteration at which fc-caffe's solver stopped on a non-finite loss (BVLC Caffe would
    go on with NaN weights, i.e. at chance), or None."""
    try:
        with open(log_path, errors="replace") as f:
            m = _DIVERGED.search(f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _rel_cmd(root: str, cmd: list[str]) -> str:
    out = ["python" if c == sys.executable else os.path.relpath(c, root) if os.path.isabs(c) and
           c.startswith(root) else c for c in cmd]
    return " ".join(out)


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return " | ".join(lines[-n:])[-400:]
    except OSError:
        return ""
