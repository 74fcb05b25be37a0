"""Layers that move values without arithmetic on them: Concat, Slice, Flatten, Reshape, Crop,
Tile, and Reduction (sums over trailing axes).

Flatten and Reshape (and a one-input Concat / one-output Slice), as in Caffe, make the top share
the bottom's data and diff, so they cost nothing; their forward and backward are no-ops.
"""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from .base import Layer, register

F32 = np.float32


def _share(top, bottom) -> None:
    """top->ShareData(*bottom); top->ShareDiff(*bottom)."""
    top.share_data(bottom)
    top.share_diff(bottom)


class _ViewLayer(Layer):
    """A layer whose top is a reshaped view of its bottom (data and diff shared, as Caffe's
    Flatten and Reshape do), so forward and backward have nothing to compute."""

    def forward(self, bottom, top) -> None:
        pass

    def backward(self, top, propagate_down, bottom) -> None:
        pass


def _axis_slices(axis: int, start: int, stop: int) -> tuple:
    return (slice(None),) * axis + (slice(start, stop),)


@register("Concat")
class ConcatLayer(Layer):
    """ConcatLayer: joins the bottoms along ``axis`` (or the legacy ``concat_dim``); every other
    dimension must agree. Backward hands each bottom its slice of the top diff."""

    min_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise CaffeError(f"layer '{self.name}': either axis or concat_dim should be specified; not both")

    def _axis(self, bottom) -> int:
        p = self.layer_param.concat_param
        if p.HasField("concat_dim"):
            axis = int(p.concat_dim)
            if axis >= bottom[0].num_axes:
                raise CaffeError(f"layer '{self.name}': concat_dim {axis} out of range for "
                                 f"{bottom[0].num_axes}-d bottom")
            return axis
        return bottom[0].canonical_axis_index(p.axis)

    def reshape(self, bottom, top) -> None:
        self.axis = axis = self._axis(bottom)
        shape = list(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != len(shape):
                raise CaffeError(f"layer '{self.name}': all inputs must have the same number of axes "
                                 f"(bottom 0 {list(bottom[0].shape)}, bottom {i} {list(b.shape)})")
            for j, (d0, d) in enumerate(zip(bottom[0].shape, b.shape)):
                if j != axis and d0 != d:
                    raise CaffeError(f"layer '{self.name}': all inputs must have the same shape except "
                                     f"at concat axis {axis} (bottom 0 {list(bottom[0].shape)}, "
                                     f"bottom {i} {list(b.shape)})")
            shape[axis] += b.shape[axis]
        top[0].reshape(shape)
        if len(bottom) == 1:
            _share(top[0], bottom[0])

    def forward(self, bottom, top) -> None:
        if len(bottom) == 1:
            return
        self.xp.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom) -> None:
        if len(bottom) == 1:
            return
        dy = top[0].diff
        offset = 0
        for b, p in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if p:
                b.diff[...] = dy[_axis_slices(self.axis, offset, offset + n)]
            offset += n


@register("Slice")
class SliceLayer(Layer):
    """SliceLayer: cuts the bottom along ``axis`` (or legacy ``slice_dim``) at ``slice_point``s,
    or into equal parts when none are given. Backward concatenates the top diffs."""

    exact_num_bottom = 1
    min_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise CaffeError(f"layer '{self.name}': either axis or slice_dim should be specified; not both")

    def reshape(self, bottom, top) -> None:
        p = self.layer_param.slice_param
        if p.HasField("slice_dim"):
            axis = int(p.slice_dim)
            if axis >= bottom[0].num_axes:
                raise CaffeError(f"layer '{self.name}': slice_dim {axis} out of range")
        else:
            axis = bottom[0].canonical_axis_index(p.axis)
        self.axis = axis
        total = bottom[0].shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise CaffeError(f"layer '{self.name}': {len(points)} slice_point(s) for {len(top)} tops "
                                 f"(need {len(top) - 1})")
            if len(top) > total:
                raise CaffeError(f"layer '{self.name}': {len(top)} tops exceed axis size {total}")
            sizes, prev = [], 0
            for sp in points:
                if sp <= prev:
                    raise CaffeError(f"layer '{self.name}': slice_point must be increasing, got {points}")
                sizes.append(sp - prev)
                prev = sp
            if prev >= total:
                raise CaffeError(f"layer '{self.name}': slice_point {prev} beyond axis size {total}")
            sizes.append(total - prev)
        else:
            if total % len(top):
                raise CaffeError(f"layer '{self.name}': axis size {total} not divisible by {len(top)} tops")
            sizes = [total // len(top)] * len(top)
        self.sizes = sizes
        for t, n in zip(top, sizes):
            shape = list(bottom[0].shape)
            shape[axis] = n
            t.reshape(shape)
        if len(top) == 1:
            _share(top[0], bottom[0])

    def forward(self, bottom, top) -> None:
        if len(top) == 1:
            return
        x, offset = bottom[0].data, 0
        for t, n in zip(top, self.sizes):
            t.data[...] = x[_axis_slices(self.axis, offset, offset + n)]
            offset += n

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0] or len(top) == 1:
            return
        self.xp.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)


