"""Element-wise combinations of blobs: Eltwise (SUM / PROD / MAX), Scale and Bias.

Scale and Bias broadcast a blob over the axes [axis, axis + its num_axes) of bottom[0], viewing the
bottom as (outer, dim, inner) as Caffe's kernels do. ScaleLayer's optional bias is Caffe's
composed BiasLayer: its blob is the Scale layer's last parameter and is filled by bias_filler.
"""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from ..fillers import fill
from .base import Layer, register

F32 = np.float32
PROD, SUM, MAX = 0, 1, 2


@register("Eltwise")
class EltwiseLayer(Layer):
    """EltwiseLayer: PROD, SUM (with per-bottom ``coeff``) or MAX of equally shaped bottoms.
    MAX routes the gradient to the bottom that won: between bottoms 0 and 1 a tie goes to 1,
    a later bottom wins only when strictly greater (Caffe's loop order)."""

    min_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if len(p.coeff) not in (0, len(bottom)):
            raise CaffeError(f"layer '{self.name}': Eltwise takes one coefficient per bottom blob "
                             f"({len(p.coeff)} given, {len(bottom)} bottoms)")
        if self.op == PROD and len(p.coeff):
            raise CaffeError(f"layer '{self.name}': Eltwise layer only takes coefficients for summation")
        if self.op not in (PROD, SUM, MAX):
            raise CaffeError(f"layer '{self.name}': unknown eltwise operation {self.op}")
        self.coeffs = [F32(c) for c in p.coeff] if len(p.coeff) else [F32(1)] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self._max_idx = None

    def reshape(self, bottom, top) -> None:
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise CaffeError(f"layer '{self.name}': bottom {i} shape {list(b.shape)} differs from "
                                 f"bottom 0 shape {list(bottom[0].shape)}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        y = top[0].data
        if self.op == PROD:
            xp.multiply(bottom[0].data, bottom[1].data, out=y)
            for b in bottom[2:]:
                y *= b.data
        elif self.op == SUM:
            c = self.coeffs
            if c[0] == 1 and c[1] == 1:
                xp.add(bottom[0].data, bottom[1].data, out=y)
            else:
                xp.multiply(bottom[0].data, c[0], out=y)
                y += bottom[1].data if c[1] == 1 else bottom[1].data * c[1]
            for b, ci in zip(bottom[2:], c[2:]):
                y += b.data if ci == 1 else b.data * ci
        else:
            a, b = bottom[0].data, bottom[1].data
            idx = self._max_idx
            if idx is None or idx.shape != y.shape:
                idx = self._max_idx = xp.empty(y.shape, np.int32)
            first = a > b
            xp.copyto(y, b)
            xp.copyto(y, a, where=first)
            idx[...] = 1
            xp.copyto(idx, 0, where=first)
            for i, bb in enumerate(bottom[2:], 2):
                win = bb.data > y
                xp.copyto(y, bb.data, where=win)
                xp.copyto(idx, i, where=win)

    def backward(self, top, propagate_down, bottom) -> None:
        xp = self.xp
        dy = top[0].diff
        for i, (b, p) in enumerate(zip(bottom, propagate_down)):
            if not p:
                continue
            dx = b.diff
            if self.op == PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    xp.multiply(others[0], dy, out=dx)
                    for o in others[1:]:
                        dx *= o
                else:
                    xp.divide(top[0].data, b.data, out=dx)
                    dx *= dy
            elif self.op == SUM:
                if self.coeffs[i] == 1:
                    dx[...] = dy
                else:
                    xp.multiply(dy, self.coeffs[i], out=dx)
            else:
                xp.multiply(dy, self._max_idx == i, out=dx)


def _param_shape(layer: Layer, bottom0, axis_param: int, num_axes: int) -> tuple[int, ...]:
    """The learned blob's shape: bottom[0]'s dims [axis, axis + num_axes), -1 to the end."""
    axis = bottom0.canonical_axis_index(axis_param)
    if num_axes < -1:
        raise CaffeError(f"layer '{layer.name}': num_axes must be non-negative, or -1 to extend to "
                         f"the end of bottom[0]")
    if num_axes >= 0 and bottom0.num_axes < axis + num_axes:
        raise CaffeError(f"layer '{layer.name}': bottom[0] {list(bottom0.shape)} must have at least "
                         f"axis + num_axes = {axis + num_axes} axes")
    end = bottom0.num_axes if num_axes == -1 else axis + num_axes
    return tuple(bottom0.shape[axis:end])


def _broadcast_dims(layer: Layer, bottom0, operand_shape, axis_param: int) -> tuple[int, int, int]:
    """(outer, dim, inner) of bottom[0] around the operand's axes; a scalar operand uses axis 0."""
    axis = 0 if len(operand_shape) == 0 else bottom0.canonical_axis_index(axis_param)
    n = len(operand_shape)
    if bottom0.num_axes < axis + n or tuple(bottom0.shape[axis:axis + n]) != tuple(operand_shape):
        raise CaffeError(f"layer '{layer.name}': shape {list(operand_shape)} does not match bottom[0] "
                         f"{list(bottom0.shape)} from axis {axis}")
    dim = int(np.prod(operand_shape, dtype=np.int64)) if n else 1
    return bottom0.count_range(0, axis), dim, bottom0.count_range(axis + n)


def _sum_outer_inner(a3):
    """Sum an (outer, dim, inner) array to (dim,): inner first (pairwise, contiguous), then outer."""
    return a3.sum(axis=2).sum(axis=0)


@register("Bias")
class BiasLayer(Layer):
    """BiasLayer: top = bottom[0] + b, b broadcast over bottom[0]'s axes [axis, axis + num_axes);
    b is bottom[1] or a learned blob (filler default constant 0). In place allowed."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
            b = self.blobs.add_blob(*shape)
            fill(p.filler, b)  # FillerParameter's default is constant 0
        self.init_param_propagate_down()

    def reshape(self, bottom, top) -> None:
        bias = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.dims = _broadcast_dims(self, bottom[0], bias.shape, self.layer_param.bias_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top) -> None:
        outer, dim, inner = self.dims
        bias = (bottom[1] if len(bottom) > 1 else self.blobs[0]).data.reshape(1, dim, 1)
        self.xp.add(bottom[0].data.reshape(outer, dim, inner), bias,
                    out=top[0].data.reshape(outer, dim, inner))

    def backward(self, top, propagate_down, bottom) -> None:
        outer, dim, inner = self.dims
        dy = top[0].diff
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = dy
        g = None
        if len(bottom) > 1 and propagate_down[1]:
            g = _sum_outer_inner(dy.reshape(outer, dim, inner))
            bottom[1].diff[...] = g.reshape(bottom[1].shape)
        elif len(bottom) == 1 and self.param_propagate_down[0]:
            g = _sum_outer_inner(dy.reshape(outer, dim, inner))
            self.blobs[0].diff[...] += g.reshape(self.blobs[0].shape)


@register("Scale")
class ScaleLayer(Layer):
    """ScaleLayer: top = bottom[0] * s (+ b with bias_term), s broadcast over bottom[0]'s axes
    [axis, axis + num_axes); s is bottom[1] or a learned blob (filler default constant 1).
    In place it keeps a copy of the bottom for the scale gradient, as Caffe's temp_."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.scale_param
        if len(bottom) == 1 and not self.blobs:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
            s = self.blobs.add_blob(*shape)
            if p.HasField("filler"):
                fill(p.filler, s)
            else:
                s.data[...] = F32(1)  # identity by default
        self.bias_term = bool(p.bias_term)
        self.bias_index = -1
        if self.bias_term:
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            if len(self.blobs) + len(bottom) < 3:  # bias not yet created (not loaded / shared)
                shape = _param_shape(self, bottom[0], p.axis, num_axes)
                b = self.blobs.add_blob(*shape)
                fill(p.bias_filler, b)
            self.bias_index = len(self.blobs) - 1
        self.init_param_propagate_down()
        self._bottom_copy = None

    def _scale_blob(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top) -> None:
        p = self.layer_param.scale_param
        scale = self._scale_blob(bottom)
        self.dims = _broadcast_dims(self, bottom[0], scale.shape, p.axis)
        if self.bias_term:
            bias = self.blobs[self.bias_index]
            self.bias_dims = _broadcast_dims(self, bottom[0], bias.shape, p.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        outer, dim, inner = self.dims
        x = bottom[0].data
        if top[0] is bottom[0]:
            buf = self._bottom_copy
            if buf is None or buf.shape != x.shape:
                buf = self._bottom_copy = xp.empty_like(x)
            buf[...] = x
        s = self._scale_blob(bottom).data.reshape(1, dim, 1)
        y3 = top[0].data.reshape(outer, dim, inner)
        xp.multiply(x.reshape(outer, dim, inner), s, out=y3)
        if self.bias_term:
            bo, bd, bi = self.bias_dims
            top[0].data.reshape(bo, bd, bi)[...] += self.blobs[self.bias_index].data.reshape(1, bd, 1)

    def backward(self, top, propagate_down, bottom) -> None:
        xp = self.xp
        outer, dim, inner = self.dims
        dy = top[0].diff
        if self.bias_term and self.param_propagate_down[self.bias_index]:
            bo, bd, bi = self.bias_dims
            g = _sum_outer_inner(dy.reshape(bo, bd, bi))
            bias = self.blobs[self.bias_index]
            bias.diff[...] += g.reshape(bias.shape)
        scale = self._scale_blob(bottom)
        scale_is_param = len(bottom) == 1
        if (scale_is_param and self.param_propagate_down[0]) or (not scale_is_param and propagate_down[1]):
            x = self._bottom_copy if top[0] is bottom[0] else bottom[0].data
            prod = dy * x
            g = _sum_outer_inner(prod.reshape(outer, dim, inner)).reshape(scale.shape)
            if scale_is_param:
                scale.diff[...] += g
            else:
                scale.diff[...] = g
        if propagate_down[0]:
            s = scale.data.reshape(1, dim, 1)
            xp.multiply(dy.reshape(outer, dim, inner), s, out=bottom[0].diff.reshape(outer, dim, inner))
