"""Layers outside the other families: ArgMax and Parameter."""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from .base import Layer, register

F32 = np.float32


@register("ArgMax")
class ArgMaxLayer(Layer):
    """ArgMaxLayer: the indices (and with ``out_max_val`` the values) of the ``top_k`` largest
    entries, along ``axis`` or, without one, over each sample's flattened values (top shape
    (N, 1 or 2, top_k), at least 3 axes). Ties go to the larger index (std::greater on pairs)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise CaffeError(f"layer '{self.name}': top_k must be at least 1")

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom, top) -> None:
        b = bottom[0]
        if self.has_axis:
            axis = b.canonical_axis_index(self.layer_param.argmax_param.axis)
            self.dims = (b.count_range(0, axis), b.shape[axis], b.count_range(axis + 1))
            shape = list(b.shape)
            shape[axis] = self.top_k
        else:
            n = b.shape[0] if b.num_axes else 1
            self.dims = (n, b.count_range(1), 1)
            shape = [1] * max(b.num_axes, 3)
            shape[0], shape[2] = n, self.top_k
            if self.out_max_val:
                shape[1] = 2
        if self.top_k > self.dims[1]:
            raise CaffeError(f"layer '{self.name}': top_k ({self.top_k}) must be less than or equal to the "
                             f"number of values ({self.dims[1]})")
        top[0].reshape(shape)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        outer, dim, inner = self.dims
        x3 = bottom[0].data.reshape(self.dims)
        rev = x3[:, ::-1, :]  # reversed, so that the first maximum found is the largest index
        if self.top_k == 1:
            idx = (dim - 1) - xp.argmax(rev, axis=1)[:, None, :]
        else:
            order = xp.argsort(-rev, axis=1, kind="stable")[:, :self.top_k, :]
            idx = (dim - 1) - order
        if self.out_max_val:
            vals = xp.take_along_axis(x3, idx, axis=1)
        y = top[0].data
        if self.has_axis:
            y.reshape(outer, self.top_k, inner)[...] = vals if self.out_max_val else idx
        elif self.out_max_val:
            y3 = y.reshape(outer, 2, self.top_k)
            y3[:, 0, :] = idx[:, :, 0]
            y3[:, 1, :] = vals[:, :, 0]
        else:
            y.reshape(outer, 1, self.top_k)[:, 0, :] = idx[:, :, 0]

    def backward(self, top, propagate_down, bottom) -> None:
        # Caffe has no backward; the index output is piecewise constant.
        if propagate_down[0]:
            bottom[0].diff[...] = F32(0)


@register("Parameter")
class ParameterLayer(Layer):
    """ParameterLayer: exposes a learned blob of ``parameter_param.shape`` as its top, so other
    layers can take a parameter as a bottom. The top's diff is accumulated into the blob's."""

    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        if not self.blobs:
            self.blobs.add_blob(*self.layer_param.parameter_param.shape.dim)
        self.init_param_propagate_down()

    def reshape(self, bottom, top) -> None:
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom, top) -> None:
        top[0].data[...] = self.blobs[0].data

    def backward(self, top, propagate_down, bottom) -> None:
        if self.param_propagate_down and self.param_propagate_down[0]:
            self.blobs[0].diff[...] += top[0].diff


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """BatchReindexLayer: top[i] = bottom[0][permut[i]] for the 1-d index bottom[1]; backward
    sums the top diffs of repeated indices into the bottom."""

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top) -> None:
        if bottom[1].num_axes != 1:
            raise CaffeError(f"layer '{self.name}': the index bottom must be 1-d, got {list(bottom[1].shape)}")
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _index(self, bottom):
        idx = bottom[1].data.astype(np.int64)
        n = bottom[0].shape[0]
        if idx.size and (bool((idx < 0).any()) or bool((idx >= n).any())):
            raise CaffeError(f"layer '{self.name}': index out of range [0, {n})")
        return idx

    def forward(self, bottom, top) -> None:
        top[0].data[...] = bottom[0].data[self._index(bottom)]

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[1]:
            raise CaffeError(f"layer '{self.name}': cannot backprop to the index bottom")
        if not propagate_down[0]:
            return
        xp = self.xp
        n = bottom[0].shape[0]
        idx = self._index(bottom)
        # a one-hot matrix product sums repeated indices on numpy and CuPy alike
        onehot = (xp.arange(n)[:, None] == idx[None, :]).astype(F32)
        dy = top[0].diff.reshape(idx.size, -1)
        xp.matmul(onehot, dy, out=bottom[0].diff.reshape(n, -1))


@register("Filter")
class FilterLayer(Layer):
    """FilterLayer: keeps the items (along axis 0) whose selector (the last bottom) is non-zero;
    one top per data bottom. As in Caffe, the shapes at setup keep the whole batch."""

    min_bottom = 2
    min_top = 1

    def setup(self, bottom, top) -> None:
        if len(top) != len(bottom) - 1:
            raise CaffeError(f"layer '{self.name}': Filter needs one top per data bottom "
                             f"({len(bottom) - 1} data bottoms, {len(top)} tops)")
        self._first = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != len(self.layer_param.bottom) - 1

    def reshape(self, bottom, top) -> None:
        sel = bottom[-1]
        n = sel.shape[0] if sel.num_axes else 1
        if sel.count != n:
            raise CaffeError(f"layer '{self.name}': the selector must hold one value per item, got "
                             f"{list(sel.shape)}")
        for i, b in enumerate(bottom[:-1]):
            if (b.shape[0] if b.num_axes else 1) != n:
                raise CaffeError(f"layer '{self.name}': bottom {i} has {b.shape[:1]} items, the selector {n}")
        self.keep = self.xp.nonzero(sel.data.reshape(-1) != 0)[0]
        kept = n if self._first else int(self.keep.size)
        self._first = False
        for t, b in zip(top, bottom[:-1]):
            t.reshape((kept,) + tuple(b.shape[1:]))

    def forward(self, bottom, top) -> None:
        for t, b in zip(top, bottom[:-1]):
            t.data[...] = b.data[self.keep]

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[-1]:
            raise CaffeError(f"layer '{self.name}': cannot backpropagate to the filter index input")
        for t, b, p in zip(top, bottom[:-1], propagate_down):
            if p:
                b.diff[...] = F32(0)
                b.diff[self.keep] = t.diff
