"""The six update rules, regularisation, clipping, iter_size and the training loop, checked
against steps computed by hand (float64 numpy) on InnerProduct + EuclideanLoss, and BVLC Caffe's
own SGD trajectory on LeNet / Fashion-MNIST."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

import solver_fixtures as sf
from conftest import REF, need_shared
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                                SGDSolver, get_solver)

BATCH = 4


def rows_of(it: int, batch: int = BATCH, iter_size: int = 1, k: int = 0):
    start = (it * iter_size + k) * batch
    return (start + np.arange(batch)) % sf.N_ROWS


def reference(rule: str, n_iter: int, *, lr=0.1, momentum=0.0, momentum2=0.999, delta=1e-8,
              rms_decay=0.99, wd=0.0, reg="L2", lr_mult=(1, 2), decay_mult=(1, 0), clip=-1.0):
    """The update rules of Caffe's sgd_solvers/*.cpp, written out in float64."""
    p = [sf.W0.astype(np.float64), sf.B0.astype(np.float64)]
    h = [np.zeros_like(x) for x in p]
    h2 = [np.zeros_like(x) for x in p]
    for it in range(n_iter):
        gw, gb, _ = sf.grads(p[0], p[1], rows_of(it))
        g = [gw, gb]
        if clip >= 0:
            norm = math.sqrt(sum((x ** 2).sum() for x in g))
            if norm > clip:
                g = [x * clip / norm for x in g]
        for i in range(2):
            d = wd * decay_mult[i]
            if d:
                g[i] = g[i] + d * (p[i] if reg == "L2" else np.sign(p[i]))
            rate = lr * lr_mult[i]
            if rule == "SGD":
                h[i] = momentum * h[i] + rate * g[i]
                step = h[i]
            elif rule == "Nesterov":
                old = h[i].copy()
                h[i] = momentum * h[i] + rate * g[i]
                step = (1 + momentum) * h[i] - momentum * old
            elif rule == "AdaGrad":
                h[i] = h[i] + g[i] ** 2
                step = rate * g[i] / (np.sqrt(h[i]) + delta)
            elif rule == "RMSProp":
                h[i] = rms_decay * h[i] + (1 - rms_decay) * g[i] ** 2
                step = rate * g[i] / (np.sqrt(h[i]) + delta)
            elif rule == "AdaDelta":
                h[i] = momentum * h[i] + (1 - momentum) * g[i] ** 2
                u = g[i] * np.sqrt((h2[i] + delta) / (h[i] + delta))
                h2[i] = momentum * h2[i] + (1 - momentum) * u ** 2
                step = rate * u
            elif rule == "Adam":
                t = it + 1
                h[i] = momentum * h[i] + (1 - momentum) * g[i]
                h2[i] = momentum2 * h2[i] + (1 - momentum2) * g[i] ** 2
                corr = math.sqrt(1 - momentum2 ** t) / (1 - momentum ** t)
                step = rate * corr * h[i] / (np.sqrt(h2[i]) + delta)
            p[i] = p[i] - step
    return p


def run(n_iter=4, weights=sf.set_weights, **fields):
    s = get_solver(sf.solver_param(batch=fields.pop("batch", BATCH), max_iter=n_iter, **fields))
    weights(s)
    s.step(n_iter)
    return s


def params(s):
    return [b.data.copy() for b in s.net.params["ip"]]


CASES = [
    ("SGD", dict(momentum=0.9, weight_decay=0.01)),
    ("Nesterov", dict(momentum=0.9, weight_decay=0.01)),
    ("AdaGrad", dict(base_lr=0.5, delta=1e-6)),
    ("RMSProp", dict(base_lr=0.05, rms_decay=0.9, delta=1e-6)),
    ("AdaDelta", dict(base_lr=1.0, momentum=0.95, delta=1e-6)),
    ("Adam", dict(base_lr=0.05, momentum=0.9, momentum2=0.999, delta=1e-8, weight_decay=0.001)),
]


@pytest.mark.parametrize("rule,fields", CASES, ids=[c[0] for c in CASES])
def test_update_rule_matches_hand_computed_steps(rule, fields):
    s = run(4, type=rule, **fields)
    assert type(s).__name__ == f"{rule}Solver"
    kw = dict(lr=fields.get("base_lr", 0.1), momentum=fields.get("momentum", 0.0),
              momentum2=fields.get("momentum2", 0.999), delta=fields.get("delta", 1e-8),
              rms_decay=fields.get("rms_decay", 0.99), wd=fields.get("weight_decay", 0.0))
    want = reference(rule, 4, **kw)
    for got, exp in zip(params(s), want):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6)
    # a rule that ignores its state would not match: the first step alone differs from four
    assert not np.allclose(params(s)[0], reference(rule, 1, **kw)[0], atol=1e-4)
    assert len(s.history) == (4 if rule in ("AdaDelta", "Adam") else 2)


