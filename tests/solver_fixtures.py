"""Tiny nets and a deterministic data layer for the solver tests (test_solvers, test_snapshot,
test_train_cli).

``FcTestBatches`` is a test-only data layer: it yields consecutive rows of a fixed dataset (X, T),
``data_param.batch_size`` rows per forward, wrapping around, so iter_size and batch-size
equivalences can be checked and every gradient can be computed by hand in numpy.

The model is ``y = x W^T + b`` (InnerProduct) with ``EuclideanLoss(y, t) = |y - t|^2 / (2N)``, so
``dL/dW = (y - t)^T x / N`` and ``dL/db = sum(y - t) / N``.
"""
from __future__ import annotations

import numpy as np

from pycaffe_fc.layers.base import Layer, register

N_ROWS, N_IN, N_OUT = 16, 3, 2
_g = np.random.default_rng(12345)
X = _g.standard_normal((N_ROWS, N_IN)).astype(np.float32)
T = _g.standard_normal((N_ROWS, N_OUT)).astype(np.float32)
W0 = (_g.standard_normal((N_OUT, N_IN)) * 0.5).astype(np.float32)
B0 = (_g.standard_normal(N_OUT) * 0.5).astype(np.float32)


@register("FcTestBatches")
class BatchesLayer(Layer):
    """Rows of (X, T), batch_size per forward, in order, wrapping around."""

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        self.batch = int(self.layer_param.data_param.batch_size) or N_ROWS
        self.pos = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, N_IN)
        top[1].reshape(self.batch, N_OUT)

    def forward(self, bottom, top):
        idx = (self.pos + np.arange(self.batch)) % N_ROWS
        self.pos = (self.pos + self.batch) % N_ROWS
        top[0].data[...] = self.xp.asarray(X[idx])
        top[1].data[...] = self.xp.asarray(T[idx])


def net_text(batch: int = 4, lr_mult=(1, 2), decay_mult=(1, 0), extra: str = "") -> str:
    """The test net: FcTestBatches -> InnerProduct (N_OUT) -> EuclideanLoss."""
    return f"""
name: "tiny"
layer {{ name: "data" type: "FcTestBatches" top: "x" top: "t" data_param {{ batch_size: {batch} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  param {{ lr_mult: {lr_mult[0]} decay_mult: {decay_mult[0]} }}
  param {{ lr_mult: {lr_mult[1]} decay_mult: {decay_mult[1]} }}
  inner_product_param {{ num_output: {N_OUT}
    weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }}
{extra}
"""


def solver_text(net_path=None, **fields) -> str:
    """A solver prototxt for the tiny net (``net`` is a file path, or ``net_param`` inline)."""
    lines = []
    if net_path is not None:
        lines.append(f'net: "{net_path}"')
    else:
        lines.append("net_param { " + net_text(fields.pop("batch", 4)) + " }")
    fields.setdefault("base_lr", 0.1)
    fields.setdefault("lr_policy", "fixed")
    fields.setdefault("max_iter", 5)
    fields.setdefault("display", 0)
    fields.setdefault("snapshot_after_train", False)
    fields.setdefault("random_seed", 1)
    for k, v in fields.items():
        if isinstance(v, str) and k not in ("snapshot_format",):
            lines.append(f'{k}: "{v}"')
        elif isinstance(v, bool):
            lines.append(f"{k}: {'true' if v else 'false'}")
        elif isinstance(v, (list, tuple)):
            lines += [f"{k}: {x}" for x in v]
        else:
            lines.append(f"{k}: {v}")
    return "\n".join(lines) + "\n"


def solver_param(**fields):
    """The parsed SolverParameter of ``solver_text(**fields)``."""
    from google.protobuf import text_format

    from pycaffe_fc.proto import caffe_pb2
    return text_format.Parse(solver_text(**fields), caffe_pb2.SolverParameter())


def set_weights(solver, w=W0, b=B0) -> None:
    """Put the known starting weights into the train net."""
    solver.net.params["ip"][0].data[...] = w
    solver.net.params["ip"][1].data[...] = b


def grads(w, b, rows):
    """The Euclidean-loss gradients (float64) for the given rows of (X, T)."""
    x, t = X[rows].astype(np.float64), T[rows].astype(np.float64)
    r = x @ np.asarray(w, np.float64).T + np.asarray(b, np.float64) - t
    n = len(rows)
    return r.T @ x / n, r.sum(0) / n, float((r ** 2).sum() / (2 * n))
