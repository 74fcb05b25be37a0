"""Pooling (MAX, AVE, STOCHASTIC) and SPP (pooling_layer.cpp, spp_layer.cpp).

The window arithmetic is Caffe's: the output extent is rounded up (CEIL, or FLOOR by round_mode),
and with padding the last window is dropped when it would start inside the padding. MAX windows
are clipped to the image; AVE divides by the window clipped to the *padded* image (padding counts)
while summing over the part inside the image; MAX backward routes each gradient to the first
maximum in the window's row-major scan order.

Everything is vectorised over the batch. On the CPU: a Python loop over the kernel offsets only,
each step one long strided operation on every image and channel, on worker threads (WideLayout).
On CuPy, where each call is a kernel launch: one strided view of every window (as im2col_gpu),
reduced over the window axes (argmax/max, or sum), and backward as one scatter_add of the top
diff at the argmax positions (MAX) or one col2im_gpu fold (AVE): a few launches per layer.
"""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from ..im2col import _cached_offsets, as_strided, col2im_gpu, image_windows, padded_extent, scatter_add, workspace
from .. import rng as rngmod
from ..threads import run_ranges
from .base import TRAIN, Layer, register

MAX, AVE, STOCHASTIC = 0, 1, 2
CEIL, FLOOR = 0, 1
FLT_MAX = float(np.finfo(np.float32).max)
#: the least wide-layout entries worth handing a range of planes to another thread
PLANES_MIN_ENTRIES = 1 << 16


