"""The ``lars`` solver extension (LARS, You, Gitman & Ginsburg 2017; SolverParameter fields 1002/1003):
its update against steps computed by hand in float64 on InnerProduct + EuclideanLoss
(tests/solver_fixtures.py), the solver types it refuses, and how a solver file spells it (and that
BVLC Caffe's own schema, without fc-caffe's fields, rejects it)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

import solver_fixtures as sf
from pycaffe_fc import backend
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2, io
from pycaffe_fc.solvers import get_solver

BATCH = 4


def rows_of(it: int):
    return (it * BATCH + np.arange(BATCH)) % sf.N_ROWS


def lars_reference(n_iter: int, *, rule="SGD", lr=0.5, momentum=0.9, wd=0.01, eta=0.02,
                   lr_mult=(1, 2), decay_mult=(1, 0), b0=sf.B0):
    """SGD/Nesterov with LARS, float64: per blob, factor = eta*|w| / (|g| + wd*decay_mult*|w|) on the
    loss gradient g (1 where |w| or |g| is 0), rate = lr * lr_mult * factor, then Caffe's rule on
    g + wd*decay_mult*w."""
    p = [sf.W0.astype(np.float64), np.asarray(b0, np.float64)]
    h = [np.zeros_like(x) for x in p]
    factors = []
    for it in range(n_iter):
        gw, gb, _ = sf.grads(p[0], p[1], rows_of(it))
        step_factors = []
        for i, g in enumerate((gw, gb)):
            beta = wd * decay_mult[i]
            wn, gn = np.linalg.norm(p[i]), np.linalg.norm(g)
            factor = eta * wn / (gn + beta * wn) if wn > 0 and gn > 0 else 1.0
            step_factors.append(factor)
            rate = lr * lr_mult[i] * factor
            old = h[i].copy()
            h[i] = momentum * h[i] + rate * (g + beta * p[i])
            step = h[i] if rule == "SGD" else (1 + momentum) * h[i] - momentum * old
            p[i] = p[i] - step
        factors.append(step_factors)
    return p, factors


def run(n_iter: int, b0=sf.B0, **fields):
    fields.setdefault("lars", True)
    s = get_solver(sf.solver_param(batch=BATCH, max_iter=n_iter, **fields))
    sf.set_weights(s, b=b0)
    s.step(n_iter)
    return s


def params(s):
    return [backend.to_numpy(b.data).copy() for b in s.net.params["ip"]]


def test_first_step_written_out():
    """One update, from zero history, written out: data -= lr * lr_mult * eta*|w|/(|g| + wd*|w|) * (g + wd*w)."""
    lr, eta, wd = 0.5, 0.02, 0.01
    gw, gb, _ = sf.grads(sf.W0, sf.B0, rows_of(0))
    w, b = sf.W0.astype(np.float64), sf.B0.astype(np.float64)
    fw = eta * math.sqrt((w ** 2).sum()) / (math.sqrt((gw ** 2).sum()) + wd * math.sqrt((w ** 2).sum()))
    fb = eta * math.sqrt((b ** 2).sum()) / math.sqrt((gb ** 2).sum())  # the bias: decay_mult 0
    want_w = w - lr * 1 * fw * (gw + wd * w)
    want_b = b - lr * 2 * fb * gb
    s = run(1, base_lr=lr, lars_eta=eta, momentum=0.9, weight_decay=wd)
    got_w, got_b = params(s)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-5, atol=1e-7)
    # the factor the solver used is the one written out above
    assert 0.001 < fw < 0.1 and 0.001 < fb < 0.1
    plain = run(1, base_lr=lr, lars=False, momentum=0.9, weight_decay=wd)
    assert not np.allclose(params(plain)[0], got_w, atol=1e-4)  # LARS changed the step


@pytest.mark.parametrize("rule", ["SGD", "Nesterov"])
def test_lars_matches_hand_computed_steps(rule):
    s = run(5, type=rule, base_lr=0.5, lars_eta=0.02, momentum=0.9, weight_decay=0.01)
    want, factors = lars_reference(5, rule=rule)
    for got, exp in zip(params(s), want):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6)
    # the factors vary step to step: a constant rate would not match
    assert len({round(f[0], 6) for f in factors}) == 5


def test_factor_is_one_for_a_zero_blob_and_lr_mult_still_applies():
    """A zero-initialised bias: |w| = 0, so the bias steps at the plain rate (Intel/NVIDIA Caffe's
    convention) until it is non-zero, then LARS takes over; lr_mult multiplies the LARS rate."""
    zero = np.zeros(sf.N_OUT, np.float32)
    s = run(3, b0=zero, base_lr=0.2, lars_eta=0.05, momentum=0.5, weight_decay=0.001)
    want, factors = lars_reference(3, lr=0.2, eta=0.05, momentum=0.5, wd=0.001, b0=zero)
    assert factors[0][1] == 1.0 and factors[1][1] != 1.0
    for got, exp in zip(params(s), want):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6)


def test_iter_size_and_clipping_come_before_the_norm():
    """g in the factor is the normalised (1/iter_size), clipped gradient: iter_size 2 of batch 2
    is the same run as batch 4, with LARS too."""
    a = get_solver(sf.solver_param(batch=4, max_iter=3, lars=True, lars_eta=0.02, base_lr=0.5,
                                   momentum=0.9, weight_decay=0.01))
    b = get_solver(sf.solver_param(batch=2, iter_size=2, max_iter=3, lars=True, lars_eta=0.02,
                                   base_lr=0.5, momentum=0.9, weight_decay=0.01))
    for s in (a, b):
        sf.set_weights(s)
        s.step(3)
    for x, y in zip(params(a), params(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule", ["AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_adaptive_rules_refuse_lars(rule):
    with pytest.raises(CaffeError, match=f"lars works with the SGD and Nesterov solvers .*not type \"{rule}\""):
        get_solver(sf.solver_param(type=rule, lars=True))


def test_lars_eta_must_be_positive():
    with pytest.raises(CaffeError, match="lars_eta should be > 0"):
        get_solver(sf.solver_param(lars=True, lars_eta=0))


def test_off_by_default_and_spelt_in_a_solver_file(tmp_path):
    assert caffe_pb2.SolverParameter().lars is False
    assert caffe_pb2.SolverParameter().lars_eta == pytest.approx(0.001)  # the paper's eta
    f = tmp_path / "solver.prototxt"
    f.write_text('net: "n.prototxt"\nbase_lr: 2\nlr_policy: "poly"\npower: 2\nmax_iter: 100\n'
                 "momentum: 0.9\nweight_decay: 0.0005\nlars: true\nlars_eta: 0.002\n")
    p = io.read_solver_param(str(f))
    assert p.lars is True and p.lars_eta == pytest.approx(0.002) and p.base_lr == 2
    # field numbers in fc-caffe's range, out of upstream's way
    fields = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    assert (fields["lars"].number, fields["lars_eta"].number) == (1002, 1003)


def _bvlc_solver_parameter():
    """SolverParameter as BVLC Caffe's caffe.proto defines it: fc-caffe's schema without the fields
    numbered >= 1000 (its extensions)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = "bvlc_caffe_for_test.proto"
    fdp.package = "bvlc_caffe_for_test"
    for msg in fdp.message_type:
        keep = [f for f in msg.field if f.number < 1000 or msg.name.startswith("V")]
        del msg.field[:]
        msg.field.extend(keep)
        for f in msg.field:
            if f.type_name.startswith(".caffe."):
                f.type_name = ".bvlc_caffe_for_test." + f.type_name[len(".caffe."):]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bvlc_caffe_for_test.SolverParameter"))


