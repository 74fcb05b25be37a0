"""GPU mode without a GPU (issue 12): the strict CuPy stand-in itself, Caffe's SyncedMemory head
states, the transfers of a steady-state training iteration, a pycaffe script that classifies an
image unchanged after ``caffe.set_mode_gpu()``, and the product's answers without a usable GPU.

In the GPU-mode run (FC_CAFFE_TEST_MODE=gpu) the stand-in is ``cupy``; in the CPU-mode run the
stand-in tests import it for their own use and the device tests run in subprocesses.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import backend
from pycaffe_fc.blob import HEAD_AT_CPU, HEAD_AT_GPU, SYNCED, UNINITIALIZED, Blob

from conftest import GPU_TEST_MODE, REF, ROOT, STANDIN, need_shared

HERE = Path(__file__).resolve()


@pytest.fixture
def standin():
    """(cupy, cupyx, cupy_standin): the stand-in modules (imported for this test in the CPU run,
    then forgotten again so nothing else sees a ``cupy``)."""
    if GPU_TEST_MODE:
        import cupy
        import cupy_standin
        import cupyx
        cupy_standin.reset()
        yield cupy, cupyx, cupy_standin
        return
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("cupy", "cupyx", "cupy_standin")}
    sys.path.insert(0, str(STANDIN))
    try:
        import cupy
        import cupy_standin
        import cupyx
        yield cupy, cupyx, cupy_standin
    finally:
        sys.path.remove(str(STANDIN))
        for k in [k for k in sys.modules if k.split(".")[0] in ("cupy", "cupyx", "cupy_standin")]:
            del sys.modules[k]
        sys.modules.update(saved)


needs_device = pytest.mark.skipif(not GPU_TEST_MODE, reason="runs in the GPU-mode run (FC_CAFFE_TEST_MODE=gpu)")


def _env(gpu: bool = True, **extra) -> dict:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != STANDIN]
    if gpu:
        paths.insert(0, str(STANDIN))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


# -- the stand-in keeps CuPy's rules ------------------------------------------------------------
def test_standin_array_is_a_device_array_numpy_cannot_touch(standin):
    cupy, _, _ = standin
    a = cupy.arange(6, dtype=np.float32).reshape(2, 3)
    assert not isinstance(a, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.sum(a)
    with pytest.raises(TypeError):
        np.concatenate([a, a])
    # host arrays given to device functions, operators or assignments raise as in CuPy
    h = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + h
    with pytest.raises(TypeError):
        h * a
    with pytest.raises(TypeError):
        cupy.add(a, h)
    with pytest.raises(TypeError):
        cupy.copyto(a, h)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[...] = h
    # scalars (Python, numpy, 0-d) are fine, and an explicit transfer is fine
    a[...] = np.float32(2)
    b = np.float32(0.5) * a + 1
    np.testing.assert_array_equal(cupy.asnumpy(b), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(cupy.asarray(h).get(), h)
    # reductions stay on the device (a 0-d array), a host read is explicit
    s = a.sum()
    assert isinstance(s, cupy.ndarray) and s.shape == ()
    assert float(s) == 12.0


def test_standin_has_only_cupy14_names_and_keywords(standin):
    cupy, cupyx, cupy_standin = standin
    from cupy_standin import core
    for name in dir(cupy):
        if not name.startswith("_"):
            assert name in core.NAMES or name in ("cuda", "lib", "random"), name
    for missing in ("nditer", "einsum_path", "fromregex", "lib_standin"):
        assert missing not in core.NAMES and not hasattr(cupy, missing)
    a = cupy.ones(4, dtype=np.float32)
    with pytest.raises(TypeError, match="initial"):
        cupy.sum(a, initial=0)  # numpy has it, CuPy does not
    with pytest.raises(TypeError):
        a.max(initial=0)
    with pytest.raises(TypeError):
        cupy.exp(a, order="C")
    for kernel in (cupy.ElementwiseKernel("float32 x", "float32 y", "y = x", "k"),
                   cupy.RawKernel("extern \"C\" __global__ void k() {}", "k")):
        with pytest.raises(RuntimeError, match="cannot run custom CUDA kernels"):
            kernel(a, a)
    assert hasattr(cupyx, "scatter_add") and hasattr(cupy.lib.stride_tricks, "sliding_window_view")


def test_standin_counts_launches_transfers_and_syncs_by_call_site(standin):
    cupy, cupyx, S = standin
    from cupy.lib.stride_tricks import sliding_window_view
    x = cupy.asarray(np.arange(10, dtype=np.float32)); line_up = sys._getframe().f_lineno
    with S.counting() as c:
        w = sliding_window_view(x, 3)       # a view: nothing
        y = cupy.empty_like(x)               # no launch
        cupy.multiply(x, 2, out=y)           # 1
        y += x; line_iadd = sys._getframe().f_lineno
        m = w.max(axis=1)                    # 1 (reduction)
        cupyx.scatter_add(y, cupy.arange(3), m[:3])  # arange 1, scatter 1
        host = y.get(); line_get = sys._getframe().f_lineno
        v = float(m[0])                      # 1 sync
    assert (c.launches, c.transfers, c.syncs) == (5, 1, 2)
    here = str(HERE)
    assert c.sites["launches"][f"{here}:{line_iadd}"] == 1
    assert c.sites["transfers"] == {f"{here}:{line_get}": 1}
    assert S.sites("transfers")[f"{here}:{line_up}"] >= 1
    assert v == 2.0 and host.shape == (10,)
    fused = cupy.fuse(lambda a, b: a * b + a - b)
    with S.counting() as c:
        fused(x, x)
    assert c.launches == 1


def test_standin_pretends_machines_without_a_gpu(standin, monkeypatch):
    cupy, _, _ = standin
    monkeypatch.setenv("FC_CUPY_STANDIN_DEVICES", "0")
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="no CUDA-capable device"):
        cupy.cuda.runtime.getDeviceCount()
    assert not cupy.is_available()
    monkeypatch.setenv("FC_CUPY_STANDIN_DEVICES", "2")
    assert cupy.cuda.runtime.getDeviceCount() == 2


# -- SyncedMemory ---------------------------------------------------------------------------------
@needs_device
def test_blob_heads_move_as_caffes_syncedmemory():
    import cupy_standin as S
    b = Blob((2, 3))
    assert b.data_head == UNINITIALIZED
    with S.counting() as c:
        g = b.mutable_gpu_data()            # UNINITIALIZED -> zeros on the device, no copy
    assert (b.data_head, c.transfers) == (HEAD_AT_GPU, 0)
    g[...] = 5
    with S.counting() as c:
        h = b.cpu_data()                    # device is newer: one copy down, SYNCED
        h2 = b.cpu_data()                   # nothing more
    assert (b.data_head, c.transfers) == (SYNCED, 1) and h is h2
    np.testing.assert_array_equal(h, np.full((2, 3), 5, np.float32))
    with S.counting() as c:
        b.gpu_data()                        # SYNCED: no copy either way
    assert c.transfers == 0
    b.data[0, 0] = 7                        # pycaffe's blob.data: mutable_cpu_data, head at the host
    assert b.data_head == HEAD_AT_CPU and type(b.data) is np.ndarray
    with S.counting() as c:
        d = b.gpu_data()                    # one copy up
    assert (b.data_head, c.transfers) == (SYNCED, 1)
    assert float(d[0, 0]) == 7.0
    with backend.device_side():
        assert b.data is d                  # a GPU layer's view: the device array, head moves there
    assert b.data_head == HEAD_AT_GPU
    # shared data (Blob::ShareData): one SyncedMemory, so a write through either is seen by both
    other = Blob((3, 2))
    other.share_data(b)
    with backend.device_side():
        other.data[...] = 1
    np.testing.assert_array_equal(b.data, np.ones((2, 3), np.float32))
    assert b.diff_head == UNINITIALIZED and b.diff.sum() == 0


@needs_device
def test_python_code_sees_numpy_and_layers_see_the_device():
    net = caffe.Net(_write(TINY_NET), caffe.TEST)
    assert net.on_device
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x          # pycaffe's feeding, unchanged
    out = net.forward()
    assert type(out["prob"]) is np.ndarray and type(net.blobs["prob"].data) is np.ndarray
    assert type(net.params["conv1"][0].data) is np.ndarray
    assert backend.is_device_array(net.params["conv1"][0].gpu_data())
    cpu = _cpu_forward(TINY_NET, net, x)
    np.testing.assert_allclose(out["prob"], cpu, rtol=1e-5, atol=1e-6)


@needs_device
def test_pycaffe_feeding_loop_moves_the_batch_up_and_the_outputs_down():
    """net.blobs['data'].data[...] = x; net.forward(): as in Caffe, the data blob stays SYNCED after
    the forward, so the next write does not copy the old batch down first."""
    import cupy_standin as S
    net = caffe.Net(_write(TINY_NET), caffe.TEST)
    rng = np.random.default_rng(0)
    for i in range(3):
        x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        with S.counting() as c:
            net.blobs["data"].data[...] = x
            prob = net.forward()["prob"]
        if i:
            assert c.transfers == 2, c.sites["transfers"]  # the batch up, the outputs down
    np.testing.assert_allclose(prob, _cpu_forward(TINY_NET, net, x), rtol=1e-5, atol=1e-6)


@needs_device
def test_steady_state_training_iteration_moves_only_the_batch_and_the_loss(tmp_path, monkeypatch):
    """LeNet on 640 Fashion-MNIST records: one iteration sends the batch and labels up (2
    transfers) and reads the loss back; nothing else crosses (no parameter, no gradient), even
    with weight decay, momentum and gradient clipping in the update."""
    import shutil

    import cupy_standin as S
    src = need_shared(REF / "solver" / "fmnist640_train_lmdb")
    shutil.copytree(src, tmp_path / "fmnist640_train_lmdb")
    shutil.copy(REF / "solver" / "lenet_train.prototxt", tmp_path)
    (tmp_path / "solver.prototxt").write_text(
        'net: "lenet_train.prototxt" base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" '
        'gamma: 0.0001 power: 0.75 max_iter: 10 random_seed: 1701 snapshot_after_train: false '
        'clip_gradients: 100\n')
    monkeypatch.chdir(tmp_path)
    s = caffe.get_solver("solver.prototxt")
    s.step(2)
    with S.counting() as c:
        s.step(1)
    up = {site: n for site, n in c.sites["transfers"].items() if "/layers/data.py:" in site}
    down = {site: n for site, n in c.sites["transfers"].items() if site not in up}
    assert sum(up.values()) == 2, c.sites["transfers"]    # the batch and its labels
    assert sum(down.values()) <= 1, c.sites["transfers"]  # the loss (one loss layer), nothing else
    assert c.syncs <= 3, c.sites["syncs"]  # the loss (and the clip norm), as Caffe reads them


# -- a pycaffe script, unchanged ----------------------------------------------------------------
CLASSIFY = """
import sys
import numpy as np
import pycaffe_fc as caffe

