"""The CPU path's speed-ups compute exactly what the plain path computes.

Worker threads (pycaffe_fc.threads) cut im2col, col2im and pooling into ranges; the transposing
copy goes through OpenCV; Convolution layers of training nets keep their forward columns for the
backward. Each is compared here, bit for bit where the arithmetic is the same, with the
single-threaded or recomputing path, with the thresholds lowered so that small arrays are split.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import backend, threads
from pycaffe_fc import im2col as im2col_mod
from pycaffe_fc.blob import Blob
from pycaffe_fc.layers import conv as conv_mod
from pycaffe_fc.layers import pooling as pool_mod
from gradcheck import make_blobs, make_layer, run_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(7)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def split_everything(monkeypatch):
    """Three worker threads and no minimum size: every call is cut into ranges."""
    monkeypatch.setattr(im2col_mod, "THREAD_MIN_BYTES", 1)
    monkeypatch.setattr(pool_mod, "PLANES_MIN_ENTRIES", 1)
    before = threads.num_threads()
    threads.set_num_threads(3)
    yield
    threads.set_num_threads(before)


def single_threaded(fn):
    before = threads.num_threads()
    threads.set_num_threads(1)
    try:
        return fn()
    finally:
        threads.set_num_threads(before)


# -- the thread pool -----------------------------------------------------------------------------
@pytest.mark.parametrize("n,parts", [(10, 3), (7, 7), (100, 4), (5, 8), (1, 2), (33, 2)])
def test_split_covers_the_range_once(n, parts):
    ranges = threads.split(n, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) <= parts
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(hi > lo for lo, hi in ranges)


def test_run_ranges_calls_each_range_once_on_several_threads(split_everything):
    seen, names = [], set()
    lock = threading.Lock()

    def fn(lo, hi):
        with lock:
            seen.extend(range(lo, hi))
            names.add(threading.current_thread().name)
        time.sleep(0.02)  # as numpy does, let the others in (no participant takes every range)

    threads.run_ranges(fn, 40)
    assert sorted(seen) == list(range(40))
    assert len(names) > 1  # the calling thread and at least one worker


def test_run_ranges_raises_a_workers_error_after_all_finish(split_everything):
    started, finished = [], []

    def fn(lo, hi):
        started.append(lo)
        if lo == 0:
            raise ValueError("range 0 failed")
        time.sleep(0.02)
        finished.append(lo)

    with pytest.raises(ValueError, match="range 0 failed"):
        threads.run_ranges(fn, 30)
    # nothing still writes when the error arrives: every other range that began has ended
    assert sorted(finished) == sorted(lo for lo in started if lo != 0)


def test_nested_run_ranges_runs_inline(split_everything):
    inner = []

    def outer(lo, hi):
        threads.run_ranges(lambda a, b: inner.append((a, b)), 10)

    threads.run_ranges(outer, 3)
    assert sorted(inner) == [(0, 10)] * len(threads.split(3, 3))


def test_thread_count_follows_the_environment():
    code = ("import pycaffe_fc; from pycaffe_fc import threads; print(threads.num_threads())")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("FC_CAFFE_NUM_THREADS", None)
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    run = lambda **kw: subprocess.run([sys.executable, "-c", code], env=dict(env, **kw), capture_output=True,
                                      text=True, check=True).stdout.strip()
    assert run(OMP_NUM_THREADS="3") == "3"
    assert run(FC_CAFFE_NUM_THREADS="5", OMP_NUM_THREADS="3") == "5"
    # numpy loaded first: OpenBLAS's long idle spin stays, so the loops keep to one thread
    late = ("import numpy, pycaffe_fc, os; from pycaffe_fc import threads; "
            "print(threads.num_threads(), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    out = subprocess.run([sys.executable, "-c", late], env=dict(env, OMP_NUM_THREADS="3"), capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "None"]
    early = subprocess.run([sys.executable, "-c", code.replace("print(", "import os; print(os.environ["
                            "'OPENBLAS_THREAD_TIMEOUT'], ")], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert early[0] == "4"


# -- im2col / col2im -----------------------------------------------------------------------------
GEOMS = [((9, 8), (3, 3), (1, 1), (1, 1), (1, 1)), ((7, 6), (3, 2), (2, 1), (1, 0), (1, 2)),
         ((5, 4, 6), (2, 3, 2), (1, 2, 2), (1, 0, 1), (1, 1, 1))]


@pytest.mark.parametrize("channels", [1, 8])
@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("geom", GEOMS)
def test_split_im2col_and_col2im_equal_one_thread(split_everything, geom, batch_last, channels):
    insp, k, s, p, d = geom
    out = tuple(im2col_mod.conv_out_size(i, kk, ss, pp, dd) for i, kk, ss, pp, dd in zip(insp, k, s, p, d))
    n = 5
    x = randn(channels, *insp, n) if batch_last else randn(n, channels, *insp)
    col = im2col_mod.im2col(x, k, s, p, d, out, batch_last=batch_last)
    ref = single_threaded(lambda: im2col_mod.im2col(x, k, s, p, d, out, batch_last=batch_last))
    np.testing.assert_array_equal(col, ref)
    y = randn(*col.shape)
    back = np.full_like(x, np.nan)
    im2col_mod.col2im(y, k, s, p, d, insp, back, batch_last=batch_last)
    back_ref = np.empty_like(x)
    single_threaded(lambda: im2col_mod.col2im(y, k, s, p, d, insp, back_ref, batch_last=batch_last))
    np.testing.assert_array_equal(back, back_ref)


# -- pooling -------------------------------------------------------------------------------------
POOLS = [((7, 7), (3, 3), (2, 2), (1, 1)), ((6, 8), (2, 2), (2, 2), (0, 0)), ((7, 9), (3, 2), (2, 3), (1, 0)),
         ((5, 5), (3, 3), (1, 1), (0, 0)), ((5, 6), (2, 2), (3, 3), (0, 0))]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("geom", POOLS, ids=[f"{g[0]}k{g[1]}s{g[2]}p{g[3]}" for g in POOLS])
def test_split_pooling_equals_one_thread(split_everything, method, geom):
    hw, k, s, p = geom
    text = (f'name: "p" type: "Pooling" pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} '
            f'stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} }}')
    # many ties (a ReLU's zeros), so the first-maximum rule is exercised across range borders
    x = np.maximum(randn(3, 5, *hw), 0)
    t = Blob()
    make_layer(text).SetUp(make_blobs([x]), [t])
    dy = randn(*t.shape)
    y, dx, _ = run_layer(text, x, dy)
    y1, dx1, _ = single_threaded(lambda: run_layer(text, x, dy))
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(dx, dx1)


# -- the transposing copy ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(100, 8192), (64, 11520), (3, 5), (1, 7), (1024, 1)])
def test_copy_transposed(shape):
    src = randn(*shape)
    dst = np.empty(shape[::-1], np.float32)
    backend.copy_transposed(dst, src)
    np.testing.assert_array_equal(dst, src.T)


def test_copy_transposed_falls_back_for_views_and_other_types():
    src = randn(6, 8)[:, ::2]  # not contiguous
    dst = np.empty((4, 6), np.float32)
    backend.copy_transposed(dst, src)
    np.testing.assert_array_equal(dst, src.T)
    src64 = RNG.standard_normal((3, 4))
    dst64 = np.empty((4, 3))
    backend.copy_transposed(dst64, src64)
    np.testing.assert_array_equal(dst64, src64.T)


# -- kept forward columns ------------------------------------------------------------------------
CONV_NET = """
name: "k" force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 6 dim: 3 dim: 9 dim: 9 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 5 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def _net(tmp_path, keep):
    path = tmp_path / "k.prototxt"
    path.write_text(CONV_NET)
    caffe.set_random_seed(3)
    net = caffe.Net(str(path), caffe.TRAIN)
    if keep:
        net.keep_forward_columns()
    return net


