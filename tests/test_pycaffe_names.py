"""pycaffe's module-level names and Net/Solver methods, used the way pycaffe scripts use them:
Timer, NCCL/has_nccl, solver_count/rank, set_multiprocess, init_log/log, Net hooks, save_hdf5/
load_hdf5, Solver.share_weights, Python-layer exceptions, NetSpec's TypeError, legacy BlobProtos,
the unknown-layer-type error and pooling_param's ceil_mode."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import layers as L
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2

from conftest import ROOT

NET = """
name: "small"
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "ip" top: "loss" }
"""


def small_net(tmp_path, text=NET, phase=caffe.TRAIN, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return caffe.Net(str(p), phase), p


# -- Timer ----------------------------------------------------------------------------------------
def test_timer_as_pycaffe(capsys):
    t = caffe.Timer()
    assert t.ms == 0.0  # never started: 0 with Caffe's warning
    assert "Timer has never been run before reading time." in capsys.readouterr().err
    t.start()
    time.sleep(0.02)
    running = t.ms  # reading a running timer stops it
    assert running >= 15
    time.sleep(0.02)
    assert t.ms == running
    t.start()
    t.stop()
    assert 0 <= t.ms < running
    assert not hasattr(t, "seconds")  # pycaffe exposes start, stop and ms only


# -- NCCL and the solver count --------------------------------------------------------------------
def test_nccl_tells_the_truth(tmp_path):
    assert caffe.has_nccl() is False
    solver_txt = tmp_path / "solver.prototxt"
    net, p = small_net(tmp_path)
    solver_txt.write_text(f'net: "{p}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'
                          f'snapshot_prefix: "{tmp_path}/s"\n')
    solver = caffe.SGDSolver(str(solver_txt))
    nccl = caffe.NCCL(solver, "uid")
    # built without NCCL, pycaffe's class has no methods; add_callback/after_backward accept it
    assert not hasattr(nccl, "bcast") and not hasattr(caffe.NCCL, "new_uid")
    with pytest.raises(TypeError):
        caffe.NCCL(solver.net, "uid")
    n_cb = len(solver.callbacks)
    solver.add_callback(nccl)
    solver.net.after_backward(nccl)
    assert len(solver.callbacks) == n_cb and solver.net.callbacks["after_backward"] == []
    solver.step(1)


def test_solver_count_rank_multiprocess_defaults_and_setters():
    code = textwrap.dedent("""
        import pycaffe_fc as caffe
        print(caffe.solver_count(), caffe.solver_rank(), caffe.pycaffe_extras.multiprocess())
        caffe.set_solver_count(8); caffe.set_solver_rank(5); caffe.set_multiprocess(False)
        print(caffe.solver_count(), caffe.solver_rank(), caffe.pycaffe_extras.multiprocess())
    """)
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_", "PMIX"))}
    alone = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert alone.stdout.split("\n")[:2] == ["1 0 False", "8 5 False"]
    # a rank that mpiexec started: the job's size and this rank, as Caffe's multi-GPU run sets them
    ranked = subprocess.run([sys.executable, "-c", code], env={**env, "PMI_SIZE": "4", "PMI_RANK": "2"},
                            capture_output=True, text=True, check=True)
    assert ranked.stdout.split("\n")[:2] == ["4 2 True", "8 5 False"]


# -- logging --------------------------------------------------------------------------------------
def test_init_log_and_log_write_glog_lines():
    code = "import pycaffe_fc as caffe\ncaffe.init_log()\ncaffe.log('hello glog')\n" \
           "caffe.init_log(1)\ncaffe.log('not shown')\ncaffe.init_log(0, True)\ncaffe.log('again')\n"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("I") and lines[0].endswith("] hello glog")
    assert "not shown" not in err and lines[1].endswith("] again")


# -- Net hooks ------------------------------------------------------------------------------------
def test_net_hooks_called_with_the_layer_index(tmp_path):
    net, _ = small_net(tmp_path)
    calls = []
    for which in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(net, which)(lambda i, w=which: calls.append((w, i)))
    net.before_forward(lambda i: calls.append(("second", i)))  # several run in the order added
    net.forward()
    n = len(net.layers)
    expect = []
    for i in range(n):
        expect += [("before_forward", i), ("second", i), ("after_forward", i)]
    assert calls == expect
    calls.clear()
    net.backward()
    # Net::BackwardFromTo calls them for every layer, whether it needs backward or not
    assert calls == [(w, i) for i in range(n - 1, -1, -1) for w in ("before_backward", "after_backward")]
    with pytest.raises(TypeError):
        net.after_forward(3)
    calls.clear()
    net._forward(1, 2)  # pycaffe's index-range forms call the hooks too
    assert [i for w, i in calls if w == "after_forward"] == [1, 2]
    assert net._bottom_ids(1) == [net._blob_names.index("x")] and net._inputs == [0]


def test_hook_sees_the_layer_output(tmp_path):
    net, _ = small_net(tmp_path)
    seen = {}
    names = list(net._layer_names)
    net.after_forward(lambda i: seen.setdefault(names[i], net.blobs[net.top_names[names[i]][0]].data.copy()))
    out = net.forward(x=np.ones((2, 3, 6, 6), np.float32))
    np.testing.assert_array_equal(seen["ip"], net.blobs["ip"].data)
    assert float(out["loss"]) == 0.0


# -- save_hdf5 / load_hdf5 ------------------------------------------------------------------------
def test_save_and_load_hdf5_in_caffes_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    a, p = small_net(tmp_path)
    a.save_hdf5(str(tmp_path / "w.h5"))
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert sorted(f["data"].keys()) == sorted(a._layer_names)  # every layer, with blobs or not
        np.testing.assert_array_equal(f["data/conv/0"][()], a.params["conv"][0].data)
        np.testing.assert_array_equal(f["data/ip/1"][()], a.params["ip"][1].data)
        assert f["data/conv/0"].dtype == np.float32 and len(f["data/relu"]) == 0
    caffe.set_random_seed(123)
    b = caffe.Net(str(p), caffe.TEST)
    assert not np.array_equal(b.params["conv"][0].data, a.params["conv"][0].data)
    b.load_hdf5(str(tmp_path / "w.h5"))
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    wrong, _ = small_net(tmp_path, NET.replace("num_output: 5", "num_output: 6"), name="wrong.prototxt")
    with pytest.raises(CaffeError, match="layer 'ip'.*shape mismatch"):
        wrong.load_hdf5(str(tmp_path / "w.h5"))


# -- Solver.share_weights -------------------------------------------------------------------------
def test_solver_share_weights(tmp_path):
    _, p = small_net(tmp_path)
    s = tmp_path / "solver.prototxt"
    s.write_text(f'net: "{p}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\n'
                 f'snapshot_prefix: "{tmp_path}/s"\n')
    solver = caffe.get_solver(str(s))
    test_net = caffe.Net(str(p), caffe.TEST)
    solver.share_weights(test_net)
    solver.net.forward(x=np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32))
    solver.step(2)
    for name in solver.net.params:
        for x, y in zip(solver.net.params[name], test_net.params[name]):
            assert x is y  # the same blobs: training moves the test net too


# -- Python layer exceptions ----------------------------------------------------------------------
USER_MODULE = '''
import pycaffe_fc as caffe


class MyError(Exception):
    pass


class Raises(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise MyError("bad input")
'''


def test_python_layer_exception_keeps_its_type(tmp_path, monkeypatch):
    mod = f"raising_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{mod}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    net, p = small_net(tmp_path, f"""
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 }} }} }}
        layer {{ name: "py" type: "Python" bottom: "x" top: "y"
                python_param {{ module: "{mod}" layer: "Raises" }} }}
    """)
    user = __import__(mod)
    try:
        net.forward()
    except user.MyError as e:  # what existing pycaffe scripts write
        assert str(e) == "bad input" and type(e) is user.MyError
        assert any("layer 'py'" in n and "forward raised MyError: bad input" in n for n in e.__notes__)
    else:
        pytest.fail("the user's exception did not propagate")
    # the CLI still answers a user's mistake with one line
    run = subprocess.run([sys.executable, "-m", "pycaffe_fc", "time", "--model", str(p), "--iterations", "1"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("fc-caffe time: error: layer 'py'")
    assert "Traceback" not in run.stderr


# -- NetSpec --------------------------------------------------------------------------------------
def test_netspec_non_top_is_type_error():
    with pytest.raises(TypeError, match="Convolution input 0 is not a Top"):
        L.Convolution("data", num_output=3, kernel_size=1)


# -- legacy BlobProtos ----------------------------------------------------------------------------
def test_legacy_blobproto_shapes_load_as_caffe(tmp_path):
    net, p = small_net(tmp_path)
    old = net.to_proto()
    for lp in old.layer:
        for bp in lp.blobs:
            shape = list(bp.shape.dim)
            bp.ClearField("shape")
            # V1 caffemodels: weights and biases stored as 4-d num/channels/height/width, padded with 1s
            bp.num, bp.channels, bp.height, bp.width = [1] * (4 - len(shape)) + shape
    (tmp_path / "legacy.caffemodel").write_bytes(old.SerializeToString())
    fresh = caffe.Net(str(p), caffe.TEST, weights=str(tmp_path / "legacy.caffemodel"))
    for name in net.params:
        for x, y in zip(net.params[name], fresh.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    # no shape at all: a 0-axis blob of one value (Blob::FromProto)
    bp = caffe_pb2.BlobProto(data=[2.5])
    assert caffe.io.blobproto_to_array(bp).shape == () and float(caffe.io.blobproto_to_array(bp)) == 2.5
    # only some legacy fields: the others are 0, so the data must be empty, as Caffe checks
    with pytest.raises(CaffeError, match=r"shape \[1, 3, 0, 0\] needs 0 values but data has 3"):
        caffe.io.blobproto_to_array(caffe_pb2.BlobProto(num=1, channels=3, data=[1, 2, 3]))


def test_legacy_scalar_blob_into_zero_axis_param(tmp_path):
    net, p = small_net(tmp_path, """
        layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { } } }
    """, phase=caffe.TEST)
    assert net.params["p"][0].shape == ()
    m = caffe_pb2.NetParameter()
    lp = m.layer.add(name="p", type="Parameter")
    lp.blobs.add(num=1, channels=1, height=1, width=1, data=[7.0])
    net.copy_from(m)
    assert float(net.params["p"][0].data) == 7.0


# -- unknown layer types --------------------------------------------------------------------------
def test_unknown_layer_type_names_file_line_and_kind(tmp_path):
    text = textwrap.dedent("""\
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
        layer {
          name: "up"   # a custom layer of a fork
          bottom: "x" top: "up"
          type: "Interp"
        }
    """)
    p = tmp_path / "fork.prototxt"
    p.write_text(text)
    with pytest.raises(CaffeError) as ei:
        caffe.Net(str(p), caffe.TEST)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:5:3: layer 'up': Unknown layer type: Interp (not a BVLC Caffe layer type")
    known = msg.split("(known types: ")[1].rstrip(")").split(", ")
    assert known == caffe.layer_type_list() and "Convolution" in known and "\n" not in msg
    # a BVLC type this build lacks is told apart (the type removed from the registry for the test)
    from pycaffe_fc.layers import base
    saved = base.LAYER_REGISTRY.pop("Crop")
    try:
        p.write_text(text.replace("Interp", "Crop"))
        with pytest.raises(CaffeError, match=r":5:3: layer 'up': Unknown layer type: Crop \(a BVLC Caffe layer "
                                             r"type that fc-caffe does not implement\)"):
            caffe.Net(str(p), caffe.TEST)
    finally:
        base.LAYER_REGISTRY["Crop"] = saved
    assert len(base.BVLC_LAYER_TYPES) == 61


def test_unknown_layer_type_through_the_solver_names_the_net_file(tmp_path, capsys):
    from pycaffe_fc.cli import main as cli
    net = tmp_path / "train.prototxt"
    net.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "att" bottom: "x" top: "y"\n  type: "Attention" }\n')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n')
    assert cli(["train", "--solver", str(solver)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"fc-caffe train: error: {net}:3:3: layer 'att': Unknown layer type: Attention")


# -- ceil_mode ------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,expect", [("", 4), ("ceil_mode: true", 4), ("ceil_mode: false", 3),
                                          ("round_mode: FLOOR", 3)])
def test_pooling_ceil_mode(tmp_path, extra, expect):
    # 8x8, kernel 3, stride 2: Caffe's ceil gives ceil(5/2)+1 = 4, the forks' floor 5//2+1 = 3
    net, _ = small_net(tmp_path, f"""
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 2 dim: 8 dim: 8 }} }} }}
        layer {{ name: "pool" type: "Pooling" bottom: "x" top: "pool"
                pooling_param {{ pool: MAX kernel_size: 3 stride: 2 {extra} }} }}
    """, phase=caffe.TEST)
    assert net.blobs["pool"].shape == (1, 2, expect, expect)
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)
    out = net.forward(x=x)["pool"]
    np.testing.assert_array_equal(out[:, :, :3, :3], np.max(np.stack(
        [x[:, :, i:i + 5:2, j:j + 5:2] for i in range(3) for j in range(3)]), axis=0))


def test_ceil_mode_contradicting_round_mode(tmp_path):
    with pytest.raises(CaffeError, match="ceil_mode: false contradicts round_mode: CEIL"):
        small_net(tmp_path, """
            layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
            layer { name: "pool" type: "Pooling" bottom: "x" top: "pool"
                    pooling_param { kernel_size: 3 stride: 2 ceil_mode: false round_mode: CEIL } }
        """, phase=caffe.TEST)
