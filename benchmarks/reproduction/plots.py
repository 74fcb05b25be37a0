"""The PNG figures of REPRODUCTION.md (matplotlib: an optional dependency of this script only)."""
from __future__ import annotations

import math
import os
from typing import Any

from .commbench import ALGO_TITLES


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("benchmarks/reproduce.py: the plots need matplotlib "
                         "(pip install matplotlib, or pip install -e '.[plot]'); "
                         "rerun with --no-plots to write the report without them")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_all(results: dict[str, Any], out_dir: str) -> list[str]:
    """Every figure the results allow; returns the paths written."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    s1 = results.get("study1") or {}
    if s1.get("nets"):
        paths.append(_lr_sweep(plt, s1, out_dir))
        for key, net in s1["nets"].items():
            paths.append(_curves(plt, key, net, out_dir))
    s2 = results.get("study2") or {}
    if s2.get("measured"):
        paths.append(_allreduce(plt, s2, out_dir))
    if s2.get("extrapolation"):
        paths.append(_extrapolation(plt, s2, out_dir))
    s3 = results.get("study3") or {}
    if s3.get("nets"):
        paths.append(_speedup(plt, s3, out_dir))
    return [p for p in paths if p]


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lr_sweep(plt, s1: dict[str, Any], out_dir: str) -> str:
    nets = s1["nets"]
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4.2), squeeze=False)
    for ax, (key, net) in zip(axes[0], nets.items()):
        for kind, style in (("sweep", "o-"), ("poly", "s--"), ("warmup", "^:"), ("lars", "D-.")):
            first = [r for r in net["runs"] if r["spec"]["kind"] == kind and not r["spec"].get("repeat")]
            pts = sorted((r["spec"]["base_lr"], _acc(r)) for r in first)
            if pts:
                label = {"sweep": f"batch {s1['large_batch']} ({net['policy']})",
                         "poly": f"batch {s1['large_batch']}, poly", "warmup": f"batch {s1['large_batch']}, warm-up",
                         "lars": f"batch {s1['large_batch']}, LARS (global rate)"}[kind]
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
                div = [r["spec"]["base_lr"] for r in first if r.get("diverged_at") is not None]
                if div:
                    ax.plot(div, [0.10] * len(div), "x", ms=9, color=line.get_color())
                again = [(r["spec"]["base_lr"], _acc(r)) for r in net["runs"]
                         if r["spec"]["kind"] == kind and r["spec"].get("repeat")]
                if again:
                    ax.plot([a[0] for a in again], [a[1] for a in again], ".", ms=7, color=line.get_color())
        if any(r["spec"].get("repeat") for r in net["runs"]):
            ax.plot([], [], "k.", label="second seed")
        ax.plot([], [], "kx", label="diverged (loss NaN): chance")
        for r in net["runs"]:
            if r["spec"]["kind"] == "single":
                ax.plot([r["spec"]["base_lr"]], [_acc(r)], "k*", ms=11, mfc="none",
                        label=f"batch {s1['large_batch']} in one process")
        base = [r for r in net["runs"] if r["spec"]["kind"] == "baseline"]
        if base:
            b = base[0]
            mean = sum(_acc(r) for r in base) / len(base)
            seeds = f" (mean of {len(base)} seeds)" if len(base) > 1 else ""
            ax.axhline(mean, color="k", lw=1, label=f"batch {b['spec']['batch']}, lr {b['spec']['base_lr']:g}{seeds}")
            ax.axhline(mean - 0.01, color="k", lw=0.6, ls="--", label="baseline - 1 point")
        ax.axhline(0.10, color="grey", lw=0.8, ls=":", label="chance (10 classes)")
        ax.set_xscale("log", base=2)
        lrs = sorted({r["spec"]["base_lr"] for r in net["runs"] if r["spec"]["kind"] != "baseline"})
        ax.set_xticks(lrs)
        ax.set_xticklabels([f"{x:g}" for x in lrs], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("base_lr")
        ax.set_ylabel("final test top-1")
        ax.set_ylim(0, 1)
        ax.set_title(f"{net['title']}: top-1 after {net.get('epochs', s1['epochs']):g} epochs")
        ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, os.path.join(out_dir, "lr_sweep.png"))


def _acc(run: dict[str, Any]) -> float:
    """Final top-1; a diverged run counts as chance (as BVLC Caffe, which trains on with NaN)."""
    if run.get("diverged_at") is not None:
        return 0.10
    a = run.get("final_accuracy")
    return float("nan") if a is None else a


def _curves(plt, key: str, net: dict[str, Any], out_dir: str) -> str:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
    n_train = net["train_images"]
    for r in net["runs"]:
        spec = r["spec"]
        if spec["kind"] not in ("baseline", "sweep", "warmup", "single", "lars") or spec.get("repeat"):
            continue
        scale = spec["batch"] / n_train
        ls = {"warmup": ":", "single": "--", "lars": "-."}.get(spec["kind"], "-")
        lw = 2.2 if spec["kind"] == "baseline" else 1.2
        tr = [(row["NumIters"] * scale, row["loss"]) for row in r["train"] if _finite(row.get("loss"))]
        te = [(row["NumIters"] * scale, row["accuracy"], row.get("Seconds")) for row in r["test"] if "accuracy" in row]
        if tr:
            ax1.plot([t[0] for t in tr], [min(t[1], 5.0) for t in tr], ls, lw=lw, label=spec["label"])
        if te:
            line, = ax2.plot([t[0] for t in te], [t[1] for t in te], ls + "o", lw=lw, ms=3, label=spec["label"])
            secs = [(t[2], t[1]) for t in te if t[2] is not None]
            if secs:
                ax3.plot([x[0] for x in secs], [x[1] for x in secs], ls + "o", lw=lw, ms=3, color=line.get_color())
    ax1.set_xlabel("epoch")
    ax1.legend(fontsize=6, loc="upper right")
    ax1.set_ylabel("training loss (clipped at 5)")
    ax1.set_title(f"{net['title']}: training loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test top-1")
    ax2.set_ylim(0, 1)
    ax2.set_title(f"{net['title']}: test top-1 (diverged runs have none)")
    ax3.set_xlabel("seconds since the run's log began")
    ax3.set_ylabel("test top-1")
    ax3.set_ylim(0, 1)
    ax3.set_title(f"{net['title']}: test top-1 against wall time")
    return _save(plt, fig, os.path.join(out_dir, f"curves_{key}.png"))


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _allreduce(plt, s2: dict[str, Any], out_dir: str) -> str:
    meas = s2["measured"]
    rates = list(meas["rates"])
    nets = list(meas["sizes"])
    fig, axes = plt.subplots(len(rates), len(nets), figsize=(5.5 * len(nets), 4 * len(rates)), squeeze=False)
    for i, rate in enumerate(rates):
        info = meas["rates"][rate]
        bw = info.get("measured_bytes_per_s") or info["nominal_bytes_per_s"]
        ps_ = sorted(int(p) for p in info["by_p"])
        for j, net in enumerate(nets):
            ax = axes[i][j]
            for algo in meas["algos"]:
                pts = [(p, info["by_p"][str(p)]["times"][net][algo]["median_s"]) for p in ps_]
                ax.plot([p for p, _ in pts], [t for _, t in pts], "o-", label=f"{ALGO_TITLES[algo]} (measured)")
            nbytes = meas["sizes"][net]
            model = s2["model"][rate][net]
            ax.plot(ps_, [model["eq4_tree"][str(p)] for p in ps_], "k--", lw=1, label="Eq. 4 tree model")
            ax.plot(ps_, [model["eq3_ps"][str(p)] for p in ps_], "k:", lw=1, label="Eq. 3 PS model")
            ax.set_xlabel("hosts p")
            ax.set_ylabel("allreduce time (s)")
            ax.set_title(f"{s2['titles'].get(net, net)}, |W| = {nbytes / 1e6:.1f} MB, {rate} "
                         f"(measured {bw * 8 / 1e9:.2f} Gbit/s)", fontsize=9)
            ax.legend(fontsize=7)
    return _save(plt, fig, os.path.join(out_dir, "allreduce.png"))


def _extrapolation(plt, s2: dict[str, Any], out_dir: str) -> str:
    ext = s2["extrapolation"]
    nets = list(ext["nets"])
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4.2), squeeze=False)
    for ax, net in zip(axes[0], nets):
        e = ext["nets"][net]
        ps_ = e["curve_p"]
        ax.plot(ps_, ps_, color="grey", lw=0.8, ls=":", label="linear")
        for ic in e["curves"]:
            ax.plot(ps_, ic["tree_speedup"], "-", label=f"tree, {ic['short']}, compute here")
            ax.plot(ps_, ic["ps_speedup"], "--", label=f"PS, {ic['short']}, compute here")
            if ic.get("tree_speedup_implied"):
                ax.plot(ps_, ic["tree_speedup_implied"], "-.", lw=1,
                        label=f"tree, {ic['short']}, compute implied by paper")
        for pt in e["paper"]:
            ax.plot([pt["gpus"]], [pt["speedup"]], "k*", ms=10)
            ax.annotate(f"paper {pt['speedup']:g}x", (pt["gpus"], pt["speedup"]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("GPUs / workers p")
        ax.set_ylabel("predicted speedup (batch 1024)")
        ax.set_title(f"{s2['titles'].get(net, net)}: Eq. 1-4 carried to p = 256", fontsize=9)
        ax.legend(fontsize=6)
    return _save(plt, fig, os.path.join(out_dir, "extrapolation.png"))


def _speedup(plt, s3: dict[str, Any], out_dir: str) -> str:
    nets = s3["nets"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    wmax = 1
    labels, compute, comm = [], [], []
    for key, e in nets.items():
        runs = e["runs"]
        w = [r["workers"] for r in runs]
        wmax = max(wmax, *w)
        ax1.plot(w, [r["speedup"] for r in runs], "o-",
                 label=f"{e.get('title', key)}: {e['iters']} x {e['batch']} samples")
        for r in runs:
            c = r.get("comm_s") or 0.0
            labels.append(f"{key}\n{r['workers']}w")
            compute.append(r["loop_s"] - c)
            comm.append(c)
    ax1.plot([1, wmax], [1, wmax], ":", color="grey", label="linear")
    ax1.axhline(2, color="k", lw=0.6, ls="--", label="2 cores")
    ax1.set_xlabel("workers (hosts of the virtual cluster)" if any(e.get("vcluster") for e in nets.values())
                   else "workers (local MPI)")
    ax1.set_ylabel("speedup over 1 worker (training loop)")
    ax1.set_title("measured speedup, one BLAS thread per worker, 2 shared cores", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.bar(labels, compute, label="compute and the rest")
    ax2.bar(labels, comm, bottom=compute, label="gradient all-reduce (training thread)")
    ax2.set_ylabel("training-loop seconds")
    ax2.set_title("where the time went", fontsize=9)
    ax2.tick_params(axis="x", labelsize=7)
    ax2.legend(fontsize=7)
    return _save(plt, fig, os.path.join(out_dir, "speedup.png"))
