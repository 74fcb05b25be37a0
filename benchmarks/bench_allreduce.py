"""All-reduce time of every --sync mode on a virtual cluster, beside FireCaffe's model.

For p = 2, 4, 8 hosts (network namespaces with rate-capped links, ``/work/shared/tools/vcluster``,
one MPI rank per host over TCP) and NiN- and GoogLeNet-sized gradients (the bytes ``comm_model``
computes from their prototxts: all learnable parameters), every mode's time is measured and
printed beside its model with the link bandwidth measured there:

    tree            2·log2(p)·|W|/BW   (Eq. 4)
    ps              2·(p-1)·|W|/BW     (Eq. 3 counts one direction: |W|·p/BW)
    pipelined-tree  2·|W|/BW + pipeline fill
    mpi             MPI's own Allreduce (no model; the target is pipelined-tree <= 1.1x it)

Needs root (network namespaces, tc). Usage:

    sudo python benchmarks/bench_allreduce.py [--hosts 2,4,8] [--rate 1gbit] [--repeats 3]

It brings the hosts up, runs, and always takes them down again (``vcluster down``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FC_SHARED", ROOT.parent / "shared"))
VCLUSTER = Path(os.environ.get("VCLUSTER", SHARED / "tools" / "vcluster"))
NETS = {
    "NiN": SHARED / "caffe-models" / "nin_imagenet" / "train_val.prototxt",
    "GoogLeNet": SHARED / "caffe-models" / "bvlc_googlenet" / "train_val.prototxt",
}
MODES = ("tree", "ps", "pipelined-tree", "mpi")


# -- inside the MPI job -----------------------------------------------------------------------------
def worker(args) -> None:
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, str(ROOT))
    from pycaffe_fc.parallel.allreduce import make_allreduce

    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    out = {"p": p, "bandwidth": None, "results": {}}

    # link bandwidth: rank 1 streams a buffer to rank 0 (one link's egress cap), best of 3
    probe = np.ones(args.probe_bytes // 4, np.float32)
    best = float("inf")
    for _ in range(3):
        comm.Barrier()
        t0 = time.perf_counter()
        if rank == 1:
            comm.Send(probe, dest=0, tag=1)
            comm.Recv(probe[:1], source=0, tag=2)
        elif rank == 0:
            comm.Recv(probe, source=1, tag=1)
            comm.Send(probe[:1], dest=1, tag=2)
        best = min(best, time.perf_counter() - t0)
    out["bandwidth"] = args.probe_bytes / best

    for name, nbytes in json.loads(args.sizes).items():
        buf = np.ones(nbytes // 4, np.float32)
        for mode in args.modes.split(","):
            ar = make_allreduce(comm, mode, args.segment_bytes)
            times = []
            for i in range(args.repeats + 1):
                comm.Barrier()
                t0 = time.perf_counter()
                ar(buf, 0)
                dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
                if i:                          # the first run warms the connections up
                    times.append(dt)
            if rank == 0 and not np.all(buf == buf[0]):
                raise SystemExit(f"{mode}: wrong sum")
            out["results"].setdefault(name, {})[mode] = statistics.median(times)
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    comm.Barrier()
    from pycaffe_fc.parallel.comm import finalize
    finalize()


# -- the driver -------------------------------------------------------------------------------------
def sizes_from_comm_model() -> dict[str, int]:
    sys.path.insert(0, str(ROOT))
    from pycaffe_fc.parallel.comm_model import net_sizes
    return {name: net_sizes(str(path)).gradient_bytes for name, path in NETS.items()}


def run_job(p: int, args, sizes: dict[str, int]) -> dict:
    cmd = [str(VCLUSTER), "mpiexec", str(p), sys.executable, str(Path(__file__).resolve()), "--worker",
           "--sizes", json.dumps(sizes), "--modes", args.modes, "--repeats", str(args.repeats),
           "--probe-bytes", str(args.probe_bytes)]
    if args.segment_bytes:
        cmd += ["--segment-bytes", str(args.segment_bytes)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"p={p}: no result (exit {r.returncode})\n{r.stdout}\n{r.stderr}")


def model(mode: str, nbytes: int, p: int, bw: float, segment_bytes) -> float | None:
    import math
    from pycaffe_fc.parallel.pipelined import pipelined_model_seconds
    if mode == "tree":
        return 2 * math.log2(p) * nbytes / bw
    if mode == "ps":
        return 2 * (p - 1) * nbytes / bw
    if mode == "pipelined-tree":
        return pipelined_model_seconds(nbytes, p, bw, segment_bytes)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--hosts", default="2,4,8", help="host counts p (default 2,4,8)")
    ap.add_argument("--rate", default="1gbit", help="link rate, tc syntax (default 1gbit)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--segment-bytes", type=int, default=None, help="pipelined-tree segment (default: auto)")
    ap.add_argument("--probe-bytes", type=int, default=32 * 1024 * 1024)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0

    sizes = sizes_from_comm_model()
    hosts = [int(h) for h in args.hosts.split(",")]
    print(f"gradient sizes from comm_model: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    subprocess.run([str(VCLUSTER), "up", str(max(hosts)), args.rate], check=True)
    rows, raw = [], []
    try:
        for p in hosts:
            res = run_job(p, args, sizes)
            raw.append(res)
            bw = res["bandwidth"]
            for name, by_mode in res["results"].items():
                for mode, t in by_mode.items():
                    m = model(mode, sizes[name], p, bw, args.segment_bytes)
                    rows.append((p, name, mode, bw, t, m, by_mode.get("mpi")))
    finally:
        subprocess.run([str(VCLUSTER), "down"], check=False)

    print(f"\n{'p':>2} {'net':<10} {'mode':<15} {'BW MB/s':>8} {'measured s':>11} {'model s':>9} "
          f"{'meas/model':>10} {'vs mpi':>7}")
    for p, name, mode, bw, t, m, t_mpi in rows:
        ratio = f"{t / m:10.3f}" if m else f"{'':>10}"
        msg = f"{m:9.3f}" if m else f"{'':>9}"
        vs = f"{t / t_mpi:7.2f}" if t_mpi else ""
        print(f"{p:>2} {name:<10} {mode:<15} {bw / 1e6:8.1f} {t:11.3f} {msg} {ratio} {vs}")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "runs": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