def _grads(net, x, dy):
    net.blobs["x"].data[...] = x
    net.forward()
    net.blobs["c3"].diff[...] = dy
    for ps in net.params.values():
        for p in ps:
            p.diff[...] = 0
    net.backward()
    return [p.diff.copy() for ps in net.params.values() for p in ps] + [net.blobs["x"].diff.copy()]


@pytest.mark.parametrize("lowering", ["batch_gemm", "per_image_stacked_wgrad", "batch_last"])
def test_kept_columns_give_the_recomputed_gradients(tmp_path, monkeypatch, lowering):
    from test_layers_vision import use_lowering
    use_lowering(monkeypatch, lowering)
    plain, kept = _net(tmp_path, False), _net(tmp_path, True)
    x = randn(*plain.blobs["x"].shape)
    dy = randn(*plain.blobs["c3"].shape)
    for _ in range(2):  # the second pass reuses the claimed buffers
        for a, b in zip(_grads(plain, x, dy), _grads(kept, x, dy)):
            np.testing.assert_array_equal(a, b)
    assert kept.layers[1]._kept.buf is not None and plain.layers[1].__dict__.get("_kept") is None
    # a second backward without a forward recomputes (the buffer then holds the data gradient)
    kept.backward()
    plain.backward()
    for a, b in zip([p.diff for ps in plain.params.values() for p in ps],
                    [p.diff for ps in kept.params.values() for p in ps]):
        np.testing.assert_array_equal(a, b)


