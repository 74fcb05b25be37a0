"""NetSpec as pycaffe users write it: caffe.NetSpec(), L.<Type>(...), P.<Type>.<ENUM>, to_proto."""
from __future__ import annotations

import importlib.util
import sys
import uuid

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_fc as caffe
from pycaffe_fc import net_spec
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2

L = net_spec.layers  # caffe.layers once the package binds it eagerly
P = caffe.params


def lenet_spec(data_layer) -> caffe.NetSpec:
    """LeNet as in Caffe's examples/01-learning-lenet notebook, with the data layer given."""
    n = caffe.NetSpec()
    n.data, n.label = data_layer
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    n.acc = L.Accuracy(n.score, n.label, include=dict(phase=caffe.TEST))
    return n


def test_lenet_proto_fields_and_names():
    n = lenet_spec(L.Data(batch_size=64, backend=P.Data.LMDB, source="mnist_train_lmdb",
                          transform_param=dict(scale=1. / 255), ntop=2))
    net = n.to_proto()
    layers = {lp.name: lp for lp in net.layer}
    assert [lp.name for lp in net.layer] == ["data", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1",
                                             "score", "loss", "acc"]
    d = layers["data"]
    assert list(d.top) == ["data", "label"] and d.data_param.batch_size == 64
    assert d.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert d.transform_param.scale == pytest.approx(1 / 255)
    c1 = layers["conv1"]
    assert list(c1.bottom) == ["data"] and list(c1.top) == ["conv1"]
    assert list(c1.convolution_param.kernel_size) == [5]  # a scalar given to a repeated field
    assert c1.convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in layers["conv2"].param] == [1, 2]
    assert layers["pool1"].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    relu = layers["relu1"]
    assert list(relu.bottom) == ["fc1"] and list(relu.top) == ["fc1"]  # in place
    assert list(layers["score"].bottom) == ["fc1"]
    assert layers["acc"].include[0].phase == caffe.TEST
    assert list(layers["loss"].bottom) == ["score", "label"]
    # the text round-trips through text_format
    text = str(net)
    again = text_format.Parse(text, caffe_pb2.NetParameter())
    assert again == net and str(again) == text


def test_auto_names_as_pycaffe():
    data = L.Input(shape=dict(dim=[2, 3]))
    a = L.ReLU(data)
    b = L.ReLU(a)
    s0, s1 = L.Slice(b, ntop=2, slice_point=[1], axis=1)
    net = caffe.to_proto(s0, s1)
    assert [lp.name for lp in net.layer] == ["Input1", "ReLU1", "ReLU2", "Slice1"]
    assert [list(lp.top) for lp in net.layer] == [["Input1"], ["ReLU1"], ["ReLU2"], ["Slice1", "Slice2"]]
    assert list(net.layer[3].slice_param.slice_point) == [1]
    # a NetSpec names what it holds and auto-names the rest; ntop=0 yields a named top-less layer
    n = caffe.NetSpec()
    n.x = L.Input(shape=[dict(dim=[4])])
    n["y"] = L.TanH(L.Sigmoid(n.x))
    n.silence = L.Silence(n.y, ntop=0)
    net = n.to_proto()
    assert [(lp.name, list(lp.top)) for lp in net.layer] == [
        ("x", ["x"]), ("Sigmoid1", ["Sigmoid1"]), ("y", ["y"]), ("silence", [])]
    assert n.keys() == ["x", "y", "silence"] and n["x"] is n.x


def test_enums_params_and_generic_param_kwargs():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX and P.Pooling.AVE == 1
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Loss.VALID == caffe_pb2.LossParameter.VALID
    n = caffe.NetSpec()
    n.a, n.b = L.DummyData(shape=[dict(dim=[2, 3]), dict(dim=[2, 3])], ntop=2)
    n.s = L.Eltwise(n.a, n.b, operation=P.Eltwise.SUM, coeff=[1, -1])
    n.p = L.Pooling(L.Reshape(n.s, shape=dict(dim=[2, 1, 1, 3])), pool="AVE", global_pooling=True)
    n.l = L.SoftmaxWithLoss(n.s, n.b, loss_param=dict(ignore_label=255, normalization=P.Loss.NONE),
                            loss_weight=0.5, propagate_down=[True, False])
    n.d = L.Deconvolution(n.p, num_output=4, kernel_size=2)
    net = n.to_proto()
    layers = {lp.name: lp for lp in net.layer}
    assert list(layers["s"].eltwise_param.coeff) == [1, -1]
    assert layers["p"].pooling_param.pool == P.Pooling.AVE  # enum value names work too
    assert list(layers["Reshape1"].reshape_param.shape.dim) == [2, 1, 1, 3]
    assert layers["l"].loss_param.ignore_label == 255 and list(layers["l"].loss_weight) == [0.5]
    assert list(layers["l"].propagate_down) == [True, False]
    assert layers["d"].convolution_param.num_output == 4  # Deconvolution reads convolution_param
    assert list(layers["a"].dummy_data_param.shape[1].dim) == [2, 3]


