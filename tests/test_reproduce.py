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
    kinds = [r["spec"]["kind"] for r in runs if not r["spec"]["repeat"]]
    assert kinds.count("baseline") == 1 and kinds.count("sweep") >= 2 and "warmup" in kinds and "single" in kinds
    assert "lars" in kinds
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
        rows = [line for line in report.splitlines()
                if line.startswith(f"| {report_mod.setting(r['spec'])} |")
                and r["spec"]["lr_policy"] in line and (("warm-up" in line) == (r["spec"]["kind"] == "warmup"))]
        assert len(rows) == 1, report_mod.setting(r["spec"])  # one row per run, seeds and LARS apart
        assert f"{100 * acc:.2f}%" in rows[0]
        if r["spec"]["workers"] > 1:
            assert "--gpus" in r["spec"]["command"] and "--sync tree" in r["spec"]["command"]
            assert "Gradient all-reduce (tree" in text  # the large batch went through the tree


def test_lars_and_second_seed_runs(smoke):
    """The LARS run trains with fc-caffe's lars fields; the best large-batch setting and the
    baseline ran again with the second seed, and the report averages the two."""
    out, results, report, _ = smoke
    net = results["study1"]["nets"]["lenet"]
    runs = net["runs"]
    lars = [r for r in runs if r["spec"]["kind"] == "lars"]
    assert lars and all(r["spec"]["lars"] for r in lars)
    solver = os.path.join(os.path.dirname(lars[0]["log"] if os.path.isabs(lars[0]["log"])
                                          else os.path.join(ROOT, lars[0]["log"])), "solver.prototxt")
    text = open(solver).read()
    assert "lars: true" in text and "lars_eta: 0.001" in text
    again = [r for r in runs if r["spec"]["repeat"]]
    assert [r["spec"]["kind"] for r in again][0] == "baseline" and len(again) == 2
    assert all(r["spec"]["seed"] == 2017 and "random_seed: 2017" in open(os.path.join(
        os.path.dirname(r["log"] if os.path.isabs(r["log"]) else os.path.join(ROOT, r["log"])),
        "solver.prototxt")).read() for r in again)
    twin = next(r for r in runs if not r["spec"]["repeat"] and r["spec"]["kind"] == again[1]["spec"]["kind"]
                and r["spec"]["base_lr"] == again[1]["spec"]["base_lr"])
    f = report_mod.study1_findings(net)
    mean = (report_mod.final_value(twin) + report_mod.final_value(again[1])) / 2
    key = (twin["spec"]["kind"], twin["spec"]["base_lr"])
    assert f["means"][key] == pytest.approx(mean)
    assert f"{100 * mean:.2f}%" in report
    assert "**Decision rule.**" in report and "to within 1 point of batch 64" in report


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
        assert [(r.batch, r.workers) for r in runs if r.kind == "single"] == (
            [(1024, 1)] if recipe.single_lr is not None else [])
        base = [r for r in runs if r.kind == "baseline"]
        assert len(base) == 1 and base[0].batch == 64 and base[0].workers == 1
        assert {r.lr_policy for r in runs if r.kind == "poly"} <= {"poly"}
        assert all(r.warmup_iter > 0 for r in runs if r.kind == "warmup")
        assert all(r.lars and r.lars_eta == 0.001 for r in runs if r.kind == "lars")
        # the same number of epochs for both batch sizes
        assert base[0].max_iter * 64 == pytest.approx(runs[1].max_iter * 1024, rel=0.02)


