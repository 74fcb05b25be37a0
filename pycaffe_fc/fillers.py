"""Fillers: Caffe's weight initialisers (filler.hpp), chosen by FillerParameter.type."""
from __future__ import annotations

import numpy as np

from . import backend
from .blob import Blob
from .errors import CaffeError
from .rng import get_rng

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _fans(blob: Blob) -> tuple[int, int]:
    # Caffe: fan_in = count / shape(0), fan_out = count / shape(1)
    count = blob.count
    fan_in = count // blob.shape[0] if blob.num_axes >= 1 and blob.shape[0] else count
    fan_out = count // blob.shape[1] if blob.num_axes >= 2 and blob.shape[1] else count
    return fan_in, fan_out


def _norm(param, blob: Blob) -> float:
    fan_in, fan_out = _fans(blob)
    if param.variance_norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def fill(param, blob: Blob) -> None:
    """Fill ``blob.data`` as Caffe's GetFiller(param)->Fill(blob) would (same distributions)."""
    rng = get_rng()
    shape = blob.shape
    kind = param.type
    if kind == "constant":
        values = np.full(shape, param.value, np.float32)
    elif kind == "uniform":
        values = rng.uniform(param.min, param.max, shape)
    elif kind == "gaussian":
        values = rng.normal(param.mean, param.std, shape)
        if param.sparse >= 0:
            # Caffe: keep each weight with probability sparse / num_outputs (num_outputs = shape(0))
            if blob.num_axes < 1:
                raise CaffeError("sparse gaussian filler needs a blob with at least one axis")
            prob = param.sparse / float(shape[0])
            values = values * (rng.random(shape) < prob)
    elif kind == "positive_unitball":
        values = rng.uniform(0.0, 1.0, shape)
        n = blob.shape[0] if blob.num_axes else 1
        flat = values.reshape(n, -1)
        flat /= flat.sum(axis=1, keepdims=True)
    elif kind == "xavier":
        scale = np.sqrt(3.0 / _norm(param, blob))
        values = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        std = np.sqrt(2.0 / _norm(param, blob))
        values = rng.normal(0.0, std, shape)
    elif kind == "bilinear":
        if blob.num_axes != 4 or shape[2] != shape[3]:
            raise CaffeError("bilinear filler needs a 4-d blob with square kernels")
        k = shape[3]
        f = np.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        x = np.arange(k)
        w1 = 1 - np.abs(x / f - c)
        values = np.broadcast_to(np.outer(w1, w1), shape)
    else:
        raise CaffeError(f"unknown filler type '{kind}'")
    backend.assign(blob.data, np.asarray(values, np.float32))