def test_solver_classes_build_their_rule_whatever_the_type():
    p = sf.solver_param(type="Adam")
    assert type(SGDSolver(p)) is SGDSolver  # as pycaffe's caffe.SGDSolver(path)
    for cls in (NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver):
        assert type(cls(sf.solver_param())) is cls


def test_legacy_solver_type_enum(tmp_path):
    f = tmp_path / "s.prototxt"
    f.write_text(sf.solver_text(solver_type="ADAM").replace('solver_type: "ADAM"', "solver_type: ADAM"))
    s = get_solver(str(f))
    assert isinstance(s, AdamSolver) and s.param.type == "Adam"


def test_unknown_type_and_sanity_checks():
    with pytest.raises(CaffeError, match="Unknown solver type: Adamax"):
        get_solver(sf.solver_param(type="Adamax"))
    with pytest.raises(CaffeError, match="Momentum cannot be used with AdaGrad"):
        get_solver(sf.solver_param(type="AdaGrad", momentum=0.9))
    with pytest.raises(CaffeError, match="Momentum cannot be used with RMSProp"):
        get_solver(sf.solver_param(type="RMSProp", momentum=0.9))


def test_l1_regularization_and_decay_mult():
    s = run(3, momentum=0.5, weight_decay=0.05, regularization_type="L1")
    want = reference("SGD", 3, momentum=0.5, wd=0.05, reg="L1")
    for got, exp in zip(params(s), want):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6)
    l2 = reference("SGD", 3, momentum=0.5, wd=0.05, reg="L2")
    assert not np.allclose(params(s)[0], l2[0], atol=1e-5)
    with pytest.raises(CaffeError, match="Unknown regularization type: L3"):
        run(1, weight_decay=0.1, regularization_type="L3")


def test_lr_mult_and_decay_mult_per_param():
    def net(s):
        sf.set_weights(s)
    text = sf.solver_text(max_iter=2, momentum=0.9, weight_decay=0.1).replace(
        "net_param { " + sf.net_text(BATCH) + " }",
        "net_param { " + sf.net_text(BATCH, lr_mult=(0, 3), decay_mult=(2, 1)) + " }")
    from google.protobuf import text_format
    from pycaffe_fc.proto import caffe_pb2
    s = get_solver(text_format.Parse(text, caffe_pb2.SolverParameter()))
    net(s)
    s.step(2)
    w, b = params(s)
    np.testing.assert_array_equal(w, sf.W0)  # lr_mult 0: frozen
    want = reference("SGD", 2, momentum=0.9, wd=0.1, lr_mult=(0, 3), decay_mult=(2, 1))
    np.testing.assert_allclose(b, want[1], rtol=2e-5, atol=1e-6)


def test_clip_gradients(capsys):
    s = run(3, momentum=0.9, clip_gradients=0.05)
    want = reference("SGD", 3, momentum=0.9, clip=0.05)
    for got, exp in zip(params(s), want):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6)
    assert "Gradient clipping: scaling down gradients (L2 norm" in capsys.readouterr().err
    unclipped = reference("SGD", 3, momentum=0.9)
    assert not np.allclose(params(s)[0], unclipped[0], atol=1e-4)


