"""FireCaffe's data-parallel training (pycaffe_fc/parallel), with real MPI ranks.

The MPI cases start ``mpiexec`` (MPICH oversubscribes a 2-core machine happily) through
subprocess with a timeout; each takes a few seconds. The rest are plain unit tests: the trees'
shapes, the flat gradient buffer's layout, the overlap's bucket order, the launcher's flag
round trip, and the communication model (Eq. 1-4) against the FireCaffe paper's sizes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, REF, ROOT, need_shared
from proc_helpers import MPIEXEC, lenet_solver, rel as _rel, snapshot_weights as _weights
from proc_helpers import proc_env as _env

SOLVER_DIR = REF / "solver"
pytestmark = pytest.mark.skipif(not os.path.exists(MPIEXEC), reason="no mpiexec")


def run(cmd, cwd, timeout=90, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def mpirun(n: int, script_and_args, cwd, timeout=90) -> subprocess.CompletedProcess:
    return run([MPIEXEC, "-n", n, sys.executable, *script_and_args], cwd, timeout)


def fc_train(cwd, *args, timeout=90, **env) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pycaffe_fc", "train", *args], cwd, timeout, **env)


def _solver(net: str, max_iter: int, snapshot: int) -> str:
    return lenet_solver(net, max_iter, snapshot, "snap/lenet", display=1)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    """LeNet on the 640 Fashion-MNIST records (global batch 64), copied to a scratch folder."""
    need_shared(SOLVER_DIR / "fmnist640_train_lmdb")
    d = tmp_path_factory.mktemp("lenet")
    shutil.copytree(SOLVER_DIR / "fmnist640_train_lmdb", d / "fmnist640_train_lmdb")
    shutil.copy(SOLVER_DIR / "lenet_train.prototxt", d)
    shutil.copy(SOLVER_DIR / "lenet_init.caffemodel", d)
    (d / "solver.prototxt").write_text(_solver(net="lenet_train.prototxt", max_iter=4, snapshot=0))
    (d / "snap").mkdir()
    return d


# -- trees (no MPI) ------------------------------------------------------------------------------
@pytest.mark.parametrize("p", list(range(1, 40)) + [64, 100, 128, 255, 256])
def test_binary_trees_are_trees(p):
    from pycaffe_fc.parallel.pipelined import (children_of, double_binary_trees, max_send_volume,
                                               tree_depth)
    trees = double_binary_trees(p)
    for parent in trees:
        assert parent.count(-1) == 1                         # one root
        assert all(len(c) <= 2 for c in children_of(parent))  # binary
        for r in range(p):                                    # every rank reaches the root
            seen, q = set(), r
            while parent[q] >= 0:
                assert q not in seen
                seen.add(q)
                q = parent[q]
        assert tree_depth(parent) <= max(1, (p - 1).bit_length())
    if p >= 2:
        # NCCL's property: a rank interior in one tree is a leaf in the other, so no rank sends
        # more than 2|W| in total, which is what makes the time tend to 2|W|/BW for any p.
        assert max_send_volume(trees) <= 2.0


def test_reduce_rounds_and_models():
    from pycaffe_fc.parallel.pipelined import choose_segment_bytes
    from pycaffe_fc.parallel.ps import ps_model_seconds
    from pycaffe_fc.parallel.tree import reduce_rounds, tree_model_seconds
    assert [reduce_rounds(p) for p in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]
    assert tree_model_seconds(1e6, 8, 1e6) == pytest.approx(6.0)
    assert ps_model_seconds(1e6, 8, 1e6) == pytest.approx(14.0)
    assert 64 * 1024 <= choose_segment_bytes(30_000_000, 8) <= 4 * 1024 * 1024
    assert choose_segment_bytes(1000, 2) == 64 * 1024


# -- the all-reduce algorithms against a plain sum, p = 1..5 --------------------------------------
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_allreduce_modes_match_plain_sum(p, tmp_path):
    r = mpirun(p, [ROOT / "tests" / "mpi_allreduce.py"], tmp_path, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"OK {p}" in r.stdout, r.stdout + r.stderr


# -- equivalence: p workers == 1 worker on the same samples -----------------------------------------
@pytest.mark.parametrize("p", [2, 4])
def test_p_workers_equal_one_worker_every_sync_mode(p, lenet):
    r = mpirun(p, [ROOT / "tests" / "mpi_equivalence.py", "solver.prototxt", "lenet_init.caffemodel", 4],
               lenet, timeout=120)
    cases = [l for l in r.stdout.splitlines() if l.startswith("CASE")]
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr[-3000:]
    assert len(cases) == 9  # 4 modes x overlap off/on, + iter_size 2
    assert all(c.endswith(" ok") for c in cases), cases


@pytest.fixture(scope="module")
def single_run(lenet) -> Path:
    """The single-worker run's final snapshot (4 iterations, batch 64)."""
    r = fc_train(lenet, "--solver", "solver.prototxt", "--weights", "lenet_init.caffemodel")
    assert r.returncode == 0, r.stderr
    out = lenet / "single_iter_4.caffemodel"
    shutil.move(lenet / "snap" / "lenet_iter_4.caffemodel", out)
    return out


