"""GPU mode's few-launch primitives (pycaffe_fc/im2col.py's *_gpu, pooling's and LRN's GPU paths),
the launch budgets, the gradient buckets, and the real-GPU check script's host-side parts.

The GPU primitives are written against the array module, so they run on numpy too: there they
are compared with the CPU path (the offset loops on worker threads) bit for bit or to float32
rounding. Launch counts come from the CuPy stand-in (tests/standin), in a child process so that
this one keeps its mode.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REF, ROOT, need_shared
from pycaffe_fc import im2col as ic
from pycaffe_fc.blob import Blob
from pycaffe_fc.layers.normalization import LRNLayer
from pycaffe_fc.layers.pooling import AVE, MAX, PoolGeometry, PoolingKernel
from pycaffe_fc.proto import caffe_pb2

STANDIN = ROOT / "tests" / "standin"
rng = np.random.default_rng(7)

# (N, C, *spatial), kernel, stride, pad, dilation
CONV_CASES = [
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 3, 23, 22), (11, 11), (4, 4), (0, 0), (1, 1)),   # NiN's conv1 shape of window
    ((1, 2, 10, 10), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((3, 2, 9, 8), (3, 2), (2, 3), (1, 0), (1, 1)),
    ((2, 2, 8, 8), (2, 2), (3, 3), (1, 1), (1, 1)),       # stride > kernel: pixels no window reads
    ((2, 2, 9, 9), (3, 3), (1, 1), (1, 1), (2, 2)),       # dilated
    ((2, 2, 6, 7, 5), (2, 3, 2), (2, 1, 2), (1, 0, 1), (1, 1, 1)),  # 3-d
]


@pytest.mark.parametrize("shape,k,s,p,d", CONV_CASES)
@pytest.mark.parametrize("batch_last", [False, True])
def test_im2col_col2im_gpu_match_cpu(shape, k, s, p, d, batch_last):
    """The strided-view im2col is the CPU im2col exactly; the strided-sum col2im equals the
    CPU's offset-by-offset fold (to float32 rounding of a different summation order)."""
    x = rng.standard_normal(shape).astype(np.float32)
    out_sp = tuple(ic.conv_out_size(i, kk, ss, pp, dd) for i, kk, ss, pp, dd in zip(shape[2:], k, s, p, d))
    if batch_last:
        x = np.ascontiguousarray(np.moveaxis(x, 0, -1))
    cols = ic.im2col_cpu(x, k, s, p, d, out_sp, batch_last=batch_last)
    np.testing.assert_array_equal(ic.im2col_gpu(x, k, s, p, d, out_sp, batch_last=batch_last), cols)
    c = rng.standard_normal(cols.shape).astype(np.float32)
    want, got = np.empty_like(x), np.full_like(x, np.nan)
    ic.col2im_cpu(c, k, s, p, d, shape[2:], want, batch_last=batch_last)
    ic.col2im_gpu(c, k, s, p, d, shape[2:], got, batch_last=batch_last)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_col2im_gpu_is_the_adjoint_of_im2col():
    """<im2col(x), c> == <x, col2im(c)>: the fold is exactly the transpose of the unrolling."""
    x = rng.standard_normal((2, 3, 13, 11)).astype(np.float64)
    k, s, p, d = (4, 3), (3, 2), (1, 2), (1, 1)
    out_sp = tuple(ic.conv_out_size(i, kk, ss, pp, dd) for i, kk, ss, pp, dd in zip(x.shape[2:], k, s, p, d))
    cols = ic.im2col_gpu(x, k, s, p, d, out_sp)
    c = rng.standard_normal(cols.shape)
    back = np.empty_like(x)
    ic.col2im_gpu(c, k, s, p, d, x.shape[2:], back)
    assert abs((cols * c).sum() - (x * back).sum()) < 1e-9 * abs((cols * c).sum())


