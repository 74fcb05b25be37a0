"""Convolution, Deconvolution and Im2col (base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp).

A convolution is lowered to GEMMs over the whole batch (see ``pycaffe_fc.im2col``): the columns of
all images form one ``(C*K, N*P)`` matrix, so the weight gradient is a single GEMM whose contracted
dimension runs over the batch, and the forward/data-gradient GEMMs are either one per image
(large outputs: no copies at all) or one for the batch followed by a layout transpose (small
outputs, where one large GEMM is much faster than N thin ones). Large batches of narrow images use
the batch-last column order ``(C*K, P*N)`` so that im2col/col2im copy long rows. 1x1 convolutions
with stride 1 and no padding need no im2col: the bottom itself is the column matrix.

Deconvolution is the transposed convolution: its forward is a convolution's data gradient and its
data gradient a convolution's forward, with the weight stored as (C_in, C_out/group, *kernel).
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import numpy as np

from ..backend import copy_transposed
from ..errors import CaffeError
from ..fillers import fill
from ..im2col import col2im, conv_out_size, deconv_out_size, im2col, workspace
from ..threads import run_ranges
from .base import Layer, register

#: per-image GEMMs (no layout copies) pay off once each is big: at least this many output
#: positions per image and this many multiply-adds per image and group; below, one GEMM for the
#: whole batch plus a transposing copy is faster than N thin ones
PER_IMAGE_MIN_POSITIONS = 512
PER_IMAGE_MIN_MACS = 1 << 18
#: large batches of narrow images use the batch-last column layout (C*K, P*N): numpy's cost per
#: copied row otherwise dominates im2col/col2im when each row is only a few pixels wide
BATCH_LAST_MIN_BATCH = 16
BATCH_LAST_MAX_WIDTH = 16
#: per-image layers with small weights take the weight gradient as N per-image GEMMs summed
#: afterwards (a temporary of N weights): no transposed copy of top_diff is needed at all, and
#: OpenBLAS is slow on the one long-K product with a few outputs that it replaces
STACKED_WGRAD_MAX_BYTES = 4 << 20
#: on a GPU the stacked weight gradient (N per-image GEMMs, then a sum) saves the transposed
#: copy of top_diff; above this temporary size one long-K GEMM is used instead
GPU_STACKED_WGRAD_MAX_BYTES = 64 << 20


def _column_cache_bytes(gpu: bool = False) -> int:
    value = os.environ.get("FC_CAFFE_COLUMN_CACHE_MB", "").strip()
    try:
        # a GPU has the memory, and every im2col saved is two kernel launches: 1 GiB by default
        return max(0, int(float(value) * (1 << 20))) if value else (1 << 30 if gpu else 128 << 20)
    except ValueError:
        raise CaffeError(f"FC_CAFFE_COLUMN_CACHE_MB must be a number of MiB, got {value!r}") from None


#: bytes of forward columns kept for the backward by all Convolution layers together (None: read
#: FC_CAFFE_COLUMN_CACHE_MB when first needed, so a bad value is a layer's error, not an import's)
COLUMN_CACHE_BYTES: int | None = None


@dataclass
class ConvGeometry:
    """Kernel, stride, pad and dilation per spatial axis (BaseConvolutionLayer::LayerSetUp)."""

    channel_axis: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def num_spatial_axes(self) -> int:
        return len(self.kernel)

    @property
    def is_1x1(self) -> bool:
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) and not any(self.pad)

    @property
    def kernel_dim(self) -> int:
        return int(np.prod(self.kernel))

    def conv_out(self, in_shape) -> tuple[int, ...]:
        return tuple(conv_out_size(i, k, s, p, d) for i, k, s, p, d in
                     zip(in_shape, self.kernel, self.stride, self.pad, self.dilation))

    def deconv_out(self, in_shape) -> tuple[int, ...]:
        return tuple(deconv_out_size(i, k, s, p, d) for i, k, s, p, d in
                     zip(in_shape, self.kernel, self.stride, self.pad, self.dilation))


def parse_geometry(layer_name: str, cp, bottom_shape) -> ConvGeometry:
    """Read ConvolutionParameter as Caffe does: _h/_w forms for 2-d only, repeated fields given
    once or once per spatial axis, defaults stride 1, pad 0, dilation 1."""
    num_axes = len(bottom_shape)
    if not -num_axes <= cp.axis < num_axes:
        raise CaffeError(f"layer '{layer_name}': axis {cp.axis} out of range for a {num_axes}-d bottom")
    channel_axis = cp.axis % num_axes
    nsp = num_axes - channel_axis - 1
    if nsp < 0:
        raise CaffeError(f"layer '{layer_name}': no spatial axes after channel axis {channel_axis}")

    def per_axis(name, values, has_hw, h, w, default):
        if has_hw:
            if nsp != 2:
                raise CaffeError(f"layer '{layer_name}': {name}_h & {name}_w can only be used for 2D convolution")
            if len(values):
                raise CaffeError(f"layer '{layer_name}': either {name} or {name}_h/w should be specified; not both")
            return (int(h), int(w))
        if len(values) == 0:
            if default is None:
                raise CaffeError(f"layer '{layer_name}': kernel_size must be specified")
            return (default,) * nsp
        if len(values) not in (1, nsp):
            raise CaffeError(f"layer '{layer_name}': {name} must be specified once, or once per spatial "
                             f"dimension ({name} specified {len(values)} times; {nsp} spatial dims)")
        return tuple(int(values[0 if len(values) == 1 else i]) for i in range(nsp))

    kernel = per_axis("kernel_size", cp.kernel_size, cp.HasField("kernel_h") or cp.HasField("kernel_w"),
                      cp.kernel_h, cp.kernel_w, None)
    if (cp.HasField("kernel_h") or cp.HasField("kernel_w")) and not (cp.HasField("kernel_h") and cp.HasField("kernel_w")):
        raise CaffeError(f"layer '{layer_name}': for non-square filters both kernel_h and kernel_w are required")
    if any(k <= 0 for k in kernel):
        raise CaffeError(f"layer '{layer_name}': filter dimensions must be nonzero")
    stride = per_axis("stride", cp.stride, cp.HasField("stride_h") or cp.HasField("stride_w"),
                      cp.stride_h, cp.stride_w, 1)
    if any(s <= 0 for s in stride):
        raise CaffeError(f"layer '{layer_name}': stride dimensions must be nonzero")
    pad = per_axis("pad", cp.pad, cp.HasField("pad_h") or cp.HasField("pad_w"), cp.pad_h, cp.pad_w, 0)
    dilation = per_axis("dilation", cp.dilation, False, 0, 0, 1)
    return ConvGeometry(channel_axis, kernel, stride, pad, dilation)


# -- the GEMM kernels, shared by Convolution and Deconvolution ------------------------------------
class _ConvGemm:
    """One convolution's lowering for a fixed geometry and bottom shape.

    ``img`` is the convolution's input image (N, C, *in_sp), ``out`` its output (N, O, *out_sp),
    ``weight`` (O, C/group, *kernel). The three verbs match Caffe's forward_cpu_gemm,
    backward_cpu_gemm and weight_cpu_gemm, but for the whole batch at once.
    """

    def __init__(self, xp, geom: ConvGeometry, num: int, channels: int, in_sp, num_output: int, group: int,
                 out_sp) -> None:
        self.xp = xp
        self.g = geom
        self.n, self.c, self.o, self.group = num, channels, num_output, group
        self.in_sp, self.out_sp = tuple(in_sp), tuple(out_sp)
        self.p = int(np.prod(self.out_sp, dtype=np.int64))
        self.k = geom.kernel_dim
        self.cg, self.og = channels // group, num_output // group
        self.ckg = self.cg * self.k
        self.is_1x1 = geom.is_1x1
        self.batch_last = (not self.is_1x1 and num >= BATCH_LAST_MIN_BATCH and
                           self.out_sp[-1] <= BATCH_LAST_MAX_WIDTH)
        self.per_image = (not self.batch_last and self.p >= PER_IMAGE_MIN_POSITIONS and
                          self.og * self.ckg * self.p >= PER_IMAGE_MIN_MACS)
        self.stacked_wgrad = self.per_image and num * num_output * self.ckg * 4 <= STACKED_WGRAD_MAX_BYTES
        self.gpu = xp is not np
        if self.gpu:
            # on a GPU every call is a kernel launch and a batched GEMM is one launch whatever
            # its shapes: per-image GEMMs straight from top_diff need no layout copies at all
            self.batch_last, self.per_image = False, True
            self.stacked_wgrad = num * num_output * self.ckg * 4 <= GPU_STACKED_WGRAD_MAX_BYTES

    # column matrix (C*K, N*P) of ``img`` in the 'col' workspace; (C*K, P*N) when batch-last
    @property
    def columns_shape(self) -> tuple[int, int]:
        return (self.c * self.k, self.n * self.p)

    def columns(self, img, out=None):
        """img's column matrix, into ``out`` (a buffer of ``columns_shape``) or the 'col' workspace."""
        col = workspace("col", self.columns_shape, self.xp) if out is None else out
        if self.batch_last:
            xt = workspace("img_t", (self.c,) + self.in_sp + (self.n,), self.xp)
            copy_transposed(xt.reshape(-1, self.n), img.reshape(self.n, -1))
            im2col(xt, self.g.kernel, self.g.stride, self.g.pad, self.g.dilation, self.out_sp,
                   out=col.reshape((self.c,) + self.g.kernel + self.out_sp + (self.n,)), batch_last=True)
        elif self.is_1x1:
            self.xp.copyto(col.reshape(self.c, self.n, self.p), img.reshape(self.n, self.c, self.p).swapaxes(0, 1))
        else:
            im2col(img, self.g.kernel, self.g.stride, self.g.pad, self.g.dilation, self.out_sp,
                   out=col.reshape((self.c,) + self.g.kernel + (self.n,) + self.out_sp))
        return col

    def _w(self, weight):
        return weight.reshape(self.group, self.og, self.ckg)

    def forward(self, img, weight, out, col=None) -> None:
        """out = conv(img, weight) (no bias); ``col`` may hold img's columns already."""
        xp, n, p, G = self.xp, self.n, self.p, self.group
        w = self._w(weight)
        out4 = out.reshape(n, G, self.og, p)
        if self.per_image:
            if self.is_1x1:
                cols = img.reshape(n, G, self.cg, p)
            else:
                col = self.columns(img) if col is None else col
                cols = col.reshape(G, self.ckg, n, p).transpose(2, 0, 1, 3)
            xp.matmul(w, cols, out=out4)
            return
        col = self.columns(img) if col is None else col
        res = workspace("aux", (G, self.og, n * p), xp)
        xp.matmul(w, col.reshape(G, self.ckg, n * p), out=res)
        if self.batch_last:
            copy_transposed(out.reshape(n, -1), res.reshape(-1, n))
        else:
            xp.copyto(out4, res.reshape(G, self.og, n, p).transpose(2, 0, 1, 3))

    def transposed_out(self, dout):
        """dout (N, O, P) as an (O, N*P) matrix in the 'aux' workspace ((O, P*N) when batch-last)."""
        dt = workspace("aux", (self.o, self.n * self.p), self.xp)
        if self.batch_last:
            copy_transposed(dt.reshape(-1, self.n), dout.reshape(self.n, -1))
        else:
            self.xp.copyto(dt.reshape(self.o, self.n, self.p), dout.reshape(self.n, self.o, self.p).swapaxes(0, 1))
        return dt

    def weight_grad(self, col, dout_t, weight_diff) -> None:
        """weight_diff += dout_t @ col^T, per group (the batch is contracted inside one GEMM).

        Computed as its transpose col @ dout_t^T: for these long-K products (K = N*P) OpenBLAS is
        up to several times faster with the wider operand first."""
        G, npos = self.group, self.n * self.p
        if self.gpu:  # the product in the weight's own layout: no transposed copy to add
            tmp = workspace("wgrad", (G, self.og, self.ckg), self.xp)
            self.xp.matmul(dout_t.reshape(G, self.og, npos), col.reshape(G, self.ckg, npos).swapaxes(1, 2), out=tmp)
            weight_diff += tmp.reshape(weight_diff.shape)
            return
        tmp = workspace("wgrad", (G, self.ckg, self.og), self.xp)
        self.xp.matmul(col.reshape(G, self.ckg, npos), dout_t.reshape(G, self.og, npos).swapaxes(1, 2), out=tmp)
        weight_diff += tmp.swapaxes(1, 2).reshape(weight_diff.shape)

    def weight_grad_stacked(self, img, col, dout, weight_diff) -> None:
        """weight_diff += sum over images of col_n @ dout_n^T: per-image GEMMs straight from
        top_diff (and, for 1x1, from the bottom itself), then a sum over the batch."""
        xp, n, p, G = self.xp, self.n, self.p, self.group
        if self.is_1x1:
            cols = img.reshape(n, G, self.cg, p)
        else:
            cols = col.reshape(G, self.ckg, n, p).transpose(2, 0, 1, 3)
        if self.gpu:  # in the weight's own layout (G, Og, CgK): the sum adds without a copy
            tmp = workspace("wgrad_n", (n, G, self.og, self.ckg), xp)
            xp.matmul(dout.reshape(n, G, self.og, p), cols.swapaxes(2, 3), out=tmp)
            weight_diff += tmp.sum(axis=0).reshape(weight_diff.shape)
            return
        tmp = workspace("wgrad_n", (n, G, self.ckg, self.og), xp)
        xp.matmul(cols, dout.reshape(n, G, self.og, p).swapaxes(2, 3), out=tmp)
        weight_diff += tmp.sum(axis=0).swapaxes(1, 2).reshape(weight_diff.shape)

    def data_grad(self, dout, dout_t, weight, img_diff, col_buf=None) -> None:
        """img_diff = conv^T(dout): the GEMM into column space, then col2im (overwrites).
        With ``dout_t`` (dout as an (O, N*P) matrix, already made for the weight gradient) this is
        one GEMM for the batch; otherwise per-image GEMMs when they are big enough. ``col_buf``
        (of ``columns_shape``) may stand in for the 'col' workspace."""
        xp, n, p, G = self.xp, self.n, self.p, self.group
        wt = self._w(weight).swapaxes(1, 2)  # (G, CgK, Og)
        nsp = self.g.num_spatial_axes
        if self.per_image and self.is_1x1:
            xp.matmul(wt, dout.reshape(n, G, self.og, p), out=img_diff.reshape(n, G, self.cg, p))
            return
        if self.per_image and dout_t is None:
            d4 = dout.reshape(n, G, self.og, p)
            # per-image columns (N, C*K, P), written contiguously (a strided ``out`` would make
            # matmul allocate and copy a whole temporary), read by col2im in (C, *k, N, *out) order
            col = workspace("col", (n, G, self.ckg, p), xp) if col_buf is None else col_buf.reshape(n, G, self.ckg, p)
            xp.matmul(wt, d4, out=col)
            order = (1,) + tuple(range(2, 2 + nsp)) + (0,) + tuple(range(2 + nsp, 2 + 2 * nsp))
            cols = col.reshape((n, self.c) + self.g.kernel + self.out_sp).transpose(order)
        else:
            if dout_t is None:
                dout_t = self.transposed_out(dout)
            col = workspace("col", self.columns_shape, xp) if col_buf is None else col_buf
            xp.matmul(wt, dout_t.reshape(G, self.og, n * p), out=col.reshape(G, self.ckg, n * p))
            if self.is_1x1:
                xp.copyto(img_diff.reshape(n, self.c, p), col.reshape(self.c, n, p).swapaxes(0, 1))
                return
            if self.batch_last:
                xt = workspace("img_t", (self.c,) + self.in_sp + (n,), xp)
                col2im(col.reshape((self.c,) + self.g.kernel + self.out_sp + (n,)), self.g.kernel, self.g.stride,
                       self.g.pad, self.g.dilation, self.in_sp, xt, batch_last=True)
                copy_transposed(img_diff.reshape(n, -1), xt.reshape(-1, n))
                return
            cols = col.reshape((self.c,) + self.g.kernel + (n,) + self.out_sp)
        col2im(cols, self.g.kernel, self.g.stride, self.g.pad, self.g.dilation, self.in_sp, img_diff)

    def _ones(self, size: int):
        """A vector of ones (Caffe's bias_multiplier), kept per length."""
        ones = getattr(self, "_ones_vec", None)
        if ones is None or ones.shape[0] != size:
            ones = self._ones_vec = self.xp.ones(size, np.float32)
        return ones

    def bias_grad(self, dout, dout_t, bias_diff) -> None:
        """bias_diff += the sum of dout over the batch and positions: as Caffe, a GEMV with a
        vector of ones (several times faster than numpy's reduction over the rows)."""
        xp = self.xp
        if self.gpu:  # one reduction over the batch and positions, one add
            bias_diff += dout.reshape(self.n, self.o, self.p).sum(axis=(0, 2))
        elif dout_t is not None:
            bias_diff += xp.matmul(dout_t.reshape(self.o, -1), self._ones(self.n * self.p))
        else:
            per_image = xp.matmul(dout.reshape(self.n * self.o, self.p), self._ones(self.p))
            bias_diff += per_image.reshape(self.n, self.o).sum(axis=0)


