"""Malformed inputs: one-line errors naming the file and the blob or key, never a crash, a
traceback or a silently wrong result (issue 13, points 5 and 6). The full corpus is
benchmarks/bench_malformed_inputs.py; these are a representative few."""
from __future__ import annotations

import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap

import cv2
import lmdb
import numpy as np
import pytest

import solver_fixtures as sf
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.net import Net
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.proto import io as pio
from pycaffe_fc.solvers import get_solver

CLI = [sys.executable, "-m", "pycaffe_fc"]
TEST = caffe_pb2.TEST


def run_cli(*args, cwd=None):
    r = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    return r, errors


def write_lmdb(path, values):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(b"%08d" % i, v)
    env.close()
    return path


def datum(label=0, h=6, w=6):
    d = caffe_pb2.Datum(channels=1, height=h, width=w, label=label)
    d.data = bytes(range(h * w))
    return d.SerializeToString()


def data_net(tmp_path, source, extra="", pad=0):
    p = tmp_path / "net.prototxt"
    p.write_text(f"""name: "t"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 3 pad: {pad} }} }}
{extra}""")
    return p


def flip(data: bytes, n: int, seed: int) -> bytes:
    r = random.Random(seed)
    b = bytearray(data)
    for _ in range(n):
        i = r.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def snapshot(tmp_path, fmt=None):
    fields = dict(snapshot_prefix=str(tmp_path / "snap"), max_iter=2, momentum=0.9)
    if fmt is not None:
        fields["snapshot_format"] = fmt
    s = get_solver(sf.solver_param(**fields))
    sf.set_weights(s)
    s.step(2)
    return s.snapshot()


# -- LMDBs -----------------------------------------------------------------------------------------
def test_truncated_data_mdb_is_one_line_not_sigbus(tmp_path):
    db = write_lmdb(tmp_path / "db", [datum(i % 3) for i in range(400)])
    raw = (db / "data.mdb").read_bytes()
    (db / "data.mdb").write_bytes(raw[:len(raw) - 4096])  # one page short
    r, errors = run_cli("compute_image_mean", db, tmp_path / "mean.binaryproto")
    assert r.returncode == 1, r.stderr[-500:]
    assert "Traceback" not in r.stderr
    assert len(errors) == 1 and "data.mdb" in errors[0] and "truncated" in errors[0]


