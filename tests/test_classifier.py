"""caffe.Classifier and caffe.Detector used as in pycaffe's classify.py / detect.py scripts."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_fc as caffe

from conftest import REF, need_shared

IMAGES = REF / "data" / "images"

TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 3 dim: 10 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
MEAN = np.array([104.0, 117.0, 123.0], np.float32)


@pytest.fixture
def tiny_model(tmp_path):
    """A deploy prototxt and random-weight .caffemodel (batch 3, so 10 crops need padding)."""
    model = tmp_path / "deploy.prototxt"
    model.write_text(TINY_NET)
    caffe.set_random_seed(0)
    net = caffe.Net(str(model), caffe.TEST)
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return str(model), str(weights)


def make_classifier(model, weights):
    return caffe.Classifier(model, weights, image_dims=(14, 14), mean=MEAN, raw_scale=255,
                            channel_swap=(2, 1, 0))


def run_crops(clf, crops):
    """The net's output for each H x W x K crop, one forward per crop (the reference)."""
    out = []
    for c in crops:
        x = clf.transformer.preprocess("data", c)
        out.append(clf.forward(data=np.stack([x] * 3))["prob"][0].copy())
    return np.array(out)


def test_classifier_oversampled_predictions_average_the_ten_crops(tiny_model):
    clf = make_classifier(*tiny_model)
    ims = [caffe.io.load_image(str(need_shared(IMAGES / "img_00.png"))),
           caffe.io.load_image(str(need_shared(IMAGES / "img_01.jpg")))]
    assert list(clf.crop_dims) == [10, 10] and list(clf.image_dims) == [14, 14]
    pred = clf.predict(ims)  # oversample=True: 10 crops per image
    assert pred.shape == (2, 5)
    np.testing.assert_allclose(pred.sum(1), 1, rtol=1e-5)
    for im, p in zip(ims, pred):
        crops = caffe.io.oversample([caffe.io.resize_image(im, (14, 14))], (10, 10))
        per_crop = run_crops(clf, crops)
        np.testing.assert_allclose(p, per_crop.mean(0), rtol=1e-5, atol=1e-7)
        assert not np.allclose(per_crop[0], per_crop[4])  # the crops do differ


def test_classifier_centre_crop(tiny_model):
    clf = make_classifier(*tiny_model)
    im = caffe.io.load_image(str(need_shared(IMAGES / "img_02.png")))
    pred = clf.predict([im, im, im, im], oversample=False)  # 4 images: a padded second batch
    assert pred.shape == (4, 5)
    centre = caffe.io.resize_image(im, (14, 14))[2:12, 2:12]
    np.testing.assert_allclose(pred, np.repeat(run_crops(clf, [centre]), 4, axis=0), rtol=1e-5, atol=1e-7)
    # the preprocessing pycaffe scripts configure: HxWxK RGB [0,1] -> KxHxW BGR [0,255] - mean
    x = clf.transformer.preprocess("data", centre)
    np.testing.assert_allclose(x, centre.transpose(2, 0, 1)[::-1] * 255 - MEAN[:, None, None], rtol=1e-5)


def test_detector_windows(tiny_model):
    model, weights = tiny_model
    det = caffe.Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    path = str(need_shared(IMAGES / "img_00.png"))  # 47 x 36
    windows = [np.array([0, 0, 20, 20]), np.array([10, 5, 40, 30]), np.array([3, 3, 13, 13])]
    dets = det.detect_windows([(path, windows)])
    assert len(dets) == 3 and all(d["filename"] == path for d in dets)
    im = caffe.io.load_image(path)
    for d, w in zip(dets, windows):
        np.testing.assert_array_equal(d["window"], w)
        assert d["prediction"].shape == (5,)
        expected = run_crops(det, [im[w[0]:w[2], w[1]:w[3]]])[0]  # the window warped to 10 x 10
        np.testing.assert_allclose(d["prediction"], expected, rtol=1e-5, atol=1e-7)
    ctx = caffe.Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=2)
    assert ctx.crop_mean.shape == (1, 1, 3)
    np.testing.assert_allclose(ctx.crop_mean[0, 0], MEAN[::-1] / 255)  # the mean in raw RGB [0,1]
    crop = ctx.crop(im, np.array([0, 0, 20, 20]))
    assert crop.shape == (10, 10, 3)
    # the window touches the image corner: its context above and left is mean padding
    np.testing.assert_allclose(crop[0, 0], MEAN[::-1] / 255)
    dets = ctx.detect_windows([(path, windows)])
    assert [d["prediction"].shape for d in dets] == [(5,)] * 3
