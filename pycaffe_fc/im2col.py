"""im2col / col2im (Caffe's im2col.cpp) written against the array module, and the shared workspace.

Caffe lowers a convolution to a GEMM by unrolling every receptive field of one image into a column
(``im2col``) and folds gradients back with ``col2im``. Here the whole batch is unrolled at once, as
Chainer's ``utils/conv.py`` does: a Python loop over the kernel offsets only, each step one strided
copy of every image and channel. The column layout is ``(C, *kernel, N, *out)``, i.e. a
``(C*K, N*P)`` matrix, so that a convolution is one GEMM for the whole batch and the weight
gradient is one GEMM too (the batch is part of the contracted dimension). A batch-last variant,
``(C, *kernel, *out, N)``, keeps the copied rows long for large batches of small images. Any
number of spatial axes is supported (Caffe's N-d im2col). That offset loop is the CPU's
(``im2col_cpu``/``col2im_cpu``, on worker threads); on CuPy each offset would be a kernel launch,
so ``im2col_gpu``/``col2im_gpu`` (end of this module) read every window at once through strided
views instead. ``im2col``/``col2im`` pick one by the array module, as Chainer's ``utils/conv``.

Padding is never materialised: for each kernel offset only the output positions whose input falls
inside the image are copied, the rest of the column is zero, exactly Caffe's zero padding.
"""
from __future__ import annotations

import importlib
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
    _PADDED.clear()


def scatter_add(xp, target, idx, values) -> None:
    """target[idx[i]] += values[i], repeated indices summed: the ufunc's ``add.at`` (one kernel
    on CuPy >= 13, where it replaces cupyx.scatter_add)."""
    if xp is np or hasattr(xp.add, "at"):
        xp.add.at(target, idx, values)
    else:  # pragma: no cover - CuPy < 13
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
    """Unroll ``x`` into columns: im2col_cpu on numpy arrays, im2col_gpu on CuPy's (same layouts)."""
    if get_array_module(x) is not np:
        return im2col_gpu(x, kernel, stride, pad, dilation, out_shape, out=out, batch_last=batch_last)
    return im2col_cpu(x, kernel, stride, pad, dilation, out_shape, out=out, batch_last=batch_last)