if sys.argv[1] == "gpu":
    caffe.set_mode_gpu()
else:
    caffe.set_mode_cpu()
net = caffe.Classifier(sys.argv[2], sys.argv[3], image_dims=(14, 14),
                       mean=np.array([104.0, 117.0, 123.0], np.float32), raw_scale=255,
                       channel_swap=(2, 1, 0))
image = caffe.io.load_image(sys.argv[4])
prediction = net.predict([image], oversample=True)
print("class", prediction[0].argmax(), "probs", " ".join(f"{p:.6f}" for p in prediction[0]))
net.blobs["data"].data[...] = net.transformer.preprocess("data", image)  # the other pycaffe way
out = net.forward()
print("top", int(out["prob"][0].argmax()), type(out["prob"]).__module__)
"""


def test_pycaffe_classify_script_runs_unchanged_in_gpu_mode(tmp_path):
    image = need_shared(REF / "data" / "images" / "img_01.jpg")
    model = tmp_path / "deploy.prototxt"
    model.write_text(TINY_NET.replace("dim: 2 dim: 3 dim: 8 dim: 8", "dim: 3 dim: 3 dim: 10 dim: 10"))
    weights = tmp_path / "tiny.caffemodel"
    subprocess.run([sys.executable, "-c", "import sys, pycaffe_fc as caffe; caffe.set_random_seed(0); "
                    "caffe.Net(sys.argv[1], caffe.TEST).save(sys.argv[2])", str(model), str(weights)],
                   check=True, env=_env(gpu=False), cwd=ROOT)
    script = tmp_path / "classify.py"
    script.write_text(CLASSIFY)
    outs = {}
    for mode in ("cpu", "gpu"):
        r = subprocess.run([sys.executable, str(script), mode, str(model), str(weights), str(image)],
                           capture_output=True, text=True, env=_env(gpu=True), cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[mode] = r.stdout.split("\n")
    assert outs["gpu"][0].split()[:2] == outs["cpu"][0].split()[:2]
    cpu_p = np.array(outs["cpu"][0].split()[3:], float)
    gpu_p = np.array(outs["gpu"][0].split()[3:], float)
    np.testing.assert_allclose(gpu_p, cpu_p, atol=2e-6)
    assert outs["gpu"][1] == outs["cpu"][1] and outs["gpu"][1].endswith("numpy")


# -- the mode is read at every forward, as Caffe::mode() ------------------------------------------
MODE_SWITCH = """
import sys
import numpy as np
import cupy_standin as S
import pycaffe_fc as caffe
from pycaffe_fc import backend

