"""Softmax, the loss layers and Accuracy (pycaffe_fc/layers/loss.py)."""
from __future__ import annotations

import numpy as np
import pytest

from gradcheck import check_gradient, setup_layer
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import io as proto_io


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _labels(shape, n_classes, seed=1):
    return np.random.default_rng(seed).integers(0, n_classes, shape).astype(np.float32)


def _loss(text, arrays, n_top=1):
    layer, bottom, top = setup_layer(text, arrays, n_top)
    layer.Forward(bottom, top)
    return layer, bottom, top


def _ref_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -- Softmax ---------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax(axis):
    x = _r(2, 3, 4)
    _, _, top = _loss(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])
    np.testing.assert_allclose(top[0].data, _ref_softmax(x, axis), rtol=1e-5)
    check_gradient(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])


# -- SoftmaxWithLoss -------------------------------------------------------------------------
def _ref_swl(x, lab, ignore, mode):
    p = _ref_softmax(x.astype(np.float64), 1)
    n, c = x.shape[:2]
    p = p.reshape(n, c, -1)
    lab = lab.reshape(n, -1).astype(int)
    valid = lab != ignore
    picked = np.take_along_axis(p, np.where(valid, lab, 0)[:, None, :], 1)[:, 0]
    loss = -(np.log(np.maximum(picked, np.finfo(np.float32).tiny)) * valid).sum()
    norm = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": n, "NONE": 1}[mode]
    return loss / max(norm, 1)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_with_loss_normalization_and_ignore(mode):
    x = _r(3, 5, 2, 2)
    lab = _labels((3, 1, 2, 2), 5)
    lab.reshape(-1)[[0, 4, 7]] = 255
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 255 normalization: {mode} }}'
    _, _, top = _loss(text, [x, lab])
    np.testing.assert_allclose(top[0].data, _ref_swl(x, lab, 255, mode), rtol=1e-5)
    check_gradient(text, [x, lab], check_bottom=[0])


def test_softmax_with_loss_legacy_normalize_and_default():
    x, lab = _r(4, 3, 2), _labels((4, 2), 3)
    _, _, top = _loss('type: "SoftmaxWithLoss" loss_param { normalize: false }', [x, lab])
    np.testing.assert_allclose(top[0].data, _ref_swl(x, lab, -99, "BATCH_SIZE"), rtol=1e-5)
    _, _, top = _loss('type: "SoftmaxWithLoss"', [x, lab])
    np.testing.assert_allclose(top[0].data, _ref_swl(x, lab, -99, "VALID"), rtol=1e-5)


def test_softmax_with_loss_weight_scales_gradient_not_loss():
    x, lab = _r(4, 6), _labels((4,), 6)
    grads = []
    for w in (1, 2):
        layer, bottom, top = _loss(f'type: "SoftmaxWithLoss" loss_weight: {w}', [x, lab])
        np.testing.assert_allclose(top[0].data, _ref_swl(x, lab, -1, "VALID"), rtol=1e-5)
        layer.Backward(top, [True, False], bottom)
        grads.append(bottom[0].diff.copy())
    np.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-6)
    expected = _ref_softmax(x, 1)
    expected[np.arange(4), lab.astype(int)] -= 1
    np.testing.assert_allclose(grads[0], expected / 4, rtol=1e-5, atol=1e-7)


def test_softmax_with_loss_prob_top_and_axis():
    x, lab = _r(2, 3, 4), _labels((2, 3), 4)
    _, _, top = _loss('type: "SoftmaxWithLoss" softmax_param { axis: 2 }', [x, lab], n_top=2)
    np.testing.assert_allclose(top[1].data, _ref_softmax(x, 2), rtol=1e-5)
    check_gradient('type: "SoftmaxWithLoss" softmax_param { axis: 2 }', [x, lab], check_bottom=[0])


def test_softmax_with_loss_label_checks():
    with pytest.raises(CaffeError, match="out of range"):
        _loss('name: "l" type: "SoftmaxWithLoss"', [_r(2, 3), np.array([0, 3], np.float32)])
    with pytest.raises(CaffeError, match="number of labels"):
        setup_layer('name: "l" type: "SoftmaxWithLoss"', [_r(2, 3, 2), np.zeros((2, 3), np.float32)])


# -- other losses -----------------------------------------------------------------------------
def test_euclidean_loss():
    a, b = _r(4, 3), _r(4, 3, seed=1)
    _, _, top = _loss('type: "EuclideanLoss"', [a, b])
    np.testing.assert_allclose(top[0].data, ((a - b) ** 2).sum() / 8, rtol=1e-5)
    check_gradient('type: "EuclideanLoss"', [a, b])


def _ref_sigmoid_ce(x, t, valid, norm):
    x, t = x.astype(np.float64), t.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    return -((t * np.log(p) + (1 - t) * np.log(1 - p)) * valid).sum() / norm


def test_sigmoid_cross_entropy_loss():
    x = _r(4, 3) * 3
    t = np.random.default_rng(1).uniform(0, 1, (4, 3)).astype(np.float32)
    _, _, top = _loss('type: "SigmoidCrossEntropyLoss"', [x, t])
    np.testing.assert_allclose(top[0].data, _ref_sigmoid_ce(x, t, 1, 4), rtol=1e-5)  # BATCH_SIZE
    check_gradient('type: "SigmoidCrossEntropyLoss"', [x, t], check_bottom=[0])
    t2 = (t > 0.5).astype(np.float32)
    t2[0, 1] = t2[2, 2] = -1
    text = 'type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }'
    _, _, top = _loss(text, [x, t2])
    np.testing.assert_allclose(top[0].data, _ref_sigmoid_ce(x, t2, t2 != -1, 10), rtol=1e-5)
    check_gradient(text, [x, t2], check_bottom=[0])