# (N, C, H, W), kernel, stride, pad: Caffe's CEIL rounding, padding, global, clipped windows
POOL_CASES = [
    ((2, 3, 9, 9), (3, 3), (2, 2), (0, 0)),
    ((2, 3, 10, 11), (3, 3), (2, 2), (1, 1)),     # GoogLeNet's pool: last window leaves the image
    ((1, 2, 6, 6), (6, 6), (1, 1), (0, 0)),       # NiN's global AVE pool4
    ((2, 2, 7, 7), (2, 2), (2, 2), (0, 0)),       # non-overlapping
    ((2, 2, 8, 9), (2, 3), (3, 2), (1, 1)),
    ((2, 2, 6, 6), (7, 7), (2, 2), (0, 0)),       # kernel larger than the image
    ((2, 2, 6, 7), (3, 3), (3, 3), (2, 2)),
    ((2, 2, 13, 13), (3, 3), (1, 1), (1, 1)),
    ((2, 2, 9, 9), (2, 2), (4, 4), (1, 1)),       # windows with no pixel of the image
]


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
@pytest.mark.parametrize("method", [MAX, AVE])
def test_pooling_gpu_path_matches_cpu(shape, k, s, p, method):
    """Whole-window pooling (argmax over the window view; scatter or fold back) gives the CPU
    path's top, bottom diff and argmax mask (ties included: the first maximum in scan order)."""
    g = PoolGeometry(k, s, p, shape[2:])
    x = rng.standard_normal(shape).astype(np.float32)
    if method == MAX:
        x = np.round(x * 2) / 2  # many ties
    cpu, gpu = PoolingKernel(np, method, g, shape), PoolingKernel(np, method, g, shape)
    gpu.gpu = True
    t_cpu = np.empty((shape[0], shape[1]) + g.out_hw, np.float32)
    t_gpu = np.full_like(t_cpu, np.nan)
    cpu.forward(x, t_cpu, 0)
    gpu.forward(x, t_gpu, 0)
    np.testing.assert_allclose(t_gpu, t_cpu, rtol=1e-6, atol=1e-6)
    d = rng.standard_normal(t_cpu.shape).astype(np.float32)
    d_cpu, d_gpu = np.empty_like(x), np.full_like(x, np.nan)
    cpu.backward(d, d_cpu)
    gpu.backward(d, d_gpu)
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-6, atol=1e-6)
    if method == MAX:
        np.testing.assert_array_equal(gpu.plane_index(), cpu.plane_index())


@pytest.mark.parametrize("region", [0, 1])
@pytest.mark.parametrize("size", [3, 5])
def test_lrn_gpu_path_matches_cpu(region, size):
    """LRN's window sums as one reduction over a strided view equal the shifted adds."""
    lp = caffe_pb2.LayerParameter(name="lrn", type="LRN")
    lp.lrn_param.local_size, lp.lrn_param.alpha, lp.lrn_param.beta = size, 0.3, 0.75
    lp.lrn_param.norm_region, lp.lrn_param.k = region, 2.0
    x = rng.standard_normal((2, 7, 5, 6)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    res = []
    for gpu in (False, True):
        layer, bottom, top = LRNLayer(lp), Blob(x.shape), Blob()
        bottom.data[...] = x
        layer.SetUp([bottom], [top])
        layer.gpu = gpu
        layer.Forward([bottom], [top])
        top.diff[...] = dy
        layer.Backward([top], [True], [bottom])
        res.append((top.data.copy(), bottom.diff.copy()))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(res[1][1], res[0][1], rtol=2e-5, atol=1e-6)


# -- launch counts on the CuPy stand-in (a child process: this one keeps its mode) -----------------
def _standin_run(code: str, timeout: int = 240) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN), str(ROOT)]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return r.stdout


PRIMITIVES = r"""
import numpy as np, cupy, cupy_standin
from pycaffe_fc import im2col as ic
from pycaffe_fc.layers.pooling import PoolingKernel, PoolGeometry, MAX, AVE

def steady(fn):
    fn(); cupy_standin.reset(); fn(); return cupy_standin.counts()

x = cupy.asarray(np.random.default_rng(0).standard_normal((2, 8, 27, 27)).astype(np.float32))
k, s, p, d, o = (5, 5), (1, 1), (2, 2), (1, 1), (27, 27)
col = ic.im2col(x, k, s, p, d, o)
out = cupy.empty(x.shape, np.float32)
print("im2col", steady(lambda: ic.im2col(x, k, s, p, d, o, out=col)))
print("col2im", steady(lambda: ic.col2im(col, k, s, p, d, x.shape[2:], out)))
for m, name in ((MAX, "max"), (AVE, "ave")):
    g = PoolGeometry((3, 3), (2, 2), (0, 0), (27, 27))
    kern = PoolingKernel(cupy, m, g, x.shape)
    top = cupy.empty((2, 8) + g.out_hw, np.float32)
    print(name + "_fwd", steady(lambda: kern.forward(x, top, 0)))
    print(name + "_bwd", steady(lambda: kern.backward(top, out)))
"""


