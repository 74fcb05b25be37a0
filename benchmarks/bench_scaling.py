"""Strong scaling of data-parallel training on a virtual cluster: 1, 2, 4 workers, global batch fixed.

Trains LeNet (431k parameters, 1.7 MB of gradients) and a small Network-in-Network (the NiN
CIFAR-10 layers on the 28x28 Fashion-MNIST LMDB of caffe-reference, 0.97M parameters) for a fixed
number of iterations with 1, 2 and 4 workers, one MPI rank per virtual host
(``/work/shared/tools/vcluster``: rate-capped links, TCP), with and without overlapping the
gradient reduction with the backward pass. Prints the training time (from the log's own
timestamps, start-up excluded), the speedup over one worker, and the share of the time the
training thread spent communicating (exposed) and the all-reduce itself took.

Note: every virtual host shares this machine's CPU cores, so compute scales only up to the
number of cores; the numbers isolate what communication and its overlap cost.

    sudo python benchmarks/bench_scaling.py [--workers 1,2,4] [--rate 1gbit] [--iters 20]

Always takes the virtual hosts down again.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FC_SHARED", ROOT.parent / "shared"))
VCLUSTER = Path(os.environ.get("VCLUSTER", SHARED / "tools" / "vcluster"))
SOLVER_DIR = SHARED / "caffe-reference" / "solver"

SOLVER = """net: "{net}"
base_lr: 0.001
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 1
max_iter: {iters}
snapshot: 0
snapshot_after_train: false
snapshot_prefix: "snap"
random_seed: 1701
solver_mode: CPU
"""


def nin_small(batch: int) -> str:
    """NiN's CIFAR-10 layers (conv 5x5 192 / cccp 160 / cccp 96 / pool, ...) on 1x28x28 images."""
    from google.protobuf import text_format
    sys.path.insert(0, str(ROOT))
    from pycaffe_fc.proto import caffe_pb2
    from pycaffe_fc.proto.io import read_net_param
    src = read_net_param(str(SHARED / "caffe-models" / "nin_cifar10" / "train_val.prototxt"))
    out = caffe_pb2.NetParameter(name="nin_small")
    data = out.layer.add()
    text_format.Parse(f'''name: "data" type: "Data" top: "data" top: "label"
        transform_param {{ scale: 0.00390625 }}
        data_param {{ source: "fmnist640_train_lmdb" batch_size: {batch} backend: LMDB }}''', data)
    for lp in src.layer:
        if lp.type in ("Data", "Accuracy"):
            continue
        layer = out.layer.add()
        layer.CopyFrom(lp)
        del layer.include[:]
        if layer.type == "Pooling" and layer.name == "pool3":
            layer.pooling_param.ClearField("kernel_size")
            layer.pooling_param.ClearField("stride")
            layer.pooling_param.global_pooling = True
    return text_format.MessageToString(out)


_STAMP = re.compile(r"^[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d{6})")


def _t(line: str) -> float:
    m = _STAMP.match(line)
    return dt.datetime.strptime(m.group(2), "%H:%M:%S.%f").timestamp() if m else float("nan")


def parse(log: str) -> dict:
    """Seconds per iteration between the first and the last display line (iteration 0 and its
    warm-up excluded), and the all-reduce summary the root logs at the end."""
    stamps = {}
    comm = reduce = None
    for line in log.splitlines():
        m = re.search(r"\] Iteration (\d+) \(", line)
        if m:
            stamps[int(m.group(1))] = _t(line)
        m = re.search(r"Gradient all-reduce .*: ([\d.]+) ms per iteration on the training thread, ([\d.]+) ms", line)
        if m:
            comm, reduce = float(m.group(1)) / 1e3, float(m.group(2)) / 1e3
    if len(stamps) < 2:
        raise RuntimeError("could not find the iteration lines in the log:\n" + log[-3000:])
    first, last = min(stamps), max(stamps)
    return {"iter_s": (stamps[last] - stamps[first]) / (last - first), "comm_s": comm or 0.0,
            "reduce_s": reduce or 0.0}


def run(workdir: Path, p: int, solver: str, overlap: bool, sync: str, timeout: float) -> dict:
    cmd = [str(VCLUSTER), "mpiexec", str(p), sys.executable, "-m", "pycaffe_fc", "train", "--solver", solver,
           "--sync", sync, "--overlap" if overlap else "--no-overlap"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               FC_CAFFE_COMM_TIMEOUT="120")
    for attempt in (1, 2):   # a run stuck in the network aborts (comm timeout) and is tried again
        try:
            r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"p={p}: timed out after {timeout:.0f} s (attempt {attempt})", flush=True)
            continue
        if r.returncode == 0:
            return parse(r.stderr)
        print(f"p={p} failed ({r.returncode}, attempt {attempt}):\n{r.stderr[-2000:]}", flush=True)
    raise RuntimeError(f"p={p}: no successful run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--nets", default="lenet,nin_small")
    ap.add_argument("--iters", type=int, default=40, help="LeNet iterations (NiN small: a fifth)")
    ap.add_argument("--sync", default="tree")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration; the fastest counts")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    work = Path(tempfile.mkdtemp(prefix="fc_bench_scaling_"))
    shutil.copytree(SOLVER_DIR / "fmnist640_train_lmdb", work / "fmnist640_train_lmdb")
    shutil.copy(SOLVER_DIR / "lenet_train.prototxt", work / "lenet.prototxt")
    (work / "nin_small.prototxt").write_text(nin_small(64))
    iters = {"lenet": args.iters, "nin_small": max(3, args.iters // 5)}
    for net in iters:
        (work / f"{net}_solver.prototxt").write_text(SOLVER.format(net=f"{net}.prototxt", iters=iters[net]))

    rows = []
    subprocess.run([str(VCLUSTER), "up", str(max(workers)), args.rate], check=True)
    try:
        for net in args.nets.split(","):
            base = None
            for p in workers:
                for overlap in ((False,) if p == 1 else (False, True)):
                    res = min((run(work, p, f"{net}_solver.prototxt", overlap, args.sync, args.timeout)
                               for _ in range(args.repeats)), key=lambda r: r["iter_s"])
                    if p == 1:
                        base = res["iter_s"]
                    rows.append((net, p, overlap, res, base))
                    print(f"{net} p={p} overlap={overlap}: {res}", flush=True)
    finally:
        subprocess.run([str(VCLUSTER), "down"], check=False)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nglobal batch 64, --sync {args.sync}, links {args.rate}; seconds per iteration")
    print("exposed comm: time the training thread waits for the gradients per iteration (its share of the "
          "iteration); all-reduce: time the reduction itself ran")
    print(f"{'net':<10} {'p':>2} {'overlap':>7} {'s/iter':>8} {'speedup':>8} {'exposed comm':>20} "
          f"{'all-reduce':>11}")
    for net, p, overlap, res, base in rows:
        per = res["iter_s"]
        share = res["comm_s"] / per if per else 0.0
        print(f"{net:<10} {p:>2} {'on' if overlap else 'off':>7} {per:8.3f} {base / per:8.2f} "
              f"{1e3 * res['comm_s']:10.1f}ms ({100 * share:4.1f}%) {1e3 * res['reduce_s']:9.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
