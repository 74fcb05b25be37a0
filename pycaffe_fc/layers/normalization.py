"""LRN, BatchNorm and MVN (lrn_layer.cpp, batch_norm_layer.cpp, mvn_layer.cpp)."""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from ..im2col import as_strided, bordered, workspace
from .base import TEST, Layer, register

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def _window_sum(xp, src, out, half: int, axis: int, base: float = 0.0) -> None:
    """out = base + the sum of src over the window [i-half, i+half] along ``axis`` (zero outside)."""
    if base:
        xp.add(src, np.float32(base), out=out)
    else:
        xp.copyto(out, src)
    n = src.shape[axis]
    for d in range(1, min(half, n - 1) + 1):
        lo = [slice(None)] * src.ndim
        hi = [slice(None)] * src.ndim
        lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
        lo, hi = tuple(lo), tuple(hi)
        out[hi] += src[lo]
        out[lo] += src[hi]


@register("LRN")
class LRNLayer(Layer):
    """LRNLayer. ACROSS_CHANNELS: scale = k + alpha/n * sum over n neighbouring channels of x^2;
    WITHIN_CHANNEL: scale = 1 + alpha/n^2 * sum over the n x n spatial window of x^2 (Caffe builds
    it from AVE pooling whose divisor always counts n^2, and a Power layer with shift 1, so k is
    unused). In both, top = x * scale^-beta, and
    bottom_diff = top_diff * scale^-beta - 2*alpha*beta/n' * x * window_sum(top_diff * top / scale)
    with n' = n or n^2."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise CaffeError(f"layer '{self.name}': LRN only supports odd values for local_size")
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise CaffeError(f"layer '{self.name}': unknown normalization region {self.region}")
        if self.region == ACROSS_CHANNELS:
            self.window_count, self.base = self.size, self.k
        else:
            self.window_count, self.base = self.size * self.size, 1.0
        self._scale = None
        #: window sums over strided views (CuPy: few launches); shifted adds on numpy
        self.gpu = self.xp is not np

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise CaffeError(f"layer '{self.name}': input must have 4 axes, corresponding to "
                             f"(num, channels, height, width); got {list(bottom[0].shape)}")
        top[0].reshape(bottom[0].shape)
        shape = bottom[0].shape
        if self._scale is None or self._scale.shape != shape:
            # kept for backward: the scale and scale^beta (Caffe keeps scale_ too)
            self._scale = self.xp.empty(shape, np.float32)
            self._scale_beta = self.xp.empty(shape, np.float32)

    def _window(self, src, out, base: float = 0.0) -> None:
        if self.region == ACROSS_CHANNELS:
            _window_sum(self.xp, src, out, self.pre_pad, 1, base)
        else:
            tmp = workspace("lrn_rows", src.shape, self.xp)
            _window_sum(self.xp, src, tmp, self.pre_pad, 2)
            _window_sum(self.xp, tmp, out, self.pre_pad, 3, base)

    # -- the GPU path: each window sum is one reduction over a strided view ---------------------
    def _bordered(self, shape):
        """A cached buffer holding ``shape`` with pre_pad zeros around it on the window's axes
        (channels, or height and width), and its interior, which the caller fills."""
        axes = (1,) if self.region == ACROSS_CHANNELS else (2, 3)
        h = self.pre_pad
        full = tuple(s + 2 * h if a in axes else s for a, s in enumerate(shape))
        box = tuple(slice(h, h + s) if a in axes else slice(None) for a, s in enumerate(shape))
        buf = bordered(self.xp, full, box, 0.0, np.float32, "lrn")
        return buf, buf[box]

    def _window_gpu(self, buf, out) -> None:
        """out = the sum over each window of the bordered buffer: one strided view, one sum."""
        st, n = buf.strides, self.size
        if self.region == ACROSS_CHANNELS:
            shape = out.shape + (n,)
            strides = st + (st[1],)
            axes = (4,)
        else:
            shape = out.shape + (n, n)
            strides = st + (st[2], st[3])
            axes = (4, 5)
        view = as_strided(buf, shape, strides)
        view.sum(axis=axes, out=out)

    def _forward_gpu(self, x, y) -> None:
        xp = self.xp
        scale, sb = self._scale, self._scale_beta
        buf, inner = self._bordered(x.shape)
        xp.multiply(x, x, out=inner)
        inner *= np.float32(self.alpha / self.window_count)
        self._window_gpu(buf, scale)
        scale += np.float32(self.base)
        xp.power(scale, np.float32(self.beta), out=sb)
        xp.divide(x, sb, out=y)

    def _backward_gpu(self, x, y, dy, dx) -> None:
        xp = self.xp
        buf, inner = self._bordered(x.shape)
        xp.multiply(dy, y, out=inner)
        inner /= self._scale
        acc = workspace("lrn_acc", x.shape, xp)
        self._window_gpu(buf, acc)
        self._input_grad(x, dy, acc, dx)

    def _input_grad(self, x, dy, acc, dx) -> None:
        """dx = dy * scale^-beta - 2*alpha*beta/n * x * acc, acc being the window sum of
        dy * y / scale (Caffe's CrossChannelBackward); shared by the CPU and GPU windowing."""
        acc *= x
        acc *= np.float32(2.0 * self.alpha * self.beta / self.window_count)
        self.xp.divide(dy, self._scale_beta, out=dx)
        dx -= acc

    def forward(self, bottom, top):
        # every step is one pass over memory-bound arrays, so the passes are kept few
        xp = self.xp
        x = bottom[0].data
        if self.gpu:
            self._forward_gpu(x, top[0].data)
            return
        scale, sb = self._scale, self._scale_beta
        xp.multiply(x, x, out=sb)  # sb holds alpha/n' * x^2 for a moment
        sb *= np.float32(self.alpha / self.window_count)
        self._window(sb, scale, self.base)
        if self.beta == 0.75:  # scale^0.75 = sqrt(scale) * sqrt(sqrt(scale)), far cheaper than pow
            xp.sqrt(scale, out=sb)
            r = workspace("lrn_root", x.shape, xp)
            xp.sqrt(sb, out=r)
            sb *= r
        else:
            xp.power(scale, np.float32(self.beta), out=sb)
        xp.divide(x, sb, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        if self.gpu:
            self._backward_gpu(x, y, dy, bottom[0].diff)
            return
        ratio = workspace("lrn_ratio", x.shape, xp)
        xp.multiply(dy, y, out=ratio)
        ratio /= self._scale
        acc = workspace("lrn_acc", x.shape, xp)
        self._window(ratio, acc)
        self._input_grad(x, dy, acc, bottom[0].diff)


@register("BatchNorm")
class BatchNormLayer(Layer):
    """BatchNormLayer: normalise each channel over the batch and spatial positions.

    Blobs as Caffe stores them: [0] the running sum of means, [1] the running sum of (unbiased)
    variances, [2] one scalar, the running normaliser; the statistics are mean = [0]/[2] and
    var = [1]/[2]. In TRAIN (unless use_global_stats) each forward does [2] = [2]*f + 1,
    [0] = mean + f*[0], [1] = m/(m-1)*var + f*[1] (f = moving_average_fraction) and normalises
    with the batch's biased variance. The three blobs get lr_mult 0, as Caffe forces."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.maf = float(p.moving_average_fraction)
        self.use_global_stats = self.phase == TEST
        if p.HasField("use_global_stats"):
            self.use_global_stats = bool(p.use_global_stats)
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        self.eps = float(p.eps)
        if not len(self.blobs):
            for shape in ((self.channels,), (self.channels,), (1,)):
                b = self.blobs.add_blob(*shape)
                b.data[...] = 0
        # mask the statistics from the solver, as Caffe does
        lp = self.layer_param
        for i in range(len(self.blobs)):
            if len(lp.param) == i:
                spec = lp.param.add()
                spec.lr_mult = 0.0
            elif lp.param[i].lr_mult != 0:
                raise CaffeError(f"layer '{self.name}': cannot configure batch normalization statistics "
                                 f"as layer parameters (lr_mult must be 0)")
        self.init_param_propagate_down()

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 1 and bottom[0].shape[1] != self.channels:
            raise CaffeError(f"layer '{self.name}': {bottom[0].shape[1]} channels, expected {self.channels}")
        top[0].reshape(bottom[0].shape)

    def _ncs(self, arr):
        n = arr.shape[0] if arr.ndim else 1
        return arr.reshape(n, self.channels, -1)

    def _channel_sum(self, a3, scale: float):
        """Per-channel sum of (N, C, S) in Caffe's order: over S (scaled), then over N."""
        per = a3.sum(axis=2) * np.float32(scale)
        return per.sum(axis=0)

    def forward(self, bottom, top):
        xp = self.xp
        x3 = self._ncs(bottom[0].data)
        y3 = self._ncs(top[0].data)
        n, c, s = x3.shape
        if self.use_global_stats:
            f = float(self.blobs[2].data.reshape(-1)[0])
            factor = np.float32(0.0 if f == 0 else 1.0 / f)
            mean = self.blobs[0].data * factor
            var = self.blobs[1].data * factor
        else:
            mean = self._channel_sum(x3, 1.0 / (n * s))
        xp.subtract(x3, mean.reshape(1, c, 1), out=y3)
        if not self.use_global_stats:
            var = self._channel_sum(y3 * y3, 1.0 / (n * s))
            f = np.float32(self.maf)
            self.blobs[2].data[...] = self.blobs[2].data * f + np.float32(1)
            b0 = self.blobs[0].data
            b0[...] = mean + f * b0
            m = x3.size // c
            correction = np.float32(m / (m - 1) if m > 1 else 1.0)
            b1 = self.blobs[1].data
            b1[...] = correction * var + f * b1
        std = xp.sqrt(var + np.float32(self.eps)).astype(np.float32)
        y3 /= std.reshape(1, c, 1)
        self._std = std
        # kept because later in-place layers may overwrite the top (Caffe's x_norm_)
        self._x_norm = y3.copy()

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy3 = self._ncs(top[0].diff)
        dx3 = self._ncs(bottom[0].diff)
        n, c, s = dy3.shape
        std = self._std.reshape(1, c, 1)
        if self.use_global_stats:
            xp.divide(dy3, std, out=dx3)
            return
        y = self._x_norm
        # dE/dX = (dE/dY - mean(dE/dY) - mean(dE/dY . Y) . Y) / sqrt(var + eps)
        sum_dy_y = self._channel_sum(dy3 * y, 1.0).reshape(1, c, 1)
        sum_dy = self._channel_sum(dy3, 1.0).reshape(1, c, 1)
        tmp = y * sum_dy_y
        tmp += sum_dy
        tmp *= np.float32(-1.0 / (n * s))
        tmp += dy3
        xp.divide(tmp, std, out=dx3)


@register("MVN")
class MVNLayer(Layer):
    """MVNLayer: subtract the mean of each (image, channel), or of each image when
    across_channels; with normalize_variance divide by sqrt(var) + eps (eps after the root)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
        b = bottom[0]
        self.rows = b.num if self.across_channels else b.num * b.channels
        self.dim = b.count // self.rows if self.rows else 0

    def _row_mean(self, a2):
        return a2.sum(axis=1) * np.float32(1.0 / self.dim)

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.rows, self.dim)
        y = top[0].data.reshape(self.rows, self.dim)
        mean = self._row_mean(x)
        xp.subtract(x, mean[:, None], out=y)
        if self.normalize_variance:
            var = self._row_mean(y * y)
            self._sigma = xp.sqrt(var) + np.float32(self.eps)
            y /= self._sigma[:, None]

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy = top[0].diff.reshape(self.rows, self.dim)
        dx = bottom[0].diff.reshape(self.rows, self.dim)
        if self.normalize_variance:
            y = top[0].data.reshape(self.rows, self.dim)
            sum_dy_y = (dy * y).sum(axis=1)
            sum_dy = dy.sum(axis=1)
            tmp = y * sum_dy_y[:, None]
            tmp += sum_dy[:, None]
            tmp *= np.float32(-1.0 / self.dim)
            tmp += dy
            xp.divide(tmp, self._sigma[:, None], out=dx)
        else:
            mean = dy.sum(axis=1) * np.float32(1.0 / self.dim)
            xp.subtract(dy, mean[:, None], out=dx)
