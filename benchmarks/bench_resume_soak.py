"""Kill-and-resume soak: SIGKILL a real ``fc-caffe train`` at random points, resume, compare.

A LeNet with random crops, mirrors and dropout trains on the Fashion-MNIST training LMDB (made
once with ``fc-caffe convert_mnist_data`` from Debian's dataset-fashion-mnist IDX files, or
``--lmdb`` to give one). For each mode (1 worker, ``--gpus 2``):

1. an uninterrupted run gives the reference final weights;
2. N times: the same run is started in its own process group, and once its first snapshot is on
   disk it is killed with SIGKILL (the whole group: launcher, mpiexec and ranks) at a random
   moment before it would end; then ``fc-caffe train --snapshot <newest .solverstate>`` resumes
   it, and its final weights are compared with the reference bit for bit.

Prints one row per mode: kills, resumes, k/n bitwise-equal resumes, the iterations resumed from,
and the largest weight difference seen. usage::

    python3 benchmarks/bench_resume_soak.py [--n 10] [--quick] [--modes 1,2] [--lmdb DIR]
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FASHION = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

NET = """name: "LeNetCropMirrorDropout"
layer {{ name: "mnist" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 crop_size: 24 mirror: true }}
  data_param {{ source: "{lmdb}" batch_size: 64 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 20 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 50 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param {{ num_output: 500 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""

SOLVER = """net: "net.prototxt"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 0
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "snap/lenet"
random_seed: 1701
solver_mode: CPU
"""


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def fc(*args) -> list[str]:
    return [sys.executable, "-m", "pycaffe_fc", *map(str, args)]


def make_lmdb(work: Path) -> Path:
    db = work / "fashion_mnist_train_lmdb"
    if (db / "data.mdb").exists():
        return db
    imgs, labels = FASHION / "train-images-idx3-ubyte.gz", FASHION / "train-labels-idx1-ubyte.gz"
    if not imgs.exists():
        sys.exit(f"Fashion-MNIST not found in {FASHION} (apt-get install dataset-fashion-mnist, "
                 "or FASHION_MNIST_DIR=..., or --lmdb DIR)")
    print(f"converting {imgs} -> {db}", flush=True)
    subprocess.run(fc("convert_mnist_data", imgs, labels, db), check=True, env=env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return db


def weights(path: Path) -> np.ndarray:
    from pycaffe_fc.proto.io import blobproto_to_array, read_net_param_binary
    net = read_net_param_binary(str(path))
    return np.concatenate([blobproto_to_array(b).ravel() for l in net.layer for b in l.blobs])


def train(work: Path, extra: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        # a session of its own, so that SIGKILL reaches the launcher, mpiexec and every rank
        return subprocess.Popen(fc("train", "--solver", "solver.prototxt", *extra), cwd=work, env=env(),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def clear_snapshots(work: Path) -> None:
    shutil.rmtree(work / "snap", ignore_errors=True)
    (work / "snap").mkdir()


def newest_state(work: Path) -> tuple[int, Path] | None:
    states = []
    for p in glob.glob(str(work / "snap" / "lenet_iter_*.solverstate")):
        m = re.search(r"_iter_(\d+)\.solverstate$", p)
        if m:
            states.append((int(m.group(1)), Path(p)))
    return max(states) if states else None


def run_mode(work: Path, workers: int, n: int, max_iter: int, rnd: random.Random) -> dict:
    extra = ["--gpus", str(workers)] if workers > 1 else []
    final = work / "snap" / f"lenet_iter_{max_iter}.caffemodel"
    clear_snapshots(work)
    t0 = time.monotonic()
    p = train(work, extra, work / f"reference_{workers}.log")
    if p.wait() != 0:
        sys.exit(f"the reference run failed; see {work}/reference_{workers}.log")
    duration = time.monotonic() - t0
    ref = weights(final)
    out = {"kills": 0, "finished_first": 0, "resumed": 0, "bitwise": 0, "from": [], "maxdiff": 0.0,
           "duration": duration}
    for i in range(n):
        clear_snapshots(work)
        t0 = time.monotonic()
        p = train(work, extra, work / "killed.log")
        while newest_state(work) is None and p.poll() is None:
            time.sleep(0.005)
        first = time.monotonic() - t0
        # a random moment between the first snapshot and the (reference) end of the run
        kill_at = rnd.uniform(first, max(first, 0.85 * duration))
        while time.monotonic() - t0 < kill_at and p.poll() is None:
            time.sleep(0.002)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            out["kills"] += 1
        else:
            out["finished_first"] += 1
            continue
        state = newest_state(work)
        if state is None:
            continue
        it, path = state
        r = subprocess.run(fc("train", "--solver", "solver.prototxt", "--snapshot", path.relative_to(work), *extra),
                           cwd=work, env=env(), capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  resume from iteration {it} failed:\n{r.stderr[-2000:]}", flush=True)
            continue
        out["resumed"] += 1
        out["from"].append(it)
        w = weights(final)
        same = w.tobytes() == ref.tobytes()
        out["bitwise"] += same
        out["maxdiff"] = max(out["maxdiff"], float(np.abs(w - ref).max()))
        print(f"  {workers} worker(s), kill {i + 1}/{n}: killed at {kill_at:.2f} s, resumed from iteration "
              f"{it}: {'bitwise equal' if same else f'max |diff| {np.abs(w - ref).max():.3g}'}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="kill points per mode (default 10)")
    ap.add_argument("--quick", action="store_true", help="3 kills per mode, a shorter run")
    ap.add_argument("--modes", default="1,2", help="worker counts, comma-separated (default 1,2)")
    ap.add_argument("--max-iter", type=int, default=None, help="iterations per run (default 120; quick 40)")
    ap.add_argument("--snapshot", type=int, default=None, help="snapshot interval (default 10; quick 8)")
    ap.add_argument("--lmdb", default=None, help="a Datum LMDB of 28x28 images (default: Fashion-MNIST train)")
    ap.add_argument("--workdir", default="/tmp/fc_caffe_resume_soak")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    a = ap.parse_args()
    n = 3 if a.quick and a.n == 10 else a.n
    max_iter = a.max_iter or (40 if a.quick else 120)
    snapshot = a.snapshot or (8 if a.quick else 10)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    db = Path(a.lmdb).resolve() if a.lmdb else make_lmdb(work)
    (work / "net.prototxt").write_text(NET.format(lmdb=db))
    (work / "solver.prototxt").write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot))
    rnd = random.Random(a.seed)
    rows = []
    for workers in (int(m) for m in a.modes.split(",")):
        print(f"mode: {workers} worker(s), {max_iter} iterations, snapshot every {snapshot}", flush=True)
        rows.append((workers, run_mode(work, workers, n, max_iter, rnd)))
    print()
    print(f"Kill-and-resume soak: LeNet + crop/mirror/dropout on {db.name}, batch 64, {max_iter} iterations, "
          f"snapshot every {snapshot}, SIGKILL at random points after the first snapshot")
    print(f"| workers | run s | kills | finished first | resumed | bitwise equal | resumed from iters | max abs diff |")
    print(f"|---|---|---|---|---|---|---|---|")
    for workers, o in rows:
        its = ",".join(str(i) for i in sorted(o["from"])) or "-"
        print(f"| {workers} | {o['duration']:.1f} | {o['kills']} | {o['finished_first']} | {o['resumed']} | "
              f"{o['bitwise']}/{o['resumed']} | {its} | {o['maxdiff']:.3g} |")


if __name__ == "__main__":
    main()