tiny, train, solver_file, rnn = sys.argv[1:5]
rng = np.random.default_rng(0)

# pycaffe's classification example: build in CPU mode, time a forward, then set_mode_gpu and again
caffe.set_mode_cpu()
caffe.set_random_seed(0)
net = caffe.Net(tiny, caffe.TEST)
params = net.params
blobs = [b for bs in params.values() for b in bs]
x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
net.blobs["data"].data[...] = x
ref = net.forward()["prob"].copy()
assert not net.on_device
caffe.set_device(0)
caffe.set_mode_gpu()
with S.counting() as c:
    out = net.forward()["prob"].copy()
assert c.launches > 10, c.launches                    # it really computed on the device
assert net.on_device and backend.is_device_array(net.params["conv1"][0].gpu_data())
assert net.layer_dict["conv1"].xp is backend.cupy and net.layers[0].xp is np   # Input stays as is
np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
caffe.set_mode_cpu()
with S.counting() as c:
    out = net.forward()["prob"].copy()
assert c.launches == 0, S.report()
assert not net.on_device and net.layer_dict["conv1"].xp is np
np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
assert [b for bs in net.params.values() for b in bs] == blobs
assert all(a is b for a, b in zip([b for bs in net.params.values() for b in bs], blobs))
assert net.params["conv1"] is params["conv1"]

