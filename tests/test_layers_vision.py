"""Vision layers (conv.py, pooling.py, inner_product.py, normalization.py, im2col.py):
numerical gradient checks of every layer, forward values against direct loops written from
Caffe's C++ (pooling windows, convolution sums), and the accumulate-into-param-diff contract."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import im2col as im2col_mod
from pycaffe_fc.layers import conv as conv_mod
from pycaffe_fc.rng import set_random_seed
from gradcheck import check_gradient, setup_layer

RNG = np.random.default_rng(1234)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def distinct(*shape, gap=0.1):
    """Values at least ``gap`` apart (no max-pooling decision flips under the checker's step)."""
    n = int(np.prod(shape))
    return (RNG.permutation(n).astype(np.float32) * gap - n * gap / 2).reshape(shape)


def conv_text(kind="Convolution", **p):
    p.setdefault("weight_filler", 'weight_filler { type: "gaussian" std: 0.5 }')
    p.setdefault("bias_filler", 'bias_filler { type: "gaussian" std: 0.5 }')
    fields = " ".join(v if k.endswith("filler") else f"{k}: {v}" for k, v in p.items())
    return f'name: "c" type: "{kind}" convolution_param {{ {fields} }}'


# -- direct references ---------------------------------------------------------------------------
def naive_conv(x, w, b, stride, pad, dil, group):
    """Caffe's convolution as an explicit sum (any number of spatial axes)."""
    n, c = x.shape[:2]
    o = w.shape[0]
    ksp = w.shape[2:]
    insp = x.shape[2:]
    out = [(i + 2 * p - (d * (k - 1) + 1)) // s + 1 for i, k, s, p, d in zip(insp, ksp, stride, pad, dil)]
    y = np.zeros((n, o, *out), np.float64)
    cg, og = c // group, o // group
    for oc in range(o):
        gi = oc // og
        for opos in itertools.product(*[range(v) for v in out]):
            for kpos in itertools.product(*[range(v) for v in ksp]):
                ipos = [op * s - p + kp * d for op, s, p, kp, d in zip(opos, stride, pad, kpos, dil)]
                if all(0 <= ip < sz for ip, sz in zip(ipos, insp)):
                    xs = x[(slice(None), slice(gi * cg, (gi + 1) * cg)) + tuple(ipos)]
                    y[(slice(None), oc) + tuple(opos)] += xs @ w[(oc, slice(None)) + tuple(kpos)]
        if b is not None:
            y[:, oc] += b[oc]
    return y


def naive_pool(x, method, k, s, p, round_mode=0):
    """PoolingLayer::Forward_cpu loops, with the argmax mask (h*W + w, -1 when empty)."""
    n, c, h, w = x.shape
    out = []
    for a, size in enumerate((h, w)):
        span = size + 2 * p[a] - k[a]
        o = (-(-span // s[a]) if round_mode == 0 else span // s[a]) + 1
        out.append(o)
    if p[0] or p[1]:
        for a, size in enumerate((h, w)):
            if (out[a] - 1) * s[a] >= size + p[a]:
                out[a] -= 1
    top = np.zeros((n, c, *out), np.float32)
    mask = -np.ones((n, c, *out), np.float32)
    for i, j in itertools.product(range(out[0]), range(out[1])):
        hs, ws = i * s[0] - p[0], j * s[1] - p[1]
        if method == "MAX":
            he, we = min(hs + k[0], h), min(ws + k[1], w)
            hs, ws = max(hs, 0), max(ws, 0)
            best = np.full((n, c), -np.finfo(np.float32).max, np.float32)
            arg = -np.ones((n, c))
            for y, xx in itertools.product(range(hs, he), range(ws, we)):
                better = x[:, :, y, xx] > best
                best = np.where(better, x[:, :, y, xx], best)
                arg = np.where(better, y * w + xx, arg)
            top[:, :, i, j], mask[:, :, i, j] = best, arg
        else:
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            top[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return top, mask


# -- im2col ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("geom", [((7, 6), (3, 2), (2, 1), (1, 0), (1, 1)),
                                  ((9, 9), (3, 3), (1, 1), (2, 2), (2, 2)),
                                  ((4, 5), (5, 5), (1, 2), (3, 2), (1, 1)),
                                  ((5, 4, 6), (2, 3, 2), (1, 2, 2), (1, 0, 1), (1, 1, 2))])
def test_im2col_matches_loops_and_col2im_is_its_adjoint(geom):
    insp, k, s, p, d = geom
    x = randn(2, 3, *insp)
    out = [im2col_mod.conv_out_size(i, kk, ss, pp, dd) for i, kk, ss, pp, dd in zip(insp, k, s, p, d)]
    col = im2col_mod.im2col(x, k, s, p, d, out)
    ref = np.zeros_like(col)
    for kpos in itertools.product(*[range(v) for v in k]):
        for opos in itertools.product(*[range(v) for v in out]):
            ipos = [o * ss - pp + kk * dd for o, ss, pp, kk, dd in zip(opos, s, p, kpos, d)]
            if all(0 <= i < n for i, n in zip(ipos, insp)):
                ref[(slice(None),) + kpos + (slice(None),) + opos] = x[(slice(None), slice(None)) + tuple(ipos)].T
    np.testing.assert_array_equal(col, ref)
    y = randn(*col.shape)
    back = np.empty_like(x)
    im2col_mod.col2im(y, k, s, p, d, insp, back)
    assert np.isclose(float((col * y).sum()), float((x * back).sum()), rtol=1e-4)


def test_workspace_reuses_and_grows():
    a = im2col_mod.workspace("test_slot", (10, 10))
    b = im2col_mod.workspace("test_slot", (5, 4))
    assert np.shares_memory(a, b) and b.shape == (5, 4) and b.dtype == np.float32
    c = im2col_mod.workspace("test_slot", (30, 30))
    assert c.shape == (30, 30)


# -- Convolution ---------------------------------------------------------------------------------
CONV_CASES = {
    "k3s2p1g2": dict(shape=(2, 4, 7, 7), p=dict(num_output=6, kernel_size=3, stride=2, pad=1, group=2)),
    "dil2": dict(shape=(2, 3, 8, 8), p=dict(num_output=4, kernel_size=3, pad=2, dilation=2)),
    "rect_nobias": dict(shape=(2, 2, 7, 6), p=dict(num_output=3, kernel_h=3, kernel_w=2, stride_h=2, stride_w=1,
                                                pad_h=1, pad_w=0, bias_term="false")),
    "1x1": dict(shape=(2, 3, 4, 5), p=dict(num_output=5, kernel_size=1)),
    "1x1_group": dict(shape=(2, 4, 3, 3), p=dict(num_output=6, kernel_size=1, group=2)),
    "3d": dict(shape=(2, 2, 4, 5, 4), p=dict(num_output=3, kernel_size=2, stride=2, pad=1)),
}


LOWERINGS = ["batch_gemm", "per_image_gemm", "per_image_stacked_wgrad", "batch_last"]


def use_lowering(monkeypatch, mode: str) -> None:
    """Force one of the GEMM lowerings of conv.py, whatever the sizes."""
    per_image = mode.startswith("per_image")
    monkeypatch.setattr(conv_mod, "PER_IMAGE_MIN_POSITIONS", 1 if per_image else 10 ** 9)
    monkeypatch.setattr(conv_mod, "PER_IMAGE_MIN_MACS", 1)
    monkeypatch.setattr(conv_mod, "STACKED_WGRAD_MAX_BYTES", 10 ** 12 if mode.endswith("stacked_wgrad") else 0)
    monkeypatch.setattr(conv_mod, "BATCH_LAST_MIN_BATCH", 1 if mode == "batch_last" else 10 ** 9)
    monkeypatch.setattr(conv_mod, "BATCH_LAST_MAX_WIDTH", 10 ** 9)


@pytest.mark.parametrize("mode", LOWERINGS)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_convolution_forward_and_gradient(case, mode, monkeypatch):
    use_lowering(monkeypatch, mode)
    spec = CONV_CASES[case]
    text = conv_text(**spec["p"])
    x = randn(*spec["shape"])
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    p = spec["p"]
    nsp = len(spec["shape"]) - 2
    if "kernel_h" in p:
        stride, pad = (p["stride_h"], p["stride_w"]), (p["pad_h"], p["pad_w"])
    else:
        stride, pad = (p.get("stride", 1),) * nsp, (p.get("pad", 0),) * nsp
    dil = (p.get("dilation", 1),) * nsp
    w = layer.blobs[0].data
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    ref = naive_conv(x, w, b, stride, pad, dil, p.get("group", 1))
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    check_gradient(text, [x], max_checks=40)


@pytest.mark.parametrize("mode", LOWERINGS)
@pytest.mark.parametrize("p", [dict(num_output=3, kernel_size=4, stride=2, pad=1),
                               dict(num_output=4, kernel_size=3, stride=2, group=2),
                               dict(num_output=2, kernel_size=1)], ids=["k4s2p1", "group2", "1x1"])
def test_deconvolution_is_the_transpose_and_gradient(p, mode, monkeypatch):
    use_lowering(monkeypatch, mode)
    text = conv_text("Deconvolution", **p)
    x = randn(2, 4, 4, 5)
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    k, s, pad = p["kernel_size"], p.get("stride", 1), p.get("pad", 0)
    assert top[0].shape[2:] == (s * 3 + k - 2 * pad, s * 4 + k - 2 * pad)
    # <deconv(x), y> == <x, conv(y)> with the same weights seen as a convolution's (C_in, C_out/g)
    y = randn(*top[0].shape)
    g = p.get("group", 1)
    w = layer.blobs[0].data  # (4, O/g, k, k): as a conv from O to 4 channels its weight is this
    conv_y = naive_conv(y, w, None, (s, s), (pad, pad), (1, 1), g)
    bias = layer.blobs[1].data.reshape(1, -1, 1, 1)
    lhs = float(((top[0].data - bias) * y).sum())
    assert np.isclose(lhs, float((x * conv_y).sum()), rtol=1e-4)
    check_gradient(text, [x], max_checks=40)


def test_deconvolution_nd_and_dilation_gradient():
    check_gradient(conv_text("Deconvolution", num_output=2, kernel_size=2, stride=2, pad=1), [randn(1, 2, 3, 2, 3)],
                   max_checks=30)
    text = conv_text("Deconvolution", num_output=2, kernel_size=3, stride=2, dilation=2)
    layer = check_gradient(text, [randn(2, 2, 3, 3)], max_checks=30)
    assert layer.out_sp == (2 * 2 + 2 * 2 + 1,) * 2


def test_convolution_channel_axis():
    """axis: 2 treats the leading two axes as the batch (Caffe's num_ = count(0, channel_axis))."""
    text = conv_text(num_output=3, kernel_size=2, axis=2)
    x = randn(2, 2, 3, 4, 4)
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    assert top[0].shape == (2, 2, 3, 3, 3)
    ref = naive_conv(x.reshape(4, 3, 4, 4), layer.blobs[0].data, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(top[0].data.reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)
    check_gradient(text, [x], max_checks=30)


def test_convolution_two_bottoms_share_weights_and_accumulate():
    text = conv_text(num_output=2, kernel_size=3, pad=1)
    x1, x2 = randn(1, 2, 4, 4), randn(1, 2, 4, 4)
    layer, bottom, top = setup_layer(text, [x1, x2], n_top=2)
    layer.Forward(bottom, top)
    single, b1, t1 = setup_layer(text, [x1])
    for i in range(2):
        single.blobs[i].data[...] = layer.blobs[i].data
    single.Forward(b1, t1)
    np.testing.assert_allclose(top[0].data, t1[0].data, rtol=1e-6)
    check_gradient(text, [x1, x2], n_top=2, max_checks=30)


def test_param_diffs_accumulate():
    """Caffe's contract: weight and bias gradients are added to what the diff already holds."""
    cases = [(conv_text(num_output=3, kernel_size=3), randn(2, 2, 5, 5)),
             (conv_text("Deconvolution", num_output=3, kernel_size=3, stride=2), randn(2, 2, 3, 3)),
             ('name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 '
              'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', randn(4, 5)),
             ('name: "e" type: "Embed" embed_param { num_output: 3 input_dim: 4 '
              'weight_filler { type: "gaussian" } }', np.array([[0, 3, 3]], np.float32))]
    for text, x in cases:
        layer, bottom, top = setup_layer(text, [x])
        layer.Forward(bottom, top)
        top[0].diff[...] = randn(*top[0].shape)
        prop = [layer.type != "Embed"]
        layer.Backward(top, prop, bottom)
        once = [b.diff.copy() for b in layer.blobs]
        assert any(np.any(d) for d in once)
        layer.Backward(top, prop, bottom)
        for b, d in zip(layer.blobs, once):
            np.testing.assert_allclose(b.diff, 2 * d, rtol=1e-5, err_msg=layer.type)


def test_convolution_errors_name_the_layer():
    with pytest.raises(caffe.CaffeError, match="'c'.*group"):
        setup_layer(conv_text(num_output=4, kernel_size=3, group=2), [randn(1, 3, 5, 5)])
    with pytest.raises(caffe.CaffeError, match="'c'.*kernel_size"):
        setup_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 }', [randn(1, 3, 5, 5)])
    with pytest.raises(caffe.CaffeError, match="'c'.*2D"):
        setup_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_h: 2 kernel_w: 2 }',
                    [randn(1, 3, 5, 5, 5)])
    layer, bottom, top = setup_layer(conv_text(num_output=2, kernel_size=3), [randn(1, 3, 5, 5)])
    bottom[0].reshape((1, 4, 5, 5))
    with pytest.raises(caffe.CaffeError, match="'c'.*channels"):
        layer.Forward(bottom, top)


def test_im2col_layer_and_gradient():
    text = 'name: "i" type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }'
    x = randn(2, 2, 5, 4)
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    assert top[0].shape == (2, 18, 3, 2)
    # channel c*9 + kh*3 + kw of image n at (oy, ox) is x[n, c, oy*2-1+kh, ox*2-1+kw]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    assert top[0].data[1, 9 + 4, 2, 1] == xp[1, 1, 4 + 1, 2 + 1]
    check_gradient(text, [x])


# -- Pooling -------------------------------------------------------------------------------------
POOL_GEOMS = [((7, 7), (3, 3), (2, 2), (1, 1)), ((5, 5), (2, 2), (2, 2), (1, 1)), ((6, 8), (3, 3), (2, 2), (1, 1)),
              ((7, 9), (3, 2), (2, 3), (1, 0)), ((6, 6), (3, 3), (2, 2), (0, 0)), ((5, 6), (2, 2), (3, 3), (0, 0)),
              ((4, 4), (2, 2), (2, 2), (0, 0)), ((3, 5), (3, 5), (1, 1), (0, 0))]


def pool_text(method, k, s, p, extra=""):
    return (f'name: "p" type: "Pooling" pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} '
            f'stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} {extra} }}')


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("geom", POOL_GEOMS, ids=[f"{g[0]}k{g[1]}s{g[2]}p{g[3]}" for g in POOL_GEOMS])
def test_pooling_matches_caffe_loops_and_gradient(method, geom):
    hw, k, s, p = geom
    x = distinct(2, 3, *hw)
    text = pool_text(method, k, s, p)
    n_top = 2 if method == "MAX" else 1
    layer, bottom, top = setup_layer(text, [x], n_top=n_top)
    layer.Forward(bottom, top)
    ref, mask = naive_pool(x, method, k, s, p)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-6, atol=1e-6)
    if np.isnan(ref).any():
        return  # AVE over a window outside the image divides 0 by 0, in Caffe too
    weights = None
    if method == "MAX":
        np.testing.assert_array_equal(top[1].data, mask)
        # windows wholly outside the image (stride > kernel) output -FLT_MAX: keep them out of the sum
        weights = [np.where(mask < 0, 0, randn(*mask.shape)).astype(np.float32)]
    check_gradient(text, [x], top_weights=weights)


