"""Eltwise, Scale and Bias (pycaffe_fc/layers/eltwise.py)."""
from __future__ import annotations

import numpy as np
import pytest

from gradcheck import check_gradient, run_layer, setup_layer
from pycaffe_fc.blob import Blob
from pycaffe_fc.errors import CaffeError


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_eltwise_sum_coeff():
    a, b, c = _r(2, 3, 2), _r(2, 3, 2, seed=1), _r(2, 3, 2, seed=2)
    text = 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }'
    layer, bottom, top = setup_layer(text, [a, b, c])
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, a - 0.5 * b + 2 * c, rtol=1e-6)
    check_gradient(text, [a, b, c])
    check_gradient('type: "Eltwise"', [a, b])


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod(stable):
    a, b, c = _r(2, 3, 2), _r(2, 3, 2, seed=1), _r(2, 3, 2, seed=2)
    text = f'type: "Eltwise" eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}'
    layer, bottom, top = setup_layer(text, [a, b, c])
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, a * b * c, rtol=1e-6)
    check_gradient(text, [a, b, c])


def test_eltwise_max_gradient_and_tie_routing():
    a, b, c = _r(2, 3, 4), _r(2, 3, 4, seed=1), _r(2, 3, 4, seed=2)
    check_gradient('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    # Caffe: a tie between bottoms 0 and 1 goes to 1; a later bottom must be strictly greater.
    x0 = np.array([1, 2, 3, 0], np.float32)
    x1 = np.array([1, 1, 3, 0], np.float32)
    x2 = np.array([1, 0, 3, 5], np.float32)
    layer, bottom, top = setup_layer('type: "Eltwise" eltwise_param { operation: MAX }', [x0, x1, x2])
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [1, 2, 3, 5])
    top[0].diff[...] = [10, 20, 30, 40]
    layer.Backward(top, [True] * 3, bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0, 20, 0, 0])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0, 30, 0])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0, 40])


def test_eltwise_errors():
    with pytest.raises(CaffeError, match="coefficient"):
        setup_layer('name: "e" type: "Eltwise" eltwise_param { coeff: 1 }', [_r(2), _r(2)])
    with pytest.raises(CaffeError, match="summation"):
        setup_layer('name: "e" type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 1 }',
                    [_r(2), _r(2)])
    with pytest.raises(CaffeError, match="shape"):
        setup_layer('name: "e" type: "Eltwise"', [_r(2, 3), _r(3, 2)])


def test_scale_learned_with_bias():
    x = _r(2, 3, 4)
    text = ('type: "Scale" scale_param { axis: 1 num_axes: 1 bias_term: true '
            'filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    layer = check_gradient(text, [x])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    s, b = layer.blobs[0].data, layer.blobs[1].data
    bottom = [Blob(x.shape)]
    bottom[0].data[...] = x
    top = [Blob()]
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x * s[None, :, None] + b[None, :, None], rtol=1e-6)


def test_scale_defaults_identity_and_bias_zero():
    layer, bottom, top = setup_layer('type: "Scale" scale_param { bias_term: true }', [_r(2, 3)])
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)


@pytest.mark.parametrize("param,shape", [
    ("axis: 1", (3, 4)),       # scale blob from the second bottom
    ("axis: 0", (2, 3)),
    ("axis: -1", (5,)),
    ("axis: 1", ()),           # a scalar
])
def test_scale_from_second_bottom(param, shape):
    x, s = _r(2, 3, 4, 5), _r(*shape, seed=1)
    check_gradient(f'type: "Scale" scale_param {{ {param} }}', [x, s], max_checks=40)


@pytest.mark.parametrize("param", ["num_axes: -1", "num_axes: 0", "axis: 0 num_axes: 2", "num_axes: 2 bias_term: true"])
def test_scale_param_shapes(param):
    check_gradient(f'type: "Scale" scale_param {{ {param} filler {{ type: "gaussian" }} }}', [_r(2, 3, 4)])


def test_scale_in_place_matches():
    x = _r(2, 3, 4)
    dy = _r(2, 3, 4, seed=9)
    text = 'type: "Scale" scale_param { bias_term: true filler { value: 1.5 } bias_filler { value: 0.5 } }'
    results = [run_layer(text, x, dy, in_place) for in_place in (False, True)]
    (y0, d0, p0), (y1, d1, p1) = results
    np.testing.assert_allclose(y1, y0)
    np.testing.assert_allclose(d1, d0)
    for a, c in zip(p0, p1):
        np.testing.assert_allclose(c, a, rtol=1e-6)
    np.testing.assert_allclose(p0[0], (dy * x).sum(axis=(0, 2)), rtol=1e-5)


def test_scale_param_diff_accumulates():
    layer, bottom, top = setup_layer('type: "Scale" scale_param { bias_term: true }', [_r(2, 3)])
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    for _ in range(2):
        layer.Backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[1].diff, [4, 4, 4])


def test_bias():
    x = _r(2, 3, 4, 2)
    check_gradient('type: "Bias" bias_param { axis: 1 num_axes: 2 filler { type: "gaussian" } }', [x])
    check_gradient('type: "Bias"', [x, _r(3, seed=1)])
    check_gradient('type: "Bias" bias_param { axis: 2 }', [x, _r(4, 2, seed=1)])
    layer, bottom, top = setup_layer('type: "Bias" bias_param { num_axes: -1 }', [x])
    assert layer.blobs[0].shape == (3, 4, 2)
    with pytest.raises(CaffeError):
        setup_layer('name: "b" type: "Bias"', [x, _r(4)])
