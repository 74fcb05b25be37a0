"""Shape layers (pycaffe_fc/layers/shape.py): Concat, Slice, Flatten, Reshape, Crop, Tile, Reduction."""
from __future__ import annotations

import numpy as np
import pytest

from gradcheck import check_gradient, setup_layer
from pycaffe_fc.errors import CaffeError


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _forward(text, arrays, n_top=1):
    layer, bottom, top = setup_layer(text, arrays, n_top)
    layer.Forward(bottom, top)
    return layer, bottom, top


# -- Concat ------------------------------------------------------------------------------
def test_concat_forward_and_gradient():
    a, b, c = _r(2, 1, 3), _r(2, 2, 3, seed=1), _r(2, 3, 3, seed=2)
    _, _, top = _forward('type: "Concat"', [a, b, c])
    np.testing.assert_array_equal(top[0].data, np.concatenate([a, b, c], axis=1))
    check_gradient('type: "Concat"', [a, b, c])
    check_gradient('type: "Concat" concat_param { axis: -1 }', [_r(2, 3, 1), _r(2, 3, 2, seed=1)])


def test_concat_legacy_concat_dim_and_single_bottom():
    a, b = _r(2, 3), _r(1, 3, seed=1)
    _, _, top = _forward('type: "Concat" concat_param { concat_dim: 0 }', [a, b])
    np.testing.assert_array_equal(top[0].data, np.concatenate([a, b], axis=0))
    layer, bottom, top = _forward('type: "Concat"', [a])
    np.testing.assert_array_equal(top[0].data, a)
    top[0].diff[...] = 5
    assert (bottom[0].diff == 5).all()  # shared, as Caffe's one-input Concat


def test_concat_shape_mismatch():
    with pytest.raises(CaffeError, match="concat axis"):
        setup_layer('name: "c" type: "Concat"', [_r(2, 3, 4), _r(2, 3, 5)])
    with pytest.raises(CaffeError, match="not both"):
        setup_layer('name: "c" type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [_r(2, 3)])


# -- Slice -------------------------------------------------------------------------------
def test_slice_points_equal_and_gradient():
    x = _r(2, 5, 3)
    _, _, top = _forward('type: "Slice" slice_param { slice_point: 1 slice_point: 3 }', [x], 3)
    for t, ref in zip(top, np.split(x, [1, 3], axis=1)):
        np.testing.assert_array_equal(t.data, ref)
    _, _, top = _forward('type: "Slice" slice_param { axis: 0 }', [_r(4, 3)], 2)
    assert [t.shape for t in top] == [(2, 3), (2, 3)]
    _, _, top = _forward('type: "Slice" slice_param { slice_dim: 2 }', [_r(2, 2, 6)], 3)
    assert [t.shape for t in top] == [(2, 2, 2)] * 3
    check_gradient('type: "Slice" slice_param { slice_point: 1 slice_point: 3 }', [x], n_top=3)


def test_slice_errors():
    with pytest.raises(CaffeError, match="divisible"):
        setup_layer('name: "s" type: "Slice"', [_r(2, 5)], 2)
    with pytest.raises(CaffeError, match="slice_point"):
        setup_layer('name: "s" type: "Slice" slice_param { slice_point: 1 }', [_r(2, 5)], 3)


# -- Flatten / Reshape ---------------------------------------------------------------------
def test_flatten_shares_data_and_diff():
    x = _r(2, 3, 4, 5)
    layer, bottom, top = _forward('type: "Flatten"', [x])
    assert top[0].shape == (2, 60)
    np.testing.assert_array_equal(top[0].data, x.reshape(2, 60))
    top[0].diff[...] = np.arange(120, dtype=np.float32).reshape(2, 60)
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff.reshape(-1), np.arange(120))
    _, _, top = _forward('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [x])
    assert top[0].shape == (2, 12, 5)
    _, _, top = _forward('type: "Flatten" flatten_param { axis: -2 }', [x])
    assert top[0].shape == (2, 3, 20)


@pytest.mark.parametrize("param,shape", [
    ('shape { dim: 0 dim: -1 dim: 10 }', (2, 6, 10)),
    ('shape { dim: 12 } axis: 1 num_axes: 2', (2, 12, 5)),
    ('shape { dim: -1 } axis: 2', (2, 3, 20)),
    ('shape { dim: -1 } axis: -2', (2, 3, 4, 5)),  # axis -2 starts at bottom axis 3
    ('shape { dim: 1 } axis: -1 num_axes: 0', (2, 3, 4, 5, 1)),
    ('shape { dim: 1 dim: 1 } axis: 0 num_axes: 0', (1, 1, 2, 3, 4, 5)),
    ('shape { dim: 0 dim: 0 dim: 0 dim: 0 }', (2, 3, 4, 5)),
    ('shape { dim: 4 dim: -1 }', (4, 30)),
])
def test_reshape(param, shape):
    x = _r(2, 3, 4, 5)
    _, _, top = _forward(f'type: "Reshape" reshape_param {{ {param} }}', [x])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data.reshape(-1), x.reshape(-1))