def test_max_pool_backward_routes_ties_to_the_first_maximum():
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is a tie
    layer, bottom, top = setup_layer(pool_text("MAX", (3, 3), (1, 1), (1, 1)), [x])
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    expect = np.zeros((4, 4), np.float32)
    for i, j in itertools.product(range(4), range(4)):
        expect[max(i - 1, 0), max(j - 1, 0)] += 1  # first pixel of the clipped window
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expect)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling_and_whole_image_window(method):
    x = distinct(2, 3, 4, 5)
    for text in (f'name: "p" type: "Pooling" pooling_param {{ pool: {method} global_pooling: true }}',
                 pool_text(method, (4, 5), (1, 1), (0, 0))):
        layer, bottom, top = setup_layer(text, [x])
        layer.Forward(bottom, top)
        expect = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
        np.testing.assert_allclose(top[0].data[:, :, 0, 0], expect, rtol=1e-6)
        check_gradient(text, [x])


def test_floor_round_mode():
    x = distinct(1, 1, 6, 6)
    layer, bottom, top = setup_layer('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 '
                                     'stride: 2 round_mode: FLOOR }', [x])
    assert top[0].shape == (1, 1, 2, 2)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, naive_pool(x, "MAX", (3, 3), (2, 2), (0, 0), 1)[0])


