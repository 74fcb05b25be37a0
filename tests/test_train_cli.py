"""``fc-caffe train`` / ``fc-caffe test`` and the library ``solvers.train``: Caffe's flags,
fine-tuning, resuming, signals, the data-parallel hand-off, and one-line errors."""
from __future__ import annotations

import os
import signal
import sys
import types

import numpy as np
import pytest

import solver_fixtures as sf
from pycaffe_fc import cli
from pycaffe_fc.commands.train import parse_gpus
from pycaffe_fc.net import Net
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.proto.io import array_to_blobproto, read_proto_binary
from pycaffe_fc.solvers import train
from pycaffe_fc.solvers.training import SignalHandler


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A run directory holding net.prototxt and solver.prototxt (paths relative to the CWD)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(sf.net_text())
    return tmp_path


def write_solver(d, **fields):
    fields.setdefault("snapshot_prefix", "snap")
    (d / "solver.prototxt").write_text(sf.solver_text(net_path="net.prototxt", **fields))
    return "solver.prototxt"


def ip_weights(path):
    m = read_proto_binary(path, caffe_pb2.NetParameter)
    ip = [l for l in m.layer if l.name == "ip"][0]
    return np.asarray(ip.blobs[0].data, np.float32).reshape(sf.N_OUT, sf.N_IN)


def save_weights(d, name, w):
    net = Net(str(d / "net.prototxt"), 0)
    net.params["ip"][0].data[...] = w
    net.params["ip"][1].data[...] = sf.B0
    net.save(str(d / name))
    return name


def test_parse_gpus():
    assert parse_gpus("", 0) == (1, None)
    assert parse_gpus("all", 0) == (1, None)
    assert parse_gpus("all", 3) == (3, [0, 1, 2])
    assert parse_gpus("0", 4) == (1, [0])
    assert parse_gpus("4", 0) == (4, [0, 1, 2, 3])
    assert parse_gpus("1,3", 4) == (2, [1, 3])
    for bad in ("x", "1,1", "-1"):
        with pytest.raises(Exception):
            parse_gpus(bad, 2)


def test_train_writes_snapshots_and_logs(workdir, capsys):
    assert cli.main(["train", "--solver", write_solver(workdir, max_iter=4, snapshot=2, display=1)]) == 0
    err = capsys.readouterr().err
    assert "Use CPU." in err and "Solving tiny" in err and err.rstrip().endswith("Optimization Done.")
    assert {p.name for p in workdir.iterdir()} >= {"snap_iter_2.caffemodel", "snap_iter_4.solverstate"}


def test_gpus_without_a_gpu_runs_on_the_cpu(workdir, capsys, monkeypatch):
    from pycaffe_fc import backend
    monkeypatch.setattr(backend, "gpu_available", lambda: 0)
    assert cli.main(["train", "--solver", write_solver(workdir, max_iter=1), "--gpus", "0"]) == 0
    assert "running on the CPU" in capsys.readouterr().err


def test_weights_fine_tune_comma_list(workdir):
    a = save_weights(workdir, "a.caffemodel", sf.W0)
    b = save_weights(workdir, "b.caffemodel", sf.W0 * 2)
    solver = write_solver(workdir, max_iter=0, snapshot_after_train=True)
    assert cli.main(["train", "--solver", solver, "--weights", a]) == 0
    np.testing.assert_array_equal(ip_weights(workdir / "snap_iter_0.caffemodel"), sf.W0)
    assert cli.main(["train", "--solver", solver, "--weights", f"{a},{b}"]) == 0
    np.testing.assert_array_equal(ip_weights(workdir / "snap_iter_0.caffemodel"), sf.W0 * 2)


def test_resume_from_snapshot(workdir):
    # whole-dataset batches: Caffe does not save the data cursor, so the batches must not depend on it
    (workdir / "net.prototxt").write_text(sf.net_text(sf.N_ROWS))
    w = save_weights(workdir, "w.caffemodel", sf.W0)
    assert cli.main(["train", "--solver", write_solver(workdir, max_iter=4, momentum=0.9,
                                                           snapshot_prefix="full", snapshot_after_train=True),
                     "--weights", w]) == 0
    assert cli.main(["train", "--solver", write_solver(workdir, max_iter=2, momentum=0.9, snapshot_prefix="half",
                                                           snapshot_after_train=True),
                     "--weights", w]) == 0
    solver = write_solver(workdir, max_iter=4, momentum=0.9, snapshot_prefix="resumed", snapshot_after_train=True)
    assert cli.main(["train", "--solver", solver, "--snapshot", "half_iter_2.solverstate"]) == 0
    assert ip_weights(workdir / "resumed_iter_4.caffemodel").tobytes() == \
        ip_weights(workdir / "full_iter_4.caffemodel").tobytes()