def test_primitive_launch_counts():
    """Each primitive is a fixed handful of launches whatever the kernel size, with no transfer
    or host synchronisation: im2col 2 (pad + copy), col2im 3, pooling forward/backward <= 5."""
    out = _standin_run(PRIMITIVES)
    counts = {line.split()[0]: eval(line.split(" ", 1)[1], {"Counts": dict}) for line in out.splitlines()}
    assert counts["im2col"]["launches"] == 2
    assert counts["col2im"]["launches"] == 3
    for name in ("max_fwd", "max_bwd", "ave_fwd", "ave_bwd"):
        assert counts[name]["launches"] <= 5, (name, counts[name])
    assert all(c["transfers"] == 0 and c["syncs"] == 0 for c in counts.values()), counts


def test_net_launch_budgets():
    """The issue's budgets, counted by the stand-in on a steady-state forward+backward with the
    input gradient: NiN <= 250 launches, GoogLeNet <= 1,100 (batch 1 here for speed: the counts
    do not depend on the batch), and a LeNet training iteration <= 2 host synchronisations."""
    need_shared(REF / "timing" / "googlenet_b8.prototxt")
    need_shared(REF / "solver" / "fmnist640_train_lmdb")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu_launches.py"), "--nets",
                        "lenet,nin,googlenet", "--batch", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:] if line.strip()}
    assert int(rows["nin"][3]) <= 250, r.stdout
    assert int(rows["googlenet"][3]) <= 1100, r.stdout
    lenet = next(line for line in r.stdout.splitlines() if line.startswith("lenet train b64 "))
    assert lenet.split()[-1] == "ok", r.stdout


# -- the real-GPU check script: its host-side parts ---------------------------------------------------
def _gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


def test_gpu_check_arguments_and_table():
    gc = _gpu_check()
    args = gc.parse_args(["--nets", "nin", "--batch", "16", "--skip-tests"])
    assert args.nets == ["nin"] and args.batch == 16 and args.skip_tests and not args.skip_timing
    with pytest.raises(SystemExit):
        gc.parse_args(["--nets", "alexnet"])
    report = gc.Report()
    report.add("timing", "nin b32 fwd+bwd", "12.5 ms", "PyTorch 3.1 ms, fc-caffe/PyTorch 4.03x")
    report.add("GPU vs CPU", "nin b4 grad", "3.1e-06", "grad data")
    text = report.render().splitlines()
    assert text[0].split() == ["part", "what", "result", "detail"] and set(text[1]) <= {"-", " "}
    assert len(text[1]) >= max(len(line) for line in text) - len("detail") and not report.failed
    assert text[2].index("nin b32") == text[3].index("nin b4") == text[0].index("what")
    report.add("tests", "10 files", "FAIL", "1 failed", ok=False)
    assert report.failed
    assert gc.parse_pytest_summary("....\n== 3 passed, 1 failed in 2.1s ==\n") == "3 passed, 1 failed in 2.1s"


def test_gpu_check_without_a_gpu_says_what_is_missing(tmp_path):
    """Without CuPy (or with the stand-in as 'cupy') the script prints one line and exits 2."""
    for extra in ("", str(STANDIN)):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra, str(ROOT)) if p))
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--skip-tests"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
        line = r.stderr.strip()
        assert "\n" not in line and line.startswith("gpu_check: ")
        assert ("stand-in" in line) if extra else ("CuPy" in line)