# training across switches (momentum history, dropout masks) = training in one mode
def trained(switch):
    caffe.set_mode_cpu()
    caffe.set_random_seed(7)
    s = caffe.get_solver(solver_file)
    before = [b for b in s.net.learnable_params]
    initial = [b.data.copy() for b in before]
    s.net.blobs["data"].data[...] = data
    s.net.blobs["label"].data[...] = label
    launches = []
    for i in range(3):
        if switch:
            (caffe.set_mode_gpu if i == 1 else caffe.set_mode_cpu)()
        with S.counting() as c:
            s.step(1)
        launches.append(c.launches)
    assert all(a is b for a, b in zip(s.net.learnable_params, before))
    assert all(a is b for a, b in zip(s.test_nets[0].params["fc"], s.net.params["fc"]))
    s.test(0)
    assert all(np.abs(b.data - w).max() > 1e-4 for b, w in zip(before, initial))   # it trained
    return [b.data.copy() for b in s.net.learnable_params], launches, s

data = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
label = np.array([0, 1, 2, 3], np.float32)
want, launches, _ = trained(False)
assert launches == [0, 0, 0]
got, launches, s = trained(True)
assert launches[0] == 0 and launches[1] > 10 and launches[2] == 0, launches
assert all(type(h) is np.ndarray for h in s.history)
for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

# a recurrent layer's carried hidden state moves with it
outs = {}
for switch in (False, True):
    caffe.set_mode_cpu()
    caffe.set_random_seed(3)
    r = caffe.Net(rnn, caffe.TEST)
    r.blobs["x"].data[...] = np.linspace(-1, 1, r.blobs["x"].count, dtype=np.float32).reshape(r.blobs["x"].shape)
    r.blobs["cont"].data[...] = 1
    first = r.forward()["h"].copy()
    if switch:
        caffe.set_mode_gpu()
    outs[switch] = r.forward()["h"].copy()