@pytest.mark.parametrize("argv,message", [
    (["--solver", "missing.prototxt"], "missing.prototxt: file not found"),
    (["--solver", "bad.prototxt"], "bad.prototxt:2:1"),
    (["--solver", "solver.prototxt", "--snapshot", "x.solverstate", "--weights", "w.caffemodel"],
     "Give a snapshot to resume training or weights to finetune but not both."),
    (["--solver", "solver.prototxt", "--weights", "nope.caffemodel"], "nope.caffemodel: file not found"),
    (["--solver", "solver.prototxt", "--weights", "wrong.caffemodel"], "shape mismatch"),
    (["--solver", "solver.prototxt", "--gpus", "zero"], "--gpus"),
])
def test_train_errors_are_one_line(workdir, capsys, argv, message):
    write_solver(workdir)
    (workdir / "bad.prototxt").write_text('net: "net.prototxt"\nbase_rate: 0.1\n')
    wrong = caffe_pb2.NetParameter()
    layer = wrong.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add().CopyFrom(array_to_blobproto(np.zeros((5, sf.N_IN), np.float32)))
    layer.blobs.add().CopyFrom(array_to_blobproto(np.zeros(5, np.float32)))
    (workdir / "wrong.caffemodel").write_bytes(wrong.SerializeToString())
    assert cli.main(["train"] + argv) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fc-caffe train: error:") and message in last
    assert "Traceback" not in err


def test_level_and_stage_reach_the_train_net(workdir):
    (workdir / "net.prototxt").write_text(sf.net_text(extra="""
layer { name: "staged" type: "Power" bottom: "y" top: "z" include { stage: "a" stage: "b" min_level: 2 } }
"""))
    seen = {}
    train(write_solver(workdir, max_iter=0), level=2, stages=["a", "b"],
          setup=lambda s: seen.update(blobs=set(s.net.blobs)))
    assert "z" in seen["blobs"]
    train(write_solver(workdir, max_iter=0), level=1, stages=["a", "b"],
          setup=lambda s: seen.update(blobs=set(s.net.blobs)))
    assert "z" not in seen["blobs"]


def test_sigint_stops_and_sighup_snapshots(workdir, capsys):
    def setup(s):
        def on_start():
            if s.iter == 1:
                os.kill(os.getpid(), signal.SIGHUP)
            if s.iter == 3:
                os.kill(os.getpid(), signal.SIGINT)
        s.add_callback(on_start, lambda: None)

    previous = signal.getsignal(signal.SIGINT)
    s = train(write_solver(workdir, max_iter=10, snapshot_after_train=True), setup=setup)
    assert s.iter == 4 and s.requested_early_exit
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    names = {p.name for p in workdir.iterdir()}
    assert {"snap_iter_2.caffemodel", "snap_iter_4.caffemodel"} <= names
    assert "Optimization stopped early." in capsys.readouterr().err
    h = SignalHandler("none", "stop")
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert h.action() == "none"
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.action() == "stop"
    finally:
        h.restore()


def fake_launch(monkeypatch):
    calls = []
    mod = types.ModuleType("pycaffe_fc.parallel.launch")
    mod.train_parallel = lambda args: calls.append(args) or 0
    monkeypatch.setitem(sys.modules, "pycaffe_fc.parallel.launch", mod)
    import pycaffe_fc.parallel as par
    monkeypatch.setattr(par, "launch", mod, raising=False)
    return calls


def test_several_workers_go_data_parallel(workdir, monkeypatch):
    calls = fake_launch(monkeypatch)
    solver = write_solver(workdir)
    assert cli.main(["train", "--solver", solver, "--gpus", "4", "--sync", "ps", "--no-overlap",
                     "--check-sync", "10", "--segment-bytes", "65536", "--batch-per-worker", "8"]) == 0
    (args,) = calls
    assert args.workers == 4 and args.devices == [0, 1, 2, 3] and args.sync == "ps"
    assert args.overlap is False and args.check_sync == 10 and args.segment_bytes == 65536
    assert args.batch_per_worker == 8 and args.solver == solver
    monkeypatch.setenv("PMI_SIZE", "3")
    assert cli.main(["train", "--solver", solver]) == 0
    assert len(calls) == 2 and calls[1].workers == 1 and calls[1].sync == "tree" and calls[1].overlap is True
    monkeypatch.delenv("PMI_SIZE")
    assert cli.main(["train", "--solver", solver, "--gpus", "0"]) == 0  # one worker: single process
    assert len(calls) == 2


def test_caffe_test_command(workdir, capsys):
    w = save_weights(workdir, "w.caffemodel", sf.W0)
    assert cli.main(["test", "--model", "net.prototxt", "--weights", w, "--iterations", "4"]) == 0
    err = capsys.readouterr().err
    batches = [float(l.rsplit("= ", 1)[1]) for l in err.splitlines() if "] Batch " in l]
    want = [sf.grads(sf.W0, sf.B0, (4 * i + np.arange(4)) % 16)[2] for i in range(4)]
    np.testing.assert_allclose(batches, want, rtol=1e-5)
    assert f"] Loss: " in err
    mean = [l for l in err.splitlines() if "] loss = " in l][-1]
    assert "(* 1 = " in mean
    assert float(mean.split("] loss = ")[1].split()[0]) == pytest.approx(np.mean(want), rel=1e-5)
    assert cli.main(["test", "--model", "net.prototxt", "--weights", "missing.caffemodel"]) == 1
    assert "missing.caffemodel: file not found" in capsys.readouterr().err


def test_caffe_single_dash_flags(workdir):
    assert cli.main(["train", "-solver", write_solver(workdir, max_iter=1, snapshot_after_train=True),
                     "-sigint_effect", "none"]) == 0
    assert cli.main(["test", "-model", "net.prototxt", "-weights", "snap_iter_1.caffemodel",
                     "-iterations", "1"]) == 0
