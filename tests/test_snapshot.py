"""Snapshots and restoring (binary and HDF5), as Caffe writes and reads them; atomic writes."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import solver_fixtures as sf
from pycaffe_fc import backend
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.net import Net
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.proto.io import read_proto_binary
from pycaffe_fc.solvers import get_solver, read_solver_file


def weights(s):
    return [b.data.copy() for b in s.net.learnable_params]


def make(tmp_path, **fields):
    fields.setdefault("snapshot_prefix", str(tmp_path / "snap"))
    s = get_solver(sf.solver_param(**fields))
    sf.set_weights(s)
    return s


def test_binary_snapshot_files_and_contents(tmp_path):
    s = make(tmp_path, max_iter=4, snapshot=2, momentum=0.9)
    s.solve()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["snap_iter_2.caffemodel", "snap_iter_2.solverstate",
                     "snap_iter_4.caffemodel", "snap_iter_4.solverstate"]
    state = read_proto_binary(tmp_path / "snap_iter_4.solverstate", caffe_pb2.SolverState)
    assert state.iter == 4 and state.current_step == 0
    assert state.learned_net == str(tmp_path / "snap_iter_4.caffemodel")
    assert len(state.history) == 2
    assert list(state.history[0].shape.dim) == [sf.N_OUT, sf.N_IN]
    np.testing.assert_array_equal(np.asarray(state.history[1].data, np.float32),
                                  backend.to_numpy(s.history[1]))  # on the device in GPU mode
    model = read_proto_binary(tmp_path / "snap_iter_4.caffemodel", caffe_pb2.NetParameter)
    ip = [l for l in model.layer if l.name == "ip"][0]
    np.testing.assert_array_equal(np.asarray(ip.blobs[0].data, np.float32).reshape(sf.N_OUT, sf.N_IN),
                                  s.net.params["ip"][0].data)
    assert len(ip.blobs[0].diff) == 0  # snapshot_diff is off


def test_snapshot_after_train_and_diff(tmp_path):
    s = make(tmp_path, max_iter=3, snapshot_after_train=True, snapshot_diff=True)
    s.solve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap_iter_3.caffemodel", "snap_iter_3.solverstate"]
    model = read_proto_binary(tmp_path / "snap_iter_3.caffemodel", caffe_pb2.NetParameter)
    ip = [l for l in model.layer if l.name == "ip"][0]
    assert len(ip.blobs[0].diff) == sf.N_OUT * sf.N_IN


def test_snapshot_prefix_relative_to_cwd_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    s = get_solver(sf.solver_param(max_iter=1, snapshot_prefix="out/run", snapshot_after_train=True))
    s.solve()
    assert (tmp_path / "out" / "run_iter_1.caffemodel").exists()
    # UpgradeSnapshotPrefixProperty: unset -> the solver file without extension; a dir -> dir/stem
    f = tmp_path / "my_solver.prototxt"
    f.write_text(sf.solver_text())
    assert read_solver_file(str(f)).snapshot_prefix == str(tmp_path / "my_solver")
    f.write_text(sf.solver_text(snapshot_prefix="out"))
    assert read_solver_file(str(f)).snapshot_prefix == os.path.join("out", "my_solver")


def test_unwritable_snapshot_prefix_fails_early(tmp_path):
    with pytest.raises(CaffeError, match="Cannot write to snapshot prefix"):
        get_solver(sf.solver_param(snapshot=1, snapshot_prefix=str(tmp_path / "missing" / "x")))


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("rule", ["SGD", "Adam"])
def test_resume_gives_the_same_weights_bitwise(tmp_path, fmt, rule):
    kw = dict(type=rule, momentum=0.9, weight_decay=0.01, snapshot_format=fmt, lr_policy="multistep",
              gamma=0.5, stepvalue=[1, 3], batch=8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = make(tmp_path / "a", max_iter=8, **kw)
    full.solve()
    first = make(tmp_path / "b", max_iter=4, snapshot=4, **kw)
    first.solve()
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = tmp_path / "b" / f"snap_iter_4{ext}"
    assert state.exists()
    resumed = get_solver(sf.solver_param(max_iter=8, snapshot_prefix=str(tmp_path / "b" / "r"), **kw))
    resumed.solve(str(state))
    assert resumed.iter == 8 and resumed.current_step == full.current_step == 2
    for x, y in zip(weights(full), weights(resumed)):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(full.history, resumed.history):
        assert x.tobytes() == y.tobytes()


def test_hdf5_layout_matches_caffe(tmp_path):
    s = make(tmp_path, max_iter=2, snapshot_format="HDF5", snapshot_after_train=True, momentum=0.9,
             snapshot_diff=True)
    s.solve()
    with h5py.File(tmp_path / "snap_iter_2.caffemodel.h5", "r") as f:
        assert set(f) == {"data", "diff"}
        assert set(f["data"]) == {"data", "ip", "loss"}  # every layer has a group
        assert set(f["data/ip"]) == {"0", "1"} and len(f["data/loss"]) == 0
        assert f["data/ip/0"].dtype == np.float32 and f["data/ip/0"].shape == (sf.N_OUT, sf.N_IN)
        np.testing.assert_array_equal(f["data/ip/1"][()], s.net.params["ip"][1].data)
        assert f["diff/ip/0"].shape == (sf.N_OUT, sf.N_IN)
    with h5py.File(tmp_path / "snap_iter_2.solverstate.h5", "r") as f:
        assert f["iter"].shape == (1,) and f["iter"][0] == 2 and f["iter"].dtype == np.int32
        assert f["current_step"][0] == 0
        ln = f["learned_net"]
        assert ln.shape == () and ln.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert ln[()].rstrip(b"\0").decode() == str(tmp_path / "snap_iter_2.caffemodel.h5")
        assert sorted(f["history"]) == ["0", "1"]
    # Net.copy_from reads the .caffemodel.h5
    net = Net(_net_file(tmp_path), 1)
    net.copy_from(str(tmp_path / "snap_iter_2.caffemodel.h5"))
    np.testing.assert_array_equal(net.params["ip"][0].data, s.net.params["ip"][0].data)


def _net_file(tmp_path):
    f = tmp_path / "net.prototxt"
    f.write_text(sf.net_text())
    return str(f)


def test_restore_errors(tmp_path):
    s = make(tmp_path, max_iter=1, snapshot_after_train=True)
    s.solve()
    adam = get_solver(sf.solver_param(type="Adam"))
    with pytest.raises(CaffeError, match="incorrect length of history blobs"):
        adam.restore(str(tmp_path / "snap_iter_1.solverstate"))
    with pytest.raises(CaffeError, match="file not found"):
        adam.restore(str(tmp_path / "nope.solverstate"))
    with pytest.raises(CaffeError, match="file not found"):
        adam.restore(str(tmp_path / "nope.solverstate.h5"))


def test_moved_snapshot_finds_its_model(tmp_path):
    (tmp_path / "a").mkdir()
    s = make(tmp_path / "a", max_iter=2, snapshot_after_train=True, momentum=0.9)
    s.solve()
    os.rename(tmp_path / "a", tmp_path / "b")
    r = get_solver(sf.solver_param(momentum=0.9))
    r.restore(str(tmp_path / "b" / "snap_iter_2.solverstate"))
    assert r.iter == 2
    for x, y in zip(weights(s), weights(r)):
        np.testing.assert_array_equal(x, y)


def test_crash_during_snapshot_keeps_the_previous_file(tmp_path, monkeypatch):
    s = make(tmp_path, max_iter=2, momentum=0.9)
    s.step(1)
    s.iter = 5
    model, state = s.snapshot()
    before = {p: open(p, "rb").read() for p in (model, state)}
    s.step(1)
    s.iter = 5  # the same names again, now interrupted half-way through writing
    import pycaffe_fc.proto.io as pio

    real_fsync = os.fsync

    def crash(fd):
        raise KeyboardInterrupt("power cut")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pio.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    monkeypatch.setattr(pio.os, "fsync", disk_full)
    with pytest.raises(CaffeError, match="No space left on device"):
        s.snapshot()
    monkeypatch.setattr(pio.os, "fsync", real_fsync)
    for p, data in before.items():
        assert open(p, "rb").read() == data
    # and the HDF5 writer likewise
    s.param.snapshot_format = caffe_pb2.SolverParameter.HDF5
    model_h5, state_h5 = s.snapshot()
    good = open(model_h5, "rb").read()
    import pycaffe_fc.proto.hdf5 as ph
    monkeypatch.setattr(ph.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    monkeypatch.setattr(ph.os, "fsync", disk_full)
    with pytest.raises(CaffeError, match="No space left on device"):
        s.snapshot()
    assert open(model_h5, "rb").read() == good
    # no visible debris: temporary files are hidden (and removed when the error is an OSError)
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p.name.endswith(".tmp"))


def test_sighup_style_snapshot_request(tmp_path):
    s = make(tmp_path, max_iter=5)
    s.set_action_function(lambda: "snapshot" if s.iter == 2 else "none")
    s.solve()
    assert (tmp_path / "snap_iter_2.caffemodel").exists()
    assert not (tmp_path / "snap_iter_3.caffemodel").exists()


def test_hdf5_slash_names_and_shared_params(tmp_path):
    from pycaffe_fc.proto.hdf5 import read_hdf5_weights
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(sf.net_text().replace('name: "ip"', 'name: "ip/a"') + """
layer { name: "ip/b" type: "InnerProduct" bottom: "x" top: "y2"
  param { name: "shared_w" } param { }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip_c" type: "InnerProduct" bottom: "x" top: "y3"
  param { name: "shared_w" } param { }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
    bias_filler { type: "gaussian" std: 1 } } }
""")
    a = Net(str(net_file), 0)
    h5 = str(tmp_path / "w.caffemodel.h5")
    from pycaffe_fc.proto.hdf5 import write_net_hdf5
    write_net_hdf5(a, h5)
    got = dict(read_hdf5_weights(h5))
    assert len(got["ip/a"]) == 2 and len(got["ip/b"]) == 2
    assert got["ip_c"][0] is None and got["ip_c"][1].shape == (2,)  # a shared weight: owner only
    b = Net(str(net_file), 0)
    for blobs in b.params.values():
        for blob in blobs:
            blob.data[...] = 0
    b.copy_from(h5)
    for name in ("ip/a", "ip/b", "ip_c"):
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
