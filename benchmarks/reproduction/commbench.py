"""Study 2: communication scaling on the virtual cluster, next to the paper's model.

Measured: the allreduce time of the NiN and GoogLeNet gradients (|W| from fc-caffe's comm model)
for p hosts of ``/work/shared/tools/vcluster`` (network namespaces with rate-capped links, one MPI
rank per host over TCP), with the algorithms of ``pycaffe_fc.parallel`` (reduction tree,
pipelined tree, parameter server, MPI's own Allreduce) — called through
``make_allreduce``, never reimplemented here. Modelled: the paper's Eq. 3 (parameter server,
|W|·p/BW) and Eq. 4 (reduction tree, 2·log2(p)·|W|/BW) at the bandwidth measured on the same
links. Extrapolated: Eq. 4 at the interconnects the paper used, for p = 32, 128, 256, with the
compute time per batch measured here.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

#: --sync names of fc-caffe train <-> names in this study
ALGOS = {"tree": "tree", "pipelined": "pipelined-tree", "ps": "ps", "mpi": "mpi"}
ALGO_TITLES = {"tree": "reduction tree", "pipelined": "pipelined tree", "ps": "parameter server",
               "mpi": "MPI_Allreduce (MPICH)"}


# -- |W| ---------------------------------------------------------------------------------------
def gradient_bytes(prototxt: str) -> dict[str, int]:
    """|W| of a net from fc-caffe's comm model: the conv/fc weights of Eq. 1 and every learnable
    parameter (what data-parallel training actually all-reduces), in bytes of float32."""
    from pycaffe_fc.parallel import comm_model
    sizes = comm_model.net_sizes(prototxt)
    return {"weight_bytes": int(sizes.weight_bytes), "gradient_bytes": int(sizes.gradient_bytes)}


# -- the virtual cluster ------------------------------------------------------------------------
def vcluster_path(shared: str) -> str:
    return os.path.join(shared, "tools", "vcluster")


def vcluster_usable(shared: str) -> tuple[bool, str]:
    """Whether this machine can run the virtual cluster (root, iproute2, the script)."""
    path = vcluster_path(shared)
    if not os.path.isfile(path):
        return False, f"{path} not found"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return False, "needs root (network namespaces and tc)"
    if not (shutil.which("ip") and shutil.which("tc")):
        return False, "needs iproute2 (apt-get install -y iproute2)"
    return True, ""


def vcluster(shared: str, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(["bash", vcluster_path(shared), *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"vcluster {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def vcluster_in_use() -> bool:
    """Whether another job is running on the virtual cluster now (some process started through
    ``vcluster``): its hosts are shared by the whole machine, and ``vcluster down`` would remove
    them under that job."""
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        # an mpiexec launched through vcluster (its -launcher-exec), vcluster's own commands, or
        # the proxies it starts on the hosts
        if (b"tools/vcluster" in cmd and (b"mpiexec" in cmd or b" up " in cmd)) or b"hostname fcvh" in cmd:
            return True
    return False


WAITED = {"seconds": 0.0}  # time spent waiting for other jobs on the virtual cluster


def take_vcluster(shared: str, hosts: int, rate: str, log=print, wait_s: float = 1200) -> None:
    """Bring the virtual cluster up with ``hosts`` hosts at ``rate``, after waiting (up to
    ``wait_s``) for any other job on it to finish; never tears down another job's cluster."""
    t0 = time.time()
    warned = False
    while vcluster_in_use():
        if time.time() - t0 > wait_s:
            raise RuntimeError(f"the virtual cluster stayed in use by another job for {wait_s:.0f} s")
        if not warned:
            log("  the virtual cluster is in use by another job: waiting for it to finish")
            warned = True
        time.sleep(5)
    WAITED["seconds"] += time.time() - t0
    if warned:
        log(f"  waited {time.time() - t0:.0f} s")
    vcluster(shared, "down")
    log(f"  {vcluster(shared, 'up', str(hosts), rate)}")