def test_nin_row_answers_the_large_batch_question():
    """Issue 15: the full form's NiN runs batch 64 and 1024 for the same epochs, the paper's sweep
    scaled to the net (1x-32x its rate), the linear scaling rule with and without warm-up, LARS,
    and second seeds for the close settings; every run of the net on one policy."""
    nin = next(r for r in config.FULL.nets if r.key == "nin")
    runs = training.plan(config.FULL, nin, 0.01, "inv")
    sweep = sorted(r.base_lr for r in runs if r.kind == "sweep")
    assert sweep[0] == 0.01 and sweep[-1] == pytest.approx(0.32) and 0.16 in sweep  # 16 x 0.01
    assert 0.16 in [r.base_lr for r in runs if r.kind == "warmup"]
    assert len([r for r in runs if r.kind == "lars"]) >= 2 and nin.seed_runs >= 2
    assert {(r.lr_policy, r.power) for r in runs} == {("poly", 2.0)}
    it64 = next(r for r in runs if r.kind == "baseline")
    assert it64.max_iter * 64 >= 5 * 60000 * 0.99  # several epochs of all the images
    assert all(r.max_iter % r.test_interval == 0 and r.max_iter // r.test_interval == 10 for r in runs)
    warm = next(r for r in runs if r.kind == "warmup")
    assert warm.warmup_iter == round(60000 / 1024) and warm.warmup_start_lr_ratio == pytest.approx(1 / 16)


def test_repeats_take_the_baseline_and_the_close_settings():
    mode = config.FULL
    nin = next(r for r in mode.nets if r.key == "nin")
    runs = training.plan(mode, nin, 0.01, "inv")
    finals = [{"baseline": 0.90}.get(r.kind, None) for r in runs]
    by_id = {r.run_id: i for i, r in enumerate(runs)}
    for run_id, acc in (("nin_b1024_lr0.04", 0.895), ("nin_b1024_lr0.02", 0.885), ("nin_b1024_lr0.08", 0.87),
                        ("nin_b1024_lr2_lars", 0.899), ("nin_b1024_lr0.16_warmup", 0.881)):
        finals[by_id[run_id]] = acc
    again = training.repeats(mode, nin, runs, finals)
    assert [r.run_id for r in again] == ["nin_b64_lr0.01_seed2017", "nin_b1024_lr2_lars_seed2017",
                                         "nin_b1024_lr0.04_seed2017", "nin_b1024_lr0.02_seed2017"]
    assert all(r.repeat and r.seed == 2017 for r in again)
    assert training.repeats(mode, nin, runs, [f if r.kind == "baseline" else 0.5 for r, f in zip(runs, finals)]) == []


def _run(kind, lr, acc, *, batch=1024, seed=1701, tests=(), max_iter=100, diverged=None):
    spec = {"kind": kind, "base_lr": lr, "batch": batch, "seed": seed, "repeat": seed != 1701,
            "max_iter": max_iter, "lars": kind == "lars", "lars_eta": 0.001, "warmup_iter": 5, "power": 2}
    return {"spec": spec, "final_accuracy": acc, "diverged_at": diverged, "at_chance": diverged is not None,
            "test": [{"NumIters": i, "accuracy": a, "Seconds": 10.0 * i} for i, a in tests], "train": []}


def test_decision_rule():
    conv = ((50, 0.85), (80, 0.899), (90, 0.90), (100, 0.901))
    base = [_run("baseline", 0.01, 0.901, batch=64, tests=conv),
            _run("baseline", 0.01, 0.899, batch=64, seed=2017, tests=conv)]
    runs = base + [_run("sweep", 0.04, 0.894, tests=((20, 0.80), (100, 0.894))),
                   _run("sweep", 0.32, None, diverged=3),
                   _run("warmup", 0.16, 0.893), _run("lars", 2.0, 0.897), _run("sweep", 0.04, 0.886, seed=2017),
                   _run("lars", 2.0, 0.893, seed=2017),
                   _run("sweep", 0.08, 0.8995)]  # closer still, but on one seed: it cannot decide
    f = report_mod.study1_findings({"runs": runs, "seed_runs": 3})
    assert f["baseline_acc"] == pytest.approx(0.90) and f["converged"] and f["movement"] == pytest.approx(0.002)
    assert f["best_lr"] == 0.04 and f["best_acc"] == pytest.approx(0.89) and f["within_1pt"]  # mean of two seeds
    assert f["lars"]["within"] and f["lars"]["acc"] == pytest.approx(0.895)
    assert not f["warmup"]["within"]  # within a point, but on one seed only
    assert f["at_chance"] == [0.32] and f["failing"] == [0.32]
    assert report_mod.held_cell(f, True) == "**yes**"
    # a baseline still moving over the last fifth leaves the verdict undecided
    moving = ((80, 0.88), (90, 0.893), (100, 0.901))
    f2 = report_mod.study1_findings({"runs": [_run("baseline", 0.01, 0.901, batch=64, tests=moving)] + runs[2:],
                                     "seed_runs": 0})
    assert not f2["converged"] and report_mod.held_cell(f2, True).startswith("**undecided**")
    # the movement is the seeds' mean curve's, as the verdict uses the seeds' mean
    a = _run("baseline", 0.01, 0.902, batch=64, tests=((80, 0.898), (100, 0.902)))
    b = _run("baseline", 0.01, 0.898, batch=64, seed=2017, tests=((80, 0.902), (100, 0.898)))
    assert report_mod.last_fifth_movement([a]) == pytest.approx(0.004)
    assert report_mod.last_fifth_movement([a, b]) == pytest.approx(0.0)
    assert report_mod.time_to(runs[2], 0.80, 1024 * 10) == (2.0, 200.0)  # 20 iterations of 1024 = 2 epochs
    assert report_mod.time_to(runs[2], 0.95, 1024 * 10) is None


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


def test_quick_form_runs_the_new_settings_in_miniature():
    """CI's --quick exercises warm-up, LARS and a second seed, on the form's small subset."""
    for recipe in config.QUICK.nets:
        kinds = {r.kind for r in training.plan(config.QUICK, recipe, 0.01, "inv")}
        assert {"baseline", "sweep", "warmup", "lars"} <= kinds, recipe.key
        ns = config.net_settings(config.QUICK, recipe)
        assert (ns.epochs, ns.train_images) == (config.QUICK.epochs, config.QUICK.train_images)
    assert any(r.seed_runs for r in config.QUICK.nets)