class BaseConvolutionLayer(Layer):
    """caffe::BaseConvolutionLayer: geometry, group, bias_term, weight/bias fillers, several
    bottom/top pairs sharing the same weights."""

    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    reverse_dimensions = False

    def setup(self, bottom, top):
        cp = self.layer_param.convolution_param
        self.geom = parse_geometry(self.name, cp, bottom[0].shape)
        ca = self.geom.channel_axis
        self.channels = bottom[0].shape[ca]
        self.num_output = int(cp.num_output)
        if self.num_output <= 0:
            raise CaffeError(f"layer '{self.name}': num_output must be positive")
        self.group = int(cp.group)
        if self.group <= 0 or self.channels % self.group:
            raise CaffeError(f"layer '{self.name}': number of input channels {self.channels} is not a multiple "
                             f"of group {self.group}")
        if self.num_output % self.group:
            raise CaffeError(f"layer '{self.name}': number of output should be multiples of group")
        if self.reverse_dimensions:
            conv_out, conv_in = self.channels, self.num_output
        else:
            conv_out, conv_in = self.num_output, self.channels
        self.bias_term = bool(cp.bias_term)
        wshape = (conv_out, conv_in // self.group) + self.geom.kernel
        if len(self.blobs):
            if len(self.blobs) != 1 + self.bias_term:
                raise CaffeError(f"layer '{self.name}': incorrect number of weight blobs")
            self.check_shape("weight", wshape, self.blobs[0].shape)
            if self.bias_term:
                self.check_shape("bias", (self.num_output,), self.blobs[1].shape)
        else:
            w = self.blobs.add_blob(*wshape)
            fill(cp.weight_filler, w)
            if self.bias_term:
                b = self.blobs.add_blob(self.num_output)
                fill(cp.bias_filler, b)
        self.init_param_propagate_down()
        self._gemm = None

    def reshape(self, bottom, top):
        ca = self.geom.channel_axis
        shape = bottom[0].shape
        if len(shape) != ca + 1 + self.geom.num_spatial_axes:
            raise CaffeError(f"layer '{self.name}': bottom num_axes may not change")
        if shape[ca] != self.channels:
            raise CaffeError(f"layer '{self.name}': input size incompatible with convolution kernel "
                             f"({shape[ca]} channels, the weights expect {self.channels})")
        for b in bottom[1:]:
            if b.shape != shape:
                raise CaffeError(f"layer '{self.name}': all bottom blobs must have the same shape "
                                 f"({list(b.shape)} vs {list(shape)})")
        num = int(np.prod(shape[:ca], dtype=np.int64))
        in_sp = shape[ca + 1:]
        out_sp = self.geom.deconv_out(in_sp) if self.reverse_dimensions else self.geom.conv_out(in_sp)
        if any(o <= 0 for o in out_sp):
            raise CaffeError(f"layer '{self.name}': output size {list(out_sp)} is not positive "
                             f"for input {list(in_sp)}")
        for t in top:
            t.reshape(shape[:ca] + (self.num_output,) + tuple(out_sp))
        key = (num, tuple(in_sp))
        if self._gemm is not None and self._gemm_key == key:
            return
        self._gemm_key = key
        self.num, self.in_sp, self.out_sp = num, tuple(in_sp), tuple(out_sp)
        if self.reverse_dimensions:
            # the convolution whose transpose this is maps top (num_output) to bottom (channels)
            self._gemm = _ConvGemm(self.xp, self.geom, num, self.num_output, out_sp, self.channels, self.group,
                                   in_sp)
        else:
            self._gemm = _ConvGemm(self.xp, self.geom, num, self.channels, in_sp, self.num_output, self.group,
                                   out_sp)

    def _add_bias(self, y) -> None:
        if self.bias_term:
            b = self.blobs[1].data.reshape(1, -1, 1)
            y3 = y.reshape(self.num, self.num_output, -1)

            def images(lo, hi):
                part = y3[lo:hi]
                self.xp.add(part, b, out=part)

            run_ranges(images, self.num, self.xp, min_size=-(-(1 << 18) // max(y3[0].size, 1)))


class _KeptColumns:
    """One Convolution layer's forward columns, kept for its backward within a process-wide budget.

    Caffe recomputes im2col in the backward pass (conv_layer.cpp: weight_cpu_gemm unrolls the
    bottom again). In a training iteration the bottom cannot change between the two passes, so the
    forward's columns can be kept instead, saving one unrolling per layer and pass, which is most
    of the time outside the GEMMs for small images. Only nets that promise forward/backward pairs
    keep them (Net.keep_forward_columns: the Solver's training net, `fc-caffe time`); layers
    claim buffers in the order they first run, while the bytes claimed by all stay within
    ``COLUMN_CACHE_BYTES`` (FC_CAFFE_COLUMN_CACHE_MB, default 128 MiB, 1 GiB on a GPU); a layer that does not fit
    recomputes, as Caffe does. The data gradient's GEMM then writes into the same buffer, so the
    layer needs no share of the shared column workspace.
    """

    used = 0  # bytes claimed by all layers of the process

    def __init__(self) -> None:
        self.buf = None
        self.valid = False
        self._finalizer = None

    def claim(self, xp, shape) -> bool:
        """A buffer of ``shape`` if it fits in the budget (kept while the shape stays)."""
        if self.buf is not None and self.buf.shape == tuple(shape):
            return True
        self.release()
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4
        budget = COLUMN_CACHE_BYTES if COLUMN_CACHE_BYTES is not None else _column_cache_bytes(xp is not np)
        if _KeptColumns.used + nbytes > budget:
            return False
        self.buf = xp.empty(shape, np.float32)
        _KeptColumns.used += nbytes
        self._finalizer = weakref.finalize(self, _KeptColumns._give_back, nbytes)
        return True

    @staticmethod
    def _give_back(nbytes: int) -> None:
        _KeptColumns.used -= nbytes

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.buf, self.valid = None, False


@register("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """ConvolutionLayer: top = W * bottom + b, one GEMM per group over the whole batch."""

    def keep_forward_columns(self, on: bool = True) -> None:
        """Keep the forward's columns for the backward (see _KeptColumns); off: recompute."""
        if not on and getattr(self, "_kept", None) is not None:
            self._kept.release()
        self._kept = _KeptColumns() if on else None

    def _kept_buffer(self, n_bottom: int):
        kept = getattr(self, "_kept", None)
        gm = self._gemm
        if kept is None or n_bottom != 1 or gm.is_1x1:
            return None
        return kept.buf if kept.claim(self.xp, gm.columns_shape) else None

    def forward(self, bottom, top):
        gm = self._gemm
        keep = self._kept_buffer(len(bottom))
        for b, t in zip(bottom, top):
            x = b.data.reshape((self.num, self.channels) + self.in_sp)
            y = t.data.reshape((self.num, self.num_output) + self.out_sp)
            col = None if keep is None else gm.columns(x, keep)
            gm.forward(x, self.blobs[0].data, y, col=col)
            self._add_bias(y)
        if keep is not None:
            self._kept.valid = True

    def backward(self, top, propagate_down, bottom):
        gm = self._gemm
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        keep = self._kept_buffer(len(bottom))
        for b, t, prop in zip(bottom, top, propagate_down):
            if not (want_w or want_b or prop):
                continue
            x = b.data.reshape((self.num, self.channels) + self.in_sp)
            dy = t.diff.reshape((self.num, self.num_output) + self.out_sp)
            # dy as an (O, N*P) matrix: the weight gradient's GEMM needs it, the batched data
            # gradient reuses it
            need_t = (want_w and not gm.stacked_wgrad) or (prop and not gm.per_image)
            dy_t = gm.transposed_out(dy) if need_t else None
            if want_b:
                gm.bias_grad(dy, dy_t, self.blobs[1].diff)
            if want_w:
                if gm.is_1x1:
                    col = None
                elif keep is not None and self._kept.valid:
                    col = keep
                else:
                    col = gm.columns(x, keep)
                if gm.stacked_wgrad:
                    gm.weight_grad_stacked(x, col, dy, self.blobs[0].diff)
                else:
                    gm.weight_grad(gm.columns(x) if col is None else col, dy_t, self.blobs[0].diff)
            if prop:
                dx = b.diff.reshape((self.num, self.channels) + self.in_sp)
                gm.data_grad(dy, dy_t, self.blobs[0].data, dx, col_buf=keep)
            if keep is not None:
                self._kept.valid = False  # overwritten by the data gradient, or used once


@register("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """DeconvolutionLayer: the transpose of Convolution; out = s*(in-1) + dil*(k-1) + 1 - 2p,
    weight (C_in, num_output/group, *kernel)."""

    reverse_dimensions = True

    def forward(self, bottom, top):
        gm = self._gemm
        for b, t in zip(bottom, top):
            x = b.data.reshape((self.num, self.channels) + self.in_sp)
            y = t.data.reshape((self.num, self.num_output) + self.out_sp)
            gm.data_grad(x, None, self.blobs[0].data, y)
            self._add_bias(y)

    def backward(self, top, propagate_down, bottom):
        gm = self._gemm
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        for b, t, prop in zip(bottom, top, propagate_down):
            dy = t.diff.reshape((self.num, self.num_output) + self.out_sp)
            if want_b:
                self.blobs[1].diff[...] += dy.reshape(self.num, self.num_output, -1).sum(axis=2).sum(axis=0)
            if want_w:
                x = b.data.reshape((self.num, self.channels) + self.in_sp)
                col = None if gm.is_1x1 and gm.stacked_wgrad else gm.columns(dy)
                if gm.stacked_wgrad:
                    gm.weight_grad_stacked(dy, col, x, self.blobs[0].diff)
                else:
                    gm.weight_grad(col, gm.transposed_out(x), self.blobs[0].diff)
            if prop:
                dx = b.diff.reshape((self.num, self.channels) + self.in_sp)
                gm.forward(dy, self.blobs[0].data, dx, col=col if want_w else None)


@register("Im2col")
class Im2colLayer(Layer):
    """Im2colLayer: top (N, C*prod(kernel), *out) holds each image's columns, Caffe's order
    (channel-major, then kernel offsets)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.geom = parse_geometry(self.name, self.layer_param.convolution_param, bottom[0].shape)

    def reshape(self, bottom, top):
        g = self.geom
        ca = g.channel_axis
        shape = bottom[0].shape
        if len(shape) != ca + 1 + g.num_spatial_axes:
            raise CaffeError(f"layer '{self.name}': bottom num_axes may not change")
        self.num = int(np.prod(shape[:ca], dtype=np.int64))
        self.channels = shape[ca]
        self.in_sp = tuple(shape[ca + 1:])
        self.out_sp = g.conv_out(self.in_sp)
        if any(o <= 0 for o in self.out_sp):
            raise CaffeError(f"layer '{self.name}': output size {list(self.out_sp)} is not positive")
        top[0].reshape(shape[:ca] + (self.channels * g.kernel_dim,) + self.out_sp)

    def _col_view(self, arr):
        """``arr`` (the top) seen as (C, *kernel, N, *out)."""
        g, nsp = self.geom, self.geom.num_spatial_axes
        v = arr.reshape((self.num, self.channels) + g.kernel + self.out_sp)
        order = (1,) + tuple(range(2, 2 + nsp)) + (0,) + tuple(range(2 + nsp, 2 + 2 * nsp))
        return v.transpose(order)

    def forward(self, bottom, top):
        g = self.geom
        x = bottom[0].data.reshape((self.num, self.channels) + self.in_sp)
        im2col(x, g.kernel, g.stride, g.pad, g.dilation, self.out_sp, out=self._col_view(top[0].data))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = self.geom
        dx = bottom[0].diff.reshape((self.num, self.channels) + self.in_sp)
        col2im(self._col_view(top[0].diff), g.kernel, g.stride, g.pad, g.dilation, self.in_sp, dx)
