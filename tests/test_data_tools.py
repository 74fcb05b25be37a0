"""Caffe's data tools (convert_imageset, compute_image_mean, convert_mnist_data) against the
databases BVLC Caffe wrote, record by record and byte by byte; and the log tools."""
from __future__ import annotations

import gzip
import importlib.util
import json
import shutil

import numpy as np
import pytest

from pycaffe_fc.cli import main as cli
from pycaffe_fc.data import db as dbmod
from pycaffe_fc.data.convert import compute_image_mean, convert_imageset, read_idx
from pycaffe_fc.proto import caffe_pb2

from conftest import REF, ROOT, need_shared

DATA = REF / "data"
SOLVER = REF / "solver"

pytest.importorskip("cv2")


def records(path):
    return list(dbmod.iter_lmdb(str(path)))


def assert_same_db(ours, theirs):
    a, b = records(ours), records(theirs)
    assert [k for k, _ in a] == [k for k, _ in b]
    for (k, va), (_, vb) in zip(a, b):
        assert va == vb, f"record {k!r} differs"


@pytest.mark.parametrize("name", ["lmdb_resize32", "lmdb_encoded_jpg", "lmdb_gray"])
def test_convert_imageset_writes_what_caffe_writes(name, tmp_path, monkeypatch):
    need_shared(DATA)
    cmd = json.loads((DATA / "data_manifest.json").read_text())["commands"][name].split()
    flags = [f for f in cmd[1:] if f.startswith("--")]
    monkeypatch.chdir(REF)
    out = tmp_path / name
    assert cli(["convert_imageset", *flags, "data/", "data/list.txt", str(out)]) == 0
    assert_same_db(out, DATA / name)


def test_convert_imageset_one_process_same_as_pool(tmp_path):
    need_shared(DATA)
    a = convert_imageset(str(DATA) + "/", str(DATA / "list.txt"), str(tmp_path / "a"), resize_height=20,
                         resize_width=24, processes=1, progress=False)
    b = convert_imageset(str(DATA) + "/", str(DATA / "list.txt"), str(tmp_path / "b"), resize_height=20,
                         resize_width=24, processes=2, progress=False)
    assert a == b == 20
    assert_same_db(tmp_path / "a", tmp_path / "b")