def launcher(shared: str, p: int, use_vcluster: bool) -> list[str]:
    """The MPI launch prefix for p ranks: one per virtual host, or plain local mpiexec."""
    if use_vcluster:
        return ["bash", vcluster_path(shared), "mpiexec", str(p)]
    return ["mpiexec", "-n", str(p)]


# -- the MPI side (runs as ``reproduce.py _comm-worker`` under mpiexec) -------------------------
def comm_worker(sizes: dict[str, int], algos: list[str], repeats: int, out: str,
                ping_bytes: int) -> None:
    """Time each algorithm on each buffer; rank 0 writes the medians (seconds) to ``out``."""
    import numpy as np
    from mpi4py import MPI
    from pycaffe_fc.parallel.allreduce import make_allreduce

    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    result: dict[str, Any] = {"p": p, "times": {}, "ping": None}
    if p >= 2 and ping_bytes:
        result["ping"] = _pingpong(comm, ping_bytes)
    for name, nbytes in sizes.items():
        n = max(1, nbytes // 4)
        buf = np.ones(n, dtype=np.float32)
        for algo in algos:
            reduce = make_allreduce(comm, ALGOS[algo])
            warm = np.ones(min(n, 1 << 18), dtype=np.float32)
            reduce(warm, 0)  # connections opened outside the timing
            samples = []
            for _ in range(repeats):
                buf.fill(1.0)
                comm.Barrier()
                t0 = MPI.Wtime()
                reduce(buf, 0)
                comm.Barrier()
                samples.append(MPI.Wtime() - t0)
            ok = bool(abs(float(buf[0]) - p) < 1e-3 and abs(float(buf[-1]) - p) < 1e-3)
            result["times"].setdefault(name, {})[algo] = {"median_s": statistics.median(samples),
                                                          "samples_s": samples, "sum_ok": ok}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def _pingpong(comm, nbytes: int, rounds: int = 2) -> dict[str, float]:
    """One-way time of ``nbytes`` from rank 0 to rank 1 and back: the link's bandwidth."""
    import numpy as np
    from mpi4py import MPI
    buf = np.zeros(max(1, nbytes // 4), dtype=np.float32)
    rank = comm.Get_rank()
    best = math.inf
    for _ in range(rounds):
        comm.Barrier()
        t0 = MPI.Wtime()
        if rank == 0:
            comm.Send(buf, dest=1)
            comm.Recv(buf, source=1)
        elif rank == 1:
            comm.Recv(buf, source=0)
            comm.Send(buf, dest=0)
        comm.Barrier()
        best = min(best, (MPI.Wtime() - t0) / 2)
    return {"bytes": buf.nbytes, "one_way_s": best, "bytes_per_s": buf.nbytes / best}


# -- the driver ----------------------------------------------------------------------------------
def measure(root: str, shared: str, work_dir: str, hosts: tuple[int, ...], rates: tuple[str, ...],
            sizes: dict[str, int], algos: tuple[str, ...], repeats: int, use_vcluster: bool,
            log=print, timeout: float = 900) -> dict[str, Any]:
    """Allreduce times for every rate x p x net x algorithm, with the measured link bandwidth."""
    out: dict[str, Any] = {"rates": {}, "vcluster": use_vcluster, "sizes": sizes, "algos": list(algos),
                           "repeats": repeats}
    script = os.path.join(root, "benchmarks", "reproduce.py")
    ping = max(sizes.values())
    for rate in rates:
        if use_vcluster:
            take_vcluster(shared, max(hosts), rate, log=log)
        per_p: dict[str, Any] = {}
        for p in hosts:
            path = os.path.join(work_dir, f"comm_{rate}_p{p}.json")
            cmd = launcher(shared, p, use_vcluster) + [
                sys.executable, script, "_comm-worker", "--out", path, "--repeats", str(repeats),
                "--algos", ",".join(algos), "--ping-bytes", str(ping if p == 2 else 0),
                "--sizes", ",".join(f"{k}={v}" for k, v in sizes.items())]
            t0 = time.perf_counter()
            env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0 or not os.path.exists(path):
                raise RuntimeError(f"allreduce benchmark at p={p}, {rate} failed: "
                                   f"{(proc.stderr or proc.stdout).strip()[-600:]}")
            with open(path) as f:
                per_p[str(p)] = json.load(f)
            summary = ", ".join(f"{n}/{a} {v['median_s'] * 1e3:.0f} ms"
                                for n, d in per_p[str(p)]["times"].items() for a, v in d.items())
            log(f"    {rate} p={p}: {summary}  ({time.perf_counter() - t0:.0f} s)")
        bw = next((d["ping"]["bytes_per_s"] for d in per_p.values() if d.get("ping")), None)
        out["rates"][rate] = {"by_p": per_p, "measured_bytes_per_s": bw,
                              "nominal_bytes_per_s": rate_bytes_per_s(rate)}
    if use_vcluster:
        vcluster(shared, "down")
    return out


def rate_bytes_per_s(rate: str) -> float:
    """tc's rate syntax (1gbit, 500mbit, 100kbit) in bytes per second."""
    r = rate.strip().lower()
    for suffix, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if r.endswith(suffix):
            return float(r[: -len(suffix)]) * mult / 8
    raise ValueError(f"unknown rate '{rate}'")


# -- the paper's model ---------------------------------------------------------------------------
def eq3_ps(nbytes: float, p: int, bw: float) -> float:
    """Eq. 3 (fc-caffe's comm model): the parameter server's time, |W|·p/BW."""
    from pycaffe_fc.parallel import comm_model
    return comm_model.parameter_server_seconds(nbytes, p, bw)


def eq4_tree(nbytes: float, p: int, bw: float) -> float:
    """Eq. 4 (fc-caffe's comm model): the reduction tree's time, 2·log2(p)·|W|/BW."""
    from pycaffe_fc.parallel import comm_model
    return comm_model.reduction_tree_seconds(nbytes, p, bw)


def predicted_speedup(batch_seconds_1: float, p: int, comm_seconds: float) -> float:
    """Speedup of p workers over one at a fixed global batch (fc-caffe's comm model): compute
    splits p ways, communication does not overlap it."""
    from pycaffe_fc.parallel import comm_model
    return comm_model.speedup(batch_seconds_1, comm_seconds, p)


def implied_batch_seconds(p: int, speedup: float, comm_seconds: float) -> float | None:
    """The single-GPU compute time per global batch at which the model gives ``speedup`` on p
    workers: solves S = T/(T/p + C) for T."""
    if speedup >= p:
        return None
    return p * comm_seconds * speedup / (p - speedup)


# -- compute time per batch, measured here ------------------------------------------------------
def time_imagenet_net(prototxt: str, batch: int, iters: int) -> dict[str, float]:
    """Forward+backward seconds per image of an ImageNet deploy net at ``batch`` (force_backward,
    Input-layer data), timed with fc-caffe's own ``time_net`` (median of ``iters`` iterations)."""
    from pycaffe_fc import backend
    from pycaffe_fc.net import Net
    from pycaffe_fc.proto import caffe_pb2, io
    from pycaffe_fc.timing import time_net

    backend.set_mode_cpu()
    param = io.read_net_param(prototxt)
    param.force_backward = True
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if shape.dim:
                    shape.dim[0] = batch
    for shape in param.input_shape:
        if shape.dim:
            shape.dim[0] = batch
    if param.input_dim:
        param.input_dim[0] = batch
    net = Net(param, caffe_pb2.TRAIN)
    t = time_net(net, iters, warmup=True)
    # the median iteration: other jobs on this shared machine now and then stall one iteration
    ms = statistics.median(t.iteration_ms)
    return {"batch": batch, "iters": iters, "ms_per_batch": ms, "s_per_image": ms / 1e3 / batch,
            "iteration_ms": list(t.iteration_ms)}


# -- analysis -------------------------------------------------------------------------------------
def analyse(measured: dict[str, Any], compute: dict[str, dict[str, float]], extrapolate_p: tuple[int, ...],
            interconnects, paper_speedups, global_batch: int) -> dict[str, Any]:
    """The model next to the measurement (at the bandwidth measured on the same links), and the
    model carried to the paper's cluster sizes and interconnects."""
    model: dict[str, Any] = {}
    for rate, info in measured["rates"].items():
        bw = info.get("measured_bytes_per_s") or info["nominal_bytes_per_s"]
        model[rate] = {}
        for net, nbytes in measured["sizes"].items():
            m = {"bandwidth": bw, "eq3_ps": {}, "eq4_tree": {}, "ps_both_ways": {}, "ratio": {}}
            for p_s, d in info["by_p"].items():
                p = int(p_s)
                m["eq3_ps"][p_s] = eq3_ps(nbytes, p, bw)
                m["eq4_tree"][p_s] = eq4_tree(nbytes, p, bw)
                m["ps_both_ways"][p_s] = 2 * (p - 1) * nbytes / bw
                t = d["times"][net]
                m["ratio"][p_s] = {
                    "tree_vs_eq4": _ratio(t.get("tree"), m["eq4_tree"][p_s]),
                    "ps_vs_eq3": _ratio(t.get("ps"), m["eq3_ps"][p_s]),
                    "ps_vs_both_ways": _ratio(t.get("ps"), m["ps_both_ways"][p_s]),
                }
            model[rate][net] = m

    curve_p = [2 ** k for k in range(0, 9)]
    ext: dict[str, Any] = {"global_batch": global_batch, "nets": {}}
    for net, nbytes in measured.get("full_sizes", measured["sizes"]).items():
        c = compute.get(net)
        if not c:
            continue
        t1 = c["s_per_image"] * global_batch
        rows, curves = [], []
        paper = [{"gpus": ps.gpus, "speedup": ps.speedup, "source": ps.source}
                 for ps in paper_speedups if ps.net == net]
        for ic in interconnects:
            implied_t1 = None
            for p in extrapolate_p:
                tree_s = eq4_tree(nbytes, p, ic.bytes_per_s)
                ps_s = eq3_ps(nbytes, p, ic.bytes_per_s)
                rep = next((x["speedup"] for x in paper if x["gpus"] == p), None)
                implied = implied_batch_seconds(p, rep, tree_s) if rep else None
                if implied and implied_t1 is None:
                    implied_t1 = implied
                rows.append({"interconnect": ic.name, "p": p, "tree_s": tree_s, "ps_s": ps_s,
                             "batch_s_here": t1, "tree_speedup": predicted_speedup(t1, p, tree_s),
                             "ps_speedup": predicted_speedup(t1, p, ps_s), "paper_speedup": rep,
                             "implied_batch_s": implied,
                             "implied_speedup": predicted_speedup(implied, p, tree_s) if implied else None})
            curves.append({
                "short": ic.name.split(" (")[0].split(",")[0],
                "tree_speedup": [predicted_speedup(t1, p, eq4_tree(nbytes, p, ic.bytes_per_s)) for p in curve_p],
                "ps_speedup": [predicted_speedup(t1, p, eq3_ps(nbytes, p, ic.bytes_per_s)) for p in curve_p],
                "tree_speedup_implied": ([predicted_speedup(implied_t1, p, eq4_tree(nbytes, p, ic.bytes_per_s))
                                          for p in curve_p] if implied_t1 else None),
                "implied_batch_s": implied_t1,
            })
        ext["nets"][net] = {"bytes": nbytes, "compute": c, "batch_s_here": t1, "rows": rows,
                            "curves": curves, "curve_p": curve_p, "paper": paper}
    return {"model": model, "extrapolation": ext}


def _ratio(measured: dict[str, Any] | None, model: float) -> float | None:
    if not measured or not model:
        return None
    return measured["median_s"] / model