def test_iter_size_equals_larger_batch():
    a = run(3, batch=8, momentum=0.9, weight_decay=0.01)
    b = run(3, batch=4, iter_size=2, momentum=0.9, weight_decay=0.01)
    for x, y in zip(params(a), params(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    c = run(3, batch=4, momentum=0.9, weight_decay=0.01)
    assert not np.allclose(params(a)[0], params(c)[0], atol=1e-4)


def test_same_seed_same_run_bitwise():
    def fresh(seed):
        s = get_solver(sf.solver_param(random_seed=seed, momentum=0.9, max_iter=3))
        s.step(3)
        return params(s)
    a, b, c = fresh(7), fresh(7), fresh(8)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert a[0].tobytes() != c[0].tobytes()


def test_nan_loss_stops_training():
    s = get_solver(sf.solver_param(base_lr=1e6, max_iter=50))
    sf.set_weights(s)
    with pytest.raises(CaffeError, match=r"Iteration \d+: the training loss is (nan|inf)"):
        s.solve()


def test_callbacks_run_in_caffes_order():
    s = get_solver(sf.solver_param(momentum=0.0))
    sf.set_weights(s)
    events = []

    def on_start():
        events.append(("start", s.iter, float(np.abs(s.net.params["ip"][0].diff).sum())))

    def on_gradients_ready():
        events.append(("ready", s.iter, float(np.abs(s.net.params["ip"][0].diff).sum())))
        for blob in s.net.params["ip"]:
            blob.diff[...] = 0  # e.g. what an all-reduce would replace

    s.add_callback(on_start, on_gradients_ready)
    s.step(2)
    assert [e[:2] for e in events] == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]
    assert events[0][2] == 0 and events[1][2] > 0  # diffs cleared before, gradients ready after
    np.testing.assert_array_equal(params(s)[0], sf.W0)  # the callback's (zeroed) gradient was used


def test_display_and_average_loss(capsys):
    run(4, display=2, average_loss=2)
    err = capsys.readouterr().err
    losses = []
    for k in range(3):
        w, b = reference("SGD", k)
        losses.append(sf.grads(w, b, rows_of(k))[2])
    it_lines = re.findall(r"Iteration (\d+) \(.*\), loss = (\S+)", err)
    assert [int(i) for i, _ in it_lines] == [0, 2]
    assert float(it_lines[0][1]) == pytest.approx(losses[0], rel=1e-5)
    # iteration 2 shows the mean of the last average_loss = 2 losses (iterations 1 and 2) ...
    assert float(it_lines[1][1]) == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-5)
    # ... while the output line shows the current batch's loss
    outputs = re.findall(r"    Train net output #0: loss = (\S+) \(\* 1 = (\S+) loss\)", err)
    assert len(outputs) == 2 and float(outputs[1][0]) == pytest.approx(losses[2], rel=1e-5)
    assert re.search(r"Iteration 2, lr = 0\.1$", err, re.M)