def test_sigmoid_cross_entropy_is_stable_for_large_inputs():
    x = np.array([[-200.0, 200.0]], np.float32)
    t = np.array([[0.0, 1.0]], np.float32)
    _, _, top = _loss('type: "SigmoidCrossEntropyLoss"', [x, t])
    assert np.isfinite(top[0].data) and float(top[0].data) < 1e-30


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x, lab = _r(4, 5), _labels((4,), 5)
    sign = -np.ones((4, 5))
    sign[np.arange(4), lab.astype(int)] = 1
    margin = np.maximum(0, 1 - sign * x)
    ref = (margin if norm == "L1" else margin ** 2).sum() / 4
    text = f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    _, _, top = _loss(text, [x, lab])
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-5)
    check_gradient(text, [x, lab], check_bottom=[0])


def test_infogain_loss_third_bottom_and_file(tmp_path):
    x, lab = _r(4, 3, 2), _labels((4, 2), 3)
    h = np.abs(_r(3, 3, seed=5)) + np.eye(3, dtype=np.float32)
    p = _ref_softmax(x.astype(np.float64), 1)
    ref = -sum(h[int(lab[i, j])] @ np.log(p[i, :, j]) for i in range(4) for j in range(2)) / 8
    _, _, top = _loss('type: "InfogainLoss"', [x, lab, h])
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-5)
    check_gradient('type: "InfogainLoss"', [x, lab, h], check_bottom=[0])
    path = tmp_path / "h.binaryproto"
    proto_io.write_proto_binary(proto_io.array_to_blobproto(h.reshape(1, 1, 3, 3)), path)
    _, _, top = _loss(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}', [x, lab])
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-5)
    # with H = identity it is SoftmaxWithLoss
    _, _, top = _loss('type: "InfogainLoss"', [x, lab, np.eye(3, dtype=np.float32)])
    np.testing.assert_allclose(top[0].data, _ref_swl(x, lab, -1, "VALID"), rtol=1e-5)


def test_multinomial_logistic_loss():
    p = _ref_softmax(_r(4, 5), 1).astype(np.float32)
    lab = _labels((4,), 5)
    _, _, top = _loss('type: "MultinomialLogisticLoss"', [p, lab])
    np.testing.assert_allclose(top[0].data, -np.log(p[np.arange(4), lab.astype(int)]).mean(), rtol=1e-5)
    check_gradient('type: "MultinomialLogisticLoss"', [p, lab], check_bottom=[0], step=1e-3)


@pytest.mark.parametrize("legacy", ["false", "true"])
def test_contrastive_loss(legacy):
    a, b = _r(6, 3) * 0.5, _r(6, 3, seed=1) * 0.5
    y = np.array([1, 0, 1, 0, 0, 1], np.float32)
    text = f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 1.5 legacy_version: {legacy} }}'
    d2 = ((a - b) ** 2).sum(1)
    dis = np.maximum(1.5 - d2, 0) if legacy == "true" else np.maximum(1.5 - np.sqrt(d2), 0) ** 2
    _, _, top = _loss(text, [a, b, y])
    np.testing.assert_allclose(top[0].data, np.where(y == 1, d2, dis).sum() / 12, rtol=1e-5)
    check_gradient(text, [a, b, y], check_bottom=[0, 1], threshold=2e-2)


# -- Accuracy ---------------------------------------------------------------------------------
def test_accuracy_ties_count_against_and_top_k():
    scores = np.array([[1, 1, 0], [0, 2, 1], [3, 2, 1], [0, 0, 0]], np.float32)
    lab = np.array([0, 1, 2, 1], np.float32)
    _, _, top = _loss('type: "Accuracy"', [scores, lab])
    np.testing.assert_allclose(top[0].data, 0.25)  # only sample 1; ties lose
    _, _, top = _loss('type: "Accuracy" accuracy_param { top_k: 2 }', [scores, lab])
    np.testing.assert_allclose(top[0].data, 0.5)   # samples 0 and 1
    _, _, top = _loss('type: "Accuracy" accuracy_param { top_k: 3 }', [scores, lab], n_top=2)
    np.testing.assert_allclose(top[0].data, 1.0)
    np.testing.assert_allclose(top[1].data, [1, 1, 1])


def test_accuracy_ignore_and_per_class():
    scores, lab = _r(8, 4), _labels((8,), 4, seed=3)
    lab[[1, 5]] = 7
    text = 'type: "Accuracy" accuracy_param { ignore_label: 7 }'
    _, _, top = _loss(text, [scores, lab], n_top=2)
    keep = lab != 7
    right = scores.argmax(1) == lab
    np.testing.assert_allclose(top[0].data, right[keep].mean(), rtol=1e-6)
    for c in range(4):
        sel = keep & (lab == c)
        np.testing.assert_allclose(top[1].data[c], right[sel].mean() if sel.any() else 0, rtol=1e-6)


def test_accuracy_spatial_axis():
    scores, lab = _r(2, 3, 4), _labels((2, 4), 3)
    _, _, top = _loss('type: "Accuracy"', [scores, lab])
    np.testing.assert_allclose(top[0].data, (scores.argmax(1) == lab).mean(), rtol=1e-6)


def test_softmax_in_place():
    from gradcheck import run_layer
    x, dy = _r(2, 3, 4), _r(2, 3, 4, seed=1)
    out = [run_layer('type: "Softmax"', x, dy, in_place) for in_place in (False, True)]
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-5, atol=1e-7)
