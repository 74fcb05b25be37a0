#!/usr/bin/env python3
"""Reproduce FireCaffe's findings (Iandola et al., CVPR 2016) at this machine's scale.

One command runs three studies with fc-caffe and writes REPRODUCTION.md and PNG plots:

1. batch size and learning rate on Fashion-MNIST (LeNet and a NiN-style net): batch 64 against
   batch 1024 = 4 workers x 256 through the reduction tree, a sweep of base_lr doubling each step,
   Caffe's poly policy, fc-caffe's linear warm-up and its LARS, second seeds where batch 1024
   comes close, and time to a target accuracy;
2. allreduce time of the NiN and GoogLeNet gradients on the virtual cluster (tree, pipelined tree,
   parameter server, MPI) for p = 1..8 at two link rates, next to the paper's Eq. 3/4, and the
   model carried to 32-256 GPUs at the interconnects the paper used;
3. wall time to a fixed number of samples with 1, 2 and 4 workers, and the communication share.

Usage (from the repository root; study 2 and 3 need root and iproute2 for the virtual cluster):

    python benchmarks/reproduce.py            # the full study (under 100 minutes on 2 cores)
    python benchmarks/reproduce.py --quick    # the same report in a few minutes, fewer settings
    python benchmarks/reproduce.py --quick --smoke --out /tmp/x   # the tests' form, < 1 minute

Writes ``OUT/REPRODUCTION.md`` and ``OUT/docs/reproduction/*.png`` (OUT: the repository root by
default), and keeps every run's log, derived prototxts and ``results.json`` under the work
directory (``data/reproduction/<form>/`` by default, git-ignored). ``--report-only`` rewrites the
report and plots from an existing ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from reproduction import commbench, config, data, env, report, speedup, training  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the few-minute form: fewer settings, smaller subsets")
    p.add_argument("--smoke", action="store_true", help="with --quick: the test suite's tiny form (< 1 minute)")
    p.add_argument("--out", default=ROOT, help="where REPRODUCTION.md and docs/reproduction/ go (default: repo root)")
    p.add_argument("--work-dir", default=None, help="logs and results.json (default: data/reproduction/<form>)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "data", "fashion_mnist"),
                   help="the Fashion-MNIST LMDBs (made here when missing)")
    p.add_argument("--shared", default=os.path.join(os.path.dirname(ROOT), "shared"),
                   help="the reference folder (caffe-models/, tools/vcluster)")
    p.add_argument("--only", default="study1,study2,study3",
                   help="comma list of the studies to run (study1, study2, study3)")
    p.add_argument("--no-vcluster", action="store_true",
                   help="studies 2 and 3 with local mpiexec instead of the virtual cluster")
    p.add_argument("--no-plots", action="store_true", help="write the report without the PNG figures")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from results.json")
    p.add_argument("--merge", action="store_true",
                   help="keep the other studies of an existing results.json and rerun only --only's")
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds before one training run is killed")
    args = p.parse_args(argv)
    if args.smoke and not args.quick:
        p.error("--smoke is a variant of --quick: give both")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- study 1 -----------------------------------------------------------------------------------
def run_study1(mode: config.Mode, work: str, data_dir: str, timeout: float, results: dict[str, Any],
               save) -> None:
    """Batch size and learning rate: every planned fc-caffe train run of every net, in order."""
    log("study 1: batch size and learning rate")
    train_db, test_db = data.ensure_fashion_mnist(data_dir, log=log)
    subsets = os.path.join(work, "subsets")
    train_src = data.subset_lmdb(train_db, subsets, mode.train_images)
    test_src = data.subset_lmdb(test_db, subsets, mode.test_images)
    s1 = results["study1"] = {
        "train_images": mode.train_images, "test_images": mode.test_images, "epochs": mode.epochs,
        "small_batch": mode.small_batch, "large_batch": mode.large_batch, "workers": mode.workers,
        "warmup_epochs": mode.warmup_epochs, "warmup_start_ratio": mode.warmup_start_ratio,
        "poly_power": mode.poly_power, "seeds": list(mode.seeds), "seed_within": mode.seed_within,
        "tests_per_run": mode.tests_per_run, "train_source": train_src, "test_source": test_src, "nets": {}}
    for recipe in mode.nets:
        base = training.recipe_baseline(ROOT, recipe)
        ns = config.net_settings(mode, recipe)
        net_src = data.subset_lmdb(train_db, subsets, ns.train_images)
        net = s1["nets"][recipe.key] = {
            "title": recipe.title, "solver": recipe.solver, "train_val": recipe.train_val,
            "policy": ns.policy or base.lr_policy, "recipe_policy": base.lr_policy, "power": ns.power,
            "train_images": ns.train_images, "epochs": ns.epochs, "tests_per_run": ns.tests_per_run,
            "warmup_epochs": ns.warmup_epochs, "lars_eta": recipe.lars_eta, "seeds": list(mode.seeds),
            "seed_runs": recipe.seed_runs, "seed_within": mode.seed_within, "cut": recipe.cut,
            "warmup_lrs": list(recipe.warmup_lrs), "runs": []}
        specs = training.plan(mode, recipe, base.base_lr, base.lr_policy)
        finals = []
        for spec in specs:
            res = training.execute(ROOT, work, recipe, spec, net_src, test_src, timeout, log=log)
            net["runs"].append(_result_dict(res))
            finals.append(None if res.diverged_at is not None else res.final_accuracy)
            save()
        for spec in training.repeats(mode, recipe, specs, finals):
            res = training.execute(ROOT, work, recipe, spec, net_src, test_src, timeout, log=log)
            net["runs"].append(_result_dict(res))
            save()


def _result_dict(res: training.RunResult) -> dict[str, Any]:
    d = dict(res.__dict__)
    d["log"] = _rel(res.log)
    return d


# -- study 2 -----------------------------------------------------------------------------------
def run_study2(mode: config.Mode, work: str, shared: str, use_vc: bool, results: dict[str, Any], save) -> None:
    """Communication: |W|, compute per batch, allreduce times on the virtual cluster, the model."""
    log("study 2: communication")
    s2 = results["study2"] = {"titles": {k: v[0] for k, v in config.IMAGENET_NETS.items()},
                              "sizes": {}, "comm_scale": mode.comm_scale,
                              "interconnects": [ic.__dict__ for ic in config.INTERCONNECTS]}
    for key in mode.comm_models:
        prototxt = os.path.join(shared, config.IMAGENET_NETS[key][1])
        s2["sizes"][key] = commbench.gradient_bytes(prototxt) | {"prototxt": "../shared/" + config.IMAGENET_NETS[key][1]}
    full = {k: v["gradient_bytes"] for k, v in s2["sizes"].items()}
    sent = {k: max(4, int(v * mode.comm_scale) // 4 * 4) for k, v in full.items()}
    compute = {}
    timing_dir = os.path.join(shared, "caffe-reference", "timing")
    for key in mode.comm_models:
        proto = os.path.join(timing_dir, f"{key}_b8.prototxt")
        log(f"  timing {key} forward+backward at batch {mode.compute_batch} ...")
        try:
            compute[key] = _time_net_child(proto, mode.compute_batch, mode.compute_iters)
            log(f"    {compute[key]['ms_per_batch']:.0f} ms per batch of {mode.compute_batch}")
        except Exception as e:  # noqa: BLE001 - reported, the rest of the study still runs
            log(f"    not timed: {e}")
    s2["compute"] = compute
    save()
    measured = commbench.measure(ROOT, shared, work, mode.comm_hosts, mode.comm_rates, sent,
                                 mode.comm_algos, mode.comm_repeats, use_vc, log=log)
    measured["full_sizes"] = full
    s2["measured"] = measured
    s2.update(commbench.analyse(measured, compute, mode.extrapolate_p, config.INTERCONNECTS,
                                config.PAPER_SPEEDUPS, config.PAPER_GLOBAL_BATCH))
    save()


# -- study 3 -----------------------------------------------------------------------------------
def run_study3(mode: config.Mode, work: str, shared: str, data_dir: str, use_vc: bool,
               results: dict[str, Any], save) -> None:
    """Measured speedup: the same samples with 1, 2 and 4 workers, for each net of the form."""
    log("study 3: measured speedup")
    train_db, test_db = data.ensure_fashion_mnist(data_dir, log=log)
    subsets = os.path.join(work, "subsets")
    n = mode.speedup_batch * mode.speedup_iters
    train_src = data.subset_lmdb(train_db, subsets, min(n, 60000))
    test_src = data.subset_lmdb(test_db, subsets, 100)
    m = mode if use_vc == mode.use_vcluster else _with(mode, use_vcluster=use_vc)
    s3 = results["study3"] = {"nets": {}}
    for key in mode.speedup_nets:
        recipe = next(r for r in (*mode.nets, config.LENET, config.NIN) if r.key == key)
        base = training.recipe_baseline(ROOT, recipe)
        s3["nets"][key] = speedup.measure(ROOT, shared, work, m, recipe, base.base_lr, train_src, test_src, log=log)
        s3["nets"][key]["title"] = recipe.title
        save()


def _with(mode: config.Mode, **kw) -> config.Mode:
    from dataclasses import replace
    return replace(mode, **kw)


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_comm-worker":
        return _comm_worker(argv[1:])
    if argv and argv[0] == "_time-net":
        print(json.dumps(commbench.time_imagenet_net(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    args = parse_args(argv)
    mode = config.SMOKE if args.smoke else config.QUICK if args.quick else config.FULL
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work_dir or os.path.join(ROOT, "data", "reproduction", mode.name))
    os.makedirs(work, exist_ok=True)
    results_path = os.path.join(work, "results.json")
    plot_dir = os.path.join(out, "docs", "reproduction")
    report_path = os.path.join(out, "REPRODUCTION.md")

    if args.report_only:
        with open(results_path) as f:
            results = json.load(f)
        results["rerendered_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        s2 = results.get("study2") or {}
        if s2.get("measured"):  # the model and extrapolation are derived data: recompute them
            s2["interconnects"] = [ic.__dict__ for ic in config.INTERCONNECTS]
            s2.update(commbench.analyse(s2["measured"], s2.get("compute", {}), mode.extrapolate_p,
                                        config.INTERCONNECTS, config.PAPER_SPEEDUPS, config.PAPER_GLOBAL_BATCH))
    else:
        command = "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in argv)
        results = {"mode": {"name": mode.name}, "env": env.describe(ROOT), "command": command,
                   "stage_s": {}, "work_dir_rel": _rel(work)}
        if args.merge and os.path.exists(results_path):
            with open(results_path) as f:
                earlier = json.load(f)
            if earlier["mode"]["name"] != mode.name:
                raise SystemExit(f"reproduce.py: --merge: {results_path} holds the '{earlier['mode']['name']}' form")
            earlier.setdefault("later_runs", []).append({"command": command, "env": results["env"],
                                                         "studies": args.only})
            results = earlier

        def save() -> None:
            with open(results_path + ".tmp", "w") as f:
                json.dump(results, f, indent=1, default=str)
            os.replace(results_path + ".tmp", results_path)

        only = {s.strip() for s in args.only.split(",") if s.strip()}
        use_vc = mode.use_vcluster and not args.no_vcluster
        if use_vc and ({"study2", "study3"} & only):
            ok, why = commbench.vcluster_usable(args.shared)
            if not ok:
                log(f"virtual cluster unavailable ({why}): studies 2 and 3 use local mpiexec")
                use_vc = False
                results["vcluster_unavailable"] = why
        t_start = time.perf_counter()
        log(f"form '{mode.name}': work directory {work}")
        for name, fn in (("study1", lambda: run_study1(mode, work, args.data_dir, args.run_timeout, results, save)),
                         ("study2", lambda: run_study2(mode, work, args.shared, use_vc, results, save)),
                         ("study3", lambda: run_study3(mode, work, args.shared, args.data_dir, use_vc, results, save))):
            if name not in only:
                continue
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - a failed study is reported, the others still run
                log(f"{name} failed: {type(e).__name__}: {e}")
                results.setdefault(name, {})["skipped"] = f"failed: {type(e).__name__}: {e}"
            results["stage_s"][name] = time.perf_counter() - t0
            results["waited_s"] = commbench.WAITED["seconds"]
            results["total_s"] = sum(results["stage_s"].values())
            save()

    _add_bvlc_reference(results, args.shared)
    os.makedirs(out, exist_ok=True)
    if not args.no_plots:
        from reproduction import plots
        written = plots.write_all(results, plot_dir)
        log(f"plots: {', '.join(os.path.relpath(p, out) for p in written)}")
    report.write(results, report_path, None if args.no_plots else plot_dir)
    log(f"report: {report_path} (total {results.get('total_s', 0) / 60:.1f} min)")
    return 0


def _add_bvlc_reference(results: dict[str, Any], shared: str) -> None:
    """BVLC Caffe's own forward+backward time of the same ImageNet nets on a 2-core machine like
    this one (../shared/caffe-reference/timing.json, force_backward), shown next to fc-caffe's."""
    s2 = results.get("study2")
    path = os.path.join(shared, "caffe-reference", "timing.json")
    if not s2 or not os.path.exists(path):
        return
    with open(path) as f:
        nets = json.load(f).get("nets_force_backward", {})
    s2["bvlc_reference_ms"] = {k: nets[f"{k}_b8"]["avg_forward_backward_ms"] for k in s2.get("compute", {})
                               if f"{k}_b8" in nets}


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path, ROOT)
        return path if rel.startswith("..") else rel
    except ValueError:
        return path


def _time_net_child(prototxt: str, batch: int, iters: int) -> dict[str, float]:
    """``commbench.time_imagenet_net`` in a child process with one BLAS thread, as every worker
    of the training runs has (and so that this process never initialises BLAS threads)."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=ROOT, **training.BLAS_ONE_THREAD)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "_time-net", prototxt, str(batch), str(iters)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError((out.stderr or out.stdout).strip().splitlines()[-1:] or ["failed"])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _comm_worker(argv: list[str]) -> int:
    """The MPI side of study 2 (started by ``commbench.measure`` under mpiexec)."""
    p = argparse.ArgumentParser(prog="reproduce.py _comm-worker")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", required=True, help="name=bytes,...")
    p.add_argument("--algos", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ping-bytes", type=int, default=0)
    a = p.parse_args(argv)
    sizes = {k: int(v) for k, v in (kv.split("=") for kv in a.sizes.split(","))}
    commbench.comm_worker(sizes, a.algos.split(","), a.repeats, a.out, a.ping_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