def pooled_size(size: int, kernel: int, stride: int, pad: int, round_mode: int = CEIL) -> int:
    """Caffe's pooled extent before the padding clip: ceil (or floor) of (in+2p-k)/s, plus 1."""
    span = size + 2 * pad - kernel
    q = -(-span // stride) if round_mode == CEIL else span // stride
    return q + 1


class PoolGeometry:
    """Kernel, stride and pad of a 2-d pooling window, its output size and offset table."""

    def __init__(self, kernel, stride, pad, in_hw, round_mode: int = CEIL) -> None:
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.in_hw = tuple(in_hw)
        out = [pooled_size(i, k, s, p, round_mode) for i, k, s, p in zip(in_hw, kernel, stride, pad)]
        if pad[0] or pad[1]:
            # the last window must start strictly inside the image, else it is clipped
            for a in range(2):
                if (out[a] - 1) * stride[a] >= in_hw[a] + pad[a]:
                    out[a] -= 1
        self.out_hw = tuple(out)
        self.offsets = _cached_offsets(self.in_hw, self.out_hw, self.kernel, self.stride, self.pad, (1, 1))
        # output rows/cols whose window has no pixel of the image (only when stride > kernel)
        covered = [np.zeros(o, bool) for o in self.out_hw]
        for _, osl, _ in self.offsets:
            for a in range(2):
                if osl[a] is not None:
                    covered[a][osl[a]] = True
        self.empty = None if all(c.all() for c in covered) else ~np.logical_and.outer(covered[0], covered[1])
        self.whole_image = self.out_hw == (1, 1) and not any(self.pad) and \
            self.kernel[0] >= in_hw[0] and self.kernel[1] >= in_hw[1]
        self.overlapping = any(k > s for k, s in zip(self.kernel, self.stride))

    def ave_divisor(self) -> np.ndarray:
        """Caffe's AVE pool_size per output: the window clipped to the padded image."""
        sizes = []
        for a in range(2):
            start = np.arange(self.out_hw[a]) * self.stride[a] - self.pad[a]
            end = np.minimum(start + self.kernel[a], self.in_hw[a] + self.pad[a])
            sizes.append(end - start)
        return np.outer(sizes[0], sizes[1]).astype(np.float32)

    def plane_base(self) -> np.ndarray:
        """Flat in-plane index of each window's (unclipped) top-left corner: hstart*W + wstart."""
        h0 = np.arange(self.out_hw[0]) * self.stride[0] - self.pad[0]
        w0 = np.arange(self.out_hw[1]) * self.stride[1] - self.pad[1]
        return (h0[:, None] * self.in_hw[1] + w0[None, :]).astype(np.int64)

    def offset_table(self) -> np.ndarray:
        """Flat in-plane displacement i*W + j of kernel offset number k (row-major)."""
        kh, kw = self.kernel
        return (np.arange(kh)[:, None] * self.in_hw[1] + np.arange(kw)[None, :]).reshape(-1).astype(np.int64)


def _box(osl):
    return (slice(None), slice(None), osl[0], osl[1])


def _view(x, isl):
    return x[:, :, isl[0], isl[1]]


class WideLayout:
    """Every window offset of a pooling as ONE long unit-stride row per (image, channel) plane.

    The input is padded (so no window leaves it) and split into its stride phases: phase (a, b)
    holds the padded pixels (y, x) with y % sh == a, x % sw == b, a Hph x Wph plane. Kernel offset
    (i, j) then reads, for output (oy, ox) at q = oy*Wph + ox of a plane, the phase (i % sh, j % sw)
    pixel q + (i // sh)*Wph + j // sw. With all N*C planes laid end to end, each offset is one
    contiguous slice, so each step of the offset loop is a single long unit-stride ufunc call
    (numpy is several times slower on strided or short rows); positions other than oy < oh,
    ox < ow are scratch and never copied out.
    """

    def __init__(self, geom: PoolGeometry, n: int, c: int) -> None:
        (h, w), (kh, kw), (sh, sw), (ph, pw), (oh, ow) = geom.in_hw, geom.kernel, geom.stride, geom.pad, geom.out_hw
        self.nc, self.h, self.w = n * c, h, w
        self.sh, self.sw, self.ph, self.pw, self.oh, self.ow = sh, sw, ph, pw, oh, ow
        hp = max(h + ph, sh * (oh - 1) + kh)
        wp = max(w + pw, sw * (ow - 1) + kw)
        self.hph, self.wph = -(-hp // sh), -(-wp // sw)
        self.plane = self.hph * self.wph
        self.offsets = [((i % sh) * sw + j % sw, (i // sh) * self.wph + j // sw)
                        for i in range(kh) for j in range(kw)]
        # the planes of all images and channels form one row: outputs sit at q = plane index *
        # Hph*Wph + oy*Wph + ox, and every offset reads q + its shift, so each view is one slice
        self.size = self.nc * self.plane
        self.max_shift = max(shift for _, shift in self.offsets)
        # the input itself is the (single) phase plane when nothing pads or strides it
        self.direct = sh == 1 and sw == 1 and self.hph == h and self.wph == w
        self.phases = []
        for a in range(sh):
            for b in range(sw):
                y0, x0 = (a - ph) % sh, (b - pw) % sw
                if y0 < h and x0 < w:
                    ny, nx = len(range(y0, h, sh)), len(range(x0, w, sw))
                    self.phases.append((a * sw + b, y0, x0, (y0 + ph) // sh, (x0 + pw) // sw, ny, nx))

    def buffer(self, xp, x, slot: str):
        """The (sh*sw, N*C, Hph*Wph) phase buffer for x (x itself when nothing pads or strides)."""
        if self.direct:
            return x.reshape(1, self.nc, self.plane)
        return workspace(slot, (self.sh * self.sw, self.nc, self.plane), xp)

    def pad_into(self, buf, x, fill: float, p0: int, p1: int) -> None:
        """Planes [p0, p1) of x (N, C, H, W) split into their padded stride phases in ``buf``."""
        if self.direct:
            return
        b5 = buf.reshape(-1, self.nc, self.hph, self.wph)[:, p0:p1]
        x3 = x.reshape(self.nc, self.h, self.w)[p0:p1]
        filled = set()
        for p, y0, x0, r0, c0, ny, nx in self.phases:
            b5[p, :, r0:r0 + ny, c0:c0 + nx] = x3[:, y0::self.sh, x0::self.sw]
            # only the border around the image needs the fill value
            b5[p, :, :r0] = fill
            b5[p, :, r0 + ny:] = fill
            b5[p, :, r0:r0 + ny, :c0] = fill
            b5[p, :, r0:r0 + ny, c0 + nx:] = fill
            filled.add(p)
        for p in range(self.sh * self.sw):
            if p not in filled:
                b5[p] = fill

    def unpad(self, buf, out, p0: int, p1: int) -> None:
        """The inverse of ``pad_into`` for planes [p0, p1): out (N, C, H, W) = the image pixels."""
        b5 = buf.reshape(-1, self.nc, self.hph, self.wph)[:, p0:p1]
        o3 = out.reshape(self.nc, self.h, self.w)[p0:p1]
        for p, y0, x0, r0, c0, ny, nx in self.phases:
            o3[:, y0::self.sh, x0::self.sw] = b5[p, :, r0:r0 + ny, c0:c0 + nx]

    def span(self, p0: int, p1: int) -> slice:
        """The wide positions q of planes [p0, p1) whose windows stay inside those planes.

        Every output (oy < oh, ox < ow) of the planes is among them, and every offset reads and
        writes q + shift within the planes: ranges of planes never touch each other's entries."""
        return slice(p0 * self.plane, p1 * self.plane - self.max_shift)

    def view(self, buf, k: int, span: slice):
        """Kernel offset k's entries of the phase buffer for the wide positions ``span``."""
        phase, shift = self.offsets[k]
        return buf[phase].reshape(-1)[span.start + shift:span.stop + shift]

    def valid(self, wide, p0: int = 0, p1: int | None = None):
        """The (planes, oh, ow) outputs inside a wide array of N*C*Hph*Wph entries."""
        return wide.reshape(self.nc, self.hph, self.wph)[p0:p1, :self.oh, :self.ow]

    def planes(self, xp, fn) -> None:
        """fn(p0, p1) over ranges of planes, on the worker threads (pycaffe_fc.threads)."""
        run_ranges(fn, self.nc, xp, min_size=-(-PLANES_MIN_ENTRIES // self.plane))


class PoolingKernel:
    """Forward/backward of one pooling geometry on (N, C, H, W) arrays; keeps the argmax."""

    def __init__(self, xp, method: int, geom: PoolGeometry, shape) -> None:
        self.xp, self.method, self.g = xp, method, geom
        self.shape = tuple(shape)
        self.argmax = None      # MAX: window offset number per output (wide layout), or in-plane index
        self.argmax_is_plane = False
        self.rand_idx = None    # STOCHASTIC (TRAIN): in-plane index of the sampled pixel
        self._divisor = None
        self._tables = None
        self._tables_gpu = None
        #: the whole-window path (CuPy: few launches); the offset loop on worker threads on numpy
        self.gpu = xp is not np
        self.wide = WideLayout(geom, shape[0], shape[1])

    # -- MAX --------------------------------------------------------------------------------
    def _max_forward(self, x, top) -> None:
        xp, g, lay = self.xp, self.g, self.wide
        n, c, h, w = x.shape
        if g.whole_image:
            x3 = x.reshape(n, c, h * w)
            idx = x3.argmax(axis=2)
            top.reshape(n, c)[...] = xp.take_along_axis(x3, idx[:, :, None], axis=2)[:, :, 0]
            self.argmax, self.argmax_is_plane = idx, True
            return
        nk = len(lay.offsets)
        dt = np.uint8 if nk < 256 else (np.int16 if nk < 32768 else np.int32)
        idx = self.argmax
        if idx is None or self.argmax_is_plane or idx.dtype != dt or idx.shape != (lay.size,):
            idx = xp.zeros((lay.size,), dt)
        xpad = lay.buffer(xp, x, "pool_in")
        wide = workspace("pool_wide", (lay.size,), xp)
        eq_all = workspace("pool_eq", (lay.size,), xp, np.bool_)
        tmp_all = workspace("pool_tmp", (lay.size,), xp, dt)
        top3 = top.reshape(lay.nc, lay.oh, lay.ow)

        def planes(p0, p1):
            # outside the image counts as -FLT_MAX, Caffe's initial value: clipped windows ignore it
            lay.pad_into(xpad, x, -FLT_MAX, p0, p1)
            span = lay.span(p0, p1)
            m, iv, eq, tmp = wide[span], idx[span], eq_all[span], tmp_all[span]
            xp.copyto(m, lay.view(xpad, 0, span))
            for k in range(1, nk):
                xp.maximum(m, lay.view(xpad, k, span), out=m)
            # the first maximum in scan order: walk the offsets backwards, the earliest equal one wins
            for k in range(nk - 1, -1, -1):
                xp.equal(lay.view(xpad, k, span), m, out=eq)
                # iv = eq ? k : iv without a masked copy (slow in numpy): iv -= (iv - k) * eq
                xp.subtract(iv, dt(k), out=tmp)
                xp.multiply(tmp, eq.view(np.uint8) if dt == np.uint8 else eq, out=tmp, casting="unsafe")
                xp.subtract(iv, tmp, out=iv)
            xp.copyto(top3[p0:p1], lay.valid(wide, p0, p1))

        lay.planes(xp, planes)
        self.argmax, self.argmax_is_plane = idx, False

    def plane_index(self, flat: bool = False):
        """The argmax as Caffe's mask: h*W + w inside the unpadded plane, -1 for windows with no
        pixel of the image; with ``flat`` the index into the whole (N, C, H, W) bottom instead
        (for routing gradients; empty windows then keep an arbitrary index, see _route)."""
        xp, g = self.xp, self.g
        n, c, h, w = self.shape
        if self.argmax_is_plane:
            idx = self.argmax.reshape(n, c, 1, 1)
            if flat:
                idx = idx + xp.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
            return idx
        if self._tables is None:
            self._tables = (xp.asarray(g.plane_base()), xp.asarray(g.offset_table()))
        base, table = self._tables
        k = self.argmax
        if k.ndim == 1:  # the wide layout of the MAX forward
            k = self.wide.valid(k)
        plane = xp.take(table, k).reshape(n, c, *g.out_hw)  # in-place adds: no more temporaries
        plane += base
        if flat:
            plane += xp.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
        elif g.empty is not None:
            plane[..., xp.asarray(g.empty)] = -1
        return plane

    def _route(self, flat, dtop, dbottom) -> None:
        """dbottom = the sum of dtop over the outputs whose source pixel (flat index) is each pixel."""
        xp = self.xp
        d = dtop
        if self.g.empty is not None and not self.argmax_is_plane:
            keep = ~xp.asarray(self.g.empty)
            flat, d = flat[..., keep], dtop[..., keep]
        flat, d = flat.reshape(-1), d.reshape(-1)
        dbottom[...] = 0
        if not self.g.overlapping or self.argmax_is_plane:
            # each pixel belongs to at most one window: a plain scatter
            dbottom.reshape(-1)[flat] = d
        else:
            scatter_add(xp, dbottom.reshape(-1), flat, d)

    # -- AVE --------------------------------------------------------------------------------
    def divisor(self):
        if self._divisor is None:
            self._divisor = self.xp.asarray(self.g.ave_divisor())
        return self._divisor

    def _ave_forward(self, x, top) -> None:
        xp, g, lay = self.xp, self.g, self.wide
        n, c, h, w = x.shape
        if g.whole_image:
            s = x.reshape(n, c, h * w).sum(axis=2)
            xp.divide(s, np.float32(h * w), out=top.reshape(n, c))
            return
        xpad = lay.buffer(xp, x, "pool_in")
        wide = workspace("pool_wide", (lay.size,), xp)
        top3, div = top.reshape(lay.nc, lay.oh, lay.ow), self.divisor()

        def planes(p0, p1):
            lay.pad_into(xpad, x, 0.0, p0, p1)
            span = lay.span(p0, p1)
            acc = wide[span]
            xp.copyto(acc, lay.view(xpad, 0, span))
            for k in range(1, len(lay.offsets)):
                xp.add(acc, lay.view(xpad, k, span), out=acc)
            xp.divide(lay.valid(wide, p0, p1), div, out=top3[p0:p1])

        lay.planes(xp, planes)

    def _ave_backward(self, dtop, dbottom) -> None:
        xp, g, lay = self.xp, self.g, self.wide
        n, c, h, w = dbottom.shape
        if g.whole_image:
            dbottom.reshape(n, c, h * w)[...] = (dtop.reshape(n, c) / np.float32(h * w))[:, :, None]
            return
        d_all = workspace("pool_wide", (lay.size,), xp)
        grad = dbottom.reshape(1, lay.nc, lay.plane) if lay.direct else \
            workspace("pool_grad", (lay.sh * lay.sw, lay.nc, lay.plane), xp)
        dtop3, div = dtop.reshape(lay.nc, lay.oh, lay.ow), self.divisor()

        def planes(p0, p1):
            planes_all = slice(p0 * lay.plane, p1 * lay.plane)
            d_all[planes_all] = 0
            xp.divide(dtop3[p0:p1], div, out=lay.valid(d_all, p0, p1))
            grad[:, p0:p1] = 0
            span = lay.span(p0, p1)
            d = d_all[span]
            for k in range(len(lay.offsets)):
                v = lay.view(grad, k, span)
                xp.add(v, d, out=v)
            if not lay.direct:
                lay.unpad(grad, dbottom, p0, p1)

        lay.planes(xp, planes)

    # -- STOCHASTIC (Caffe has it on the GPU only; same sampling rule here) -------------------
    def _windows(self, x):
        for k, (_, osl, isl) in enumerate(self.g.offsets):
            if osl[0] is not None and osl[1] is not None:
                yield k, _box(osl), _view(x, isl)

    def _sto_forward_train(self, x, top) -> None:
        xp = self.xp
        total = xp.zeros(top.shape, np.float32)
        for _, box, v in self._windows(x):
            t = total[box]
            xp.add(t, v, out=t)
        # counter-based, keyed by the owning layer and global unit index (pycaffe_fc.rng): the
        # same for any worker count; a kernel without an owner layer draws from the process stream
        owner = getattr(self, "owner", None)
        u = (rngmod.layer_uniform(owner, xp, top.shape) if owner is not None
             else xp.asarray(rngmod.get_rng().random(top.shape, dtype=np.float32)))
        thres = u * total
        cum = xp.zeros(top.shape, np.float32)
        found = xp.zeros(top.shape, bool)
        idx = xp.zeros(top.shape, np.int64)
        top[...] = 0
        for k, box, v in self._windows(x):
            cb = cum[box]
            xp.add(cb, v, out=cb)
            new = (cb >= thres[box]) & ~found[box]
            top[box] += xp.where(new, v, 0)
            idx[box] += new * k
            found[box] |= new
        self.argmax, self.argmax_is_plane = idx, False
        self.rand_idx = self.plane_index()

    def _sto_forward_test(self, x, top) -> None:
        xp = self.xp
        cumsum = xp.full(top.shape, np.finfo(np.float32).tiny, np.float32)
        cumval = xp.zeros(top.shape, np.float32)
        for _, box, v in self._windows(x):
            cumsum[box] += v
            cumval[box] += v * v
        xp.divide(cumval, cumsum, out=top)

    # -- the GPU path: every window at once (see im2col_gpu) -----------------------------------
    @property
    def _direct_plane(self) -> bool:
        """One window that is exactly the image: its pixels in plane order are the window."""
        g = self.g
        return g.out_hw == (1, 1) and not any(g.pad) and g.kernel == g.in_hw

    def _gpu_geometry(self):
        """(padded H, W) the windows read, or None when they read the bottom itself."""
        g = self.g
        if self._direct_plane:
            return None
        return padded_extent(g.in_hw, g.kernel, g.stride, g.pad, (1, 1), g.out_hw)

    def _max_forward_gpu(self, x, top) -> None:
        xp, g = self.xp, self.g
        n, c = x.shape[:2]
        k = g.kernel[0] * g.kernel[1]
        if self._direct_plane:
            win = x.reshape(n, c, 1, 1, k)
        else:
            # outside the image counts as -FLT_MAX, Caffe's initial value: clipped windows ignore it
            view = image_windows(x, g.kernel, g.stride, g.pad, (1, 1), g.out_hw, -FLT_MAX)
            w6 = workspace("pool_windows", view.shape, xp)
            xp.copyto(w6, view)
            win = w6.reshape(n, c, g.out_hw[0], g.out_hw[1], k)
        # argmax is the first maximum in the window's row-major scan order, as Caffe's `>` scan
        self.argmax, self.argmax_is_plane = win.argmax(axis=4), False
        win.max(axis=4, out=top)

    def _gpu_tables(self):
        """For routing gradients into the (padded) planes: per window offset its in-plane
        displacement, per output its plane's start plus its window's corner (built once)."""
        if self._tables_gpu is None:
            g = self.g
            n, c = self.shape[:2]
            hp, wp = self._gpu_geometry() or g.in_hw
            kh, kw = g.kernel
            koff = (np.arange(kh)[:, None] * wp + np.arange(kw)[None, :]).reshape(-1)
            corner = (np.arange(g.out_hw[0])[:, None] * g.stride[0] * wp +
                      np.arange(g.out_hw[1])[None, :] * g.stride[1])
            base = np.arange(n * c).reshape(n, c, 1, 1) * (hp * wp) + corner
            self._tables_gpu = (self.xp.asarray(koff.astype(np.int64)), self.xp.asarray(base.astype(np.int64)))
        return self._tables_gpu

    def _max_backward_gpu(self, dtop, dbottom) -> None:
        xp, g = self.xp, self.g
        n, c, h, w = self.shape
        koff, base = self._gpu_tables()
        flat = xp.take(koff, self.argmax)
        flat += base
        padded = self._gpu_geometry()
        target = dbottom if padded is None else workspace("pool_grad", (n, c) + tuple(padded), xp)
        target.fill(0)
        if g.overlapping:
            scatter_add(xp, target.reshape(-1), flat.reshape(-1), dtop.reshape(-1))
        else:  # each pixel belongs to at most one window: a plain scatter
            target.reshape(-1)[flat.reshape(-1)] = dtop.reshape(-1)
        if padded is not None:
            ph, pw = g.pad
            xp.copyto(dbottom, target[:, :, ph:ph + h, pw:pw + w])

    def _ave_forward_gpu(self, x, top) -> None:
        xp, g = self.xp, self.g
        view = image_windows(x, g.kernel, g.stride, g.pad, (1, 1), g.out_hw, 0.0)
        view.sum(axis=(4, 5), out=top)
        xp.divide(top, self.divisor(), out=top)

    def _ave_backward_gpu(self, dtop, dbottom) -> None:
        xp, g = self.xp, self.g
        n, c = self.shape[:2]
        d = workspace("pool_ave_d", dtop.shape, xp)
        xp.divide(dtop, self.divisor(), out=d)
        # every pixel of a window gets the window's share: the columns of im2col with the same
        # value at every kernel offset (a stride-0 view), folded back by col2im
        st = d.strides
        col = as_strided(d, (c, g.kernel[0], g.kernel[1], n) + g.out_hw, (st[1], 0, 0, st[0], st[2], st[3]))
        col2im_gpu(col, g.kernel, g.stride, g.pad, (1, 1), g.in_hw, dbottom)

    # -- the verbs ----------------------------------------------------------------------------
    def forward(self, x, top, phase: int) -> None:
        if self.gpu and self.method == MAX:
            self._max_forward_gpu(x, top)
        elif self.gpu and self.method == AVE and not self.g.whole_image:
            self._ave_forward_gpu(x, top)
        elif self.method == MAX:
            self._max_forward(x, top)
        elif self.method == AVE:
            self._ave_forward(x, top)
        elif phase == TRAIN:
            self._sto_forward_train(x, top)
        else:
            self._sto_forward_test(x, top)

    def _max_backward(self, dtop, dbottom) -> None:
        """_route for the wide-layout argmax, on ranges of planes: each range turns its own argmax
        into pixel indices and scatters into its own planes of the bottom (worker threads)."""
        xp, g, lay = self.xp, self.g, self.wide
        if self._tables is None:
            self._tables = (xp.asarray(g.plane_base()), xp.asarray(g.offset_table()))
        base, table = self._tables
        hw = self.shape[2] * self.shape[3]
        keep = None if g.empty is None else ~xp.asarray(g.empty)
        k_all = lay.valid(self.argmax)
        d_all = dtop.reshape(lay.nc, lay.oh, lay.ow)
        db_all = dbottom.reshape(lay.nc, hw)

        def planes(p0, p1):
            flat = xp.take(table, k_all[p0:p1])
            flat += base
            flat += (xp.arange(p1 - p0, dtype=np.int64) * hw).reshape(-1, 1, 1)
            d = d_all[p0:p1]
            if keep is not None:  # windows with no pixel of the image pass nothing back
                flat, d = flat[:, keep], d[:, keep]
            db = db_all[p0:p1].reshape(-1)
            db[...] = 0
            if g.overlapping:
                scatter_add(xp, db, flat.reshape(-1), d.reshape(-1))
            else:  # each pixel belongs to at most one window: a plain scatter
                db[flat.reshape(-1)] = d.reshape(-1)

        lay.planes(xp, planes)

    def backward(self, dtop, dbottom) -> None:
        if self.gpu and self.method == MAX:
            self._max_backward_gpu(dtop, dbottom)
        elif self.gpu and self.method == AVE and not self.g.whole_image:
            self._ave_backward_gpu(dtop, dbottom)
        elif self.method == MAX and not self.argmax_is_plane:
            self._max_backward(dtop, dbottom)
        elif self.method == MAX:
            self._route(self.plane_index(flat=True), dtop, dbottom)
        elif self.method == AVE:
            self._ave_backward(dtop, dbottom)
        else:
            if self.rand_idx is None:
                raise CaffeError("stochastic pooling backward needs a TRAIN-phase forward first")
            n, c, h, w = self.shape
            nc = self.xp.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
            self._route(self.rand_idx + nc, dtop, dbottom)


def _pool_param_geometry(name: str, pp, bottom_shape):
    """PoolingLayer::LayerSetUp's checks; returns (kernel, stride, pad)."""
    has_k = pp.HasField("kernel_size")
    has_kh, has_kw = pp.HasField("kernel_h"), pp.HasField("kernel_w")
    if pp.global_pooling:
        if has_k or has_kh or has_kw:
            raise CaffeError(f"layer '{name}': with global_pooling: true filter size cannot be specified")
    else:
        if has_k == (has_kh and has_kw):
            raise CaffeError(f"layer '{name}': filter size is kernel_size OR kernel_h and kernel_w; not both")
        if not has_k and not (has_kh and has_kw):
            raise CaffeError(f"layer '{name}': for non-square filters both kernel_h and kernel_w are required")
    has_p, has_ph, has_pw = pp.HasField("pad"), pp.HasField("pad_h"), pp.HasField("pad_w")
    if not ((not has_p and has_ph and has_pw) or (not has_ph and not has_pw)):
        raise CaffeError(f"layer '{name}': pad is pad OR pad_h and pad_w are required")
    has_s, has_sh, has_sw = pp.HasField("stride"), pp.HasField("stride_h"), pp.HasField("stride_w")
    if not ((not has_s and has_sh and has_sw) or (not has_sh and not has_sw)):
        raise CaffeError(f"layer '{name}': stride is stride OR stride_h and stride_w are required")
    if pp.global_pooling:
        kernel = (bottom_shape[2], bottom_shape[3]) if len(bottom_shape) == 4 else (0, 0)
    elif has_k:
        kernel = (pp.kernel_size, pp.kernel_size)
    else:
        kernel = (pp.kernel_h, pp.kernel_w)
    if pp.global_pooling is False and (kernel[0] <= 0 or kernel[1] <= 0):
        raise CaffeError(f"layer '{name}': filter dimensions must be greater than zero")
    pad = (pp.pad_h, pp.pad_w) if has_ph else (pp.pad, pp.pad)
    stride = (pp.stride_h, pp.stride_w) if has_sh else (pp.stride, pp.stride)
    if stride[0] <= 0 or stride[1] <= 0:
        raise CaffeError(f"layer '{name}': stride must be positive")
    if pp.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise CaffeError(f"layer '{name}': with global_pooling: true; only pad = 0 and stride = 1")
    if pad[0] or pad[1]:
        if pp.pool not in (MAX, AVE):
            raise CaffeError(f"layer '{name}': padding implemented only for average and max pooling")
        if not pp.global_pooling and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
            raise CaffeError(f"layer '{name}': pad must be smaller than the kernel")
    return kernel, stride, pad


@register("Pooling")
class PoolingLayer(Layer):
    """PoolingLayer: MAX (with the optional argmax mask top), AVE, STOCHASTIC; global_pooling."""

    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        pp = self.layer_param.pooling_param
        self.method = pp.pool
        if len(top) > 1 and self.method != MAX:
            raise CaffeError(f"layer '{self.name}' (Pooling) takes at most 1 top blob(s) unless pool is MAX")
        self.kernel, self.stride, self.pad = _pool_param_geometry(self.name, pp, bottom[0].shape)
        self.global_pooling = pp.global_pooling
        self.round_mode = pp.round_mode
        if pp.HasField("ceil_mode"):  # the forks' spelling (field 1000): false = floor rounding
            mode = CEIL if pp.ceil_mode else FLOOR
            if pp.HasField("round_mode") and pp.round_mode != mode:
                raise CaffeError(f"layer '{self.name}' (Pooling): ceil_mode: {str(pp.ceil_mode).lower()} "
                                 f"contradicts round_mode: {'CEIL' if pp.round_mode == CEIL else 'FLOOR'}")
            self.round_mode = mode
        self.kernel_fn = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise CaffeError(f"layer '{self.name}': input must have 4 axes, corresponding to "
                             f"(num, channels, height, width); got {list(shape)}")
        kernel = shape[2:] if self.global_pooling else self.kernel
        if self.kernel_fn is None or self.kernel_fn.shape != shape or self.kernel_fn.g.kernel != tuple(kernel):
            geom = PoolGeometry(kernel, self.stride, self.pad, shape[2:], self.round_mode)
            self.kernel_fn = PoolingKernel(self.xp, self.method, geom, shape)
        oh, ow = self.kernel_fn.g.out_hw
        for t in top:
            t.reshape((shape[0], shape[1], oh, ow))

    def forward(self, bottom, top):
        self.kernel_fn.owner = self  # the layer whose random stream STOCHASTIC draws from
        self.kernel_fn.forward(bottom[0].data, top[0].data, self.phase)
        if len(top) > 1:
            top[1].data[...] = self.kernel_fn.plane_index()

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.kernel_fn.backward(top[0].diff, bottom[0].diff)


@register("SPP")
class SPPLayer(Layer):
    """SPPLayer: pyramid_height levels of pooling, level i with 2^i bins per side (kernel
    ceil(H/bins), pad (kernel*bins - H + 1)/2, stride = kernel), flattened and concatenated."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        sp = self.layer_param.spp_param
        self.height = int(sp.pyramid_height)
        if self.height < 1:
            raise CaffeError(f"layer '{self.name}': pyramid_height must be at least 1")
        self.method = sp.pool
        self.levels: list[PoolingKernel] = []
        self.shape = None

    @staticmethod
    def level_geometry(level: int, h: int, w: int):
        bins = 2 ** level
        kh, kw = -(-h // bins), -(-w // bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        return (kh, kw), (kh, kw), (ph, pw)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise CaffeError(f"layer '{self.name}': input must have 4 axes, corresponding to "
                             f"(num, channels, height, width)")
        n, c, h, w = shape
        if shape != self.shape:
            self.levels = []
            for i in range(self.height):
                kernel, stride, pad = self.level_geometry(i, h, w)
                if (pad[0] or pad[1]) and self.method not in (MAX, AVE):
                    raise CaffeError(f"layer '{self.name}': padding implemented only for average and max pooling")
                if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                    # Caffe's inner PoolingLayer checks pad < kernel and aborts
                    raise CaffeError(f"layer '{self.name}': pyramid level {i} of a {h}x{w} input needs pad "
                                     f"{list(pad)} >= kernel {list(kernel)}")
                self.levels.append(PoolingKernel(self.xp, self.method, PoolGeometry(kernel, stride, pad, (h, w)), shape))
            self.shape = shape
        if self.height == 1:
            # Caffe: a single pooling layer writes the top directly, shape (N, C, oh, ow)
            top[0].reshape((n, c) + self.levels[0].g.out_hw)
        else:
            sizes = [c * int(np.prod(k.g.out_hw)) for k in self.levels]
            self.splits = np.cumsum([0] + sizes)
            top[0].reshape((n, int(self.splits[-1])))

    def forward(self, bottom, top):
        x = bottom[0].data
        n, c = x.shape[:2]
        if self.height == 1:
            self.levels[0].forward(x, top[0].data, self.phase)
            return
        t = top[0].data
        for i, k in enumerate(self.levels):
            out = self.xp.empty((n, c) + k.g.out_hw, np.float32)
            k.forward(x, out, self.phase)
            t[:, self.splits[i]:self.splits[i + 1]] = out.reshape(n, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        db = bottom[0].diff
        n, c = db.shape[:2]
        if self.height == 1:
            self.levels[0].backward(top[0].diff, db)
            return
        tmp = self.xp.empty_like(db)
        for i, k in enumerate(self.levels):
            d = top[0].diff[:, self.splits[i]:self.splits[i + 1]].reshape((n, c) + k.g.out_hw)
            k.backward(self.xp.ascontiguousarray(d), db if i == 0 else tmp)
            if i:
                db += tmp