def im2col_cpu(x, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
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
    """Fold columns back into an image: col2im_cpu on numpy arrays, col2im_gpu on CuPy's."""
    if get_array_module(col) is not np:
        return col2im_gpu(col, kernel, stride, pad, dilation, in_shape, out, batch_last=batch_last)
    return col2im_cpu(col, kernel, stride, pad, dilation, in_shape, out, batch_last=batch_last)


def col2im_cpu(col, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
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


# -- the GPU primitives: a few kernel launches each ----------------------------------------------
# On a GPU every array call is a kernel launch (about 10 µs from Python, comparable to the whole
# work of a small layer), so the CPU path's loop over kernel offsets would cost a launch per
# offset. CuPy's strided views (cupy.lib.stride_tricks.as_strided) describe every window of every
# image at once, so each primitive is a fixed handful of whole-array calls whatever the kernel:
# im2col is one copy of a window view (plus one into a padded buffer), col2im a sum over a
# window view of the zero-bordered columns. No custom CUDA kernel is needed. The same functions
# run on numpy arrays (the tests compare them with the CPU path there).

#: zero- (or fill-) bordered buffers, kept per shape: only their interior is ever written, so the
#: border is filled once and each use costs one copy (a launch) instead of a fill and a copy.
#: Past the budgets the least recently used buffers go (a refill costs one launch).
_PADDED: dict[tuple, object] = {}
PADDED_CACHE_ENTRIES = 512
PADDED_CACHE_BYTES = 2 << 30


def as_strided(x, shape, strides):
    """A view of ``x`` with the given shape and byte strides (numpy's or CuPy's
    ``lib.stride_tricks.as_strided``; CuPy's submodule is imported by name, not reached as an
    attribute of the package)."""
    xp = get_array_module(x)
    if xp is np:
        return np.lib.stride_tricks.as_strided(x, shape=tuple(shape), strides=tuple(strides))
    tricks = importlib.import_module(xp.__name__ + ".lib.stride_tricks")
    return tricks.as_strided(x, shape=tuple(shape), strides=tuple(strides))


def _device_key(xp) -> int:
    return xp.cuda.Device().id if xp is not np and hasattr(xp, "cuda") else -1


def bordered(xp, shape: Sequence[int], box: Sequence[slice], fill: float = 0.0, dtype=np.float32, slot: str = ""):
    """A cached array of ``shape`` whose entries outside the index ``box`` hold ``fill``.

    Callers write only inside ``box``, so the border keeps its value between uses; a buffer per
    (shape, box, fill, slot) is shared by every layer asking for the same one."""
    shape = tuple(int(s) for s in shape)
    key = (id(xp), _device_key(xp), shape, tuple((b.start, b.stop) for b in box), float(fill),
           np.dtype(dtype).str, slot)
    buf = _PADDED.pop(key, None)
    if buf is None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        total = sum(b.nbytes for b in _PADDED.values())
        while _PADDED and (len(_PADDED) >= PADDED_CACHE_ENTRIES or total + nbytes > PADDED_CACHE_BYTES):
            total -= _PADDED.pop(next(iter(_PADDED))).nbytes  # the least recently used first
        buf = xp.full(shape, fill, dtype)
    _PADDED[key] = buf  # (re)inserted last: the dict's order is the order of use
    return buf


def padded_image(x, lo: Sequence[int], padded_sp: Sequence[int], fill: float = 0.0):
    """``x`` (N, C, *spatial) inside a cached (N, C, *padded_sp) buffer at offsets ``lo``, the
    rest ``fill`` (Caffe's zero padding; -FLT_MAX for MAX pooling): one copy."""
    xp = get_array_module(x)
    nsp = len(lo)
    lead = x.shape[:x.ndim - nsp]
    box = tuple(slice(None) for _ in lead) + tuple(slice(l, l + s) for l, s in zip(lo, x.shape[x.ndim - nsp:]))
    buf = bordered(xp, lead + tuple(padded_sp), box, fill, x.dtype, "image")
    xp.copyto(buf[box], x)
    return buf


def window_extent(out: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """How far into the (padded) input the last window of ``out`` reaches, exclusive."""
    return (out - 1) * stride + (kernel - 1) * dilation + 1


def padded_extent(in_sp, kernel, stride, pad, dilation, out_shape) -> tuple[int, ...] | None:
    """The padded input extent the windows read (padding ``pad`` before the image, and whatever
    the last window needs after it), or None when every window lies inside the image."""
    need = [window_extent(o, k, s, d) for o, k, s, d in zip(out_shape, kernel, stride, dilation)]
    if any(pad) or any(e > i for e, i in zip(need, in_sp)):
        return tuple(max(i + p, e) for i, p, e in zip(in_sp, pad, need))
    return None


def image_windows(x, kernel, stride, pad, dilation, out_shape, fill: float = 0.0):
    """Every window of ``x`` (N, C, *in) as a strided view (N, C, *out, *kernel), padded with
    ``fill`` where windows leave the image (a copy into a bordered buffer, else no copy)."""
    xp = get_array_module(x)
    padded = padded_extent(x.shape[2:], kernel, stride, pad, dilation, out_shape)
    if padded is not None:
        x = padded_image(x, pad, padded, fill)
    st = x.strides
    shape = tuple(x.shape[:2]) + tuple(out_shape) + tuple(kernel)
    strides = (st[0], st[1]) + tuple(s * st[2 + a] for a, s in enumerate(stride)) + \
        tuple(d * st[2 + a] for a, d in enumerate(dilation))
    return as_strided(x, shape, strides)


def im2col_gpu(x, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
               out_shape: Sequence[int], out=None, batch_last: bool = False):
    """im2col with the layouts of im2col_cpu in at most two launches: a copy into a zero-bordered
    buffer (when there is padding) and one copy of the window view into the columns."""
    xp = get_array_module(x)
    nsp = len(kernel)
    img = x.transpose((nsp + 1, 0) + tuple(range(1, nsp + 1))) if batch_last else x  # (N, C, *in)
    n, c = img.shape[0], img.shape[1]
    shape = (c, *kernel, *out_shape, n) if batch_last else (c, *kernel, n, *out_shape)
    if out is None:
        out = xp.empty(shape, x.dtype)
    if batch_last:  # the columns seen as (C, *kernel, N, *out)
        dst = out.transpose((0,) + tuple(range(1, nsp + 1)) + (2 * nsp + 1,) + tuple(range(nsp + 1, 2 * nsp + 1)))
    else:
        dst = out
    win = image_windows(img, kernel, stride, pad, dilation, out_shape)  # (N, C, *out, *k)
    order = (1,) + tuple(range(2 + nsp, 2 + 2 * nsp)) + (0,) + tuple(range(2, 2 + nsp))
    xp.copyto(dst, win.transpose(order))
    return out


def col2im_gpu(col, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], dilation: Sequence[int],
               in_shape: Sequence[int], out, batch_last: bool = False):
    """col2im with the layouts of col2im_cpu in three launches (dilation 1).

    Along each axis, input pixel y = q*s + r (padded coordinates) receives column entries
    (kernel offset m*s + r, output q - m) for m < ceil(k/s). With the columns copied into a
    buffer whose kernel axis is padded to a multiple of s and whose output axis has zero
    borders, those entries form a strided view (q, r, m) of the buffer, so the fold is a sum
    over m of one view: a copy in, a sum, and a copy of the image part out (overwriting
    ``out``, as Caffe's col2im zeroes first). Dilated kernels fold offset by offset."""
    xp = get_array_module(col)
    nsp = len(kernel)
    if batch_last:  # (C, *k, *out, N) seen as (C, *k, N, *out); out (C, *in, N) as (N, C, *in)
        cols = col.transpose((0,) + tuple(range(1, nsp + 1)) + (2 * nsp + 1,) + tuple(range(nsp + 1, 2 * nsp + 1)))
        img = out.transpose((nsp + 1, 0) + tuple(range(1, nsp + 1)))
    else:
        cols, img = col, out
    if any(d != 1 for d in dilation):
        return col2im_cpu(col, kernel, stride, pad, dilation, in_shape, out, batch_last=batch_last)
    c, n = cols.shape[0], cols.shape[1 + nsp]
    out_sp = cols.shape[2 + nsp:]
    ka = [-(-k // s) for k, s in zip(kernel, stride)]
    q = [max(o + a - 1, -(-(i + p) // s)) for o, a, i, p, s in zip(out_sp, ka, in_shape, pad, stride)]
    shape = (c,) + tuple(a * s for a, s in zip(ka, stride)) + (n,) + tuple(qq + a - 1 for qq, a in zip(q, ka))
    box = (slice(None),) + tuple(slice(0, k) for k in kernel) + (slice(None),) + \
        tuple(slice(a - 1, a - 1 + o) for a, o in zip(ka, out_sp))
    buf = bordered(xp, shape, box, 0.0, col.dtype, "col2im")
    xp.copyto(buf[box], cols)
    st = buf.strides
    sk, so = st[1:1 + nsp], st[2 + nsp:]
    start = buf[(slice(None),) * (2 + nsp) + tuple(slice(a - 1, None) for a in ka)]
    vshape = (n, c) + tuple(x for qq, s in zip(q, stride) for x in (qq, s)) + tuple(ka)
    vstrides = (st[1 + nsp], st[0]) + tuple(x for a in range(nsp) for x in (so[a], sk[a])) + \
        tuple(s * sk[a] - so[a] for a, s in enumerate(stride))
    view = as_strided(start, vshape, vstrides)
    folded = workspace("col2im_img", vshape[:2 + 2 * nsp], xp, col.dtype)
    view.sum(axis=tuple(range(2 + 2 * nsp, 2 + 3 * nsp)), out=folded)
    full = folded.reshape((n, c) + tuple(qq * s for qq, s in zip(q, stride)))
    xp.copyto(img, full[(slice(None), slice(None)) + tuple(slice(p, p + i) for p, i in zip(pad, in_shape))])
    return out