def test_pooling_errors():
    x = randn(1, 1, 5, 5)
    with pytest.raises(caffe.CaffeError, match="'p'"):
        setup_layer('name: "p" type: "Pooling" pooling_param { pool: MAX global_pooling: true kernel_size: 2 }', [x])
    with pytest.raises(caffe.CaffeError, match="'p'"):
        setup_layer('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 pad: 2 }', [x])
    with pytest.raises(caffe.CaffeError, match="'p'"):
        setup_layer('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }', [x], n_top=2)
    with pytest.raises(caffe.CaffeError, match="4 axes"):
        setup_layer('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }', [randn(2, 3, 4)])


def test_stochastic_pooling_train_samples_in_window_and_routes_gradient():
    x = np.abs(distinct(2, 2, 6, 6)) + 0.1
    text = 'name: "p" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }'
    set_random_seed(3)
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    ri = caffe.backend.to_numpy(layer.kernel_fn.rand_idx)  # the layer's own (device) array
    mask = ri[..., 0, 0] if ri.ndim > 4 else ri
    plane = x.reshape(2, 2, 36)
    np.testing.assert_array_equal(top[0].data, np.take_along_axis(plane, mask.reshape(2, 2, -1).astype(int),
                                                                   axis=2).reshape(top[0].shape))
    for i, j in itertools.product(range(3), range(3)):  # each sample lies inside its window
        h, w = np.divmod(mask[:, :, i, j], 6)
        assert np.all((h >= 2 * i) & (h < 2 * i + 3) & (w >= 2 * j) & (w < 2 * j + 3))
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    assert bottom[0].diff.sum() == top[0].count
    # TEST: the probability-weighted average sum(x^2)/sum(x)
    layer, bottom, top = setup_layer(text, [x], phase=caffe.TEST)
    layer.Forward(bottom, top)
    w = x[:, :, 0:3, 0:3]
    assert np.isclose(top[0].data[0, 0, 0, 0], (w[0, 0] ** 2).sum() / w[0, 0].sum(), rtol=1e-5)