def test_gpu_check_torch_absent_path(monkeypatch):
    """No PyTorch: the timing row keeps fc-caffe's time and says PyTorch is missing."""
    gc = _gpu_check()
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert gc.find_torch() is None
    monkeypatch.setattr(gc, "time_ours", lambda cupy, path, batch, iters: 42.0)
    report = gc.Report()
    gc.timing(report, None, None, ["nin"], 32, 2)
    assert report.rows == [["timing", "nin b32 fwd+bwd", "42.0 ms", "PyTorch: not installed (no CUDA torch)"]]


BUCKETS = r"""
import numpy as np, cupy, cupy_standin
import pycaffe_fc as caffe
from pycaffe_fc import backend
from pycaffe_fc.parallel.allreduce import GradientBuffer
NET = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { name: "w" share_mode: PERMISSIVE } inner_product_param { num_output: 6 bias_term: false
        weight_filler { type: "gaussian" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" } } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
        param { name: "w" share_mode: PERMISSIVE } inner_product_param { num_output: 6 bias_term: false } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip3" bottom: "data" top: "loss" }
'''
open("tiny.prototxt", "w").write(NET)
x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
diffs = {}
for mode in ("cpu", "gpu"):
    getattr(caffe, "set_mode_" + mode)()
    net = caffe.Net("tiny.prototxt", caffe.TRAIN)
    if mode == "gpu":
        for n, blobs in net.params.items():
            for b, w in zip(blobs, weights[n]):
                b.data[...] = w
        gb = GradientBuffer(net, bucket_bytes=6 * 6 * 4)   # two buckets: (w), (ip2 weight + bias)
        gb.gather(); gb.scatter()                          # binds the diffs into the buckets
    weights = {n: [np.array(b.data) for b in bl] for n, bl in net.params.items()}
    net.clear_param_diffs()
    net.forward(data=x); net.backward()
    if mode == "gpu":
        cupy_standin.reset()
        gb.gather()
        down = cupy_standin.counts().transfers
        gb.flat *= 2
        gb.scatter(0.5)
        up = cupy_standin.counts().transfers - down
        print("buckets", len(gb.buckets), "down", down, "up", up)
        # the shared weight's two users accumulate into one place: the bucket
        with backend.device_side(True):
            same = [b.diff.data.ptr for b in (net.params["ip1"][0], net.params["ip3"][0])]
            inside = any(d.data.ptr <= same[0] < d.data.ptr + d.nbytes for d in gb.device_buckets)
            print("shared", same[0] == same[1] and inside)
        flat = gb.flat.copy()
    diffs[mode] = {n: [np.array(b.diff) for b in bl] for n, bl in net.params.items()}
ok = all(np.allclose(g, c, rtol=1e-5, atol=1e-6) for n in diffs["cpu"] for g, c in zip(diffs["gpu"][n], diffs["cpu"][n]))
print("same_diffs", ok)
"""


def test_gpu_gradient_buckets(tmp_path):
    """GPU mode: the parameter diffs live in one device array per bucket (a shared parameter's
    users too), gathered in one copy per bucket and written back in one."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN), str(ROOT)]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", BUCKETS], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "buckets 2 down 2 up 2" in r.stdout, r.stdout
    assert "shared True" in r.stdout and "same_diffs True" in r.stdout, r.stdout


def test_bordered_buffers_keep_their_border_and_evict_least_recent(monkeypatch):
    """A cached bordered buffer is filled once; callers write inside the box only, so the
    border survives reuse; past the entry budget the least recently used buffer goes first."""
    monkeypatch.setattr(ic, "_PADDED", {})
    monkeypatch.setattr(ic, "PADDED_CACHE_ENTRIES", 2)
    box = (slice(1, 3), slice(1, 3))
    a = ic.bordered(np, (4, 4), box, -1.0, slot="t")
    a[box] = 5
    assert ic.bordered(np, (4, 4), box, -1.0, slot="t") is a
    assert (a == -1).sum() == 12 and (a == 5).sum() == 4
    b = ic.bordered(np, (5, 5), box, 0.0, slot="t")
    assert ic.bordered(np, (4, 4), box, -1.0, slot="t") is a       # a is now the most recent
    ic.bordered(np, (6, 6), box, 0.0, slot="t")                      # evicts b, not a
    assert ic.bordered(np, (4, 4), box, -1.0, slot="t") is a
    assert ic.bordered(np, (5, 5), box, 0.0, slot="t") is not b