@register("Flatten")
class FlattenLayer(_ViewLayer):
    """FlattenLayer: merges axes [axis, end_axis] into one; shares data and diff (no copies)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        if top[0] is bottom[0]:
            raise CaffeError(f"layer '{self.name}': Flatten layer does not allow in-place computation")

    def reshape(self, bottom, top) -> None:
        p = self.layer_param.flatten_param
        b = bottom[0]
        start, end = b.canonical_axis_index(p.axis), b.canonical_axis_index(p.end_axis)
        shape = list(b.shape[:start]) + [b.count_range(start, end + 1)] + list(b.shape[end + 1:])
        top[0].reshape(shape)
        _share(top[0], b)


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """ReshapeLayer: replaces bottom axes [axis, axis + num_axes) by ``shape``; a 0 copies the
    bottom's dimension, one -1 is inferred. Shares data and diff."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        if top[0] is bottom[0]:
            raise CaffeError(f"layer '{self.name}': Reshape layer does not allow in-place computation")
        dims = list(self.layer_param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise CaffeError(f"layer '{self.name}': new shape contains multiple -1 dims; at most a single "
                             f"(1) value of -1 may be specified")
        if any(d < -1 for d in dims):
            raise CaffeError(f"layer '{self.name}': invalid reshape dimension in {dims}")
        self.inferred_axis = inferred[0] if inferred else -1
        self.dims = dims
        self.constant_count = int(np.prod([d for d in dims if d > 0], dtype=np.int64))

    def reshape(self, bottom, top) -> None:
        p = self.layer_param.reshape_param
        b = bottom[0]
        n = b.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise CaffeError(f"layer '{self.name}': reshape axis {p.axis} out of range for {n}-d bottom")
        if p.num_axes < -1:
            raise CaffeError(f"layer '{self.name}': num_axes must be >= 0, or -1 for all")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise CaffeError(f"layer '{self.name}': axis + num_axes ({end}) exceeds the bottom's {n} axes")
        shape = list(b.shape[:start]) + list(self.dims) + list(b.shape[end:])
        for i in self.copy_axes:
            if start + i >= n:
                raise CaffeError(f"layer '{self.name}': new shape contains a 0, but there was no "
                                 f"corresponding bottom axis to copy")
            shape[start + i] = b.shape[start + i]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * b.count_range(0, start) * b.count_range(end)
            for i in self.copy_axes:
                explicit *= shape[start + i]
            if explicit == 0 or b.count % explicit:
                raise CaffeError(f"layer '{self.name}': bottom count {b.count} not divisible by the "
                                 f"product of the specified dimensions {explicit}")
            shape[start + self.inferred_axis] = b.count // explicit
        count = int(np.prod(shape, dtype=np.int64))
        if count != b.count:
            raise CaffeError(f"layer '{self.name}': output count {count} must match input count {b.count} "
                             f"({list(b.shape)} -> {shape})")
        top[0].reshape(shape)
        _share(top[0], b)


@register("Crop")
class CropLayer(Layer):
    """CropLayer: crops bottom[0] to bottom[1]'s shape on the axes from ``axis`` on, at ``offset``
    (one value for all, one per cropped axis, or 0). The reference bottom gets no gradient."""

    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottom, top) -> None:
        p = self.layer_param.crop_param
        n = bottom[0].num_axes
        start = bottom[0].canonical_axis_index(p.axis)
        if bottom[1].num_axes != n:
            raise CaffeError(f"layer '{self.name}': both bottoms must have the same number of axes "
                             f"({list(bottom[0].shape)} vs {list(bottom[1].shape)})")
        offsets = list(p.offset)
        if len(offsets) > 1 and start + len(offsets) != n:
            raise CaffeError(f"layer '{self.name}': number of offsets ({len(offsets)}) must be one, or "
                             f"the number of axes to crop ({n - start})")
        index, shape = [], []
        for i in range(n):
            size, off = bottom[0].shape[i], 0
            if i >= start:
                size = bottom[1].shape[i]
                if len(offsets) == 1:
                    off = offsets[0]
                elif len(offsets) > 1:
                    off = offsets[i - start]
                if bottom[0].shape[i] - off < size:
                    raise CaffeError(f"layer '{self.name}': invalid crop on axis {i}: offset {off} + size "
                                     f"{size} exceeds {bottom[0].shape[i]}")
            shape.append(size)
            index.append(slice(off, off + size))
        self.index = tuple(index)
        top[0].reshape(shape)

    def forward(self, bottom, top) -> None:
        top[0].data[...] = bottom[0].data[self.index]

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = F32(0)
            dx[self.index] = top[0].diff
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = F32(0)