def test_spp_levels_and_gradient():
    x = distinct(2, 3, 6, 7)
    text = 'name: "s" type: "SPP" spp_param { pyramid_height: 3 pool: MAX }'
    layer, bottom, top = setup_layer(text, [x])
    assert top[0].shape == (2, 3 * (1 + 4 + 16))
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data[:, :3], x.max(axis=(2, 3)))
    start = 3
    for level, (k, p) in enumerate([((3, 4), (0, 1)), ((2, 2), (1, 1))], start=1):
        # 2^level bins: kernel ceil(H/bins), pad (kernel*bins - H + 1)/2, stride = kernel
        ref, _ = naive_pool(x, "MAX", k, k, p)
        assert ref.shape[2:] == (2 ** level, 2 ** level)
        np.testing.assert_allclose(top[0].data[:, start:start + ref[0].size], ref.reshape(2, -1))
        start += ref[0].size
    check_gradient(text, [x])
    check_gradient('name: "s" type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [x])
    layer, bottom, top = setup_layer('name: "s" type: "SPP" spp_param { pyramid_height: 1 }', [x])
    assert top[0].shape == (2, 3, 1, 1)
    with pytest.raises(caffe.CaffeError, match="'s'.*pad"):  # level 2 of a 5-high input pads by 2 >= 2
        setup_layer('name: "s" type: "SPP" spp_param { pyramid_height: 3 }', [randn(1, 1, 5, 5)])


# -- InnerProduct, Embed ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra,shape", [("", (3, 2, 3)), ("axis: 2", (2, 3, 4)), ("transpose: true", (4, 5)),
                                         ("bias_term: false axis: -1", (2, 2, 3))])
