"""Exact resume and worker-count invariance with randomness (fc-caffe extensions), with real
processes: ``fc-caffe train`` killed with SIGKILL and resumed from its newest .solverstate ends
with the uninterrupted run's weights bit for bit; 1, 2 and 4 MPI ranks train a net with random
crops, mirrors and dropout to the same weights; a 4-worker snapshot resumes on 2 workers; the
extra state survives HDF5 snapshots; a state without the extra fields (as BVLC Caffe writes
them) still loads, and a parser without them (as BVLC Caffe's) reads ours.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REF, need_shared
from proc_helpers import MPIEXEC, lenet_solver, rel as _rel, snapshot_weights as _weights
from proc_helpers import proc_env as _env

LMDB = REF / "solver" / "fmnist640_train_lmdb"   # 640 Fashion-MNIST records made by Caffe's tool

NET = """name: "LeNetish"
layer { name: "mnist" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 crop_size: 24 mirror: true }
  data_param { source: "db" batch_size: 16 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

def _train(d: Path, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "train", "--solver", "solver.prototxt", *map(str, args)],
                       cwd=d, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _setup(d: Path, max_iter: int, snapshot: int, extra: str = "") -> Path:
    need_shared(LMDB)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "db").exists():
        os.symlink(LMDB, d / "db")
    (d / "net.prototxt").write_text(NET)
    (d / "solver.prototxt").write_text(lenet_solver("net.prototxt", max_iter, snapshot, "snap/s", extra=extra))
    shutil.rmtree(d / "snap", ignore_errors=True)
    (d / "snap").mkdir()
    return d


