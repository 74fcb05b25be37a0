"""im2col / col2im (Caffe's im2col.cpp) written against the array module, and the shared workspace.

Caffe lowers a convolution to a GEMM by unrolling every receptive field of one image into a column
(``im2col``) and folds gradients back with ``col2im``. Here the whole batch is unrolled at once, as
Chainer's ``utils/conv.py`` does: a Python loop over the kernel offsets only, each step one strided
copy of every image and channel. The column layout is ``(C, *kernel, N, *out)``, i.e. a
``(C*K, N*P)`` matrix, so that a convolution is one GEMM for the whole batch and the weight
gradient is one GEMM too (the batch is part of the contracted dimension). A batch-last variant,
``(C, *kernel, *out, N)``, keeps the copied rows long for large batches of small images. Any
number of spatial axes is supported (Caffe's N-d im2col); the same slicing code runs on numpy and
CuPy (a CuPy elementwise kernel would save the per-offset launches, not needed for correctness).

Padding is never materialised: for each kernel offset only the output positions whose input falls
inside the image are copied, the rest of the column is zero, exactly Caffe's zero padding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .backend import get_array_module
from .threads import num_threads, run_ranges


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe's convolution output extent: floor((in + 2p - dil*(k-1) - 1) / s) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def deconv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Deconvolution (the transposed convolution): s*(in-1) + dil*(k-1) + 1 - 2p."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


# -- the shared workspace -------------------------------------------------------------------------
_WORKSPACE: dict[tuple[int, int, str], object] = {}


def workspace(slot: str, shape: Sequence[int], xp=np, dtype=np.float32):
    """A C-contiguous scratch array of ``shape`` from a grow-only buffer named ``slot``.

    Caffe keeps one column buffer per layer; layers run one at a time, so a buffer per *purpose*
    shared by all layers serves as well and costs only the largest request. The contents are
    undefined on return and stay valid only until the next request for the same slot.
    """
    shape = tuple(int(s) for s in shape)
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    dtype = np.dtype(dtype)
    # one buffer per array module, device (CuPy) and slot
    device = xp.cuda.Device().id if xp is not np and hasattr(xp, "cuda") else -1
    key = (id(xp), device, f"{slot}/{dtype.str}")
    buf = _WORKSPACE.get(key)
    if buf is None or buf.size < size:
        # drop the smaller buffer before allocating, so the two never coexist
        buf = None
        _WORKSPACE.pop(key, None)
        buf = xp.empty(max(size, 1), dtype)
        _WORKSPACE[key] = buf
    return buf[:size].reshape(shape)


def release_workspace() -> None:
    """Free every scratch buffer (e.g. after a net is destroyed)."""
    _WORKSPACE.clear()


def scatter_add(xp, target, idx, values) -> None:
    """target[idx[i]] += values[i], repeated indices summed (np.add.at; cupyx.scatter_add)."""
    if xp is np:
        np.add.at(target, idx, values)
    else:  # pragma: no cover - GPU only
        import cupyx
        cupyx.scatter_add(target, idx, values)


# -- offsets ------------------------------------------------------------------------------------
def _valid_range(in_size: int, out_size: int, k: int, stride: int, pad: int, dilation: int):
    """Output positions o with 0 <= o*s - p + k*d < in: the slice of o, and of the input."""
    off = k * dilation - pad
    lo = (-off + stride - 1) // stride if off < 0 else 0
    last = in_size - 1 - off
    hi = min(out_size, last // stride + 1) if last >= 0 else 0
    if hi <= lo:
        return None, None
    start = lo * stride + off
    return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)


def _offsets(in_shape, out_shape, kernel, stride, pad, dilation):
    """For every kernel offset: (offset index tuple, out slices, in slices, full coverage?)."""
    nsp = len(kernel)
    per_axis = []
    for a in range(nsp):
        opts = []
        for k in range(kernel[a]):
            o_sl, i_sl = _valid_range(in_shape[a], out_shape[a], k, stride[a], pad[a], dilation[a])
            opts.append((k, o_sl, i_sl))
        per_axis.append(opts)
    result = []
    for combo in np.ndindex(*kernel):
        ks, osl, isl = [], [], []
        for a, k in enumerate(combo):
            _, o_sl, i_sl = per_axis[a][k]
            ks.append(k)
            osl.append(o_sl)
            isl.append(i_sl)
        result.append((tuple(ks), osl, isl))
    return result


_OFFSET_CACHE: dict[tuple, list] = {}


def _cached_offsets(in_shape, out_shape, kernel, stride, pad, dilation):
    key = (tuple(in_shape), tuple(out_shape), tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))
    r = _OFFSET_CACHE.get(key)
    if r is None:
        r = _offsets(in_shape, out_shape, kernel, stride, pad, dilation)
        if len(_OFFSET_CACHE) > 512:
            _OFFSET_CACHE.clear()
        _OFFSET_CACHE[key] = r
    return r


def _zero_outside(dst, osl, out_shape, lead: int) -> None:
    """Zero the part of ``dst`` (lead axes, then the spatial out axes) outside the slices ``osl``."""
    pre = (slice(None),) * lead
    for a, s in enumerate(osl):
        if s.start == 0 and s.stop == out_shape[a]:
            continue
        inner = tuple(osl[:a])
        rest = (slice(None),) * (len(osl) - a - 1)
        if s.start > 0:
            dst[pre + inner + (slice(0, s.start),) + rest] = 0
        if s.stop < out_shape[a]:
            dst[pre + inner + (slice(s.stop, None),) + rest] = 0


#: the least bytes of columns worth handing a range to another thread
THREAD_MIN_BYTES = 1 << 20


def _run_split(xp, fn, arrays_axes, n: int, bytes_total: int) -> None:
    """fn(*parts) over ranges of ``n`` along the given axis of each array, on the worker threads
    (see pycaffe_fc.threads); each range writes only its own slice of the output."""
    def part(lo, hi):
        views = []
        for arr, axis in arrays_axes:
            idx = [slice(None)] * arr.ndim
            idx[axis] = slice(lo, hi)
            views.append(arr[tuple(idx)])
        fn(*views)

    per_unit = max(1, bytes_total // max(n, 1))
    run_ranges(part, n, xp, min_size=-(-THREAD_MIN_BYTES // per_unit))


def _split_axes(c: int, nsp: int, batch_last: bool, threads_hint: int):
    """Which axis to cut: (image/channel count axis of the image, of the columns, which count).

    Images (the (C, N, *in) view) for the channel-major layout, where each image's rows stay
    whole; channels for batch-last, whose rows run over the batch, unless there are too few."""
    if not batch_last:
        return 1, 1 + nsp, "n"
    if c >= 2 * threads_hint:
        return 0, 0, "c"
    return -1, -1, "n"


def im2col(x, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
           out_shape: Sequence[int], out=None, batch_last: bool = False):
    """Unroll ``x`` (N, C, *spatial) into columns (C, *kernel, N, *out_shape).

    With ``batch_last`` the image is (C, *spatial, N) and the columns (C, *kernel, *out_shape, N):
    the batch becomes the innermost axis, so every copied row spans whole rows of the output times
    the batch (long rows, where numpy's cost per row otherwise dominates for small images).
    ``out`` may be any (possibly strided) view of the column shape, e.g. the Im2col layer's top
    seen in this order; otherwise a new array is returned. Large unrollings are cut into ranges
    of images (or channels) that run on the worker threads.
    """
    xp = get_array_module(x)
    nsp = len(kernel)
    if batch_last:
        c, n, in_shape = x.shape[0], x.shape[-1], x.shape[1:-1]
        src, lead = x, 1                       # (C, *spatial, N)
        shape = (c, *kernel, *out_shape, n)
    else:
        n, c, in_shape = x.shape[0], x.shape[1], x.shape[2:]
        src, lead = x.swapaxes(0, 1), 2        # (C, N, *spatial) view: copies write column order
        shape = (c, *kernel, n, *out_shape)
    if out is None:
        out = xp.empty(shape, x.dtype)
    offsets = _cached_offsets(in_shape, out_shape, kernel, stride, pad, dilation)
    pre = (slice(None),) * lead

    def unroll(src, out):
        for ks, osl, isl in offsets:
            dst = out[(slice(None),) + ks]  # (C, N, *out) or (C, *out, N)
            if any(s is None for s in osl):
                dst[...] = 0
                continue
            xp.copyto(dst[pre + tuple(osl)], src[pre + tuple(isl)])
            _zero_outside(dst, osl, out_shape, lead)

    src_axis, col_axis, which = _split_axes(c, nsp, batch_last, num_threads())
    _run_split(xp, unroll, ((src, src_axis), (out, col_axis)), n if which == "n" else c,
               out.size * out.itemsize)
    return out


def col2im(col, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
           in_shape: Sequence[int], out, batch_last: bool = False):
    """Fold columns (C, *kernel, N, *out) back into ``out`` (N, C, *in_shape), summing overlaps;
    with ``batch_last`` columns (C, *kernel, *out, N) into ``out`` (C, *in_shape, N).

    ``out`` is overwritten (Caffe's col2im zeroes the image first). Ranges of images (or
    channels) fold on the worker threads: overlapping windows only ever sum within one image."""
    xp = get_array_module(col)
    nsp = len(kernel)
    if batch_last:
        out_shape = col.shape[1 + nsp:-1]
        dst_all, lead = out, 1
        n = out.shape[-1]
    else:
        out_shape = col.shape[2 + nsp:]
        dst_all, lead = out.swapaxes(0, 1), 2  # (C, N, *in)
        n = out.shape[0]
    c = col.shape[0]
    offsets = _cached_offsets(in_shape, out_shape, kernel, stride, pad, dilation)
    pre = (slice(None),) * lead

    def fold(col, dst_all):
        dst_all[...] = 0
        for ks, osl, isl in offsets:
            if any(s is None for s in osl):
                continue
            src = col[(slice(None),) + ks][pre + tuple(osl)]
            dst = dst_all[pre + tuple(isl)]
            xp.add(dst, src, out=dst)

    src_axis, col_axis, which = _split_axes(c, nsp, batch_last, num_threads())
    _run_split(xp, fold, ((col, col_axis), (dst_all, src_axis)), n if which == "n" else c,
               col.size * col.itemsize)
    return out