def test_inner_product_gradient(extra, shape):
    text = ('name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 ' + extra +
            ' weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
    x = randn(*shape)
    layer = check_gradient(text, [x])
    layer2, bottom, top = setup_layer(text, [x])
    for i, b in enumerate(layer2.blobs):
        b.data[...] = layer.blobs[i].data
    layer2.Forward(bottom, top)
    axis = 2 if "axis: 2" in extra else (len(shape) - 1 if "-1" in extra else 1)
    w = layer.blobs[0].data
    w = w if "transpose" in extra else w.T
    ref = x.reshape(int(np.prod(shape[:axis])), -1) @ w
    if "bias_term: false" not in extra:
        ref += layer.blobs[1].data
    assert top[0].shape == shape[:axis] + (3,)
    np.testing.assert_allclose(top[0].data.reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)


def test_inner_product_rejects_a_different_input_size():
    text = 'name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 }'
    layer, bottom, top = setup_layer(text, [randn(2, 4)])
    bottom[0].reshape((2, 5))
    with pytest.raises(caffe.CaffeError, match="'ip'"):
        layer.Forward(bottom, top)


def test_embed_gradient_and_values():
    text = ('name: "e" type: "Embed" embed_param { num_output: 3 input_dim: 5 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    idx = np.array([[0, 4, 4], [2, 1, 4]], np.float32)
    layer = check_gradient(text, [idx], check_bottom=[])
    layer2, bottom, top = setup_layer(text, [idx])
    layer2.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, layer2.blobs[0].data[idx.astype(int)] + layer2.blobs[1].data)
    bottom[0].data[0, 0] = 5
    with pytest.raises(caffe.CaffeError, match="'e'"):
        layer2.Forward(bottom, top)
    assert not layer.allow_force_backward(0)


# -- LRN, BatchNorm, MVN ------------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["local_size: 3 alpha: 0.5 beta: 0.75 k: 2",
                                   "local_size: 5 alpha: 1.5 beta: 0.6",
                                   "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL",
                                   "local_size: 5 alpha: 2 beta: 1.2 norm_region: WITHIN_CHANNEL"])
