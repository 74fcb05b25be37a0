"""WindowData (pycaffe_fc/layers/window_data.py): R-CNN window files, sampling and warping."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_fc as caffe
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.layers.window_data import read_window_file
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.proto.io import fill_blobproto

RCNN = Path(__file__).resolve().parents[2] / "shared" / "caffe-models" / "bvlc_reference_rcnn_ilsvrc13"


def _images(tmp_path, sizes=((20, 20), (24, 30))):
    g = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def _window_file(tmp_path, entries, prefix=""):
    """entries: [(image path, (h, w), [(label, overlap, x1, y1, x2, y2), ...]), ...]"""
    lines = []
    for i, (path, (h, w), windows) in enumerate(entries):
        lines += [f"# {i}", f"{prefix}{path}", "3", str(h), str(w), str(len(windows))]
        lines += [" ".join(str(v) for v in win) for win in windows]
    f = tmp_path / "windows.txt"
    f.write_text("\n".join(lines) + "\n")
    return f


def _layer_net(tmp_path, source, batch=4, crop=10, extra="", transform="", phase=caffe.TRAIN):
    f = tmp_path / "wd.prototxt"
    f.write_text(f"""
layer {{ name: "data" type: "WindowData" top: "data" top: "label"
  transform_param {{ crop_size: {crop} {transform} }}
  window_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}
""")
    return caffe.Net(str(f), phase)


def test_window_file_parsing(tmp_path):
    a, b = _images(tmp_path)
    src = _window_file(tmp_path, [(a.name, (20, 20), [(3, 0.9, 0, 0, 9, 9), (5, 0.4, 1, 1, 5, 5),
                                                      (2, 0.1, 2, 2, 8, 8)]),
                                  (b.name, (24, 30), [(4, 0.5, 3, 3, 12, 12), (1, 0.3, 0, 0, 4, 4)])],
                       prefix="")
    images, fg, bg = read_window_file(str(src), str(tmp_path) + "/", 0.5, 0.35, "t")
    assert images == [(str(a), (3, 20, 20)), (str(b), (3, 24, 30))]
    assert [w[:3] for w in fg] == [(0, 3, pytest.approx(0.9)), (1, 4, 0.5)]
    # overlap < bg_threshold: background, label and overlap forced to 0; 0.4 is dropped
    assert [w[:3] for w in bg] == [(0, 0, 0.0), (1, 0, 0.0)]
    assert bg[0][3:] == (2, 2, 8, 8)
    bad = tmp_path / "bad.txt"
    bad.write_text("# 0\nim0.png\n3\n20\n20\n1\n0 0.8 0 0 9 9\n")
    with pytest.raises(CaffeError, match=r"bad.txt:7: foreground window .* class_label > 0"):
        read_window_file(str(bad), "", 0.5, 0.5, "t")
    bad.write_text("# 0\nim0.png\n3\n20\nwide\n")
    with pytest.raises(CaffeError, match=r"bad.txt:5: expected width, got 'wide'"):
        read_window_file(str(bad), "", 0.5, 0.5, "t")
    bad.write_text("")
    with pytest.raises(CaffeError, match="empty"):
        read_window_file(str(bad), "", 0.5, 0.5, "t")


def test_warp_without_context_matches_opencv(tmp_path):
    (a,) = _images(tmp_path, [(20, 20)])
    src = _window_file(tmp_path, [(a, (20, 20), [(1, 1.0, 3, 4, 12, 17), (0, 0.0, 3, 4, 12, 17)])])
    net = _layer_net(tmp_path, src, batch=2, crop=8, extra="fg_fraction: 0.5 scale: 0.5",
                     transform="mean_value: 10 mean_value: 20 mean_value: 30")
    net.forward()
    img = cv2.imread(str(a)).astype(np.float32)
    warped = cv2.resize(cv2.imread(str(a))[4:18, 3:13], (8, 8), interpolation=cv2.INTER_LINEAR)
    want = (warped.transpose(2, 0, 1).astype(np.float32) - np.array([10, 20, 30], np.float32)[:, None, None]) * 0.5
    assert img.shape == (20, 20, 3)
    for k in range(2):
        np.testing.assert_array_equal(net.blobs["data"].data[k], want)
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])  # background first


def test_context_padding_clipping_and_mirror(tmp_path):
    (a,) = _images(tmp_path, [(20, 20)])
    raw = cv2.imread(str(a))
    # window (0,0)-(9,9), crop 10, context_pad 2: expanded to (-3,-3)-(13,13), clipped to
    # (0,0)-(13,13), warped to 8x8 and placed at offset 2 (round(3 * 10/17)) of the 10x10 crop
    src = _window_file(tmp_path, [(a, (20, 20), [(1, 1.0, 0, 0, 9, 9)])])
    net = _layer_net(tmp_path, src, batch=1, crop=10, extra="fg_fraction: 1 context_pad: 2")
    net.forward()
    d = net.blobs["data"].data[0]
    patch = cv2.resize(raw[0:14, 0:14], (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(d[:, 2:, 2:], patch)
    assert not d[:, :2, :].any() and not d[:, :, :2].any()
    # mirrored: the image flips and so does the padding (left pad becomes the right one, 0 here)
    mirrored = _layer_net(tmp_path, src, batch=1, crop=10, extra="fg_fraction: 1 context_pad: 2",
                          transform="mirror: true")
    seen = set()
    for _ in range(12):
        mirrored.forward()
        d = mirrored.blobs["data"].data[0]
        if d[:, 2:, 2:].any() and np.array_equal(d[:, 2:, 2:], patch):
            seen.add("plain")
        elif np.array_equal(d[:, 2:, :8], patch[:, :, ::-1]):
            assert not d[:, :, 8:].any()
            seen.add("mirrored")
    assert seen == {"plain", "mirrored"}
    # an interior window keeps its context from the image: (5,5)-(14,14) -> (2,2)-(18,18)
    src2 = _window_file(tmp_path, [(a, (20, 20), [(1, 1.0, 5, 5, 14, 14)])])
    net = _layer_net(tmp_path, src2, batch=1, crop=10, extra="fg_fraction: 1 context_pad: 2")
    net.forward()
    want = cv2.resize(raw[2:19, 2:19], (10, 10), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(net.blobs["data"].data[0], want)


def test_square_crop_mode(tmp_path):
    (a,) = _images(tmp_path, [(20, 20)])
    raw = cv2.imread(str(a))
    # window (4,8)-(13,11) is 10 wide, 4 high; square makes it 10x10 around its centre (9, 10)
    src = _window_file(tmp_path, [(a, (20, 20), [(1, 1.0, 4, 8, 13, 11)])])
    net = _layer_net(tmp_path, src, batch=1, crop=10, extra='fg_fraction: 1 crop_mode: "square"')
    net.forward()
    want = cv2.resize(raw[5:16, 4:15], (10, 10), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(net.blobs["data"].data[0], want)


def test_mean_file_is_centred_on_the_crop(tmp_path):
    (a,) = _images(tmp_path, [(20, 20)])
    mean = np.random.default_rng(3).uniform(0, 255, (1, 3, 14, 14)).astype(np.float32)
    bp = caffe_pb2.BlobProto()
    fill_blobproto(bp, mean)
    mf = tmp_path / "mean.binaryproto"
    mf.write_bytes(bp.SerializeToString())
    src = _window_file(tmp_path, [(a, (20, 20), [(1, 1.0, 3, 4, 12, 17)])])
    net = _layer_net(tmp_path, src, batch=1, crop=10, extra="fg_fraction: 1", transform=f'mean_file: "{mf}"')
    net.forward()
    warped = cv2.resize(cv2.imread(str(a))[4:18, 3:13], (10, 10), interpolation=cv2.INTER_LINEAR)
    want = warped.transpose(2, 0, 1).astype(np.float32) - mean[0, :, 2:12, 2:12]
    np.testing.assert_allclose(net.blobs["data"].data[0], want, rtol=1e-6)


def test_sampling_fractions_seed_and_cache(tmp_path):
    a, b = _images(tmp_path)
    fg = [(1 + i % 3, 0.8, i, i, i + 8, i + 8) for i in range(6)]
    bg = [(0, 0.1, 2, 2, 15, 15), (0, 0.0, 5, 1, 19, 10)]
    src = _window_file(tmp_path, [(a.name, (20, 20), fg[:3] + bg), (b.name, (24, 30), fg[3:])])
    extra = f'root_folder: "{tmp_path}/" fg_threshold: 0.5 bg_threshold: 0.3 context_pad: 1'
    caffe.set_random_seed(5)
    net = _layer_net(tmp_path, src, batch=8, crop=12, extra=extra, transform="mirror: true")
    caffe.set_random_seed(5)
    cached = _layer_net(tmp_path, src, batch=8, crop=12, extra=extra + " cache_images: true",
                        transform="mirror: true")
    assert net.blobs["data"].data.shape == (8, 3, 12, 12) and net.blobs["label"].data.shape == (8,)
    firsts = []
    for _ in range(25):
        net.forward()
        cached.forward()
        lab = net.blobs["label"].data
        # int(8 * 0.25) = 2 foreground windows, after the 6 background ones
        assert (lab[:6] == 0).all() and (lab[6:] > 0).all()
        np.testing.assert_array_equal(net.blobs["data"].data, cached.blobs["data"].data)
        firsts.append(net.blobs["data"].data[6].copy())
    # with replacement from all 6 foreground windows: more than one distinct window appears
    assert len({f.tobytes() for f in firsts}) > 3


def test_data_parallel_workers_split_the_single_worker_batch(tmp_path):
    from pycaffe_fc.data.sharding import clear_shard, set_shard
    a, b = _images(tmp_path)
    wins = [(1 + i % 3, 0.8, i, i, i + 8, i + 8) for i in range(4)] + [(0, 0.1, 2, 2, 15, 15)]
    src = _window_file(tmp_path, [(a, (20, 20), wins), (b, (24, 30), wins[::-1])])

    def batches(n_iter):
        caffe.set_random_seed(7)
        net = _layer_net(tmp_path, src, batch=8, crop=10, extra="context_pad: 1", transform="mirror: true")
        out = []
        for _ in range(n_iter):
            net.forward()
            out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
        return out

    whole = batches(3)
    try:
        parts = []
        for rank in range(2):
            set_shard(rank, 2, split_batch=True)
            parts.append(batches(3))
    finally:
        clear_shard()
    for it in range(3):
        np.testing.assert_array_equal(np.concatenate([p[it][0] for p in parts]), whole[it][0])
        np.testing.assert_array_equal(np.concatenate([p[it][1] for p in parts]), whole[it][1])
    # BVLC's multi-GPU meaning (batch_size per worker): each worker lays out a batch of its own
    try:
        set_shard(1, 2, split_batch=False)
        own = batches(2)
    finally:
        clear_shard()
    for _, labels in own:
        assert labels.shape == (8,) and (labels[:6] == 0).all() and (labels[6:] > 0).all()


def test_errors(tmp_path):
    (a,) = _images(tmp_path, [(20, 20)])
    src = _window_file(tmp_path, [(a, (20, 20), [(1, 1.0, 0, 0, 9, 9)])])
    with pytest.raises(CaffeError, match="transform_param.crop_size"):
        _layer_net(tmp_path, src, crop=0, extra="crop_size: 10")
    with pytest.raises(CaffeError, match="failed to open window file"):
        _layer_net(tmp_path, tmp_path / "nope.txt")
    with pytest.raises(CaffeError, match="no background windows"):
        _layer_net(tmp_path, src, batch=4).forward()
    src = _window_file(tmp_path, [(tmp_path / "missing.png", (20, 20), [(1, 1.0, 0, 0, 9, 9)])])
    with pytest.raises(CaffeError, match="could not open or find file"):
        _layer_net(tmp_path, src, batch=1, extra="fg_fraction: 1")


def test_rcnn_finetuning_net(tmp_path):
    """The published R-CNN ILSVRC13 net fine-tuned as R-CNN does (examples/finetune_pascal_detection):
    its Input replaced by WindowData (crop 227, context_pad 16, warp, mirror, mean values), a new
    21-way classifier and a SoftmaxWithLoss; forward, backward and SGD steps run."""
    g = np.random.default_rng(1)
    entries = []
    for i in range(2):
        h, w = 60 + 10 * i, 80
        img = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = tmp_path / f"voc{i}.jpg"
        cv2.imwrite(str(p), img)
        entries.append((p, (h, w), [(1 + i, 0.7, 5, 5, 40, 50), (3, 0.55, 20, 10, 70, 55),
                                    (0, 0.2, 0, 0, 30, 30), (7, 0.45, 10, 10, 20, 20)]))
    src = _window_file(tmp_path, entries)
    net_param = caffe_pb2.NetParameter()
    text_format.Parse((RCNN / "deploy.prototxt").read_text(), net_param)
    assert net_param.layer[0].type == "Input"
    data = text_format.Parse(f"""name: "data" type: "WindowData" top: "data" top: "label"
      transform_param {{ mirror: true crop_size: 227 mean_value: 104 mean_value: 117 mean_value: 123 }}
      window_data_param {{ source: "{src}" batch_size: 2 fg_threshold: 0.5 bg_threshold: 0.5
        fg_fraction: 0.5 context_pad: 16 crop_mode: "warp" }}""", caffe_pb2.LayerParameter())
    net_param.layer[0].CopyFrom(data)
    last = net_param.layer[-1]
    assert last.type == "InnerProduct"
    last.name, last.top[0] = "fc8_pascal", "fc8_pascal"
    last.inner_product_param.num_output = 21
    last.inner_product_param.weight_filler.type = "gaussian"
    last.inner_product_param.weight_filler.std = 0.01
    for lp in net_param.layer[1:-1]:
        if lp.type == "Convolution":
            lp.convolution_param.weight_filler.type = "gaussian"
            lp.convolution_param.weight_filler.std = 0.01
        elif lp.type == "InnerProduct":  # fc6/fc7: 54M weights, a constant fill keeps the test quick
            lp.inner_product_param.weight_filler.type = "constant"
            lp.inner_product_param.weight_filler.value = 1e-4
    net_param.layer.add().CopyFrom(text_format.Parse(
        'name: "loss" type: "SoftmaxWithLoss" bottom: "fc8_pascal" bottom: "label" top: "loss"',
        caffe_pb2.LayerParameter()))
    f = tmp_path / "rcnn_finetune.prototxt"
    f.write_text(text_format.MessageToString(net_param))
    caffe.set_random_seed(2)
    net = caffe.Net(str(f), caffe.TRAIN)
    assert net.blobs["data"].data.shape == (2, 3, 227, 227)
    loss = net.forward()["loss"]
    assert abs(float(loss) - np.log(21)) < 0.5
    labels = net.blobs["label"].data
    assert labels[0] == 0 and labels[1] in (1, 2, 3)
    net.clear_param_diffs()
    net.backward()
    assert np.abs(net.params["conv1"][0].diff).sum() > 0