def _keep(d: Path, name: str) -> Path:
    """Move snap/ aside as ``name``/ and start a fresh snap/."""
    shutil.rmtree(d / name, ignore_errors=True)
    shutil.move(str(d / "snap"), str(d / name))
    (d / "snap").mkdir()
    return d / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One worker, 24 iterations of batch 16 (24 distinct batches of the 640 records), snapshot
    every 4: the uninterrupted run every resume must reproduce."""
    d = _setup(tmp_path_factory.mktemp("resume"), 24, 4)
    _train(d)
    _keep(d, "full")
    return d


def test_kill9_then_resume_gives_the_uninterrupted_weights_bitwise(reference):
    d = reference
    proc = subprocess.Popen([sys.executable, "-m", "pycaffe_fc", "train", "--solver", "solver.prototxt"], cwd=d,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list((d / "snap").glob("*.solverstate")) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    states = sorted((d / "snap").glob("*.solverstate"), key=lambda p: int(p.name.split("_iter_")[1].split(".")[0]))
    newest = states[-1]
    assert int(newest.name.split("_iter_")[1].split(".")[0]) < 24
    r = _train(d, "--snapshot", newest.relative_to(d))
    assert "Restored the data positions and random streams of 2 layers" in r.stderr
    final = _weights(d / "snap" / "s_iter_24.caffemodel")
    assert final.tobytes() == _weights(d / "full" / "s_iter_24.caffemodel").tobytes()


def test_caffe_state_without_the_fields_loads_and_our_state_reads_as_caffes(reference):
    """A .solverstate without fields >= 1000 (what BVLC Caffe writes) resumes as Caffe does: the
    data layers start again from the first record, so the weights differ; and a parser that
    knows only Caffe's SolverState (fields 1-4) reads our file, skipping ours."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from pycaffe_fc.proto import caffe_pb2
    d = reference
    ours = caffe_pb2.SolverState()
    ours.ParseFromString((d / "full" / "s_iter_8.solverstate").read_bytes())
    assert [s.layer for s in ours.fc_layer_state] == ["mnist", "drop1"]
    assert ours.fc_layer_state[0].position == 8 * 16 and ours.fc_layer_state[1].draws == 8

    # BVLC's SolverState, fields 1-4 only (BlobProto left as bytes: enough to count them)
    f = descriptor_pb2.FileDescriptorProto(name="bvlc_min.proto", package="bvlc")
    m = f.message_type.add(name="SolverState")
    T = descriptor_pb2.FieldDescriptorProto
    for name, num, typ, label in (("iter", 1, T.TYPE_INT32, T.LABEL_OPTIONAL),
                                  ("learned_net", 2, T.TYPE_STRING, T.LABEL_OPTIONAL),
                                  ("history", 3, T.TYPE_BYTES, T.LABEL_REPEATED),
                                  ("current_step", 4, T.TYPE_INT32, T.LABEL_OPTIONAL)):
        m.field.add(name=name, number=num, type=typ, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    Bvlc = message_factory.GetMessageClass(pool.FindMessageTypeByName("bvlc.SolverState"))
    theirs = Bvlc()
    theirs.ParseFromString((d / "full" / "s_iter_8.solverstate").read_bytes())
    assert theirs.iter == 8 and len(theirs.history) == len(ours.history)
    # what Caffe would write back: only its own fields
    plain = Bvlc(iter=theirs.iter, learned_net=str(d / "full" / "s_iter_8.caffemodel"),
                 current_step=theirs.current_step, history=list(theirs.history))
    (d / "caffe_iter_8.solverstate").write_bytes(plain.SerializeToString())
    r = _train(d, "--snapshot", "caffe_iter_8.solverstate")
    assert "Restored the data positions" not in r.stderr
    resumed = _weights(d / "snap" / "s_iter_24.caffemodel")
    full = _weights(d / "full" / "s_iter_24.caffemodel")
    assert resumed.tobytes() != full.tobytes()    # restarted from record 0, as Caffe does
    assert _rel(resumed, full) < 0.5               # but a sound resume all the same


def test_hdf5_snapshot_round_trips_the_extra_state(tmp_path):
    from pycaffe_fc.solvers.snapshot import read_state
    d = _setup(tmp_path, 12, 4, 'snapshot_format: HDF5\n')
    _train(d)
    full = _keep(d, "full")
    rec = read_state(str(full / "s_iter_4.solverstate.h5"))
    assert [(s["net"], s["layer"]) for s in rec.layer_states] == [(0, "mnist"), (0, "drop1")]
    assert rec.layer_states[0]["position"] == 64 and rec.layer_states[1]["draws"] == 4
    assert rec.workers == 1 and '"PCG64"' in rec.process_rng
    _train(d, "--snapshot", "full/s_iter_4.solverstate.h5")
    import h5py

    def arrays(path):
        with h5py.File(path, "r") as f:
            out = []
            f["data"].visititems(lambda name, obj: out.append(obj[()].tobytes()) if hasattr(obj, "shape") else None)
            return out
    assert arrays(d / "snap" / "s_iter_12.caffemodel.h5") == arrays(full / "s_iter_12.caffemodel.h5")


@pytest.mark.skipif(not os.path.exists(MPIEXEC), reason="no mpiexec")
def test_one_two_four_workers_same_weights_and_resume_four_on_two(reference):
    """Random crops, mirrors and dropout are keyed by global sample index: 1, 2 and 4 ranks
    (mpiexec, started by ``--gpus N``) end with the same weights; a 4-worker snapshot resumed on
    2 workers ends where the 4-worker run ends."""
    d = _setup(reference.parent / (reference.name + "_p"), 8, 4)
    _train(d)
    one = _weights(_keep(d, "p1") / "s_iter_8.caffemodel")
    _train(d, "--gpus", "2")
    two = _weights(_keep(d, "p2") / "s_iter_8.caffemodel")
    _train(d, "--gpus", "4")
    four = _keep(d, "p4")
    w4 = _weights(four / "s_iter_8.caffemodel")
    assert _rel(two, one) < 1e-6 and _rel(w4, one) < 1e-6, (_rel(two, one), _rel(w4, one))
    r = _train(d, "--gpus", "2", "--snapshot", "p4/s_iter_4.solverstate")
    assert "written by 4 workers, resumed on 2" in r.stderr
    assert _rel(_weights(d / "snap" / "s_iter_8.caffemodel"), w4) < 1e-6


# -- the counter-based streams, in process ---------------------------------------------------------
@pytest.mark.parametrize("layer", ['type: "Dropout" dropout_param { dropout_ratio: 0.3 }',
                                   'type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }'])
def test_per_sample_draws_split_over_workers_equal_the_one_worker_draws(layer):
    import pycaffe_fc as caffe
    from pycaffe_fc.data.sharding import clear_shard, set_shard
    from pycaffe_fc.proto import caffe_pb2
    from google.protobuf import text_format

    def net():
        p = caffe_pb2.NetParameter()
        text_format.Parse('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 8 dim: 2 dim: 4 dim: 6 } } }'
                          f' layer {{ name: "r" bottom: "x" top: "y" {layer} }}', p)
        return p

    x = np.random.default_rng(0).uniform(0.5, 1.5, (8, 2, 4, 6)).astype(np.float32)
    caffe.set_random_seed(3)
    whole = caffe.Net(net(), caffe.TRAIN)
    whole.blobs["x"].data[...] = x
    outs = [whole.forward()["y"].copy() for _ in range(2)]
    assert not np.array_equal(outs[0], outs[1])                  # new draws every forward
    if "Dropout" in layer:
        assert abs((outs[0] != 0).mean() - 0.7) < 0.1
        np.testing.assert_allclose(outs[0][outs[0] != 0], (x / np.float32(0.7))[outs[0] != 0], rtol=1e-6)
    try:
        for r in range(4):
            set_shard(r, 4, seed=3)
            part = caffe.Net(net(), caffe.TRAIN)
            part.blobs["x"].reshape(2, 2, 4, 6)
            part.blobs["x"].data[...] = x[2 * r:2 * r + 2]
            for k in range(2):
                np.testing.assert_array_equal(part.forward()["y"], outs[k][2 * r:2 * r + 2])
    finally:
        clear_shard()


def test_transformer_draws_depend_on_position_only():
    from pycaffe_fc.data.transformer import DataTransformer
    from pycaffe_fc.proto import caffe_pb2
    p = caffe_pb2.TransformationParameter(crop_size=3, mirror=True)
    t = DataTransformer(p, 0, 12345)
    whole = t.draw(10, 8, 8, np.arange(10))
    halves = [t.draw(5, 8, 8, np.arange(5 * i, 5 * i + 5)) for i in (1, 0)]
    for a, b0, b1 in zip(whole, halves[1], halves[0]):
        np.testing.assert_array_equal(a, np.concatenate([b0, b1]))
    assert len(set(whole[0].tolist())) > 1 and whole[2].any() and not whole[2].all()


def test_shuffled_index_stream_is_positional():
    from pycaffe_fc.data.stream import FileRowStream, IndexStream
    s = IndexStream(7, True, 99, start=3)
    seq = s.take(30)
    np.testing.assert_array_equal(IndexStream(7, True, 99, start=3).indices(np.arange(30)[::-1]), seq[::-1])
    assert sorted(seq[4:11].tolist()) == list(range(7))             # epoch 1: a permutation
    f = FileRowStream([3, 5, 2], True, 7)
    files, rows = f.take(25)
    g_files, g_rows = FileRowStream([3, 5, 2], True, 7).locate(np.arange(12, 25))
    np.testing.assert_array_equal(g_files, files[12:])
    np.testing.assert_array_equal(g_rows, rows[12:])
    assert sorted(zip(files[:10].tolist(), rows[:10].tolist())) == [(a, b) for a, n in enumerate([3, 5, 2])
                                                                   for b in range(n)]


def _layer_net(text: str):
    import pycaffe_fc as caffe
    from google.protobuf import text_format
    from pycaffe_fc.proto import caffe_pb2
    p = caffe_pb2.NetParameter()
    text_format.Parse(text, p)
    return caffe.Net(p, caffe.TRAIN)


@pytest.mark.parametrize("kind", ["ImageData", "HDF5Data"])
def test_shuffling_data_layers_restore_their_position_and_seed(kind, tmp_path):
    """A fresh layer given (seed, position) of another continues it batch for batch: the shuffles
    (per epoch, rand_skip), crops and mirrors included."""
    if kind == "ImageData":
        data = REF / "data"
        need_shared(data / "list.txt")
        text = (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" transform_param {{ crop_size: 12 '
                f'mirror: true }} image_data_param {{ source: "{data / "list.txt"}" root_folder: "{data}/" '
                'batch_size: 3 shuffle: true rand_skip: 5 new_height: 16 new_width: 16 } }')
    else:
        import h5py
        names = []
        for i, n in enumerate((5, 3, 4)):
            with h5py.File(tmp_path / f"{i}.h5", "w") as f:
                f["data"] = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * i
                f["label"] = np.arange(n, dtype=np.float32) + 100 * i
            names.append(str(tmp_path / f"{i}.h5"))
        (tmp_path / "list.txt").write_text("\n".join(names))
        text = (f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
                f'source: "{tmp_path / "list.txt"}" batch_size: 5 shuffle: true }} }}')
    a = _layer_net(text)
    for _ in range(5):
        a.forward()
    st = a.layers[0].resume_state()
    expect = []
    for _ in range(7):
        a.forward()
        expect.append((a.blobs["data"].data.copy(), a.blobs["label"].data.copy()))
    b = _layer_net(text)
    b.forward()                                   # wherever it was, it continues from the state
    b.layers[0].restore_resume_state(st["seed"], st["draws"], st["position"])
    for data, label in expect:
        b.forward()
        np.testing.assert_array_equal(b.blobs["data"].data, data)
        np.testing.assert_array_equal(b.blobs["label"].data, label)