def test_lrn_forward_and_gradient(extra):
    text = f'name: "n" type: "LRN" lrn_param {{ {extra} }}'
    x = randn(2, 6, 4, 5)
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    p = layer.layer_param.lrn_param
    half = (p.local_size - 1) // 2
    sq = x.astype(np.float64) ** 2
    if p.norm_region == 0:
        pad = np.pad(sq, ((0, 0), (half, half), (0, 0), (0, 0)))
        s = sum(pad[:, i:i + 6] for i in range(p.local_size))
        scale = p.k + p.alpha / p.local_size * s
    else:
        pad = np.pad(sq, ((0, 0), (0, 0), (half, half), (half, half)))
        s = sum(pad[:, :, i:i + 4, j:j + 5] for i in range(p.local_size) for j in range(p.local_size))
        scale = 1 + p.alpha * s / p.local_size ** 2
    np.testing.assert_allclose(top[0].data, x * scale ** -p.beta, rtol=1e-5, atol=1e-6)
    check_gradient(text, [x], step=1e-3)


def test_lrn_rejects_even_size():
    with pytest.raises(caffe.CaffeError, match="odd"):
        setup_layer('name: "n" type: "LRN" lrn_param { local_size: 4 }', [randn(1, 4, 2, 2)])


@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (5, 4)])
def test_batchnorm_train_gradient_and_statistics(shape):
    text = 'name: "bn" type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 1e-5 }'
    x = randn(*shape) * 2 + 1
    layer = check_gradient(text, [x], step=1e-3, max_checks=40)
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    layer, bottom, top = setup_layer(text, [x])
    for _ in range(2):
        layer.Forward(bottom, top)
    axes = (0,) + tuple(range(2, len(shape)))
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    m = x.size // shape[1]
    np.testing.assert_allclose(layer.blobs[2].data, [0.9 * 1 + 1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, mean * 1.9, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1) * 1.9, rtol=1e-5)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    np.testing.assert_allclose(top[0].data, (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5),
                               rtol=1e-4, atol=1e-5)