@pytest.mark.parametrize("param,msg", [
    ('shape { dim: -1 dim: -1 }', "-1"),
    ('shape { dim: 7 dim: -1 }', "divisible"),
    ('shape { dim: 7 }', "count"),
    ('shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 }', "no corresponding"),
])
def test_reshape_errors(param, msg):
    with pytest.raises(CaffeError, match=msg):
        setup_layer(f'name: "r" type: "Reshape" reshape_param {{ {param} }}', [_r(2, 3, 4, 5)])


# -- Crop / Tile -----------------------------------------------------------------------------
def test_crop():
    x, ref = _r(2, 3, 6, 7), _r(2, 3, 3, 4, seed=1)
    _, _, top = _forward('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }', [x, ref])
    np.testing.assert_array_equal(top[0].data, x[:, :, 1:4, 2:6])
    _, _, top = _forward('type: "Crop" crop_param { axis: 1 offset: 1 }', [x, _r(2, 2, 4, 4)])
    np.testing.assert_array_equal(top[0].data, x[:, 1:3, 1:5, 1:5])
    check_gradient('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }', [x, ref], check_bottom=[0])
    with pytest.raises(CaffeError, match="crop"):
        setup_layer('name: "c" type: "Crop" crop_param { offset: 4 }', [x, ref])


def test_tile():
    x = _r(2, 2, 3)
    _, _, top = _forward('type: "Tile" tile_param { axis: 1 tiles: 3 }', [x])
    np.testing.assert_array_equal(top[0].data, np.tile(x, (1, 3, 1)))
    check_gradient('type: "Tile" tile_param { axis: 1 tiles: 3 }', [x])
    check_gradient('type: "Tile" tile_param { axis: -1 tiles: 2 }', [x])


# -- Reduction -------------------------------------------------------------------------------
@pytest.mark.parametrize("op,fn", [
    ("SUM", lambda a: a.sum(1)), ("ASUM", lambda a: np.abs(a).sum(1)),
    ("SUMSQ", lambda a: (a * a).sum(1)), ("MEAN", lambda a: a.mean(1)),
])
def test_reduction(op, fn):
    x = _r(2, 3, 4)
    text = f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 coeff: 1.5 }}'
    _, _, top = _forward(text, [x])
    assert top[0].shape == (2,)
    np.testing.assert_allclose(top[0].data, 1.5 * fn(x.reshape(2, -1)), rtol=1e-5)
    check_gradient(text, [x], kink=1e-2 if op == "ASUM" else None)


def test_reduction_default_axis_is_scalar():
    x = _r(2, 3)
    _, _, top = _forward('type: "Reduction"', [x])
    assert top[0].shape == ()
    np.testing.assert_allclose(top[0].data, x.sum(), rtol=1e-5)
    check_gradient('type: "Reduction" reduction_param { operation: SUMSQ }', [x])
