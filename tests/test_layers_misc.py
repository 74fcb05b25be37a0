"""ArgMax and Parameter (pycaffe_fc/layers/misc.py)."""
from __future__ import annotations

import numpy as np

from gradcheck import check_gradient, setup_layer


def _forward(text, arrays):
    layer, bottom, top = setup_layer(text, arrays)
    layer.Forward(bottom, top)
    return top[0]


def test_argmax_flat_topk_and_ties():
    x = np.array([[1, 3, 3, 0], [5, 4, 6, 6]], np.float32)
    t = _forward('type: "ArgMax"', [x])
    assert t.shape == (2, 1, 1)
    np.testing.assert_array_equal(t.data.ravel(), [2, 3])  # ties go to the larger index
    t = _forward('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [x])
    assert t.shape == (2, 2, 3)
    np.testing.assert_array_equal(t.data[:, 0], [[2, 1, 0], [3, 2, 0]])
    np.testing.assert_array_equal(t.data[:, 1], [[3, 3, 1], [6, 6, 5]])


def test_argmax_axis():
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    t = _forward('type: "ArgMax" argmax_param { axis: 1 }', [x])
    assert t.shape == (2, 1, 3)
    np.testing.assert_array_equal(t.data[:, 0], x.argmax(axis=1))
    t = _forward('type: "ArgMax" argmax_param { axis: 1 top_k: 2 out_max_val: true }', [x])
    assert t.shape == (2, 2, 3)
    np.testing.assert_array_equal(t.data, -np.sort(-x, axis=1)[:, :2])
    t = _forward('type: "ArgMax"', [x.reshape(2, 5, 3, 1)])
    assert t.shape == (2, 1, 1, 1)


def test_parameter_layer():
    layer = check_gradient('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert layer.blobs[0].shape == (2, 3)


def test_batch_reindex():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    idx = np.array([2, 0, 2, 3, 2], np.float32)
    t = _forward('type: "BatchReindex"', [x, idx])
    np.testing.assert_array_equal(t.data, x[[2, 0, 2, 3, 2]])
    check_gradient('type: "BatchReindex"', [x, idx], check_bottom=[0])


def test_filter():
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    y = np.arange(5, dtype=np.float32)
    sel = np.array([1, 0, 0, 1, 1], np.float32)
    layer, bottom, top = setup_layer('type: "Filter"', [x, y, sel], n_top=2)
    assert top[0].shape == (5, 2)  # Caffe's first reshape keeps the batch
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x[[0, 3, 4]])
    np.testing.assert_array_equal(top[1].data, [0, 3, 4])
    check_gradient('type: "Filter"', [x, y, sel], n_top=2, check_bottom=[0, 1])