def test_batchnorm_global_stats_and_in_place():
    text = 'name: "bn" type: "BatchNorm"'
    x = randn(3, 2, 2, 2)
    layer, bottom, _ = setup_layer(text, [x], phase=caffe.TEST)
    layer.blobs[0].data[...] = [1.0, -2.0]
    layer.blobs[1].data[...] = [4.0, 8.0]
    layer.blobs[2].data[...] = 2.0
    layer.Forward(bottom, bottom)  # in place
    expect = (x - np.array([0.5, -1]).reshape(1, 2, 1, 1)) / np.sqrt(np.array([2.0, 4.0]).reshape(1, 2, 1, 1) + 1e-5)
    np.testing.assert_allclose(bottom[0].data, expect, rtol=1e-5)
    dy = randn(*x.shape)
    bottom[0].diff[...] = dy
    layer.Backward(bottom, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy / np.sqrt(np.array([2.0, 4.0]).reshape(1, 2, 1, 1) + 1e-5),
                               rtol=1e-5)
    with pytest.raises(caffe.CaffeError, match="'bn'"):
        setup_layer('name: "bn" type: "BatchNorm" param { lr_mult: 1 }', [x])


@pytest.mark.parametrize("extra", ["", "normalize_variance: false", "across_channels: true",
                                   "across_channels: true normalize_variance: false"])
def test_mvn_forward_and_gradient(extra):
    text = f'name: "m" type: "MVN" mvn_param {{ {extra} }}'
    x = randn(2, 3, 3, 4)
    layer = check_gradient(text, [x], step=1e-3)
    layer, bottom, top = setup_layer(text, [x])
    layer.Forward(bottom, top)
    axes = (1, 2, 3) if "across" in extra else (2, 3)
    ref = x - x.mean(axis=axes, keepdims=True)
    if "normalize_variance: false" not in extra:
        ref = ref / (np.sqrt((ref ** 2).mean(axis=axes, keepdims=True)) + 1e-9)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-5)


def test_float32_throughout():
    """No layer silently upcasts: every top stays float32 (the Blob enforces the dtype of data)."""
    for text, x in [(conv_text(num_output=2, kernel_size=3), randn(1, 2, 5, 5)),
                    (pool_text("AVE", (2, 2), (2, 2), (0, 0)), randn(1, 2, 4, 4)),
                    ('name: "n" type: "LRN"', randn(1, 5, 3, 3))]:
        layer, bottom, top = setup_layer(text, [x])
        layer.Forward(bottom, top)
        assert top[0].data.dtype == np.float32
