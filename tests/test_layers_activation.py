"""Neuron layers (pycaffe_fc/layers/activation.py): gradients, Caffe's formulas, in-place use."""
from __future__ import annotations

import numpy as np
import pytest

from gradcheck import check_gradient, make_layer, run_layer
from pycaffe_fc.blob import Blob
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.layers.base import TEST, TRAIN
from pycaffe_fc.rng import set_random_seed


def _x(shape=(2, 3, 4), seed=0, lo=-2.0, hi=2.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _run(text, x, in_place, top_diff, phase=TRAIN):
    return run_layer(text, x, top_diff, in_place, phase)


GRAD_CASES = {
    "relu": ('type: "ReLU"', {}, 1e-2),
    "relu_leaky": ('type: "ReLU" relu_param { negative_slope: 0.1 }', {}, 1e-2),
    "prelu": ('type: "PReLU" prelu_param { filler { type: "gaussian" std: 0.5 } }', {"shape": (2, 3, 3, 2)}, 1e-2),
    "prelu_shared": ('type: "PReLU" prelu_param { channel_shared: true }', {"shape": (2, 3, 2)}, 1e-2),
    "elu": ('type: "ELU" elu_param { alpha: 0.7 }', {}, 1e-2),
    "sigmoid": ('type: "Sigmoid"', {}, None),
    "tanh": ('type: "TanH"', {}, None),
    "swish": ('type: "Swish" swish_param { beta: 1.5 }', {}, None),
    "absval": ('type: "AbsVal"', {}, 1e-2),
    "power2": ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', {}, None),
    "power3_noshift": ('type: "Power" power_param { power: 3 scale: 1.5 }', {}, None),
    "power_general": ('type: "Power" power_param { power: 0.5 scale: 0.7 shift: 2 }', {"lo": 0.0}, None),
    "power1": ('type: "Power" power_param { power: 1 scale: -2 shift: 1 }', {}, None),
    "power0": ('type: "Power" power_param { power: 0 shift: 3 }', {}, None),
    "exp": ('type: "Exp"', {}, None),
    "exp_base2": ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', {}, None),
    "log": ('type: "Log"', {"lo": 0.5}, None),
    "log_base": ('type: "Log" log_param { base: 10 scale: 0.5 shift: 3 }', {}, None),
    "bnll": ('type: "BNLL"', {}, None),
    "clip": ('type: "Clip" clip_param { min: -1 max: 0.5 }', {}, None),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradient(case):
    text, kw, kink = GRAD_CASES[case]
    x = _x(kw.get("shape", (2, 3, 4)), lo=kw.get("lo", -2.0))
    if case == "clip":  # keep clear of the clip points
        x[np.abs(x + 1) < 0.05] += 0.2
        x[np.abs(x - 0.5) < 0.05] += 0.2
    check_gradient(text, [x], kink=kink, threshold=2e-2)


IN_PLACE = ["relu", "relu_leaky", "prelu", "prelu_shared", "elu", "sigmoid", "tanh", "swish",
            "power2", "power3_noshift", "power_general", "exp_base2", "log_base", "bnll", "clip"]


@pytest.mark.parametrize("case", IN_PLACE)
def test_in_place_matches_out_of_place(case):
    text, kw, _ = GRAD_CASES[case]
    x = _x((2, 3, 2, 2), seed=3, lo=kw.get("lo", -2.0))
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    set_random_seed(1)
    y0, dx0, p0 = _run(text, x, False, dy)
    set_random_seed(1)
    y1, dx1, p1 = _run(text, x, True, dy)
    np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-7)
    for a, b in zip(p1, p0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_absval_refuses_in_place():
    with pytest.raises(CaffeError, match="in-place"):
        _run('name: "a" type: "AbsVal"', _x(), True, np.zeros((2, 3, 4), np.float32))


def test_formulas():
    x = np.array([-60.0, -3.0, -0.5, 0.0, 0.5, 3.0, 60.0], np.float32)
    dy = np.ones_like(x)
    y, _, _ = _run('type: "ReLU" relu_param { negative_slope: 0.1 }', x, False, dy)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.1 * x), rtol=1e-6)
    y, dx, _ = _run('type: "BNLL"', x, False, dy)
    np.testing.assert_allclose(y, np.logaddexp(0, x.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(dx, 1 / (1 + np.exp(-np.minimum(x, 50.0))), rtol=1e-6)
    y, _, _ = _run('type: "Sigmoid"', x, False, dy)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6, atol=1e-7)
    y, _, _ = _run('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', x[1:-1], False, dy[1:-1])
    np.testing.assert_allclose(y, 2.0 ** (0.1 + 0.5 * x[1:-1]), rtol=1e-6)
    y, _, _ = _run('type: "Threshold" threshold_param { threshold: 0.5 }', x, False, dy)
    np.testing.assert_array_equal(y, (x > 0.5).astype(np.float32))
    y, _, _ = _run('type: "Power" power_param { power: 0 shift: 3 }', x, False, dy)
    np.testing.assert_array_equal(y, np.ones_like(x))
    y, dx, _ = _run('type: "PReLU"', x.reshape(1, 7), False, dy.reshape(1, 7))
    np.testing.assert_allclose(y.ravel(), np.where(x > 0, x, 0.25 * x), rtol=1e-6)


def test_dropout_train_mask_and_scale():
    text = 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }'
    x = _x((40, 50), seed=1, lo=0.5, hi=1.5)
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    set_random_seed(7)
    y, dx, _ = _run(text, x, False, dy)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.03
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.7), rtol=1e-6)
    np.testing.assert_allclose(dx, np.where(kept, dy / np.float32(0.7), 0), rtol=1e-6)
    set_random_seed(7)  # the same seed gives the same mask, in place too
    y2, dx2, _ = _run(text, x, True, dy)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)


