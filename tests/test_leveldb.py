"""LevelDB through plyvel, as Caffe's db_leveldb.cpp: convert_imageset / convert_mnist_data write
the same keys and values as into an LMDB (and as BVLC Caffe's reference LMDBs hold), Data layers
read LEVELDB sources, compute_image_mean reads them, and a database another process holds open is
still readable."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc.cli import main as cli
from pycaffe_fc.data import db as dbmod
from pycaffe_fc.data.convert import compute_image_mean
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2

from conftest import REF, need_shared

DATA = REF / "data"
plyvel = pytest.importorskip("plyvel")
pytest.importorskip("cv2")


def leveldb_records(path):
    db = plyvel.DB(str(path), create_if_missing=False)
    try:
        return list(db.iterator())
    finally:
        db.close()


@pytest.mark.parametrize("name", ["lmdb_resize32", "lmdb_encoded_jpg"])
def test_convert_imageset_leveldb_holds_caffes_records(name, tmp_path, monkeypatch):
    """Keys and values byte for byte those of the LMDB BVLC Caffe wrote with the same flags."""
    need_shared(DATA)
    cmd = json.loads((DATA / "data_manifest.json").read_text())["commands"][name].split()
    flags = [f for f in cmd[1:] if f.startswith("--") and not f.startswith("--backend")]
    monkeypatch.chdir(REF)
    out = tmp_path / "ldb"
    assert cli(["convert_imageset", *flags, "--backend", "leveldb", "data/", "data/list.txt", str(out)]) == 0
    assert (out / "CURRENT").is_file()
    assert leveldb_records(out) == list(dbmod.iter_lmdb(str(DATA / name)))


def test_convert_imageset_leveldb_one_process_same_as_pool(tmp_path):
    need_shared(DATA)
    from pycaffe_fc.data.convert import convert_imageset
    kw = dict(resize_height=20, resize_width=24, backend="leveldb", progress=False)
    assert convert_imageset(str(DATA) + "/", str(DATA / "list.txt"), str(tmp_path / "a"), processes=1, **kw) == 20
    assert convert_imageset(str(DATA) + "/", str(DATA / "list.txt"), str(tmp_path / "b"), processes=2, **kw) == 20
    assert leveldb_records(tmp_path / "a") == leveldb_records(tmp_path / "b")
    with pytest.raises(CaffeError, match="already exists"):
        convert_imageset(str(DATA) + "/", str(DATA / "list.txt"), str(tmp_path / "a"), processes=1, **kw)


def _data_net(tmp_path, source, backend_line):
    p = tmp_path / f"net_{abs(hash((str(source), backend_line)))}.prototxt"
    p.write_text(textwrap.dedent(f"""
        layer {{ name: "d" type: "Data" top: "data" top: "label"
                data_param {{ source: "{source}" batch_size: 7 {backend_line} }} }}
    """))
    return caffe.Net(str(p), caffe.TEST)


def test_data_layer_reads_leveldb_as_lmdb(tmp_path):
    """Batches from a LEVELDB source equal those from the LMDB of the same records (3 batches of 7
    over 20 records: the stream wraps round, as Caffe's cursor restarts)."""
    need_shared(DATA)
    ldb = tmp_path / "ldb"
    with dbmod.LevelDBWriter(str(ldb)) as w:
        for k, v in dbmod.iter_lmdb(str(DATA / "lmdb_resize32")):
            w.put(k, v)
    a = _data_net(tmp_path, ldb, "backend: LEVELDB")
    b = _data_net(tmp_path, DATA / "lmdb_resize32", "backend: LMDB")
    c = _data_net(tmp_path, ldb, "")  # LEVELDB is the DataParameter default
    for _ in range(3):
        oa, ob, oc = a.forward(), b.forward(), c.forward()
        for k in ("data", "label"):
            np.testing.assert_array_equal(oa[k], ob[k])
            np.testing.assert_array_equal(oa[k], oc[k])


def test_compute_image_mean_on_leveldb(tmp_path):
    need_shared(DATA)
    ldb = tmp_path / "ldb"
    with dbmod.LevelDBWriter(str(ldb)) as w:
        for k, v in dbmod.iter_lmdb(str(DATA / "lmdb_resize32")):
            w.put(k, v)
    assert cli(["compute_image_mean", "--backend", "leveldb", str(ldb), str(tmp_path / "m.binaryproto")]) == 0
    got = caffe.io.blobproto_to_array(caffe_pb2.BlobProto.FromString((tmp_path / "m.binaryproto").read_bytes()))
    np.testing.assert_array_equal(got, np.load(DATA / "expected_decoded.npz")["mean_resize32"])  # Caffe's
    mean, _ = compute_image_mean(str(ldb), backend="leveldb")
    np.testing.assert_array_equal(mean[None], got)


def test_mnist_to_leveldb(tmp_path):
    import gzip
    import struct
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    (tmp_path / "i.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 5, 4, 3) + imgs.tobytes()))
    (tmp_path / "l.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, 5) + bytes([1, 2, 3, 200, 5])))
    for backend in ("lmdb", "leveldb"):
        assert cli(["convert_mnist_data", "--backend", backend, str(tmp_path / "i.gz"), str(tmp_path / "l.gz"),
                    str(tmp_path / backend)]) == 0
    assert leveldb_records(tmp_path / "leveldb") == list(dbmod.iter_lmdb(str(tmp_path / "lmdb")))
    assert [k for k, _ in leveldb_records(tmp_path / "leveldb")] == [b"%08d" % i for i in range(5)]


def test_leveldb_held_by_another_process_is_read_through_a_clone(tmp_path):
    """LevelDB lets one process open a database; a second reader (another rank) reads a clone."""
    ldb = tmp_path / "ldb"
    with dbmod.LevelDBWriter(str(ldb)) as w:
        for i in range(30):
            w.put(f"{i:03d}", bytes([i]) * 3)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, plyvel
        db = plyvel.DB({str(ldb)!r})
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        stream = dbmod.LevelDBStream(str(ldb), "test")
        assert stream.reader._clone is not None
        assert stream.size == 30
        assert stream.value_at(0) == (b"000", b"\x00" * 3)
        assert stream.value_at(31) == (b"001", b"\x01" * 3)  # past the end: round again
        assert stream.restarts == 1
        clone = stream.reader._clone
        stream.close()
        assert not __import__("os").path.exists(clone)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_leveldb_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(CaffeError, match="no such directory"):
        dbmod.LevelDBStream(str(tmp_path / "nope"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(CaffeError, match="not a LevelDB"):
        dbmod.LevelDBStream(str(tmp_path / "plain"))
    dbmod.LevelDBWriter(str(tmp_path / "empty")).close()
    with pytest.raises(CaffeError, match="is empty"):
        dbmod.LevelDBStream(str(tmp_path / "empty"))
    with pytest.raises(CaffeError, match="already exists"):
        dbmod.LevelDBWriter(str(tmp_path / "empty"))