assert np.abs(outs[False] - first).max() > 1e-3     # the state matters
np.testing.assert_allclose(outs[True], outs[False], rtol=1e-5, atol=1e-6)
print("OK")
"""

TRAIN_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

RNN_NET = """
name: "rnn"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 dim: 4 } } }
layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def test_a_net_follows_set_mode_gpu_and_set_mode_cpu_made_after_it_was_built(tmp_path):
    """Caffe reads the mode at every Forward: pycaffe's classification example builds its net in
    CPU mode and times net.forward() again after caffe.set_mode_gpu(); training continues too."""
    (tmp_path / "tiny.prototxt").write_text(TINY_NET)
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "rnn.prototxt").write_text(RNN_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "train.prototxt"}" test_net: "{tmp_path / "train.prototxt"}" test_iter: 1 '
        'test_interval: 1000 base_lr: 0.1 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" '
        'max_iter: 10 random_seed: 1701 snapshot_after_train: false display: 0\n')
    script = tmp_path / "switch.py"
    script.write_text(MODE_SWITCH)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "tiny.prototxt"),
                        str(tmp_path / "train.prototxt"), str(tmp_path / "solver.prototxt"),
                        str(tmp_path / "rnn.prototxt")],
                       capture_output=True, text=True, env=_env(gpu=True), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.strip().endswith("OK")


# -- installs and fails like a product ------------------------------------------------------------
def test_set_mode_gpu_without_a_usable_gpu_says_what_is_missing(monkeypatch):
    if not GPU_TEST_MODE:
        with pytest.raises(caffe.CaffeError, match=r"needs CuPy.*pip install 'fc-caffe\[gpu\]'"):
            caffe.set_mode_gpu()
        return
    for value, what in (("0", "no CUDA-capable device"), ("nodriver", "driver")):
        monkeypatch.setenv("FC_CUPY_STANDIN_DEVICES", value)
        with pytest.raises(caffe.CaffeError, match=what) as e:
            caffe.set_mode_gpu()
        assert "\n" not in str(e.value)


def test_device_query_prints_caffes_fields(standin):
    cupy, _, _ = standin
    r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "device_query", "--gpu", "0"],
                       capture_output=True, text=True, env=_env(gpu=True), cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = {}
    for line in r.stderr.splitlines():
        msg = line.split("] ", 1)[1]
        if ":" in msg and "common.cpp" in line:
            k, v = msg.split(":", 1)
            lines[k] = v.strip()
    p = cupy.cuda.runtime.getDeviceProperties(0)
    assert lines["Device id"] == "0" and lines["Name"] == p["name"].decode()
    assert lines["Total global memory"] == str(p["totalGlobalMem"])
    assert lines["Maximum dimension of block"] == ", ".join(map(str, p["maxThreadsDim"]))
    assert lines["Concurrent copy and execution"] == ("Yes" if p["deviceOverlap"] else "No")
    assert list(lines) == ["Device id", "Major revision number", "Minor revision number", "Name",
                           "Total global memory", "Total shared memory per block", "Total registers per block",
                           "Warp size", "Maximum memory pitch", "Maximum threads per block",
                           "Maximum dimension of block", "Maximum dimension of grid", "Clock rate",
                           "Total constant memory", "Texture alignment", "Concurrent copy and execution",
                           "Number of multiprocessors", "Kernel execution timeout"]
    for env, what in ((_env(gpu=True, FC_CUPY_STANDIN_DEVICES="0"), "no CUDA-capable device"),
                      (_env(gpu=False), "needs CuPy")):
        r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "device_query"], capture_output=True,
                           text=True, env=env, cwd=ROOT, timeout=60)
        assert r.returncode != 0 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_gpu_extra_brings_cupy_with_its_cuda_libraries():
    text = (ROOT / "setup.py").read_text()
    assert '"gpu": ["cupy-cuda12x[ctk]>=14"]' in text


# -- helpers ------------------------------------------------------------------------------------
TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _write(text: str) -> str:
    import tempfile
    f = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
    f.write(textwrap.dedent(text))
    f.close()
    return f.name


def _cpu_forward(text: str, gpu_net, x) -> np.ndarray:
    backend.set_mode_cpu()
    try:
        net = caffe.Net(_write(text), caffe.TEST)
        net.copy_from(gpu_net)
        return net.forward(data=x)["prob"].copy()
    finally:
        backend.set_mode_gpu()
