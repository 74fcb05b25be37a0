"""Learning-rate policies against Caffe's GetLearningRate formulas and BVLC Caffe's own log."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import REF, need_shared
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.solvers.lr_policy import learning_rate

f32 = np.float32


def param(**kw):
    p = caffe_pb2.SolverParameter()
    for k, v in kw.items():
        if isinstance(v, (list, tuple)):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


def rates(p, n, start=0):
    out, step = [], 0
    for it in range(start, start + n):
        r, step = learning_rate(p, it, step)
        out.append(r)
    return out


def test_fixed():
    assert rates(param(lr_policy="fixed", base_lr=0.01), 3) == [float(f32(0.01))] * 3


def test_step():
    p = param(lr_policy="step", base_lr=0.1, gamma=0.5, stepsize=3)
    got = rates(p, 8)
    want = [float(f32(float(f32(0.1)) * 0.5 ** (i // 3))) for i in range(8)]
    assert got == want
    assert learning_rate(p, 7, 0)[1] == 2  # current_step = iter / stepsize


def test_exp_inv_poly_sigmoid_formulas():
    b, g, pw = float(f32(0.01)), float(f32(0.999)), float(f32(0.75))
    p = param(lr_policy="exp", base_lr=0.01, gamma=0.999)
    assert rates(p, 5) == [float(f32(b * g ** i)) for i in range(5)]
    p = param(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75)
    gi = f32(1e-4)
    # pow(float, float) is the float overload: its result is rounded to float before the product
    assert rates(p, 5) == [float(f32(0.01) * f32(float(f32(1) + gi * f32(i)) ** -pw)) for i in range(5)]
    p = param(lr_policy="poly", base_lr=0.01, power=2.0, max_iter=10)
    assert rates(p, 11) == [float(f32(0.01) * f32(float(f32(1) - f32(i) / f32(10)) ** 2.0)) for i in range(11)]
    assert rates(p, 11)[-1] == 0.0
    p = param(lr_policy="sigmoid", base_lr=0.01, gamma=-0.5, stepsize=4)
    want = [float(f32(0.01) * (f32(1) / (f32(1) + f32(math.exp(-float(f32(-0.5) * (f32(i) - f32(4)))))))) for i in range(8)]
    assert rates(p, 8) == want
    assert rates(p, 5)[4] == pytest.approx(0.005, rel=1e-6)  # half way at stepsize


def test_multistep_advances_current_step_once_per_call():
    p = param(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[2, 4, 5])
    got = rates(p, 7)
    want = [1.0, 1.0, 0.1, 0.1, 0.01, 0.001, 0.001]
    assert got == pytest.approx(want, rel=1e-6)
    # resuming at iteration 6 with the saved current_step 3 keeps the rate
    assert learning_rate(p, 6, 3) == (pytest.approx(0.001, rel=1e-6), 3)
    # Caffe moves at most one step per call: a state restored with current_step 0 catches up slowly
    assert learning_rate(p, 6, 0)[1] == 1


def test_inv_matches_bvlc_caffe_log():
    js = json.loads(need_shared(REF / "solvers.json").read_text())["solvers"]["sgd"]
    p = param(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75)
    got = rates(p, len(js["lr_cli_log"]))
    for i, (g, w) in enumerate(zip(got, js["lr_cli_log"])):
        assert float(f"{g:.6g}") == w, i


def test_warmup_extension():
    p = param(lr_policy="step", base_lr=0.1, gamma=0.1, stepsize=100, warmup_iter=4, warmup_start_lr_ratio=0.1)
    got = rates(p, 6)
    start = float(f32(0.1) * f32(0.1))
    base = float(f32(0.1))
    want = [start + (base - start) * i / 4 for i in range(4)] + [base, base]
    assert got == pytest.approx(want, rel=1e-6)
    assert got[0] == pytest.approx(0.01, rel=1e-6)
    # without warm-up fields the policy is untouched (plain Caffe ignores them)
    assert rates(param(lr_policy="fixed", base_lr=0.1), 2) == [base, base]


@pytest.mark.parametrize("kw,msg", [
    (dict(lr_policy="cosine", base_lr=0.1), "Unknown learning rate policy: cosine"),
    (dict(lr_policy="step", base_lr=0.1, gamma=0.1), "stepsize"),
    (dict(base_lr=0.1), "lr_policy is not set"),
])
def test_policy_errors(kw, msg):
    with pytest.raises(CaffeError, match=msg):
        learning_rate(param(**kw), 1, 0)
