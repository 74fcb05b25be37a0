"""The tools a Caffe user runs, run as a user would: ``fc-caffe extract_features`` on the
quickstart's LeNet (the LMDB it writes decoded by our Datum reader), ``upgrade_net_proto_binary``
on a V1 .caffemodel, ``classify`` and ``detect`` (pycaffe's scripts) on images, and the log tools
as subcommands and as the tools/ scripts."""
from __future__ import annotations

import csv
import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc.cli import main as cli
from pycaffe_fc.data import db as dbmod
from pycaffe_fc.data.datum import datum_to_array
from pycaffe_fc.proto import caffe_pb2

from conftest import REF, ROOT, SHARED, need_shared
from test_data_tools import SYNTHETIC_LOG

cv2 = pytest.importorskip("cv2")
MODELS = SHARED / "caffe-models"
CIFAR_DEPLOY = MODELS / "cifar10" / "cifar10_quick.prototxt"
CIFAR_WEIGHTS = REF / "cifar10_quick_seeded_weights.caffemodel"


def _mnist_lmdb(tmp_path, n=150):
    imgs = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, n, dtype=np.uint8)
    (tmp_path / "i.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes()))
    (tmp_path / "l.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, n) + labels.tobytes()))
    db = tmp_path / "fashion_mnist_test_lmdb"
    assert cli(["convert_mnist_data", str(tmp_path / "i.gz"), str(tmp_path / "l.gz"), str(db)]) == 0
    return db


def test_extract_features_on_the_quickstart_lenet(tmp_path):
    db = _mnist_lmdb(tmp_path)
    text = (ROOT / "models" / "lenet_fashion" / "lenet_train_test.prototxt").read_text()
    text = text.replace("data/fashion_mnist/fashion_mnist_test_lmdb", str(db))
    model = tmp_path / "lenet_train_test.prototxt"
    model.write_text(text)
    caffe.set_random_seed(7)
    caffe.Net(str(model), caffe.TEST).save(str(tmp_path / "lenet.caffemodel"))
    out_ip2, out_pool2 = tmp_path / "ip2_features", tmp_path / "pool2_features"
    assert cli(["extract_features", str(tmp_path / "lenet.caffemodel"), str(model), "ip2,pool2",
                f"{out_ip2},{out_pool2}", "2", "lmdb", "CPU"]) == 0
    # what pycaffe computes for the same two batches
    net = caffe.Net(str(model), caffe.TEST, weights=str(tmp_path / "lenet.caffemodel"))
    expect = {"ip2": [], "pool2": []}
    for _ in range(2):
        net.forward()
        for k in expect:
            expect[k].append(net.blobs[k].data.copy())
    for path, blob, chw in ((out_ip2, "ip2", (10, 1, 1)), (out_pool2, "pool2", (50, 4, 4))):
        records = list(dbmod.iter_lmdb(str(path)))
        assert [k for k, _ in records] == [b"%010d" % i for i in range(200)]  # Caffe's keys
        feats = []
        for _, value in records:
            d = caffe_pb2.Datum.FromString(value)
            assert (d.channels, d.height, d.width) == chw and not d.data and not d.HasField("label")
            feats.append(datum_to_array(d))
        np.testing.assert_array_equal(np.stack(feats).astype(np.float32),
                                      np.concatenate(expect[blob]).reshape((200,) + chw))
    # the user's mistakes: one line each
    assert cli(["extract_features", str(tmp_path / "lenet.caffemodel"), str(model), "nope",
                str(tmp_path / "x"), "1", "lmdb"]) == 1
    assert cli(["extract_features", str(tmp_path / "lenet.caffemodel"), str(model), "ip2,ip1",
                str(tmp_path / "y"), "1", "lmdb"]) == 1
    assert cli(["extract_features", str(tmp_path / "lenet.caffemodel"), str(model), "ip2",
                str(out_ip2), "1", "lmdb"]) == 1  # exists already


def test_extract_features_leveldb(tmp_path):
    pytest.importorskip("plyvel")
    db = _mnist_lmdb(tmp_path, n=20)
    text = (ROOT / "models" / "lenet_fashion" / "lenet_train_test.prototxt").read_text()
    model = tmp_path / "m.prototxt"
    model.write_text(text.replace("data/fashion_mnist/fashion_mnist_test_lmdb", str(db))
                     .replace("batch_size: 100", "batch_size: 8"))
    caffe.Net(str(model), caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    assert cli(["extract_features", str(tmp_path / "w.caffemodel"), str(model), "ip1", str(tmp_path / "f"),
                "3", "leveldb"]) == 0
    records = list(dbmod.iter_leveldb(str(tmp_path / "f")))
    assert len(records) == 24 and caffe_pb2.Datum.FromString(records[0][1]).channels == 500


def test_upgrade_net_proto_binary_v1_caffemodel(tmp_path, capsys):
    need_shared(MODELS)
    v1 = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse((MODELS / "legacy" / "v1_before_e6c80dac" / "mnist__lenet.prototxt").read_text(), v1)
    rng = np.random.default_rng(0)
    weights = {"conv1": [rng.standard_normal((20, 1, 5, 5)), rng.standard_normal(20)],
               "conv2": [rng.standard_normal((50, 20, 5, 5)), rng.standard_normal(50)],
               "ip1": [rng.standard_normal((500, 800)), rng.standard_normal(500)],
               "ip2": [rng.standard_normal((10, 500)), rng.standard_normal(10)]}
    for lp in v1.layers:
        for arr in weights.get(lp.name, []):
            shape = [1] * (4 - arr.ndim) + list(arr.shape)  # V1 blobs: legacy 4-d
            lp.blobs.add(num=shape[0], channels=shape[1], height=shape[2], width=shape[3],
                         data=arr.astype(np.float32).ravel().tolist())
    (tmp_path / "v1.caffemodel").write_bytes(v1.SerializeToString())
    assert cli(["upgrade_net_proto_binary", str(tmp_path / "v1.caffemodel"),
                str(tmp_path / "new.caffemodel")]) == 0
    assert "Wrote upgraded NetParameter binary proto" in capsys.readouterr().out
    new = caffe_pb2.NetParameter.FromString((tmp_path / "new.caffemodel").read_bytes())
    assert not len(new.layers) and [lp.type for lp in new.layer][:3] == ["Input", "Convolution", "Pooling"]
    deploy = MODELS / "legacy" / "v1_upgraded_at_e6c80dac" / "mnist__lenet.prototxt"
    net = caffe.Net(str(deploy), caffe.TEST, weights=str(tmp_path / "new.caffemodel"))
    for name, arrs in weights.items():
        for blob, arr in zip(net.params[name], arrs):
            np.testing.assert_array_equal(blob.data, arr.astype(np.float32).reshape(blob.shape))
    # already current: written as it is, with Caffe's note
    assert cli(["upgrade_net_proto_binary", str(tmp_path / "new.caffemodel"), str(tmp_path / "again")]) == 0
    again = caffe_pb2.NetParameter.FromString((tmp_path / "again").read_bytes())
    assert list(again.layer) == list(new.layer)
    assert cli(["upgrade_net_proto_binary", str(tmp_path / "nope"), str(tmp_path / "x")]) == 1


def _image(path, seed, hw=(40, 48)):
    img = np.random.default_rng(seed).integers(0, 256, hw + (3,), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return path


def test_classify_an_image_as_pycaffes_script(tmp_path):
    need_shared(MODELS)
    need_shared(CIFAR_WEIGHTS)
    img = _image(tmp_path / "cat.jpg", 0)
    mean = np.full((3, 32, 32), 120.0, np.float32)
    np.save(tmp_path / "mean.npy", mean)
    flags = ["--model_def", str(CIFAR_DEPLOY), "--pretrained_model", str(CIFAR_WEIGHTS),
             "--images_dim", "36,36", "--mean_file", str(tmp_path / "mean.npy")]
    assert cli(["classify", str(img), str(tmp_path / "out.npy"), *flags]) == 0
    pred = np.load(tmp_path / "out.npy")
    clf = caffe.Classifier(str(CIFAR_DEPLOY), str(CIFAR_WEIGHTS), image_dims=(36, 36), mean=mean,
                           raw_scale=255.0, channel_swap=(2, 1, 0))
    expect = clf.predict([caffe.io.load_image(str(img))], True)
    assert pred.shape == (1, 10)
    np.testing.assert_allclose(pred, expect, rtol=1e-6)
    np.testing.assert_allclose(pred.sum(1), 1, rtol=1e-5)  # the deploy net ends in Softmax
    # a folder of images (--ext), centre crop only
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        _image(tmp_path / "imgs" / f"{i}.png", i + 1)
    assert cli(["classify", str(tmp_path / "imgs"), str(tmp_path / "dir.npy"), *flags, "--ext", "png",
                "--center_only"]) == 0
    assert np.load(tmp_path / "dir.npy").shape == (3, 10)
    # a 256x256 ImageNet-style mean for a 32x32 net is reduced to channel means
    np.save(tmp_path / "big_mean.npy", np.full((3, 64, 64), 120.0, np.float32))
    flags[-1] = str(tmp_path / "big_mean.npy")
    assert cli(["classify", str(img), str(tmp_path / "out2.npy"), *flags, "--center_only"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out2.npy"), clf.predict([caffe.io.load_image(str(img))], False),
                               rtol=1e-5)
    with pytest.raises(SystemExit):  # argparse: the model files are required
        cli(["classify", str(img), str(tmp_path / "x.npy")])


def test_detect_windows_to_csv_and_h5(tmp_path):
    need_shared(MODELS)
    need_shared(CIFAR_WEIGHTS)
    h5py = pytest.importorskip("h5py")
    a, b = _image(tmp_path / "a.jpg", 0, (60, 80)), _image(tmp_path / "b.jpg", 1, (50, 50))
    windows = [(a, (0, 0, 30, 40)), (b, (10, 5, 45, 40)), (a, (20, 30, 59, 79))]
    with open(tmp_path / "windows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "xmin", "ymin", "xmax", "ymax"])  # columns are read by name
        for name, (y0, x0, y1, x1) in windows:
            w.writerow([str(name), x0, y0, x1, y1])
    flags = ["--model_def", str(CIFAR_DEPLOY), "--pretrained_model", str(CIFAR_WEIGHTS), "--context_pad", "4"]
    assert cli(["detect", str(tmp_path / "windows.csv"), str(tmp_path / "det.csv"), *flags]) == 0
    det = caffe.Detector(str(CIFAR_DEPLOY), str(CIFAR_WEIGHTS), raw_scale=255.0, channel_swap=(2, 1, 0),
                         context_pad=4)
    expect = det.detect_windows([(str(a), [windows[0][1], windows[2][1]]), (str(b), [windows[1][1]])])
    with open(tmp_path / "det.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "ymin", "xmin", "ymax", "xmax"] + [f"class{i}" for i in range(10)]
    assert [r[0] for r in rows[1:]] == [str(a), str(a), str(b)]
    for row, e in zip(rows[1:], expect):
        np.testing.assert_allclose([float(v) for v in row[1:5]], e["window"])
        np.testing.assert_allclose([float(v) for v in row[5:]], e["prediction"], rtol=1e-6)
    assert cli(["detect", str(tmp_path / "windows.csv"), str(tmp_path / "det.h5"), *flags]) == 0
    with h5py.File(tmp_path / "det.h5", "r") as f:
        if "prediction" in f["df"]:  # written with h5py (no pandas here)
            np.testing.assert_allclose(f["df/prediction"][()], np.stack([e["prediction"] for e in expect]),
                                       rtol=1e-6)
            assert [s.decode() for s in f["df/filename"][()]] == [str(a), str(a), str(b)]
    assert cli(["detect", str(tmp_path / "windows.csv"), str(tmp_path / "x.csv"), *flags,
                "--crop_mode", "selective_search"]) == 1




def test_log_tools_as_subcommands_and_scripts(tmp_path, capsys):
    log = tmp_path / "run.log"
    log.write_text(SYNTHETIC_LOG)
    assert cli(["parse_log", str(log), str(tmp_path), "--delimiter", ";"]) == 0
    assert (tmp_path / "run.log.train").read_text().splitlines()[0] == "NumIters;Seconds;LearningRate;loss"
    assert cli(["parse_log", str(tmp_path / "nope.log")]) == 1
    assert "nope.log: no such file" in capsys.readouterr().err
    out = tmp_path / "script_out"
    out.mkdir()
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "parse_log.py"), str(log), str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0 and (out / "run.log.test").read_text().splitlines()[2].startswith("200.0,")
    pytest.importorskip("matplotlib")
    assert cli(["plot_training_log", "6", str(tmp_path / "c.png"), str(log)]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(["plot_training_log", "9", str(tmp_path / "c.png"), str(log)]) == 1
    assert cli(["plot_training_log", "0", str(tmp_path / "c.jpg"), str(log)]) == 1
    from test_data_tools import _tool
    assert _tool("plot_training_log").main(["0", str(tmp_path / "d.png"), str(log)]) == 0  # the script
    assert (tmp_path / "d.png").is_file()