def test_kept_columns_stay_within_the_budget(tmp_path, monkeypatch):
    base = conv_mod._KeptColumns.used
    c1_bytes = 3 * 9 * 6 * 81 * 4
    monkeypatch.setattr(conv_mod, "COLUMN_CACHE_BYTES", base + c1_bytes)
    net = _net(tmp_path, True)
    x, dy = randn(*net.blobs["x"].shape), randn(*net.blobs["c3"].shape)
    plain = _net(tmp_path, False)
    for a, b in zip(_grads(plain, x, dy), _grads(net, x, dy)):
        np.testing.assert_array_equal(a, b)
    c1, c2 = net.layers[1]._kept, net.layers[2]._kept
    assert c1.buf is not None and c2.buf is None  # c2 did not fit: it recomputes, as Caffe
    assert conv_mod._KeptColumns.used == base + c1_bytes
    # a new batch size claims anew; deleting the net gives the bytes back
    net.blobs["x"].reshape(2, 3, 9, 9)
    net.reshape()
    net.forward()
    assert c1.buf.shape == (27, 2 * 81)
    del net, c1, c2
    gc.collect()
    assert conv_mod._KeptColumns.used == base


def test_only_the_training_net_keeps_columns(tmp_path):
    (tmp_path / "net.prototxt").write_text(CONV_NET.replace('force_backward: true', '') + """
layer { name: "y" type: "DummyData" top: "y" dummy_data_param { shape { dim: 6 dim: 2 dim: 4 dim: 4 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "c3" bottom: "y" top: "loss" }
""")
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 '
                                              'lr_policy: "fixed" max_iter: 2 test_iter: 1 test_interval: 10 '
                                              'solver_mode: CPU')
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    solver.step(1)
    train = [getattr(l, "_kept", None) for l in solver.net.layers if l.type == "Convolution"]
    test = [getattr(l, "_kept", None) for l in solver.test_nets[0].layers if l.type == "Convolution"]
    assert all(k is not None for k in train) and all(k is None for k in test)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_pool(split_everything):
    threads.run_ranges(lambda lo, hi: None, 10)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: would hang on the parent's (absent) threads without its own pool
        code = 4
        try:
            out = np.zeros(12)
            threads.run_ranges(lambda lo, hi: out.__setitem__(slice(lo, hi), 1), 12)
            code = 0 if out.all() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_a_bad_column_budget_is_a_one_line_error(tmp_path):
    net_file = tmp_path / "k.prototxt"
    net_file.write_text(CONV_NET)
    env = dict(os.environ, PYTHONPATH=ROOT, FC_CAFFE_COLUMN_CACHE_MB="lots")
    r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "time", "--model", str(net_file), "--iterations", "1"],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "FC_CAFFE_COLUMN_CACHE_MB must be a number of MiB, got 'lots'" in r.stderr
