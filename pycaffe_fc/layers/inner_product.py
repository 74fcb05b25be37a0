"""InnerProduct and Embed (inner_product_layer.cpp, embed_layer.cpp)."""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from ..fillers import fill
from ..im2col import scatter_add
from .base import Layer, register


@register("InnerProduct")
class InnerProductLayer(Layer):
    """InnerProductLayer: the bottom's axes from ``axis`` on are flattened into K inputs;
    top = bottom (M, K) x W^T + b with W of shape (num_output, K), or (K, num_output) when
    ``transpose`` is set. The top keeps the bottom's leading axes: shape[:axis] + (num_output,)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise CaffeError(f"layer '{self.name}': num_output must be positive")
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self.axis = bottom[0].canonical_axis_index(p.axis)
        self.k = bottom[0].count_range(self.axis)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        if len(self.blobs):
            if len(self.blobs) != 1 + self.bias_term:
                raise CaffeError(f"layer '{self.name}': incorrect number of weight blobs")
            self.check_shape("weight", wshape, self.blobs[0].shape)
        else:
            fill(p.weight_filler, self.blobs.add_blob(*wshape))
            if self.bias_term:
                fill(p.bias_filler, self.blobs.add_blob(self.num_output))
        self.init_param_propagate_down()

    def reshape(self, bottom, top):
        axis = bottom[0].canonical_axis_index(self.layer_param.inner_product_param.axis)
        k = bottom[0].count_range(axis)
        if k != self.k:
            raise CaffeError(f"layer '{self.name}': input size incompatible with inner product parameters "
                             f"({k} inputs after axis {axis}, the weights expect {self.k})")
        self.axis = axis
        self.m = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def _w(self):
        """The weight as a (K, num_output) matrix (a transposed view when stored the other way)."""
        w = self.blobs[0].data
        return w if self.transpose else w.T

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.m, self.k)
        y = top[0].data.reshape(self.m, self.num_output)
        xp.matmul(x, self._w(), out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        if self.param_propagate_down[0]:
            # computed directly in the weight's own layout, so the accumulation is a plain add
            dw = self.blobs[0].diff
            dw += (x.T @ dy) if self.transpose else (dy.T @ x)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.m, self.k)
            xp.matmul(dy, self._w().T, out=dx)


@register("Embed")
class EmbedLayer(Layer):
    """EmbedLayer: top = W[index] (+ b), W of shape (input_dim, num_output); the indices are
    integral values in [0, input_dim) stored as floats. No gradient reaches the indices; the weight
    gradient sums the rows of repeated indices."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        self.num_output = int(p.num_output)
        self.input_dim = int(p.input_dim)
        if self.num_output <= 0:
            raise CaffeError(f"layer '{self.name}': EmbedLayer num_output must be positive")
        if self.input_dim <= 0:
            raise CaffeError(f"layer '{self.name}': EmbedLayer input_dim must be positive")
        self.bias_term = bool(p.bias_term)
        if len(self.blobs):
            self.check_shape("weight", (self.input_dim, self.num_output), self.blobs[0].shape)
        else:
            fill(p.weight_filler, self.blobs.add_blob(self.input_dim, self.num_output))
            if self.bias_term:
                fill(p.bias_filler, self.blobs.add_blob(self.num_output))
        self.init_param_propagate_down()

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, bottom):
        xp = self.xp
        v = bottom[0].data.reshape(-1)
        idx = v.astype(np.int64)
        if bool(xp.any(idx != v)) or bool(xp.any((idx < 0) | (idx >= self.input_dim))):
            raise CaffeError(f"layer '{self.name}': embed indices must be integers in [0, {self.input_dim})")
        return idx

    def forward(self, bottom, top):
        idx = self._indices(bottom)
        y = top[0].data.reshape(-1, self.num_output)
        self.xp.take(self.blobs[0].data, idx, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise CaffeError(f"layer '{self.name}': can't backpropagate to EmbedLayer input")
        dy = top[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            idx = self._indices(bottom)
            scatter_add(self.xp, self.blobs[0].diff, idx, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=0)
