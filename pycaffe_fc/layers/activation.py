"""Neuron layers: element-wise functions of one bottom (Caffe's NeuronLayer family).

ReLU, PReLU, ELU, Sigmoid, TanH, Swish, AbsVal, Power, Exp, Log, BNLL, Threshold, Clip, Dropout.
Each writes into the top's own memory with ``out=`` arguments and float32 scalars, so the layers
that sit on the hot path of big nets (ReLU, Dropout) make no float64 or whole-blob temporaries.
Layers Caffe allows in place get ``bottom[0] is top[0]``; their backward then reads only the top
or state saved in forward (a copy of the bottom, as PReLU's ``bottom_memory_``).
"""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from ..fillers import fill
from .. import rng as rngmod
from .base import TRAIN, Layer, register

F32 = np.float32


class NeuronLayer(Layer):
    """caffe::NeuronLayer: one bottom, one top of the same shape (in place allowed)."""

    exact_num_bottom = 1
    exact_num_top = 1
    #: False for layers Caffe refuses to run in place (their backward needs the lost bottom).
    allow_in_place = True

    def setup(self, bottom, top) -> None:
        if top[0] is bottom[0] and not self.allow_in_place:
            raise CaffeError(f"layer '{self.name}': {self.type} does not allow in-place computation")
        self._bottom_memory = None

    def reshape(self, bottom, top) -> None:
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    # An in-place forward overwrites the bottom; layers whose backward needs it keep a copy.
    def _keep_bottom(self, bottom, top) -> None:
        if top[0] is bottom[0]:
            x = bottom[0].data
            buf = self._bottom_memory
            if buf is None or buf.shape != x.shape:
                buf = self.xp.empty_like(x)
                self._bottom_memory = buf
            buf[...] = x

    def _kept_bottom(self, bottom, top):
        return self._bottom_memory if top[0] is bottom[0] else bottom[0].data


def _gate(xp, x, neg):
    """1 where x > 0, else ``neg`` (a scalar or broadcastable array), exactly as Caffe's
    (x > 0) + neg * (x <= 0); arithmetic on a float mask is much faster than where/copyto."""
    m = xp.empty(x.shape, F32)
    xp.greater(x, F32(0), out=m)
    g = F32(1) - m
    g *= neg
    g += m
    return g


def _leaky_into(xp, x, slope, out) -> None:
    """out = max(x, 0) + slope * min(x, 0); ``slope`` a float or a broadcastable array."""
    neg = xp.minimum(x, F32(0))
    neg *= slope
    xp.maximum(x, F32(0), out=out)
    out += neg