def test_bvlc_schema_rejects_the_fields():
    """What the README says: plain Caffe's text parser stops at ``lars:`` (an unknown field), while
    the rest of the same file is BVLC's format and parses there."""
    bvlc = _bvlc_solver_parameter()
    plain = 'net: "n.prototxt"\nbase_lr: 2\nmomentum: 0.9\n'
    assert text_format.Parse(plain, bvlc()).base_lr == 2
    for line in ("lars: true", "lars_eta: 0.001"):
        with pytest.raises(text_format.ParseError, match=line.split(":")[0]):
            text_format.Parse(plain + line + "\n", bvlc())
        text_format.Parse(plain + line + "\n", caffe_pb2.SolverParameter())  # fc-caffe's parses it


@pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA device")
def test_lars_on_the_gpu_matches_the_hand_computation():
    backend.set_mode_gpu()
    try:
        s = get_solver(sf.solver_param(batch=BATCH, max_iter=5, lars=True, lars_eta=0.02, base_lr=0.5,
                                       momentum=0.9, weight_decay=0.01))
        sf.set_weights(s)
        s.step(5)
        # blob.data is the host copy (pycaffe); the device copy is what the solver updated
        assert type(s.net.params["ip"][0].gpu_data()).__module__.startswith("cupy")
        want, _ = lars_reference(5)
        for got, exp in zip(params(s), want):
            np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6)
    finally:
        backend.set_mode_cpu()


def _caffemodel_weights(path) -> np.ndarray:
    net = io.read_net_param_binary(str(path))
    return np.concatenate([io.blobproto_to_array(b).ravel() for layer in net.layer for b in layer.blobs])


def test_lars_through_the_reduction_tree_equals_one_worker(tmp_path):
    """``fc-caffe train --gpus 2 --sync tree`` with LARS: every rank measures the norms on the
    all-reduced gradient, so the two workers end on the one-worker run's weights (LeNet, 640
    Fashion-MNIST records, global batch 64, 4 iterations at a LARS rate that moves the weights)."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import REF, ROOT, need_shared
    src = need_shared(REF / "solver" / "fmnist640_train_lmdb")
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        pytest.skip("no mpiexec")
    os.symlink(src, tmp_path / "fmnist640_train_lmdb")
    shutil.copy(REF / "solver" / "lenet_train.prototxt", tmp_path)
    (tmp_path / "snap").mkdir()
    (tmp_path / "solver.prototxt").write_text(
        'net: "lenet_train.prototxt"\nbase_lr: 2\nmomentum: 0.9\nweight_decay: 0.0005\nlr_policy: "fixed"\n'
        'display: 1\nmax_iter: 4\nsnapshot: 0\nsnapshot_prefix: "snap/lenet"\nrandom_seed: 1701\n'
        "solver_mode: CPU\nlars: true\nlars_eta: 0.001\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    init = REF / "solver" / "lenet_init.caffemodel"
    finals = []
    for extra in ([], ["--gpus", "2", "--sync", "tree", "--check-sync", "1"]):
        r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "train", "--solver", "solver.prototxt",
                            "--weights", str(init), *extra], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        out = tmp_path / f"w{len(finals)}.caffemodel"
        shutil.move(tmp_path / "snap" / "lenet_iter_4.caffemodel", out)
        finals.append(_caffemodel_weights(out))
    one, two = finals
    start = _caffemodel_weights(init)
    moved = np.linalg.norm(one - start) / np.linalg.norm(start)
    assert moved > 1e-3  # LARS took real steps
    assert np.linalg.norm(two - one) / np.linalg.norm(one) < 1e-5