def test_convert_imageset_skips_unreadable_shuffles_and_checks_size(tmp_path, capsys):
    need_shared(DATA)
    lines = (DATA / "list.txt").read_text().splitlines()[:4]
    (tmp_path / "list.txt").write_text("\n".join(lines[:2] + ["images/missing.png 1"] + lines[2:]) + "\n")
    root = str(DATA) + "/"
    n = convert_imageset(root, str(tmp_path / "list.txt"), str(tmp_path / "db"), processes=2, progress=False)
    assert n == 4
    keys = [k.decode() for k, _ in records(tmp_path / "db")]
    assert keys[2].startswith("00000003_")  # Caffe keeps the line number, leaving a gap
    assert "Could not open or find file" in capsys.readouterr().err
    assert cli(["convert_imageset", "--check_size", root, str(tmp_path / "list.txt"), str(tmp_path / "c")]) == 1
    assert "incorrect data field size" in capsys.readouterr().err
    for name in ("s1", "s2"):
        assert cli(["convert_imageset", "--shuffle", "--seed=4", "--resize_height=8", "--resize_width=8",
                    root, str(DATA / "list.txt"), str(tmp_path / name)]) == 0
    assert_same_db(tmp_path / "s1", tmp_path / "s2")
    names = sorted(k.decode().split("_", 1)[1] for k, _ in records(tmp_path / "s1"))
    assert names == sorted(line.rsplit(" ", 1)[0] for line in (DATA / "list.txt").read_text().splitlines())
    assert cli(["convert_imageset", root, str(DATA / "list.txt"), str(tmp_path / "s1")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_convert_imageset_encoded_keeps_the_files(tmp_path):
    """--encoded without --encode_type guesses each file's type and stores its bytes unchanged."""
    need_shared(DATA)
    assert cli(["convert_imageset", "-encoded=true", str(DATA) + "/", str(DATA / "list.txt"),
                str(tmp_path / "db")]) == 0
    for (key, value), line in zip(records(tmp_path / "db"), (DATA / "list.txt").read_text().splitlines()):
        d = caffe_pb2.Datum()
        d.ParseFromString(value)
        name, label = line.rsplit(" ", 1)
        assert d.encoded and d.label == int(label) and key.decode().endswith(name)
        assert d.data == (DATA / name).read_bytes()


def test_compute_image_mean_is_bit_identical(tmp_path, capsys):
    need_shared(DATA)
    out = tmp_path / "mean.binaryproto"
    assert cli(["compute_image_mean", "--backend", "lmdb", str(DATA / "lmdb_resize32"), str(out)]) == 0
    assert out.read_bytes() == (DATA / "mean_resize32.binaryproto").read_bytes()
    err = capsys.readouterr().err
    for c, v in enumerate(("121.298", "129.336", "124.673")):
        assert f"mean_value channel [{c}]: {v}" in err
    mean, per_channel = compute_image_mean(str(DATA / "lmdb_gray").replace("gray", "resize32"))
    np.testing.assert_array_equal(mean[None], np.load(DATA / "expected_decoded.npz")["mean_resize32"])
    # an encoded database is decoded first (DecodeDatumNative); different sizes are an error
    assert cli(["compute_image_mean", str(DATA / "lmdb_encoded_jpg")]) == 1
    assert "incorrect data field size" in capsys.readouterr().err
    assert cli(["compute_image_mean", "--backend", "leveldb", str(DATA / "lmdb_resize32")]) == 1
    assert "is an LMDB but backend LEVELDB was asked for" in capsys.readouterr().err


def test_convert_mnist_data_matches_caffe(tmp_path, capsys):
    need_shared(SOLVER)
    imgs, labs = SOLVER / "fmnist640-images-idx3-ubyte.gz", SOLVER / "fmnist640-labels-idx1-ubyte.gz"
    assert cli(["convert_mnist_data", str(imgs), str(labs), str(tmp_path / "gz")]) == 0
    assert_same_db(tmp_path / "gz", SOLVER / "fmnist640_train_lmdb")
    # raw (gunzipped) IDX gives the same database
    for src in (imgs, labs):
        (tmp_path / src.name[:-3]).write_bytes(gzip.decompress(src.read_bytes()))
    assert cli(["convert_mnist_data", str(tmp_path / imgs.name[:-3]), str(tmp_path / labs.name[:-3]),
                str(tmp_path / "raw")]) == 0
    assert_same_db(tmp_path / "raw", tmp_path / "gz")
    assert read_idx(str(imgs)).shape == (640, 28, 28)
    assert cli(["convert_mnist_data", str(labs), str(imgs), str(tmp_path / "bad")]) == 1
    assert "incorrect image file magic" in capsys.readouterr().err


def test_caffe_reads_our_mnist_db_through_the_data_layer(tmp_path):
    need_shared(SOLVER)
    import pycaffe_fc as caffe
    from google.protobuf import text_format
    cli(["convert_mnist_data", str(SOLVER / "fmnist640-images-idx3-ubyte.gz"),
         str(SOLVER / "fmnist640-labels-idx1-ubyte.gz"), str(tmp_path / "db")])
    p = caffe_pb2.NetParameter()
    text_format.Parse(f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ scale: '
                      f'0.00390625 }} data_param {{ source: "{tmp_path / "db"}" batch_size: 64 backend: LMDB }} }}', p)
    net = caffe.Net(p, caffe.TRAIN)
    net.forward()
    images = read_idx(str(SOLVER / "fmnist640-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0], images[:64].astype(np.float32) * np.float32(1 / 256))


# -- log tools ------------------------------------------------------------------------------------------
def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SYNTHETIC_LOG = """\
I1124 10:00:00.000000  1 solver.cpp:289] Solving LeNet
I1124 10:00:00.100000  1 solver.cpp:347] Iteration 0, Testing net (#0)
I1124 10:00:01.000000  1 solver.cpp:414]     Test net output #0: accuracy = 0.1
I1124 10:00:01.000000  1 solver.cpp:414]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1124 10:00:01.100000  1 solver.cpp:239] Iteration 0 (0 iter/s, 1s/100 iters), loss = 2.2
I1124 10:00:01.100000  1 solver.cpp:258]     Train net output #0: loss = 2.2 (* 1 = 2.2 loss)
I1124 10:00:01.100000  1 sgd_solver.cpp:112] Iteration 0, lr = 0.01
I1124 10:00:03.100000  1 solver.cpp:239] Iteration 100 (50 iter/s, 2s/100 iters), loss = 0.5
I1124 10:00:03.100000  1 solver.cpp:258]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)
I1124 10:00:03.100000  1 sgd_solver.cpp:112] Iteration 100, lr = 0.0099
I1124 10:00:04.000000  1 solver.cpp:347] Iteration 200, Testing net (#0)
I1124 10:00:05.500000  1 solver.cpp:414]     Test net output #0: accuracy = 0.8
I1124 10:00:05.500000  1 solver.cpp:414]     Test net output #1: loss = 0.6 (* 1 = 0.6 loss)
"""


def test_parse_log_reference_and_synthetic(tmp_path):
    need_shared(SOLVER)
    parse_log = _tool("parse_log")
    train, test = parse_log.parse_log(str(SOLVER / "sgd_train.log"))
    expected = json.loads((REF / "solvers.json").read_text())["solvers"]["sgd"]
    assert [r["NumIters"] for r in train] == list(range(50)) and not test
    np.testing.assert_allclose([r["loss"] for r in train], expected["loss_cli_log"][:50], rtol=1e-5)
    np.testing.assert_allclose([r["LearningRate"] for r in train[1:]], expected["lr_cli_log"][:49], rtol=1e-5)
    assert train[0]["LearningRate"] == train[1]["LearningRate"]
    log = tmp_path / "run.log"
    log.write_text(SYNTHETIC_LOG)
    assert parse_log.main([str(log), str(tmp_path)]) == 0
    test_csv = (tmp_path / "run.log.test").read_text().splitlines()
    assert test_csv[0] == "NumIters,Seconds,LearningRate,accuracy,loss"
    assert test_csv[2] == "200.0,5.5,0.0099,0.8,0.6"
    train_csv = (tmp_path / "run.log.train").read_text().splitlines()
    assert train_csv[1:] == ["0.0,1.1,0.01,2.2", "100.0,3.1,0.01,0.5"]  # lr lags a row, as in Caffe
    assert parse_log.main([str(tmp_path / "nope.log")]) == 1


def test_plot_training_log_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    plot = _tool("plot_training_log")
    log = tmp_path / "run.log"
    log.write_text(SYNTHETIC_LOG)
    for chart in (0, 7):
        out = tmp_path / f"c{chart}.png"
        assert plot.main([str(chart), str(out), str(log)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.main(["9", str(tmp_path / "x.png"), str(log)]) == 1


def test_quickstart_script_is_valid_bash():
    script = ROOT / "tools" / "quickstart.sh"
    if not script.exists() or shutil.which("bash") is None:
        pytest.skip("no quickstart script or bash")
    import subprocess
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