@register("Tile")
class TileLayer(Layer):
    """TileLayer: repeats the block of axes [axis, end) ``tiles`` times along ``axis``; backward
    sums the copies."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.tile_param
        if not p.HasField("tiles"):
            raise CaffeError(f"layer '{self.name}': tile_param.tiles must be specified")
        if p.tiles <= 0:
            raise CaffeError(f"layer '{self.name}': tile_param.tiles must be positive, got {p.tiles}")
        self.tiles = int(p.tiles)

    def reshape(self, bottom, top) -> None:
        b = bottom[0]
        self.axis = axis = b.canonical_axis_index(self.layer_param.tile_param.axis)
        shape = list(b.shape)
        shape[axis] *= self.tiles
        self.outer, self.inner = b.count_range(0, axis), b.count_range(axis)
        top[0].reshape(shape)

    def forward(self, bottom, top) -> None:
        y = top[0].data.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].data.reshape(self.outer, 1, self.inner)

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            dy.sum(axis=1, out=bottom[0].diff.reshape(self.outer, self.inner))


REDUCTION_SUM, REDUCTION_ASUM, REDUCTION_SUMSQ, REDUCTION_MEAN = 1, 2, 3, 4


@register("Reduction")
class ReductionLayer(Layer):
    """ReductionLayer: SUM, ASUM (sum |x|), SUMSQ or MEAN over all axes from ``axis`` on, times
    ``coeff``; the top keeps the leading axes (a scalar for axis 0)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top) -> None:
        p = self.layer_param.reduction_param
        if p.operation not in (REDUCTION_SUM, REDUCTION_ASUM, REDUCTION_SUMSQ, REDUCTION_MEAN):
            raise CaffeError(f"layer '{self.name}': unknown reduction operation {p.operation}")
        self.op = p.operation

    def reshape(self, bottom, top) -> None:
        b = bottom[0]
        axis = b.canonical_axis_index(self.layer_param.reduction_param.axis) if b.num_axes else 0
        top[0].reshape(b.shape[:axis])
        self.num, self.dim = b.count_range(0, axis), b.count_range(axis)
        coeff = F32(self.layer_param.reduction_param.coeff)
        if self.op == REDUCTION_MEAN:
            coeff = F32(coeff / F32(self.dim))
        self.coeff = coeff

    def forward(self, bottom, top) -> None:
        xp = self.xp
        x = bottom[0].data.reshape(self.num, self.dim)
        out = top[0].data.reshape(self.num)
        if self.op in (REDUCTION_SUM, REDUCTION_MEAN):
            x.sum(axis=1, out=out)
        elif self.op == REDUCTION_ASUM:
            xp.abs(x).sum(axis=1, out=out)
        else:
            xp.square(x).sum(axis=1, out=out)
        if self.coeff != 1:
            out *= self.coeff

    def backward(self, top, propagate_down, bottom) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        g = (top[0].diff.reshape(self.num, 1) * self.coeff)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op in (REDUCTION_SUM, REDUCTION_MEAN):
            dx[...] = g
        elif self.op == REDUCTION_ASUM:
            xp.multiply(xp.sign(bottom[0].data.reshape(self.num, self.dim)), g, out=dx)
        else:
            xp.multiply(bottom[0].data.reshape(self.num, self.dim), g * F32(2), out=dx)