def test_dropout_test_phase_is_identity():
    x = _x()
    dy = _x(seed=5)
    y, dx, _ = _run('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', x, False, dy, phase=TEST)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)


def test_relu_keeps_float32_and_writes_in_place():
    layer = make_layer('type: "ReLU"')
    b = Blob((4, 5))
    b.data[...] = _x((4, 5))
    data_before = b.data
    layer.SetUp([b], [b])
    layer.Forward([b], [b])
    assert b.data is data_before and b.data.dtype == np.float32
    assert (b.data >= 0).all()


def _chain_net(in_place: bool):
    import pycaffe_fc as caffe
    from google.protobuf import text_format
    from pycaffe_fc.proto import caffe_pb2

    def top(name):
        return "x" if in_place else name
    # As in Caffe, a layer whose backward reads the blob's data (ReLU, TanH, ...) is only right in
    # an in-place chain when the later in-place layers keep what it reads (Dropout keeps ReLU's
    # sign); PReLU and Scale save their bottom, so they may sit anywhere.
    text = f'''
    force_backward: true
    layer {{ name: "in" type: "Input" top: "x" top: "label"
             input_param {{ shape {{ dim: 3 dim: 4 }} shape {{ dim: 3 }} }} }}
    layer {{ name: "prelu" type: "PReLU" bottom: "x" top: "{top('p')}" }}
    layer {{ name: "scale" type: "Scale" bottom: "{top('p')}" top: "{top('s')}"
             scale_param {{ bias_term: true filler {{ value: -1.5 }} bias_filler {{ value: 0.1 }} }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "{top('s')}" top: "{top('r')}" relu_param {{ negative_slope: 0.2 }} }}
    layer {{ name: "drop" type: "Dropout" bottom: "{top('r')}" top: "{top('d')}" }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "{top('d')}" bottom: "label" top: "loss" }}
    '''
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    return caffe.Net(param, caffe.TRAIN)


def test_in_place_chain_in_a_net_matches_out_of_place():
    x = _x((3, 4), seed=11)
    results = []
    for in_place in (False, True):
        net = _chain_net(in_place)
        net.blobs["x"].data[...] = x
        net.blobs["label"].data[...] = [0, 3, 1]
        set_random_seed(5)
        loss = net.forward()["loss"].copy()
        net.backward()
        grads = {k: [b.diff.copy() for b in v] for k, v in net.params.items()}
        results.append((loss, net.blobs["x"].diff.copy(), grads))
    (l0, d0, g0), (l1, d1, g1) = results
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    np.testing.assert_allclose(d1, d0, rtol=1e-5, atol=1e-7)
    for k in g0:
        for a, b in zip(g0[k], g1[k]):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
