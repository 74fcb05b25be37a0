"""benchmarks/reproduce.py: the smoke form writes REPRODUCTION.md and its plots, and every number
in its tables is the one in the runs' own logs."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "reproduce.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from reproduction import commbench, config, report as report_mod, training  # noqa: E402

IDX = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of the smoke form into a temporary folder, its own LMDBs made from the IDX files."""
    if not os.path.exists(IDX):
        pytest.skip("needs Debian's dataset-fashion-mnist (the IDX files)")
    if not shutil.which("mpiexec"):
        pytest.skip("needs mpiexec (the large batch runs as 2 MPI workers)")
    out = tmp_path_factory.mktemp("repro")
    cmd = [sys.executable, SCRIPT, "--quick", "--smoke", "--out", str(out), "--work-dir", str(out / "work"),
           "--data-dir", str(out / "fashion_mnist"), "--no-vcluster"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out / "work" / "results.json") as f:
        results = json.load(f)
    report = (out / "REPRODUCTION.md").read_text()
    return out, results, report, proc.stdout


def test_smoke_writes_report_and_plots(smoke):
    out, results, report, _ = smoke
    for heading in ("## Which of the paper's findings held", "## 1. Batch size and learning rate",
                    "## 2. Communication", "## 3. Measured speedup", "## Where this study differs"):
        assert heading in report
    assert "smoke" in report and "nproc" not in report  # labelled, and says cores in words
    assert f"{results['env']['nproc']} cores" in report
    for key in ("study1", "study2", "study3"):
        assert key in results and "skipped" not in results[key], results.get(key, {}).get("skipped")
    pytest.importorskip("matplotlib")
    for name in ("lr_sweep.png", "curves_lenet.png", "allreduce.png", "extrapolation.png", "speedup.png"):
        path = out / "docs" / "reproduction" / name
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"docs/reproduction/{name}" in report


def test_table_numbers_come_from_the_runs_logs(smoke):
    """Each run's top-1 is re-read here from its log with tools/parse_log.py and must be the one the
    report prints; the logs are real fc-caffe training logs."""
    import parse_log
    out, results, report, _ = smoke
    runs = results["study1"]["nets"]["lenet"]["runs"]
    kinds = [r["spec"]["kind"] for r in runs]
    assert kinds.count("baseline") == 1 and kinds.count("sweep") >= 2 and "warmup" in kinds and "single" in kinds
    for r in runs:
        log = r["log"] if os.path.isabs(r["log"]) else os.path.join(ROOT, r["log"])
        text = open(log).read()
        assert "Optimization Done" in text and "solver.cpp" in text
        _, test_rows = parse_log.parse_log(log)
        last = [row for row in test_rows if int(row["NumIters"]) == r["spec"]["max_iter"]]
        assert last, f"no final test in {log}"
        acc = last[-1]["accuracy"]
        assert r["final_accuracy"] == pytest.approx(acc)
        assert 0.0 <= acc <= 1.0
        row = next(line for line in report.splitlines()
                   if line.startswith(f"| {report_mod.setting(r['spec'])} |")
                   and r["spec"]["lr_policy"] in line and (("warm-up" in line) == (r["spec"]["kind"] == "warmup")))
        assert f"{100 * acc:.2f}%" in row
        if r["spec"]["workers"] > 1:
            assert "--gpus" in r["spec"]["command"] and "--sync tree" in r["spec"]["command"]
            assert "Gradient all-reduce (tree" in text  # the large batch went through the tree


def test_comm_and_speedup_numbers_are_measured(smoke):
    out, results, report, _ = smoke
    meas = results["study2"]["measured"]
    rate = next(iter(meas["rates"]))
    t2 = meas["rates"][rate]["by_p"]["2"]["times"]["nin_imagenet"]
    for algo, v in t2.items():
        assert v["sum_ok"] and v["median_s"] > 0, algo
        assert f"| 2 | " in report
    assert meas["rates"][rate]["measured_bytes_per_s"] > 0
    speed = results["study3"]["nets"]["lenet"]["runs"]
    assert [r["workers"] for r in speed] == [1, 2]
    for r in speed:
        assert r["loop_s"] > 0 and math.isfinite(r["loop_s"])
        assert os.path.exists(r["log"] if os.path.isabs(r["log"]) else os.path.join(ROOT, r["log"]))
    assert speed[1]["comm_s"] is not None and speed[1]["comm_s"] > 0  # parsed from the trainer's log
    assert re.search(r"\| LeNet \| 2 \| [0-9.]+ MB \| [0-9.]+ s \| [0-9.]+ s \| [0-9.]+x \| [0-9.]+ s \|", report)


def test_report_only_rewrites_from_results(smoke, tmp_path):
    out, results, report, _ = smoke
    work = out / "work"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--smoke", "--report-only", "--no-plots",
                           "--out", str(tmp_path), "--work-dir", str(work)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    again = (tmp_path / "REPRODUCTION.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| batch ")]
    assert rows and rows == [line for line in again.splitlines() if line.startswith("| batch ")]
    assert "![" not in again  # --no-plots: no figure links


# -- the planning and the model, without running anything ---------------------------------------
def test_iterations_end_on_a_test():
    mode = config.FULL
    for batch in (64, 1024):
        it, interval = training.iterations(mode, batch)
        assert it % interval == 0 and it // interval == mode.tests_per_run
        assert abs(it * batch - mode.epochs * mode.train_images) <= (mode.tests_per_run / 2 + 1) * batch


def test_plan_covers_the_paper_settings():
    mode = config.FULL
    for recipe in mode.nets:
        runs = training.plan(mode, recipe, 0.01, "inv")
        sweep = sorted(r.base_lr for r in runs if r.kind == "sweep")
        assert len(sweep) >= 5 and all(b == pytest.approx(2 * a) for a, b in zip(sweep, sweep[1:]))
        assert all(r.batch == 1024 and r.workers == 4 for r in runs if r.kind not in ("baseline", "single"))
        assert [(r.batch, r.workers) for r in runs if r.kind == "single"] == [(1024, 1)]
        base = [r for r in runs if r.kind == "baseline"]
        assert len(base) == 1 and base[0].batch == 64 and base[0].workers == 1
        assert {r.lr_policy for r in runs if r.kind == "poly"} == {"poly"}
        assert all(r.warmup_iter > 0 for r in runs if r.kind == "warmup")
        # the same number of epochs for both batch sizes
        assert base[0].max_iter * 64 == pytest.approx(runs[1].max_iter * 1024, rel=0.02)


def test_model_helpers():
    assert commbench.rate_bytes_per_s("1gbit") == 125e6
    assert commbench.rate_bytes_per_s("500mbit") == 62.5e6
    w, bw = 30e6, 6e9
    assert commbench.eq4_tree(w, 8, bw) == pytest.approx(6 * w / bw)
    assert commbench.eq3_ps(w, 8, bw) == pytest.approx(8 * w / bw)
    comm = commbench.eq4_tree(w, 32, bw)
    t = commbench.implied_batch_seconds(32, 23.0, comm)
    assert commbench.predicted_speedup(t, 32, comm) == pytest.approx(23.0)
    assert commbench.implied_batch_seconds(32, 40.0, comm) is None