def test_cli_self_launch_equals_single_worker(lenet, single_run):
    """``fc-caffe train --gpus 2`` starts two ranks through mpiexec by itself; the log states the
    batch split, only rank 0 logs and snapshots, and the weights equal the one-worker run's."""
    for f in (lenet / "snap").glob("*"):
        f.unlink()
    r = fc_train(lenet, "--solver", "solver.prototxt", "--weights", "lenet_init.caffemodel", "--gpus", "2",
                 "--sync", "pipelined-tree", "--check-sync", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr
    assert "mpiexec" in log and "-n 2" in log
    assert "per-worker batch 32 x 2 workers = global batch 64" in log
    assert "effective batch 64 x iter_size 1 = 64" in log
    from pycaffe_fc import backend
    if backend.gpu_available() == 0:
        assert "every worker runs on the CPU" in log
    assert log.count("Solving LeNet") == 1                       # only rank 0 logs
    assert sorted(p.name for p in (lenet / "snap").iterdir()) == ["lenet_iter_4.caffemodel",
                                                                   "lenet_iter_4.solverstate"]
    assert _rel(_weights(lenet / "snap" / "lenet_iter_4.caffemodel"), _weights(single_run)) < 1e-5


def test_resume_multi_worker_from_snapshot(lenet, tmp_path):
    """Two ranks snapshot at iteration 2; a fresh two-rank job resumed from it (every rank
    restores the same state, data positions included) ends where a one-worker job resumed from
    it ends."""
    d = tmp_path
    os.symlink(lenet / "fmnist640_train_lmdb", d / "fmnist640_train_lmdb")
    shutil.copy(lenet / "lenet_train.prototxt", d)
    (d / "snap").mkdir()
    (d / "s2.prototxt").write_text(_solver(net="lenet_train.prototxt", max_iter=2, snapshot=0))
    (d / "s4.prototxt").write_text(_solver(net="lenet_train.prototxt", max_iter=4, snapshot=0))
    r = fc_train(d, "--solver", "s2.prototxt", "--weights", lenet / "lenet_init.caffemodel", "--gpus", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (d / "snap" / "lenet_iter_2.solverstate").exists()
    r = fc_train(d, "--solver", "s4.prototxt", "--snapshot", "snap/lenet_iter_2.solverstate")
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.move(d / "snap" / "lenet_iter_4.caffemodel", d / "one_worker_iter_4.caffemodel")
    r = fc_train(d, "--solver", "s4.prototxt", "--snapshot", "snap/lenet_iter_2.solverstate", "--gpus", "2",
                 "--sync", "ps", "--check-sync", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resuming from snap/lenet_iter_2.solverstate" in r.stderr
    w2 = _weights(d / "snap" / "lenet_iter_2.caffemodel")
    w4, ref = _weights(d / "snap" / "lenet_iter_4.caffemodel"), _weights(d / "one_worker_iter_4.caffemodel")
    assert _rel(w4, ref) < 1e-5 and _rel(w4 - w2, ref - w2) < 1e-4


def test_batch_not_divisible_is_a_clear_error(lenet):
    r = fc_train(lenet, "--solver", "solver.prototxt", "--gpus", "3", timeout=60)
    assert r.returncode != 0
    assert "not divisible" in r.stderr and "rank" in r.stderr, r.stderr[-2000:]


def test_batch_per_worker_keeps_bvlc_meaning(lenet):
    r = fc_train(lenet, "--solver", "solver.prototxt", "--weights", "lenet_init.caffemodel", "--gpus", "2",
                 "--batch-per-worker", "16", "--no-overlap", "--sync", "mpi")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "per-worker batch 16 x 2 workers = global batch 32 (--batch-per-worker)" in r.stderr


# -- faults -------------------------------------------------------------------------------------------
FAULT_LAYER = '''
import os
import numpy as np
import pycaffe_fc as caffe


class Fault(caffe.Layer):
    """In place on its bottom; on rank R at forward number N: raise, die, or perturb its weight."""

    def setup(self, bottom, top):
        rank, n, self.mode = self.param_str.split()
        self.rank, self.n, self.count = int(rank), int(n), 0
        self.blobs.add_blob(1)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        self.count += 1
        if int(os.environ.get("PMI_RANK", "0")) != self.rank or self.count != self.n:
            return
        if self.mode == "raise":
            raise RuntimeError("injected failure")
        if self.mode == "kill":
            os.kill(os.getpid(), 9)
        if self.mode == "diverge":
            self.blobs[0].data[...] += 1.0

    def backward(self, top, propagate_down, bottom):
        pass
'''


def _fault_dir(lenet, tmp_path, spec: str, snapshot: int = 2, max_iter: int = 6) -> Path:
    d = tmp_path
    os.symlink(lenet / "fmnist640_train_lmdb", d / "fmnist640_train_lmdb")
    (d / "fault_layer.py").write_text(FAULT_LAYER)
    net = (lenet / "lenet_train.prototxt").read_text()
    layer = textwrap.dedent(f'''
        layer {{
          name: "fault" type: "Python" bottom: "ip2" top: "ip2"
          python_param {{ module: "fault_layer" layer: "Fault" param_str: "{spec}" }}
        }}
        ''')
    i = net.index('layer {\n  name: "loss"')
    (d / "net.prototxt").write_text(net[:i] + layer + net[i:])
    (d / "solver.prototxt").write_text(_solver(net="net.prototxt", max_iter=max_iter, snapshot=snapshot))
    (d / "snap").mkdir()
    return d


@pytest.mark.parametrize("mode,expect", [("raise", "rank 1: error: layer 'fault'"), ("kill", "")])
def test_failing_worker_ends_the_job(mode, expect, lenet, tmp_path):
    """A worker that raises (or is killed) at iteration 3 ends the whole job non-zero within 60 s,
    naming the rank and the reason; the snapshot of iteration 2 survives intact."""
    d = _fault_dir(lenet, tmp_path, f"1 4 {mode}")
    t0 = time.monotonic()
    r = fc_train(d, "--solver", "solver.prototxt", "--gpus", "2", timeout=90, PYTHONPATH=str(d))
    assert time.monotonic() - t0 < 60
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr[-3000:]
    model = d / "snap" / "lenet_iter_2.caffemodel"
    assert model.exists() and (d / "snap" / "lenet_iter_2.solverstate").exists()
    assert np.isfinite(_weights(model)).all()
    assert not list((d / "snap").glob("*.tmp")) and not list((d / "snap").glob("lenet_iter_4*"))


def test_check_sync_catches_divergence(lenet, tmp_path):
    d = _fault_dir(lenet, tmp_path, "1 2 diverge", snapshot=0, max_iter=4)
    r = fc_train(d, "--solver", "solver.prototxt", "--gpus", "2", "--check-sync", "1", timeout=60,
                 PYTHONPATH=str(d))
    assert r.returncode != 0
    assert "weight checksum at iteration 2 (--check-sync)" in r.stderr, r.stderr[-3000:]
    assert "rank 1 has" in r.stderr


def test_ranks_with_different_solvers_stop_at_startup(lenet, tmp_path):
    d = tmp_path
    os.symlink(lenet / "fmnist640_train_lmdb", d / "fmnist640_train_lmdb")
    shutil.copy(lenet / "lenet_train.prototxt", d)
    (d / "a.prototxt").write_text(_solver(net="lenet_train.prototxt", max_iter=4, snapshot=0))
    (d / "b.prototxt").write_text(_solver(net="lenet_train.prototxt", max_iter=4, snapshot=0)
                                  .replace("base_lr: 0.01", "base_lr: 0.02"))
    train = [sys.executable, "-m", "pycaffe_fc", "train", "--gpus", "2", "--solver"]
    r = run([MPIEXEC, "-n", 1, *train, "a.prototxt", ":", "-n", 1, *train, "b.prototxt"], d, timeout=60)
    assert r.returncode != 0
    assert "differs between ranks" in r.stderr and "Solving" not in r.stderr, r.stderr[-3000:]


# -- pieces without MPI ------------------------------------------------------------------------------
NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { name: "shared" } inner_product_param { num_output: 3 bias_term: false
        weight_filler { type: "gaussian" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
        param { name: "shared2" } inner_product_param { num_output: 5 bias_term: false
        weight_filler { type: "gaussian" } } }
layer { name: "ip4" type: "InnerProduct" bottom: "ip3" top: "ip4"
        param { name: "shared2" } inner_product_param { num_output: 5 bias_term: false
        weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip4" bottom: "ip2" top: "loss" }
"""


def _tiny_net(tmp_path):
    import pycaffe_fc as caffe
    f = tmp_path / "tiny.prototxt"
    f.write_text(NET)
    return caffe.Net(str(f), caffe.TRAIN)


def test_gradient_buffer_layout_backward_order(tmp_path):
    from pycaffe_fc.parallel.allreduce import GradientBuffer
    net = _tiny_net(tmp_path)
    gb = GradientBuffer(net, bucket_bytes=1)          # one parameter per bucket
    names: dict = {}
    for n, bl in net.params.items():
        for b in bl:
            names.setdefault(id(b), n)                  # a shared blob is named by its owner
    order = [names[id(net.learnable_params[i])] for i in gb.order]
    # shared2 (ip3, ip4) is complete only after ip3's backward: after ip4's; last layer first
    assert order == ["ip3", "ip2", "ip2", "ip1"]
    assert [b.ready_layer for b in gb.buckets] == [4, 2, 2, 1]   # layer 3 is ip2's Split
    assert gb.size == sum(b.count for b in net.learnable_params)
    for i, b in enumerate(net.learnable_params):
        b.diff[...] = i + 1
    gb.gather()
    gb.flat *= 2
    gb.scatter(0.25)
    for i, b in enumerate(net.learnable_params):
        assert np.all(b.diff == np.float32((i + 1) * 2 * 0.25))


def test_overlap_reduces_buckets_during_backward(tmp_path):
    """With overlap, each bucket's all-reduce starts as soon as the backward pass has passed its
    layers (before on_gradients_ready), last layer first, and the result is scaled by 1/p."""
    from pycaffe_fc.parallel.allreduce import GradientSync
    from pycaffe_fc.parallel.comm import World
    net = _tiny_net(tmp_path)
    submitted = []                                      # buckets handed to the thread, per layer

    class Solver:
        iter = 0
        param = type("P", (), {"iter_size": 1})()

    Solver.net = net
    reduced = []

    def fake_allreduce(buf, tag):
        reduced.append(buf.size)
        buf *= 2                                        # two identical "workers"

    gs = GradientSync(Solver(), World(None, 0, 2), overlap=True, bucket_bytes=1, allreduce=fake_allreduce)
    hook = net._after_backward
    net.set_after_backward(lambda i: (hook(i), submitted.append((i, gs._next_bucket))))
    net.clear_param_diffs()
    gs.on_start()
    net.forward_backward()
    expected = [b.diff.copy() for b in net.learnable_params]
    gs.on_gradients_ready()
    gs.close()
    # layers: data 0, ip1 1, ip2 2, ip2's Split 3, ip3 4, ip4 5, loss 6. ip4 completes nothing
    # (its weight is shared with ip3); ip3 completes bucket 0, ip2 buckets 1-2, ip1 bucket 3:
    # each is handed over as soon as its layer's backward is done
    assert submitted == [(6, 0), (5, 0), (4, 1), (3, 1), (2, 3), (1, 4)]
    assert sorted(reduced) == sorted(b.count for b in net.learnable_params)
    for b, e in zip(net.learnable_params, expected):
        np.testing.assert_allclose(b.diff, e, rtol=1e-6)     # summed over 2, scaled by 1/2


def test_train_argv_round_trip():
    import argparse
    from pycaffe_fc.commands import train as train_cmd
    from pycaffe_fc.parallel.launch import train_argv
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    argv = ["--solver", "s.prototxt", "--gpus", "4", "--sync", "ps", "--segment-bytes", "65536",
            "--check-sync", "3", "--no-overlap", "--stage", "a", "--stage", "b", "--weights", "w.caffemodel"]
    args = p.parse_args(argv)
    again = p.parse_args(train_argv(args))
    assert vars(again) == vars(args)


def test_launcher_detection(monkeypatch):
    from pycaffe_fc.parallel import comm
    for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_UNIVERSE_SIZE"):
        monkeypatch.delenv(v, raising=False)
    assert comm.launcher_world_size() == 1 and not comm.under_launcher()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert comm.launcher_world_size() == 4 and comm.under_launcher()


# -- the communication model (Eq. 1-4) -----------------------------------------------------------------
PAPER_MB = [  # FireCaffe, Table 1: parameter sizes of the four nets
    (MODELS / "nin_imagenet" / "train_val.prototxt", 30, 7_589_920 * 4),
    (MODELS / "bvlc_alexnet" / "train_val.prototxt", 240, 60_954_656 * 4),
    (MODELS / "bvlc_googlenet" / "train_val.prototxt", 54, None),
    (ROOT / "models" / "vgg19" / "deploy.prototxt", 575, 143_652_544 * 4),
]


@pytest.mark.parametrize("path,paper_mb,exact", PAPER_MB, ids=["nin", "alexnet", "googlenet", "vgg19"])
def test_comm_model_reproduces_paper_sizes(path, paper_mb, exact):
    from pycaffe_fc.parallel.comm_model import net_sizes
    s = net_sizes(str(need_shared(path)))
    assert s.weight_bytes / 1e6 == pytest.approx(paper_mb, rel=0.03)
    if exact:
        assert s.weight_bytes == exact


@pytest.mark.parametrize("path", [MODELS / "bvlc_alexnet" / "deploy.prototxt",
                                  REF / "timing" / "nin_imagenet_b8.prototxt",
                                  MODELS / "bvlc_googlenet" / "deploy.prototxt"])
def test_comm_model_shapes_match_the_real_net(path):
    """The layer-free shape inference agrees with the Net the engine builds."""
    import pycaffe_fc as caffe
    from pycaffe_fc.parallel.comm_model import net_sizes
    s = net_sizes(str(need_shared(path)), batch=1, phase=1)
    from pycaffe_fc.proto.io import read_net_param
    param = read_net_param(str(path))
    for lp in param.layer:
        if lp.type == "Input":
            for shp in lp.input_param.shape:
                shp.dim[0] = 1
    net = caffe.Net(param, caffe.TEST)
    for l in s.layers:
        assert net.blobs[net.top_names[l.name][0]].shape == l.top_shape, l.name
        assert net.params[l.name][0].shape == l.weight_shape, l.name
    total = sum(b.count for bl in net.params.values() for b in bl)
    assert total * 4 == s.gradient_bytes


def test_comm_model_equations():
    from pycaffe_fc.parallel.comm_model import parameter_server_seconds, reduction_tree_seconds, speedup
    W, bw = 30e6, 1e9
    assert parameter_server_seconds(W, 1, bw) == 0 and reduction_tree_seconds(W, 1, bw) == 0
    assert parameter_server_seconds(W, 32, bw) == pytest.approx(W * 32 / bw)          # Eq. 3
    assert reduction_tree_seconds(W, 32, bw) == pytest.approx(2 * 5 * W / bw)          # Eq. 4
    assert speedup(1.0, 0.0, 8) == pytest.approx(8)
    assert speedup(1.0, 0.125, 8) == pytest.approx(4)


def test_comm_model_cli(capsys):
    from pycaffe_fc.cli import main
    path = need_shared(MODELS / "bvlc_googlenet" / "train_val.prototxt")
    assert main(["comm-model", "--model", str(path), "--batch", "1024", "--gpus", "1,2,128",
                 "--bandwidth", "1e9", "--compute-time", "10"]) == 0
    out = capsys.readouterr().out
    assert "|W| parameter size (Eq. 1" in out and "53.46 MB" in out
    assert "|D| data size (Eq. 2" in out and "batch 1024" in out
    rows = {int(l.split()[0]): [float(x) for x in l.split()[1:]] for l in out.splitlines()
            if l.strip() and l.split()[0].isdigit()}
    W = 53_462_784
    assert rows[128][0] == pytest.approx(W * 128 / 1e9, rel=1e-5)                  # parameter server
    assert rows[128][1] == pytest.approx(2 * 7 * W / 1e9, rel=1e-5)                 # reduction tree
    assert rows[128][3] > rows[128][2] and rows[1][2:] == [1.0, 1.0]                # speedups