@register("ReLU")
class ReLULayer(NeuronLayer):
    """ReLULayer: max(x, 0) + negative_slope * min(x, 0). Backward reads the (possibly in-place)
    data's sign, which the activation preserves, as Caffe does."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        self.negative_slope = F32(self.layer_param.relu_param.negative_slope)

    def forward(self, bottom, top) -> None:
        x, y = bottom[0].data, top[0].data
        if self.negative_slope == 0:
            self.xp.maximum(x, F32(0), out=y)
        else:
            _leaky_into(self.xp, x, self.negative_slope, y)

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        x, dy, dx = bottom[0].data, top[0].diff, bottom[0].diff
        if self.negative_slope == 0:
            xp.multiply(dy, x > 0, out=dx)
        else:
            xp.multiply(dy, _gate(xp, x, self.negative_slope), out=dx)


@register("PReLU")
class PReLULayer(NeuronLayer):
    """PReLULayer (He et al. 2015): a learned slope per channel (axis 1) or one shared slope;
    the filler defaults to constant 0.25. In place it saves the bottom in forward."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            raise CaffeError(f"layer '{self.name}': PReLU needs a bottom with at least 2 axes, "
                             f"got {list(bottom[0].shape)}")
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:
            slope = self.blobs.add_blob(*(() if self.channel_shared else (channels,)))
            if p.HasField("filler"):
                fill(p.filler, slope)
            else:
                slope.data[...] = F32(0.25)
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise CaffeError(f"layer '{self.name}': PReLU slope has {self.blobs[0].count} values, "
                             f"expected {want}")
        self.init_param_propagate_down()

    def reshape(self, bottom, top) -> None:
        if bottom[0].num_axes < 2:
            raise CaffeError(f"layer '{self.name}': PReLU needs a bottom with at least 2 axes")
        super().reshape(bottom, top)

    def _slope(self, x):
        s = self.blobs[0].data
        if self.channel_shared:
            return s.reshape(())
        return s.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, bottom, top) -> None:
        self._keep_bottom(bottom, top)
        x = bottom[0].data
        _leaky_into(self.xp, x, self._slope(x), top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        xp = self.xp
        x = self._kept_bottom(bottom, top)
        dy = top[0].diff
        if self.param_propagate_down and self.param_propagate_down[0]:
            # d/dslope = sum of dy * x over the non-positive inputs
            g = xp.minimum(x, F32(0))
            g *= dy
            if self.channel_shared:
                self.blobs[0].diff[...] += g.sum()
            else:  # inner (contiguous) axes first, then the batch
                g3 = g.reshape(x.shape[0], x.shape[1], -1)
                self.blobs[0].diff[...] += g3.sum(axis=2).sum(axis=0)
        if propagate_down[0]:
            xp.multiply(dy, _gate(xp, x, self._slope(x)), out=bottom[0].diff)


@register("ELU")
class ELULayer(NeuronLayer):
    """ELULayer (Clevert et al. 2015): max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        self.alpha = F32(self.layer_param.elu_param.alpha)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        neg = xp.minimum(x, F32(0))
        xp.exp(neg, out=neg)
        neg -= F32(1)
        neg *= self.alpha
        xp.maximum(x, F32(0), out=y)
        y += neg

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        # Caffe: dy * ((x > 0) + (alpha + y) * (x <= 0)); in place x is y, same sign
        x, y = bottom[0].data, top[0].data
        xp.multiply(top[0].diff, _gate(xp, x, y + self.alpha), out=bottom[0].diff)


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """SigmoidLayer: 0.5 * tanh(0.5 x) + 0.5 (Caffe's overflow-free form); backward y (1 - y)."""

    def forward(self, bottom, top) -> None:
        sigmoid_into(self.xp, bottom[0].data, top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        y = top[0].data
        g = F32(1) - y
        g *= y
        self.xp.multiply(top[0].diff, g, out=bottom[0].diff)


def sigmoid_into(xp, x, out) -> None:
    """out = 0.5 * tanh(0.5 * x) + 0.5, as Caffe's sigmoid(); ``out`` may be ``x``."""
    xp.multiply(x, F32(0.5), out=out)
    xp.tanh(out, out=out)
    out *= F32(0.5)
    out += F32(0.5)


@register("TanH")
class TanHLayer(NeuronLayer):
    """TanHLayer: tanh(x); backward 1 - y^2."""

    def forward(self, bottom, top) -> None:
        self.xp.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        y = top[0].data
        g = y * y
        self.xp.subtract(F32(1), g, out=g)
        self.xp.multiply(top[0].diff, g, out=bottom[0].diff)


@register("Swish")
class SwishLayer(NeuronLayer):
    """SwishLayer: x * sigmoid(beta x); backward from y and the saved sigmoid, as Caffe."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        self.beta = F32(self.layer_param.swish_param.beta)

    def forward(self, bottom, top) -> None:
        x = bottom[0].data
        s = x * self.beta
        sigmoid_into(self.xp, s, s)
        self._sigmoid = s
        self.xp.multiply(x, s, out=top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        # dy * (beta y + s (1 - beta y))
        s, by = self._sigmoid, top[0].data * self.beta
        g = F32(1) - by
        g *= s
        g += by
        self.xp.multiply(top[0].diff, g, out=bottom[0].diff)


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """AbsValLayer: |x|; backward sign(x) dy. Not in place (Caffe refuses it)."""

    allow_in_place = False

    def forward(self, bottom, top) -> None:
        self.xp.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[0]:
            self.xp.multiply(self.xp.sign(bottom[0].data), top[0].diff, out=bottom[0].diff)


@register("Power")
class PowerLayer(NeuronLayer):
    """PowerLayer: (shift + scale x) ^ power, with Caffe's special cases for the gradient
    (constant output when power * scale == 0, power 2, shift 0)."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = F32(p.power), F32(p.scale), F32(p.shift)
        self.diff_scale = F32(self.power * self.scale)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        y = top[0].data
        if self.diff_scale == 0:
            y[...] = F32(1) if self.power == 0 else F32(self.shift ** self.power)
            return
        self._keep_bottom(bottom, top)
        x = bottom[0].data
        if self.scale != 1:
            xp.multiply(x, self.scale, out=y)
        elif y is not x:
            y[...] = x
        if self.shift != 0:
            y += self.shift
        if self.power != 1:
            xp.power(y, self.power, out=y)

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottom[0].diff
        if self.diff_scale == 0 or self.power == 1:
            g = self.diff_scale
        else:
            x, y = self._kept_bottom(bottom, top), top[0].data
            if self.power == 2:
                # 2 scale (shift + scale x) = diff_scale * scale * x + diff_scale * shift
                g = x * F32(self.diff_scale * self.scale)
                if self.shift != 0:
                    g += F32(self.diff_scale * self.shift)
            elif self.shift == 0:
                g = y / x
                g *= self.power
            else:
                g = x * self.scale if self.scale != 1 else x.copy()
                if self.shift != 0:
                    g += self.shift
                xp.divide(y, g, out=g)
                if self.diff_scale != 1:
                    g *= self.diff_scale
        if self.diff_scale == 0:
            dx[...] = F32(0)
        else:
            xp.multiply(top[0].diff, g, out=dx)


@register("Exp")
class ExpLayer(NeuronLayer):
    """ExpLayer: base ^ (shift + scale x) (base -1 = e), as outer_scale * exp(inner_scale x);
    backward dy * y * inner_scale, so it runs in place."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        p = self.layer_param.exp_param
        base = F32(p.base)
        if base != -1 and not base > 0:
            raise CaffeError(f"layer '{self.name}': exp_param.base must be strictly positive, got {p.base}")
        log_base = F32(1) if base == -1 else np.log(base)
        self.inner_scale = F32(log_base * F32(p.scale))
        shift = F32(p.shift)
        if shift == 0:
            self.outer_scale = F32(1)
        else:
            self.outer_scale = F32(np.exp(shift) if base == -1 else np.power(base, shift))

    def forward(self, bottom, top) -> None:
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        if self.inner_scale == 1:
            xp.exp(x, out=y)
        else:
            xp.multiply(x, self.inner_scale, out=y)
            xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        self.xp.multiply(top[0].data, top[0].diff, out=dx)
        if self.inner_scale != 1:
            dx *= self.inner_scale


@register("Log")
class LogLayer(NeuronLayer):
    """LogLayer: log_base(shift + scale x) (base -1 = e); backward dy * scale / (log(base) (shift + scale x))."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        p = self.layer_param.log_param
        base = F32(p.base)
        if base != -1 and not base > 0:
            raise CaffeError(f"layer '{self.name}': log_param.base must be strictly positive, got {p.base}")
        log_base = F32(1) if base == -1 else np.log(base)
        self.base_scale = F32(F32(1) / log_base)
        self.input_scale, self.input_shift = F32(p.scale), F32(p.shift)
        self.backward_num_scale = F32(self.input_scale / log_base)

    def _affine(self, x, out):
        if self.input_scale != 1:
            self.xp.multiply(x, self.input_scale, out=out)
        elif out is not x:
            out[...] = x
        if self.input_shift != 0:
            out += self.input_shift
        return out

    def forward(self, bottom, top) -> None:
        self._keep_bottom(bottom, top)
        y = self._affine(bottom[0].data, top[0].data)
        self.xp.log(y, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        x = self._kept_bottom(bottom, top)
        g = self._affine(x, xp.empty_like(x))
        xp.divide(F32(1), g, out=g)
        if self.backward_num_scale != 1:
            g *= self.backward_num_scale
        xp.multiply(top[0].diff, g, out=bottom[0].diff)


BNLL_THRESHOLD = F32(50)


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """BNLLLayer: log(1 + exp(x)) in the stable form max(x, 0) + log(1 + exp(-|x|)); backward
    clips x at kBNLL_THRESHOLD = 50 before exp, as Caffe."""

    def forward(self, bottom, top) -> None:
        xp = self.xp
        self._keep_bottom(bottom, top)
        x, y = bottom[0].data, top[0].data
        t = xp.abs(x)
        xp.negative(t, out=t)
        xp.exp(t, out=t)
        xp.log1p(t, out=t)
        xp.maximum(x, F32(0), out=y)
        y += t

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        e = xp.minimum(self._kept_bottom(bottom, top), BNLL_THRESHOLD)
        xp.exp(e, out=e)
        d = e + F32(1)
        xp.divide(e, d, out=e)
        xp.multiply(top[0].diff, e, out=bottom[0].diff)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """ThresholdLayer: 1 where x > threshold, else 0. Caffe has no backward; its derivative is
    zero almost everywhere, so a requested bottom gradient is zero."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        self.threshold = F32(self.layer_param.threshold_param.threshold)

    def forward(self, bottom, top) -> None:
        top[0].data[...] = bottom[0].data > self.threshold

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[0]:
            bottom[0].diff[...] = F32(0)


@register("Clip")
class ClipLayer(NeuronLayer):
    """ClipLayer: min(max(x, min), max); the gradient passes where min <= x <= max."""

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        p = self.layer_param.clip_param
        if p.min > p.max:
            raise CaffeError(f"layer '{self.name}': clip_param.min {p.min} > max {p.max}")
        self.lo, self.hi = F32(p.min), F32(p.max)

    def forward(self, bottom, top) -> None:
        self._keep_bottom(bottom, top)
        self.xp.clip(bottom[0].data, self.lo, self.hi, out=top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        x = self._kept_bottom(bottom, top)
        self.xp.multiply(top[0].diff, (x >= self.lo) & (x <= self.hi), out=bottom[0].diff)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """DropoutLayer: in TRAIN keep each unit with probability 1 - ratio and scale the kept ones by
    1 / (1 - ratio); in TEST the identity.

    The mask is counter-based (pycaffe_fc.rng, an fc-caffe extension): keyed by the layer's seed
    and forward count, with each unit's global index (global sample index x units per sample +
    unit) as the counter, so p data-parallel workers drop exactly the units one worker drops and
    a resumed run the ones the uninterrupted run would; made with ``xp`` (on the device on a GPU)."""

    #: units drawn per chunk: bounds the uint64 scratch to a few MB whatever the blob's size
    CHUNK = 1 << 20

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        ratio = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0.0 <= ratio < 1.0:
            raise CaffeError(f"layer '{self.name}': dropout_ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio
        self.scale = F32(1.0 / (1.0 - ratio))
        self._mask = None  # float32: 0 or scale
        from ..data.sharding import shard_seed
        self.random_stream = rngmod.LayerStream(rngmod.stream_seed(shard_seed()), self.name, self.phase,
                                                follow=True)

    def resume_state(self) -> dict:
        """fc-caffe extension: the mask stream's seed and the masks drawn so far."""
        seed, draws = self.random_stream.state()
        return {"seed": seed, "draws": draws, "position": 0}

    def restore_resume_state(self, seed: int, draws: int, position: int) -> None:
        self.random_stream.restore(seed, draws)

    def _draw_mask(self, shape):
        from ..data.sharding import global_rows
        xp = self.xp
        mask = self._mask
        if mask is None or mask.shape != shape:
            mask = self._mask = xp.empty(shape, F32)
        key = self.random_stream.next_key()
        n = int(shape[0]) if len(shape) else 1
        per = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        rows = global_rows(n, self.phase, xp=xp)   # made on the device in GPU mode
        flat = mask.reshape(n, per)
        units = xp.arange(per, dtype=xp.uint64)
        # bits >= ratio * 2^64 has probability 1 - ratio (Caffe's Bernoulli(1 - ratio))
        thresh = xp.uint64(rngmod.keep_threshold(self.ratio))
        step = max(1, self.CHUNK // max(per, 1))
        for a in range(0, n, step):
            counters = rows[a:a + step, None] * xp.uint64(per) + units[None, :]
            xp.greater_equal(rngmod.random_bits(xp, key, counters, overwrite=True), thresh, out=flat[a:a + step])
        mask *= self.scale
        return mask

    def forward(self, bottom, top) -> None:
        x, y = bottom[0].data, top[0].data
        if self.phase == TRAIN:
            mask = self._draw_mask(x.shape)
            self.xp.multiply(x, mask, out=y)
        elif y is not x:
            y[...] = x

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.phase == TRAIN:
            self.xp.multiply(dy, self._mask, out=dx)
        elif dx is not dy:
            dx[...] = dy
