"""caffe.io as pycaffe scripts use it: load_image, resize_image, oversample, Transformer, protos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2

from conftest import REF, need_shared

IMAGES = REF / "data" / "images"


# -- load_image ------------------------------------------------------------------------------------
def test_load_image_is_rgb_float_in_unit_range():
    path = need_shared(IMAGES / "img_00.png")
    im = caffe.io.load_image(str(path))
    bgr = cv2.imread(str(path))
    assert im.dtype == np.float32 and im.shape == bgr.shape
    np.testing.assert_allclose(im, bgr[:, :, ::-1] / 255.0, atol=1e-7)
    jpg = caffe.io.load_image(str(need_shared(IMAGES / "img_01.jpg")))
    assert jpg.ndim == 3 and jpg.shape[2] == 3 and 0 <= jpg.min() and jpg.max() <= 1


def test_load_image_grey():
    path = need_shared(IMAGES / "img_00.png")
    rgb = caffe.io.load_image(str(path))
    grey = caffe.io.load_image(str(path), color=False)
    assert grey.shape == rgb.shape[:2] + (1,) and grey.dtype == np.float32
    # skimage's rgb2gray weights, as pycaffe's as_grey loading gives
    np.testing.assert_allclose(grey[:, :, 0], rgb @ np.array([0.2125, 0.7154, 0.0721]), atol=1e-6)


def test_load_image_grey_file_alpha_and_16_bit(tmp_path):
    g = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "g.png"), g)
    im = caffe.io.load_image(str(tmp_path / "g.png"))
    assert im.shape == (3, 4, 3)
    np.testing.assert_allclose(im, np.repeat(g[:, :, None] / 255.0, 3, axis=2), atol=1e-7)
    assert caffe.io.load_image(str(tmp_path / "g.png"), color=False).shape == (3, 4, 1)
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 255, 10, 128
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    im = caffe.io.load_image(str(tmp_path / "a.png"))
    assert im.shape == (2, 2, 3)
    np.testing.assert_allclose(im[0, 0], [10 / 255, 0, 1], atol=1e-7)  # RGB, alpha dropped
    w = np.full((2, 3), 65535, np.uint16)
    w[0, 0] = 0
    cv2.imwrite(str(tmp_path / "w.png"), w)
    im = caffe.io.load_image(str(tmp_path / "w.png"), color=False)
    assert im[0, 0, 0] == 0 and im[1, 1, 0] == 1


def test_load_image_missing_file():
    with pytest.raises(CaffeError, match="no_such.png: cannot read image"):
        caffe.io.load_image("no_such.png")


# -- resize_image / oversample ---------------------------------------------------------------------
def test_resize_image():
    rng = np.random.default_rng(0)
    im = rng.random((10, 14, 3)).astype(np.float32)
    out = caffe.io.resize_image(im, (20, 7))
    assert out.shape == (20, 7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, cv2.resize(im, (7, 20), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    one = caffe.io.resize_image(im[:, :, :1], (5, 5))
    assert one.shape == (5, 5, 1)
    nearest = caffe.io.resize_image(im, (20, 28), interp_order=0)
    np.testing.assert_array_equal(nearest[::2, ::2], im)
    const = caffe.io.resize_image(np.full((4, 4, 3), 0.25, np.float32), (9, 2))
    assert const.shape == (9, 2, 3) and np.all(const == 0.25)
    wide = rng.random((6, 5, 600)).astype(np.float32)  # more channels than cv::resize takes at once
    w = caffe.io.resize_image(wide, (3, 4))
    assert w.shape == (3, 4, 600)
    np.testing.assert_allclose(w[:, :, 550], caffe.io.resize_image(wide[:, :, 550:551], (3, 4))[:, :, 0],
                               atol=1e-6)


def test_oversample_four_corners_centre_and_mirrors():
    ims = np.arange(2 * 6 * 8 * 2, dtype=np.float32).reshape(2, 6, 8, 2)
    crops = caffe.io.oversample(list(ims), (4, 4))
    assert crops.shape == (20, 4, 4, 2) and crops.dtype == np.float32
    for n, im in enumerate(ims):
        c = crops[10 * n:10 * (n + 1)]
        expected = [im[:4, :4], im[:4, 4:], im[2:, :4], im[2:, 4:], im[1:5, 2:6]]
        for k in range(5):
            np.testing.assert_array_equal(c[k], expected[k])
            np.testing.assert_array_equal(c[5 + k], expected[k][:, ::-1])
    # pycaffe truncates the centre offset: 227 of 256 starts at 14
    big = np.zeros((1, 256, 256, 1), np.float32)
    big[0, 14, 14, 0] = 1
    assert caffe.io.oversample(big, (227, 227))[4, 0, 0, 0] == 1


# -- Transformer -----------------------------------------------------------------------------------
def make_transformer():
    t = caffe.io.Transformer({"data": (4, 3, 5, 6)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_and_deprocess():
    t = make_transformer()
    im = np.random.default_rng(2).random((5, 6, 3)).astype(np.float32)
    x = t.preprocess("data", im)
    expected = (im.transpose(2, 0, 1)[::-1] * 255 - np.array([104, 117, 123.0])[:, None, None]) * 0.5
    assert x.shape == (3, 5, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x), im, atol=1e-5)
    np.testing.assert_array_equal(im, np.random.default_rng(2).random((5, 6, 3)).astype(np.float32))
    # an image of another size is resized first
    big = caffe.io.resize_image(im, (10, 12))
    assert t.preprocess("data", big).shape == (3, 5, 6)
    # the batch path equals image by image
    batch = np.stack([im, 1 - im])
    np.testing.assert_allclose(t.preprocess_batch("data", batch),
                               np.stack([t.preprocess("data", im), t.preprocess("data", 1 - im)]), rtol=1e-6)


def test_transformer_elementwise_mean_and_errors():
    t = caffe.io.Transformer({"data": (1, 3, 2, 2)})
    mean = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", mean)
    im = np.ones((2, 2, 3), np.float32)
    np.testing.assert_allclose(t.preprocess("data", im), 1 - mean)
    with pytest.raises(CaffeError, match="'label' is not one of the net inputs"):
        t.preprocess("label", im)
    with pytest.raises(CaffeError, match="transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(CaffeError, match="channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(CaffeError, match="mean has 2 channels"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(CaffeError, match="does not match the input"):
        t.set_mean("data", np.zeros((3, 4, 4)))


# -- Datum and BlobProto ---------------------------------------------------------------------------
def test_datum_round_trip():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    d = caffe.io.array_to_datum(a, label=7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7) and d.data == a.tobytes()
    np.testing.assert_array_equal(caffe.io.datum_to_array(d), a)
    f = np.linspace(0, 1, 6).reshape(1, 2, 3)
    df = caffe.io.array_to_datum(f)
    assert len(df.data) == 0 and len(df.float_data) == 6
    np.testing.assert_allclose(caffe.io.datum_to_array(df), f, rtol=1e-6)


def test_blobproto_helpers():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 2, 2, 2), np.float32)]
    s = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert [b.shape for b in back] == [(2, 3), (1, 2, 2, 2)]
    np.testing.assert_array_equal(back[0], arrays[0])
    bp = caffe.io.array_to_blobproto(arrays[0], diff=-arrays[0])
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(bp, return_diff=True), -arrays[0])
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=list(range(6)))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 1, 2, 3)


def test_mean_binaryproto_as_pycaffe_reads_it():
    path = need_shared(REF / "data" / "mean_resize32.binaryproto")
    bp = caffe_pb2.BlobProto()
    bp.ParseFromString(path.read_bytes())
    mean = caffe.io.blobproto_to_array(bp)
    assert mean.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(mean[0].mean(axis=(1, 2)), [121.298, 129.336, 124.673], atol=1e-3)