def test_foreign_and_empty_data_mdb(tmp_path):
    from pycaffe_fc.data.db import check_lmdb_file
    for name, data, why in (("empty", b"", "not an LMDB"), ("text", b"hello\n" * 2000, "not an LMDB")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.mdb").write_bytes(data)
        with pytest.raises(CaffeError, match=f"{name}/data.mdb: {why}"):
            check_lmdb_file(str(tmp_path / name))
    check_lmdb_file(str(write_lmdb(tmp_path / "good", [datum()])))  # a whole one passes


def test_lmdb_of_non_datum_values_names_the_key(tmp_path):
    db = write_lmdb(tmp_path / "db", [datum(), datum(), b"\xff\xfe not a datum", datum()])
    net = Net(str(data_net(tmp_path, db)), TEST)  # the first record is a Datum: setup passes
    with pytest.raises(CaffeError, match=r"db: record '00000002' is not a Datum"):
        net.forward()  # the first batch holds the bad record


def test_lmdb_whose_first_value_is_not_a_datum(tmp_path):
    db = write_lmdb(tmp_path / "db", [b"label=3 pixels=0,0,0"] * 4)
    with pytest.raises(CaffeError, match=r"db: record '00000000' is not a Datum"):
        Net(str(data_net(tmp_path, db)), TEST)


# -- weights ---------------------------------------------------------------------------------------
def test_empty_caffemodel_does_not_load(tmp_path):
    p = tmp_path / "empty.caffemodel"
    p.write_bytes(b"")
    model, _ = snapshot(tmp_path)
    s = get_solver(sf.solver_param())
    with pytest.raises(CaffeError, match="empty.caffemodel: no layers"):
        s.net.copy_from(str(p))
    s.net.copy_from(model)  # our own snapshot loads


def test_flipped_bits_in_our_snapshots_are_caught(tmp_path):
    model, state = snapshot(tmp_path)
    for path in (model, state):
        raw = open(path, "rb").read()
        for seed in range(3):
            bad = tmp_path / f"bad{seed}{os.path.splitext(path)[1]}"
            bad.write_bytes(flip(raw, 20, seed))
            s = get_solver(sf.solver_param(momentum=0.9))
            with pytest.raises(CaffeError, match=f"bad{seed}.*(damaged|truncated|not a binary)"):
                if path == model:
                    s.net.copy_from(str(bad))
                else:
                    s.restore(str(bad))
        kind = caffe_pb2.NetParameter if path == model else caffe_pb2.SolverState
        for bit in range(40 * 8):  # the checksum header itself: a flipped tag must not hide it
            b = bytearray(raw)
            b[bit // 8] ^= 1 << (bit % 8)
            (tmp_path / "hdr").write_bytes(bytes(b))
            with pytest.raises(CaffeError, match="hdr: (damaged|truncated|not a binary)"):
                pio.read_proto_binary(tmp_path / "hdr", kind)
        bad = tmp_path / ("cut" + os.path.splitext(path)[1])
        bad.write_bytes(raw[:-1])
        with pytest.raises(CaffeError, match="cut.*truncated"):
            pio.read_proto_binary(bad, caffe_pb2.NetParameter if path == model else caffe_pb2.SolverState)


def test_flipped_bits_in_hdf5_snapshot_data(tmp_path):
    import h5py
    model, state = snapshot(tmp_path, caffe_pb2.SolverParameter.HDF5)
    with h5py.File(model, "r") as f:
        ds = f["data/ip/0"]
        lo = ds.id.get_offset()
    raw = bytearray(open(model, "rb").read())
    raw[lo + 1] ^= 0x10
    open(model, "wb").write(bytes(raw))
    s = get_solver(sf.solver_param(momentum=0.9))
    with pytest.raises(CaffeError, match="caffemodel.h5: damaged HDF5 file: SHA-256"):
        s.restore(state)
    # bits flipped anywhere are caught before HDF5 parses the file (it can hang on bad metadata)
    raw = open(state, "rb").read()
    for seed in range(20):
        bad = tmp_path / "bad.solverstate.h5"
        bad.write_bytes(flip(raw, 20, seed))
        with pytest.raises(CaffeError, match="bad.solverstate.h5: (damaged|truncated|not an HDF5)"):
            s.restore(str(bad))
    # a file without fc-caffe's checksum block (as Caffe writes them) is read as it is
    plain = tmp_path / "plain.solverstate.h5"
    with h5py.File(state, "r") as src, h5py.File(plain, "w") as dst:
        for key in src:
            src.copy(key, dst)
    from pycaffe_fc.proto.hdf5 import read_hdf5_solverstate
    assert read_hdf5_solverstate(str(plain))["iter"] == 2


def test_checksummed_files_stay_readable_by_a_parser_without_the_fields(tmp_path):
    # BVLC's caffe.proto lacks fields 1010/1011: its parser skips them as unknown fields.
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    fdp = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(fdp)
    for m in fdp.message_type:
        if m.name in ("NetParameter", "SolverState"):
            keep = [f for f in m.field if f.number < 1000]
            del m.field[:]
            m.field.extend(keep)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    bvlc = {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{n}"))
            for n in ("NetParameter", "SolverState")}
    model, state = snapshot(tmp_path)
    for path, name in ((model, "NetParameter"), (state, "SolverState")):
        theirs = bvlc[name]()
        theirs.ParseFromString(open(path, "rb").read())
        theirs.DiscardUnknownFields()
        ours = pio.read_proto_binary(path, getattr(caffe_pb2, name))
        assert not ours.HasField("fc_checksum")
        seen = bvlc[name]()
        seen.ParseFromString(ours.SerializeToString())
        seen.DiscardUnknownFields()  # our other extensions, which BVLC Caffe skips as well
        assert seen.SerializeToString() == theirs.SerializeToString()
        assert len(theirs.layer if name == "NetParameter" else theirs.history) == (3 if name == "NetParameter" else 2)
    # and a Caffe file without a checksum still loads (what BVLC writes: no header)
    plain = tmp_path / "plain.caffemodel"
    plain.write_bytes(pio.read_net_param_binary(model).SerializeToString())
    get_solver(sf.solver_param()).net.copy_from(str(plain))


def test_short_blobproto_names_file_layer_and_blob(tmp_path):
    model, _ = snapshot(tmp_path)
    net = pio.read_net_param_binary(model)
    ip = [lp for lp in net.layer if lp.name == "ip"][0]
    del ip.blobs[0].data[2:]
    short = tmp_path / "short.caffemodel"
    short.write_bytes(net.SerializeToString())
    with pytest.raises(CaffeError, match=r"short.caffemodel: layer 'ip' blob 0: shape \[2, 3\] needs 6 values"):
        get_solver(sf.solver_param()).net.copy_from(str(short))


# -- solver states ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("iter", -5), ("current_step", -1)])
def test_negative_counters_in_a_state(tmp_path, field, value):
    _, state = snapshot(tmp_path)
    st = pio.read_proto_binary(state, caffe_pb2.SolverState)
    setattr(st, field, value)
    bad = tmp_path / "neg.solverstate"
    bad.write_bytes(st.SerializeToString())
    s = get_solver(sf.solver_param(momentum=0.9))
    with pytest.raises(CaffeError, match=f"neg.solverstate: {field} {value} is negative"):
        s.restore(str(bad))


# -- allocations beyond memory ---------------------------------------------------------------------
def test_huge_pad_stops_before_allocating(tmp_path):
    db = write_lmdb(tmp_path / "db", [datum()] * 4)
    with pytest.raises(CaffeError, match=r"layer 'conv' \(Convolution\): blob 'conv' of shape "
                                         r"\[4, 2, 200004, 200004\].*needs .* bytes\), more than"):
        Net(str(data_net(tmp_path, db, pad=100000)), TEST)


def test_huge_batch_size_is_refused_at_once_by_the_cli(tmp_path):
    # the batch plan once built a batch_size-long offset array first: 8 GB and ~100 s for 1e9
    import tracemalloc
    from pycaffe_fc.data.sharding import plan_batch
    tracemalloc.start()
    try:
        assert plan_batch(10 ** 9, "data", caffe_pb2.TRAIN).local_batch == 10 ** 9
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    db = write_lmdb(tmp_path / "db", [datum()] * 4)
    net = data_net(tmp_path, db).read_text().replace("batch_size: 4", "batch_size: 1000000000")
    (tmp_path / "net.prototxt").write_text(net)
    r = subprocess.run(CLI + ["time", "--model", "net.prototxt", "--iterations", "1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=20)
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(errors) == 1 and re.search(r"layer 'data' \(Data\): blob 'data' of shape "
                                          r"\[1000000000, 1, 6, 6\].*needs .* bytes\), more than", errors[0])


# -- convert_imageset ------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path):
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8), (5, 5), 0)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    png = cv2.imencode(".png", img)[1].tobytes()
    d = tmp_path / "img"
    d.mkdir()
    (d / "good.jpg").write_bytes(jpg)
    (d / "half.jpg").write_bytes(jpg[:len(jpg) // 2])
    (d / "noeoi.jpg").write_bytes(jpg[:-2])
    (d / "half.png").write_bytes(png[:len(png) // 2])
    return d


def test_truncated_images_are_not_stored(tmp_path, images):
    from pycaffe_fc.data.convert import incomplete_image
    assert incomplete_image(str(images / "good.jpg")) is None
    for name in ("half.jpg", "noeoi.jpg", "half.png"):
        assert "truncated" in incomplete_image(str(images / name))
        if name.endswith(".jpg"):  # what OpenCV alone would have stored, grey where data is missing
            assert cv2.imread(str(images / name)) is not None
    lst = tmp_path / "list.txt"
    lst.write_text("good.jpg 0\nhalf.jpg 1\nnoeoi.jpg 2\nhalf.png 3\n")
    r, errors = run_cli("convert_imageset", f"{images}/", lst, tmp_path / "db")
    assert r.returncode == 0 and not errors, r.stderr[-500:]
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        assert [k for k, _ in txn.cursor()] == [b"00000000_good.jpg"]
    env.close()
    assert "Converted 1 of 4 images; skipped 3: 2 truncated JPEG" in r.stderr


def test_nothing_converted_is_an_error(tmp_path, images):
    lst = tmp_path / "list.txt"
    lst.write_text("half.jpg 0\nmissing.jpg 1\n")
    r, errors = run_cli("convert_imageset", f"{images}/", lst, tmp_path / "db")
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr
    assert "no image converted" in errors[0] and "1 missing" in errors[0] and "1 truncated JPEG" in errors[0]
    assert not (tmp_path / "db").exists()


def test_non_numeric_label_names_the_list_line(tmp_path, images):
    lst = tmp_path / "list.txt"
    lst.write_text("good.jpg 0\ngood.jpg zero\n")
    r, errors = run_cli("convert_imageset", f"{images}/", lst, tmp_path / "db")
    assert r.returncode == 1 and len(errors) == 1
    assert f"{lst}:2: label 'zero' is not an integer" in errors[0]


# -- snapshot hygiene ------------------------------------------------------------------------------
def test_snapshots_follow_the_umask_and_fsync_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(pio.os, "fsync", fsync)
    old = os.umask(0o027)
    try:
        model, state = snapshot(tmp_path)
    finally:
        os.umask(old)
    for p in (model, state):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert synced.count(True) >= 2  # the directory, after each rename


def test_stale_temporaries_are_removed_when_training_starts(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".snap_iter_4.caffemodel.{dead.pid}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".snap_iter_4.caffemodel.{os.getppid()}.def456.tmp"  # a running process's
    live.write_bytes(b"y")
    other = tmp_path / f".other_iter_4.caffemodel.{dead.pid}.abc123.tmp"  # another prefix's
    other.write_bytes(b"z")
    get_solver(sf.solver_param(snapshot_prefix=str(tmp_path / "snap")))
    assert not stale.exists() and live.exists() and other.exists()


def test_sigterm_during_a_write_removes_the_temporary(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from pycaffe_fc.proto.io import atomic_write
        def write(tmp):
            open(tmp, "wb").write(b"partial")
            print("writing", flush=True)
            time.sleep(30)
        atomic_write({str(tmp_path / 'model.caffemodel')!r}, write)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    assert any(n.endswith(".tmp") for n in os.listdir(tmp_path))
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == -signal.SIGTERM  # still dies of SIGTERM, as without the handler
    assert os.listdir(tmp_path) == []
