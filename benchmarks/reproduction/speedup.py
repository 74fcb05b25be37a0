"""Study 3: measured speedup — wall time of the same number of samples with 1, 2 and 4 workers
(``fc-caffe train`` under the virtual cluster's mpiexec, reduction tree), and the share of it
spent communicating (the gradient-sync time the data-parallel trainer logs)."""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

from . import commbench, training
from .config import Mode, NetRecipe

#: the data-parallel trainer's end-of-run summary of its SyncStats (pycaffe_fc/parallel/launch.py)
_COMM_RE = re.compile(r"Gradient all-reduce \((\S+), (\d+) bytes, (\d+) bucket\(s\)\): ([0-9.]+) ms per "
                      r"iteration on the training thread, ([0-9.]+) ms reducing")


def measure(root: str, shared: str, work_dir: str, mode: Mode, recipe: NetRecipe, lr: float,
            train_source: str, test_source: str, log=print, timeout: float = 900) -> dict[str, Any]:
    """One run per worker count over the same ``mode.speedup_iters`` x ``mode.speedup_batch``
    samples; returns the per-run times and the speedups over one worker."""
    use_vc = mode.use_vcluster
    if use_vc:
        commbench.take_vcluster(shared, max(mode.speedup_workers), mode.speedup_rate, log=log)
    runs = []
    for p in mode.speedup_workers:
        spec = training.RunSpec(
            run_id=f"speedup_{recipe.key}_p{p}", net=recipe.key, kind="speedup", batch=mode.speedup_batch,
            workers=p, base_lr=lr, lr_policy="fixed", max_iter=mode.speedup_iters,
            test_interval=mode.speedup_iters + 1, test_iter=1)
        run_dir = os.path.join(work_dir, "runs", spec.run_id)
        solver = training.write_run_files(root, run_dir, recipe, spec, train_source, test_source)
        _display_every_iteration(solver)
        cmd = commbench.launcher(shared, p, use_vc) + [sys.executable, "-m", "pycaffe_fc", "train",
                                                       "--solver", solver]
        if p > 1:
            cmd += ["--sync", "tree"]
        log_path = os.path.join(run_dir, "train.log")
        rc, wall = training.run_training(root, cmd, log_path, timeout)
        if rc != 0:
            raise RuntimeError(f"speedup run with {p} workers failed (exit {rc}): {training._tail(log_path)}")
        rows, _ = training.parse_training_log(log_path)
        loop_s = _loop_seconds(rows, mode.speedup_iters)
        comm_s, nbytes = _comm_seconds(log_path, mode.speedup_iters)
        if p == 1:
            comm_s = 0.0  # one worker communicates nothing
        runs.append({"workers": p, "wall_s": wall, "loop_s": loop_s, "comm_s": comm_s, "bytes": nbytes,
                     "samples": mode.speedup_iters * mode.speedup_batch, "log": log_path,
                     "command": training._rel_cmd(root, cmd)})
        share = "" if comm_s is None or not loop_s else f", communication {100 * comm_s / loop_s:.0f}%"
        log(f"    {recipe.key}, {p} worker(s): {loop_s:.1f} s training loop, {wall:.1f} s with start-up{share}")
    if use_vc:
        commbench.vcluster(shared, "down")
    base = runs[0]["loop_s"]
    for r in runs:
        r["speedup"] = base / r["loop_s"] if r["loop_s"] else None
    return {"net": recipe.key, "batch": mode.speedup_batch, "iters": mode.speedup_iters,
            "rate": mode.speedup_rate if use_vc else "local (no vcluster)", "vcluster": use_vc,
            "runs": runs}


def _display_every_iteration(solver: str) -> None:
    with open(solver) as f:
        text = f.read()
    text = re.sub(r"^display: \d+$", "display: 1", text, flags=re.M)
    with open(solver, "w") as f:
        f.write(text)


def _loop_seconds(rows: list[dict[str, float]], iters: int) -> float:
    """Seconds of the training loop, from the log's timestamps: the time between the display
    lines of the first and last iteration, scaled to ``iters`` iterations."""
    pts = sorted((int(r["NumIters"]), float(r["Seconds"])) for r in rows if "Seconds" in r)
    if len(pts) < 2:
        return float("nan")
    (i0, t0), (i1, t1) = pts[0], pts[-1]
    return (t1 - t0) / max(1, i1 - i0) * iters


def _comm_seconds(log_path: str, iters: int) -> tuple[float | None, int | None]:
    """(seconds the training thread spent in gradient synchronisation over ``iters`` iterations,
    bytes all-reduced per iteration), from the trainer's end-of-run line (None with one worker)."""
    with open(log_path, errors="replace") as f:
        text = f.read()
    m = None
    for m in _COMM_RE.finditer(text):
        pass
    if not m:
        return None, None
    return float(m.group(4)) / 1e3 * iters, int(m.group(2))