def test_mistakes_are_one_line_caffe_errors():
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=[1]))
    n.y = L.ReLU(n.x, no_such_field=3)
    with pytest.raises(CaffeError, match=r"layer 'y' \(ReLU\): cannot set 'no_such_field'"):
        n.to_proto()
    with pytest.raises(TypeError, match="input 0 is not a Top"):
        L.ReLU("x")
    n = caffe.NetSpec()
    n.p = L.Pooling(L.Input(shape=dict(dim=[1])), pool="MAXIMUM")
    with pytest.raises(CaffeError, match="'MAXIMUM' is not a value of enum PoolMethod"):
        n.to_proto()
    with pytest.raises(AttributeError):
        caffe.NetSpec().missing


def test_netspec_net_builds_and_runs():
    """A NetSpec NetParameter is a Net, as in pycaffe (caffe.Net(str(n.to_proto())...) via a file)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.h = L.TanH(n.data)
    n.out = L.Power(n.h, power=2, scale=1, shift=0)
    net = caffe.Net(n.to_proto(), caffe.TEST)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(net.forward(data=x)["out"], np.tanh(x) ** 2, rtol=1e-6)


DATA_LAYER_SRC = '''
import numpy as np
import caffe_alias as caffe


class RandomDigits(caffe.Layer):
    """Feeds batches of noisy class prototypes (a learnable toy MNIST), as a pycaffe data layer."""

    def setup(self, bottom, top):
        params = eval(self.param_str)
        self.batch_size = params["batch_size"]
        self.rng = np.random.default_rng(params["seed"])
        self.protos = (self.rng.random((10, 1, 28, 28)) > 0.5).astype(np.float32)

    def reshape(self, bottom, top):
        top[0].reshape(self.batch_size, 1, 28, 28)
        top[1].reshape(self.batch_size)

    def forward(self, bottom, top):
        labels = self.rng.integers(0, 10, self.batch_size)
        noise = self.rng.standard_normal((self.batch_size, 1, 28, 28)).astype(np.float32)
        top[0].data[...] = self.protos[labels] + 0.2 * noise
        top[1].data[...] = labels

    def backward(self, top, propagate_down, bottom):
        pass
'''


def test_lenet_with_a_python_data_layer_trains_with_sgdsolver(tmp_path, monkeypatch):
    if importlib.util.find_spec("pycaffe_fc.solvers") is None:
        pytest.skip("pycaffe_fc.solvers is not there yet")
    sys.modules.setdefault("caffe_alias", caffe)
    mod = f"digits_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(DATA_LAYER_SRC)
    monkeypatch.chdir(tmp_path)  # the module is found in the current directory, as pycaffe users keep it
    n = lenet_spec(L.Python(module=mod, layer="RandomDigits", param_str=str(dict(batch_size=16, seed=3)),
                            ntop=2))
    (tmp_path / "lenet_train.prototxt").write_text(str(n.to_proto()))
    (tmp_path / "solver.prototxt").write_text(
        'train_net: "lenet_train.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n'
        'lr_policy: "inv"\ngamma: 0.0001\npower: 0.75\ndisplay: 0\nmax_iter: 100\nrandom_seed: 1701\n'
        'snapshot_prefix: "lenet"\nsolver_mode: CPU\n')
    try:
        solver = caffe.SGDSolver("solver.prototxt")
        net = solver.net
        assert "acc" not in net.layer_dict  # include { phase: TEST } filtered out of the TRAIN net
        assert net.blobs["data"].data.shape == (16, 1, 28, 28)
        assert [b.shape for b in net.params["conv2"]] == [(50, 20, 5, 5), (50,)]
        w0 = net.params["conv1"][0].data.copy()
        losses = []
        for _ in range(12):
            solver.step(1)
            losses.append(float(net.blobs["loss"].data))
        assert solver.iter == 12
        assert not np.array_equal(net.params["conv1"][0].data, w0)
        assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    finally:
        sys.modules.pop(mod, None)


def test_layers_factory_and_layers_subpackage_coexist(monkeypatch):
    """``caffe.layers`` is the NetSpec factory while ``pycaffe_fc.layers`` is also the subpackage."""
    monkeypatch.setattr(caffe, "layers", L)  # what the package binds
    import pycaffe_fc.layers.base as base  # resolves through the factory attribute
    from pycaffe_fc.layers.base import register
    assert base.register is register and L.register is register
    assert callable(caffe.layers.Convolution)
    with pytest.raises(AttributeError):
        caffe.layers.no_such_thing
