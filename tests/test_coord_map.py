"""caffe.coord_map as FCN users use it: crop layers for the published FCN-32s/16s/8s VGG nets get
the offsets of the released prototxts (19; 5, 27; 5, 9, 31), and a crop computed by coord_map
aligns a net's output with its input pixel for pixel."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import layers as L
from pycaffe_fc import params as P
from pycaffe_fc.coord_map import (AxisMismatchException, UndefinedMapException, coord_map_from_to,
                                  crop)
from pycaffe_fc.errors import CaffeError


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def fcn_vgg16(kind: str) -> caffe.NetSpec:
    """fcn.berkeleyvision.org's voc-fcn{32,16,8}s net.py, deploy form (an Input instead of data)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 500, 500]))
    top = n.data
    for stage, (nout, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for r in range(1, reps + 1):
            conv, relu = conv_relu(top, nout, pad=100 if (stage, r) == (1, 1) else 1)
            n[f"conv{stage}_{r}"], n[f"relu{stage}_{r}"] = conv, relu
            top = relu
        n[f"pool{stage}"] = top = max_pool(top)
    n.fc6, n.relu6 = conv_relu(n.pool5, 4096, ks=7, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 4096, ks=1, pad=0)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop7, num_output=21, kernel_size=1, pad=0)
    if kind == "32s":
        n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
            num_output=21, kernel_size=64, stride=32, bias_term=False))
        n.score = crop(n.upscore, n.data)
        return n
    n.upscore2 = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=21, kernel_size=4, stride=2, bias_term=False))
    n.score_pool4 = L.Convolution(n.pool4, num_output=21, kernel_size=1, pad=0)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    if kind == "16s":
        n.upscore16 = L.Deconvolution(n.fuse_pool4, convolution_param=dict(
            num_output=21, kernel_size=32, stride=16, bias_term=False))
        n.score = crop(n.upscore16, n.data)
        return n
    n.upscore_pool4 = L.Deconvolution(n.fuse_pool4, convolution_param=dict(
        num_output=21, kernel_size=4, stride=2, bias_term=False))
    n.score_pool3 = L.Convolution(n.pool3, num_output=21, kernel_size=1, pad=0)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = L.Deconvolution(n.fuse_pool3, convolution_param=dict(
        num_output=21, kernel_size=16, stride=8, bias_term=False))
    n.score = crop(n.upscore8, n.data)
    return n


@pytest.mark.parametrize("kind,offsets", [("32s", {"score": 19}),
                                          ("16s", {"score_pool4c": 5, "score": 27}),
                                          ("8s", {"score_pool4c": 5, "score_pool3c": 9, "score": 31})])
def test_fcn_crops_have_the_published_offsets(kind, offsets):
    layers = {lp.name: lp for lp in fcn_vgg16(kind).to_proto().layer}
    for name, off in offsets.items():
        assert layers[name].type == "Crop"
        assert layers[name].crop_param.axis == 2 and list(layers[name].crop_param.offset) == [off]


def _delta_conv(bottom, ks, pad, at):
    w = np.zeros((1, 1, ks, ks), np.float32)
    w[0, 0, at, at] = 1
    return L.Convolution(bottom, num_output=1, kernel_size=ks, pad=pad, bias_term=False), w


def test_crop_aligns_output_with_input_pixel_for_pixel(tmp_path):
    """Shifting convolutions (a one-hot kernel) move the image; the crop coord_map computes must
    move it back exactly, through a pass-through ReLU, whatever the shifts."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 9, 11]))
    n.c1, w1 = _delta_conv(n.data, 3, 5, 1)
    n.r1 = L.ReLU(n.c1, in_place=True)
    n.c2, w2 = _delta_conv(n.r1, 5, 3, 2)
    n.out = crop(n.c2, n.data)
    assert coord_map_from_to(n.c2, n.data)[2].tolist() == [-5.0]
    p = tmp_path / "shift.prototxt"
    p.write_text(str(n.to_proto()))
    net = caffe.Net(str(p), caffe.TEST)
    net.params["c1"][0].data[...] = w1
    net.params["c2"][0].data[...] = w2
    x = np.random.default_rng(0).random((2, 1, 9, 11)).astype(np.float32) + 0.1
    out = net.forward(data=x)["out"]
    assert net.blobs["c2"].shape == (2, 1, 19, 21)
    np.testing.assert_array_equal(out, x)


def test_coord_map_mistakes_raise_pycaffes_exception_types():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.pool = max_pool(n.data)
    n.valid = L.Convolution(n.data, num_output=3, kernel_size=3)
    with pytest.raises(AssertionError, match="scale mismatch"):  # pycaffe asserts
        crop(n.pool, n.data)
    assert crop(n.data, n.valid).fn.params["crop_param"] == dict(axis=2, offset=[1])
    with pytest.raises(AssertionError, match="negative offset"):  # the smaller cannot cover the larger
        crop(n.valid, n.data)
    n.ip = L.InnerProduct(n.data, num_output=4)
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        crop(n.ip, n.data)
    with pytest.raises(CaffeError):  # each is also fc-caffe's one-line error type
        crop(n.ip, n.data)
    n.c = L.Convolution(n.data, num_output=3, kernel_h=3, kernel_w=3)
    with pytest.raises(UndefinedMapException):
        from pycaffe_fc.coord_map import coord_map
        coord_map(n.c.fn)
    with pytest.raises(AxisMismatchException):
        from pycaffe_fc.coord_map import compose
        compose((2, 1, 0), (1, 1, 0))
    assert caffe.coord_map.crop is crop  # reachable as caffe.coord_map