def test_log_lines_parse_like_caffe_parse_log(capsys):
    """The regexes of Caffe's tools/extra/parse_log.py and extract_seconds.py."""
    s = get_solver(sf.solver_param(display=1, max_iter=2, test_iter=[2], test_interval=1,
                                   test_compute_loss=True))
    s.solve()
    err = capsys.readouterr().err
    glog = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) +\d+ [\w.]+:\d+\] ")
    lines = [l for l in err.splitlines() if glog.match(l)]
    assert lines and all(1 <= int(glog.match(l).group(1)) <= 12 for l in lines)
    assert any("Solving tiny" in l for l in lines)
    train = [l for l in lines if re.search(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)", l)]
    test = [l for l in lines if re.search(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)", l)]
    lrs = [l for l in lines if re.search(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)", l)]
    assert len(train) == 2 and len(lrs) == 2
    assert len(test) == 3  # iterations 0, 1 and the final test at 2
    assert sum("Testing net (#0)" in l for l in lines) == 3
    assert any("Test loss:" in l for l in lines)
    assert lines[-1].endswith("Optimization Done.")


def test_test_nets_share_train_weights():
    s = get_solver(sf.solver_param(test_iter=[4], test_interval=2, max_iter=2))
    assert len(s.test_nets) == 1
    tn = s.test_nets[0]
    assert tn.params["ip"][0] is s.net.params["ip"][0]
    sf.set_weights(s)
    res = s.test(0)
    # the test net's loss over 4 batches of 4 rows = the loss over all 16 rows (each batch mean)
    want = np.mean([sf.grads(sf.W0, sf.B0, rows_of(i))[2] for i in range(4)])
    assert res[0][0] == "loss" and res[0][1] == pytest.approx(want, rel=1e-5)


def test_train_and_test_state(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(sf.net_text(BATCH, extra="""
layer { name: "only_test" type: "Power" bottom: "y" top: "z" include { phase: TEST } }
layer { name: "only_stage" type: "Power" bottom: "y" top: "w" include { stage: "deep" } }
"""))
    from google.protobuf import text_format
    from pycaffe_fc.proto import caffe_pb2
    text = sf.solver_text(net_path=str(net), test_iter=[1, 1], test_interval=10) + \
        'train_state { stage: "deep" }\ntest_state { }\ntest_state { stage: "deep" }\n'
    s = get_solver(text_format.Parse(text, caffe_pb2.SolverParameter()))
    assert "w" in s.net.blobs and "z" not in s.net.blobs
    assert "z" in s.test_nets[0].blobs and "w" not in s.test_nets[0].blobs
    assert "z" in s.test_nets[1].blobs and "w" in s.test_nets[1].blobs


def test_net_field_errors():
    from pycaffe_fc.proto import caffe_pb2
    with pytest.raises(CaffeError, match="must specify a train net"):
        get_solver(caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed"))
    with pytest.raises(CaffeError, match="test_iter must be specified"):
        p = sf.solver_param()
        p.test_net_param.add().CopyFrom(p.net_param)
        get_solver(p)
    with pytest.raises(CaffeError, match="test_interval"):
        get_solver(sf.solver_param(test_iter=[1]))


def test_is_root_false_is_silent(capsys, tmp_path):
    p = sf.solver_param(display=1, snapshot=1, snapshot_prefix=str(tmp_path / "x"), test_iter=[1],
                        test_interval=1, snapshot_after_train=True, max_iter=2)
    s = get_solver(p, is_root=False)
    s.solve()
    assert capsys.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []
    assert s.iter == 2


def test_action_function_stop():
    s = get_solver(sf.solver_param(max_iter=10))
    s.set_action_function(lambda: "stop" if s.iter >= 3 else "none")
    s.solve()
    assert s.iter == 3 and s.requested_early_exit


def test_bvlc_caffe_sgd_trajectory(tmp_path, monkeypatch, capsys):
    """BVLC Caffe's ``caffe train -solver sgd_solver.prototxt -weights lenet_init.caffemodel`` on
    LeNet / fmnist640 (solvers.json): the first losses to float rounding, the rest loosely (float32
    training is chaotic), the final weights close to Caffe's own snapshot."""
    from pycaffe_fc import cli
    from pycaffe_fc.layers.base import LAYER_REGISTRY, layer_type_list
    from pycaffe_fc.net import Net
    layer_type_list()
    for t in ("Data", "Convolution", "Pooling", "InnerProduct", "ReLU", "SoftmaxWithLoss"):
        if t not in LAYER_REGISTRY:
            pytest.skip(f"layer type {t} is not available yet")
    src = need_shared(REF / "solver")
    js = json.loads((REF / "solvers.json").read_text())["solvers"]["sgd"]
    for name in ("lenet_train.prototxt", "sgd_solver.prototxt", "lenet_init.caffemodel"):
        shutil.copy(src / name, tmp_path / name)
    shutil.copytree(src / "fmnist640_train_lmdb", tmp_path / "fmnist640_train_lmdb")  # never write in shared
    for f in (tmp_path / "fmnist640_train_lmdb").iterdir():
        f.chmod(0o644)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--solver", "sgd_solver.prototxt", "--weights", "lenet_init.caffemodel"]) == 0
    err = capsys.readouterr().err
    losses = [float(x) for x in re.findall(r"\] Iteration \d+(?: \(.*\))?, loss = (\S+)", err)]
    lrs = [float(x) for x in re.findall(r"\] Iteration \d+, lr = (\S+)", err)]
    ref = js["loss_cli_log"]
    assert len(losses) == len(ref) == 51  # 50 updates and Caffe's extra forward after training
    assert lrs == js["lr_cli_log"]
    assert losses[:3] == ref[:3]  # both printed to 6 significant digits
    np.testing.assert_allclose(losses, ref, atol=2e-2)
    ours = Net("lenet_train.prototxt", 0, weights="sgd_iter_50.caffemodel")
    caffes = Net("lenet_train.prototxt", 0, weights=str(src / js["final_caffemodel"]))
    init = Net("lenet_train.prototxt", 0, weights="lenet_init.caffemodel")
    for name, blobs in caffes.params.items():
        for a, b, c in zip(ours.params[name], blobs, init.params[name]):
            # off Caffe's result by a few percent of how far Caffe's training moved the weights
            assert np.linalg.norm(a.data - b.data) < 0.1 * np.linalg.norm(b.data - c.data), name
    assert (tmp_path / "sgd_iter_50.solverstate").exists()


def test_pycaffe_surface(tmp_path):
    import pycaffe_fc as caffe
    f = tmp_path / "solver.prototxt"
    f.write_text(sf.solver_text(type="Nesterov", momentum=0.9))
    assert type(caffe.get_solver(str(f))) is caffe.NesterovSolver
    s = caffe.SGDSolver(str(f))
    assert isinstance(s, caffe.SGDSolver) and s.iter == 0 and s.test_nets == []
    s.step(2)
    assert s.iter == 2 and "loss" in s.net.blobs


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    from pycaffe_fc.solvers import log
    run(3, display=2)
    assert "/3 [" not in capsys.readouterr().err
    monkeypatch.setattr(log, "_isatty", lambda: True)
    run(3, display=2)
    err = capsys.readouterr().err
    assert "/3 [" in err and "Iteration 2 (" in err  # the bar and the log lines both shown
    assert log._bar is None  # closed after the step
