"""Python layers written the way pycaffe users write them (type: "Python", python_param)."""
from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import traceback
import uuid

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc.errors import CaffeError

from gradcheck import check_gradient

# A user's layer module, as it would sit next to the prototxt.
LAYERS_SRC = '''
import numpy as np
import caffe_alias as caffe


class Scale(caffe.Layer):
    """y = k * x with a learnable k (one blob), initialised from param_str."""

    def setup(self, bottom, top):
        self.seen_phase = self.phase
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[0]

    def hello(self):
        return "hello from " + type(self).__name__


class SumDiff(caffe.Layer):
    """Two bottoms, three tops: a + b, a - b, and the count as a scalar."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("need two bottoms")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
        top[1].reshape(*bottom[0].data.shape)
        top[2].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + bottom[1].data
        top[1].data[...] = bottom[0].data - bottom[1].data
        top[2].data[...] = bottom[0].count

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff + top[1].diff
        if propagate_down[1]:
            bottom[1].diff[...] = top[0].diff - top[1].diff


class EuclideanLoss(caffe.Layer):
    """pycaffe's example pyloss.py, 1/2N sum (a - b)^2, scaling by the top diff (the loss_weight)."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise ValueError("the user's bug")


class Singular(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(2, 2)

    def forward(self, bottom, top):
        top[0].data[...] = np.linalg.inv(np.zeros((2, 2)))  # raised inside numpy's own code


class NotALayer(object):
    pass
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write the layer module under a fresh name into a directory on sys.path; return its name."""
    sys.modules.setdefault("caffe_alias", caffe)  # users write `import caffe`
    name = f"userlayers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(LAYERS_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def net_text(module: str, body: str, force_backward: bool = True) -> str:
    fb = "force_backward: true\n" if force_backward else ""
    return fb + textwrap.dedent(body).replace("MOD", module)


def build(tmp_path, text: str, phase=caffe.TRAIN):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    return caffe.Net(str(p), phase)


SCALE_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "scale" type: "Python" bottom: "x" top: "y"
        python_param { module: "MOD" layer: "Scale" param_str: "3" } }
"""


def test_forward_backward_param_str_phase_and_blobs(tmp_path, user_module):
    net = build(tmp_path, net_text(user_module, SCALE_NET), caffe.TRAIN)
    layer = net.layer_dict["scale"]
    assert layer.type == "Python" and layer.seen_phase == caffe.TRAIN and layer.param_str == "3"
    assert layer.hello() == "hello from Scale"  # the user's own object, with its methods
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(x=x)
    np.testing.assert_allclose(out["y"], 3 * x)
    net.blobs["y"].diff[...] = 1
    net.clear_param_diffs()
    diffs = net.backward()
    np.testing.assert_allclose(diffs["x"], np.full((2, 3), 3.0))
    np.testing.assert_allclose(net.params["scale"][0].diff, [x.sum()])
    assert net.learnable_params[0] is net.params["scale"][0]


def test_gradient_of_a_python_layer(user_module):
    text = f'type: "Python" python_param {{ module: "{user_module}" layer: "SumDiff" }}'
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    check_gradient(text, [a, b], n_top=3)


def test_any_number_of_bottoms_and_tops(tmp_path, user_module):
    net = build(tmp_path, net_text(user_module, """
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 4 } } }
        layer { name: "sd" type: "Python" bottom: "a" bottom: "b" top: "s" top: "d" top: "n"
                python_param { module: "MOD" layer: "SumDiff" } }
    """))
    out = net.forward(a=np.array([1, 2, 3, 4.0]), b=np.ones(4))
    np.testing.assert_allclose(out["s"], [2, 3, 4, 5])
    np.testing.assert_allclose(out["d"], [0, 1, 2, 3])
    assert out["n"][0] == 4
    assert net.top_names["sd"] == ["s", "d", "n"] and net.bottom_names["sd"] == ["a", "b"]


def test_python_loss_layer_with_loss_weight(tmp_path, user_module):
    net = build(tmp_path, net_text(user_module, """
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" loss_weight: 2
                python_param { module: "MOD" layer: "EuclideanLoss" } }
    """))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.zeros((2, 3), np.float32)
    net.blobs["a"].data[...] = a
    net.blobs["b"].data[...] = b
    loss = net.forward_backward()
    # the top holds the plain loss; the net's loss and the gradients carry the weight
    np.testing.assert_allclose(net.blobs["loss"].data, [(a ** 2).sum() / 2 / 2])
    assert loss == pytest.approx(2 * (a ** 2).sum() / 4)
    np.testing.assert_allclose(net.blobs["a"].diff, 2 * a / 2)
    np.testing.assert_allclose(net.blobs["b"].diff, -2 * a / 2)
    assert net.blob_loss_weights["loss"] == 2


def test_learned_blobs_are_saved_and_loaded(tmp_path, user_module):
    net = build(tmp_path, net_text(user_module, SCALE_NET))
    net.params["scale"][0].data[...] = 7.5
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    other = build(tmp_path, net_text(user_module, SCALE_NET))
    assert other.params["scale"][0].data[0] == 3
    other.copy_from(str(path))
    assert other.params["scale"][0].data[0] == 7.5


def test_module_imported_from_the_current_directory(tmp_path, monkeypatch):
    sys.modules.setdefault("caffe_alias", caffe)
    name = f"cwdlayers_{uuid.uuid4().hex[:8]}"
    d = tmp_path / "project"
    d.mkdir()
    (d / f"{name}.py").write_text(LAYERS_SRC)
    monkeypatch.chdir(d)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(d))])
    try:
        net = build(tmp_path, net_text(name, SCALE_NET))
        np.testing.assert_allclose(net.forward(x=np.ones((2, 3)))["y"], np.full((2, 3), 3.0))
    finally:
        sys.modules.pop(name, None)


def test_user_exception_names_the_layer_and_keeps_the_traceback(tmp_path, user_module):
    net = build(tmp_path, net_text(user_module, """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
        layer { name: "buggy" type: "Python" bottom: "x" top: "y"
                python_param { module: "MOD" layer: "Broken" } }
    """))
    with pytest.raises(ValueError) as ei:  # the user's own type propagates, as in pycaffe
        net.forward()
    assert type(ei.value) is ValueError and str(ei.value) == "the user's bug"
    msg = ei.value.caffe_context  # the context we add: a note, one line
    assert msg in ei.value.__notes__
    assert "layer 'buggy'" in msg and "ValueError: the user's bug" in msg and "forward" in msg
    assert f"{user_module}.py:" in msg  # where in the user's file
    assert any(f.filename.endswith(f"{user_module}.py") for f in traceback.extract_tb(ei.value.__traceback__))
    assert "\n" not in msg


def test_error_location_is_the_users_line_not_numpys(tmp_path, user_module):
    net = build(tmp_path, net_text(user_module, """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
        layer { name: "inv" type: "Python" bottom: "x" top: "y" python_param { module: "MOD" layer: "Singular" } }
    """))
    with pytest.raises(np.linalg.LinAlgError) as ei:
        net.forward()
    assert re.search(r"layer 'inv'.*LinAlgError: Singular matrix", ei.value.caffe_context)
    line = LAYERS_SRC.splitlines().index("        top[0].data[...] = np.linalg.inv(np.zeros((2, 2)))  "
                                         "# raised inside numpy's own code") + 1
    assert ei.value.caffe_context.endswith(f"{user_module}.py:{line})")


def test_setup_exception_names_the_layer(tmp_path, user_module):
    with pytest.raises(Exception, match="need two bottoms") as ei:
        build(tmp_path, net_text(user_module, """
            layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
            layer { name: "sd" type: "Python" bottom: "x" top: "s" top: "d" top: "n"
                    python_param { module: "MOD" layer: "SumDiff" } }
        """))
    assert type(ei.value) is Exception
    assert re.search(r"layer 'sd'.*setup raised Exception: need two bottoms", ei.value.caffe_context)


@pytest.mark.parametrize("module,layer,match", [
    ("no_such_module_xyz", "Scale", r"layer 'p'.*no module named 'no_such_module_xyz'"),
    ("MOD", "Missing", r"layer 'p'.*has no class 'Missing'"),
    ("MOD", "NotALayer", r"layer 'p'.*NotALayer must be a class subclassing caffe.Layer"),
    ("", "Scale", r"layer 'p'.*needs both 'module' and 'layer'"),
])
def test_bad_python_param(tmp_path, user_module, module, layer, match):
    text = f"""
        layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 }} }} }}
        layer {{ name: "p" type: "Python" bottom: "x" top: "y"
                python_param {{ module: "{module}" layer: "{layer}" }} }}
    """
    with pytest.raises(CaffeError, match=match):
        build(tmp_path, net_text(user_module, text))


def test_user_code_sees_numpy_and_the_net_keeps_its_blobs(tmp_path, user_module):
    """The user's layer computes with numpy in either mode (in GPU mode the Blob copies down for the
    call and up after it); the results are those of the layer's formulas."""
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    net = build(tmp_path, net_text(user_module, SCALE_NET))
    for _ in range(2):  # the second pass starts from the heads the first left
        out = net.forward(x=x)["y"]
        assert type(out) is np.ndarray
        np.testing.assert_allclose(out, 3 * x, rtol=1e-6)
        net.clear_param_diffs()
        dx = net.backward(y=dy)["x"]
        np.testing.assert_allclose(dx, 3 * dy, rtol=1e-6)
        np.testing.assert_allclose(net.params["scale"][0].diff, [(dy * x).sum()], rtol=1e-5)
    assert isinstance(net.params["scale"][0], caffe.Blob)  # the real blob stays in the net


def test_solver_updates_a_python_layers_blobs(tmp_path, user_module):
    if importlib.util.find_spec("pycaffe_fc.solvers") is None:
        pytest.skip("pycaffe_fc.solvers is not there yet")
    (tmp_path / "train.prototxt").write_text(net_text(user_module, """
        layer { name: "x" type: "DummyData" top: "x"
                dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" } } }
        layer { name: "t" type: "DummyData" top: "t" dummy_data_param { shape { dim: 2 dim: 3 } } }
        layer { name: "scale" type: "Python" bottom: "x" top: "y"
                python_param { module: "MOD" layer: "Scale" param_str: "3" } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
    """, force_backward=False))
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "train.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
        f'max_iter: 10\ndisplay: 0\nsolver_mode: CPU\n')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.step(1)
    x = solver.net.blobs["x"].data
    # EuclideanLoss = 1/2N sum (k x)^2, so dL/dk = k sum(x^2) / N
    expected = 3 - 0.1 * 3 * float((x.astype(np.float64) ** 2).sum()) / 2
    assert solver.net.params["scale"][0].data[0] == pytest.approx(expected, rel=1e-5)
