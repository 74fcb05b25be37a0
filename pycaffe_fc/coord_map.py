"""Coordinate maps between NetSpec tops, as pycaffe's caffe.coord_map (used to align FCN nets).

A spatial layer maps output coordinates to input coordinates affinely, per spatial axis:
``x_in = a * x_out + b``. ``coord_map(fn)`` gives ``(axis, a, b)`` of one layer
(Convolution/Pooling/Im2col: ``a = 1/stride``, ``b = (pad - (k_eff - 1)/2) / stride`` with the dilated
kernel ``k_eff``; Deconvolution: the inverse; Crop: a shift by ``-offset`` from ``axis - 1``;
element-wise layers: identity on every axis). ``coord_map_from_to(top_from, top_to)`` walks both
tops back through the NetSpec graph to a common ancestor and composes the maps (for a Crop only
its first bottom is walked); ``crop(top_from, top_to)`` returns the ``L.Crop(top_from, top_to)``
with the axis and offsets that align ``top_from`` on ``top_to``.

The exceptions are pycaffe's: ``UndefinedMapException``, ``AxisMismatchException``, a
``RuntimeError`` when the tops share no ancestor through spatial layers, and an ``AssertionError``
when the crop is impossible (scale not 1, negative or fractional offset); each is also a
CaffeError, so the CLI reports it in one line.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import CaffeError
from .net_spec import Function, Top
from .net_spec import layers as L

#: layers whose output coordinates are their input's (pycaffe's PASS_THROUGH_LAYERS)
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN",
                       "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                       "Threshold"]

_LEGACY_HW = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}

CoordMap = tuple[Any, Any, Any]  # (axis or None, scale a, offset b)


class UndefinedMapException(CaffeError):
    """The layer has no coordinate map (a fully connected or reshaping layer, say)."""


class AxisMismatchException(CaffeError):
    """Two maps act on different first spatial axes and cannot be composed."""


class _NotConnected(RuntimeError, CaffeError):
    pass


class _CropImpossible(AssertionError, CaffeError):
    pass


def _layer_params(fn: Function, message: str) -> dict:
    # pycaffe reads the layer's keyword arguments (num_output=..., kernel_size=...); a dict given
    # as the layer's own <type>_param is read the same way.
    params = fn.params.get(message)
    return params if isinstance(params, dict) else fn.params


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, dilated kernel extent, pad) of a Convolution/Pooling/Deconvolution Function."""
    message = "pooling_param" if fn.type_name == "Pooling" else "convolution_param"
    params = _layer_params(fn, message)
    if _LEGACY_HW & set(params):
        raise UndefinedMapException(f"{fn.type_name}: cropping does not support legacy _h/_w params")
    if "kernel_size" not in params:
        raise UndefinedMapException(f"{fn.type_name}: no kernel_size to map coordinates through")
    axis = params.get("axis", 1)
    ks = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (axis, np.array(params.get("stride", 1), ndmin=1), (ks - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offsets) of a Crop Function; the axis defaults to 2 (spatial crop of N, C, H, W)."""
    params = _layer_params(fn, "crop_param")
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn: Function) -> CoordMap:
    """(axis, a, b) of one layer: input coordinate = a * output coordinate + b."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # -1: the map starts at the last non-cropped axis
    raise UndefinedMapException(f"no coordinate map through a {fn.type_name} layer")


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """The map of ``next_map`` followed by ``base_map`` (axes must agree, None is any)."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"cannot compose coordinate maps on axes {ax1} and {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(cmap: CoordMap) -> CoordMap:
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _walk_bottoms(top: Top) -> tuple:
    # A Crop maps its first (cropped) bottom only; the second just gives the size.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map from ``top_to``'s coordinates to ``top_from``'s, through their common ancestor."""
    for t in (top_from, top_to):
        if not isinstance(t, Top):
            raise TypeError(f"coord_map_from_to needs NetSpec Tops, got {type(t).__name__}")
    from_maps: dict[Top, CoordMap] = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        top = frontier.pop()
        try:
            for bottom in _walk_bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            pass
    to_maps: dict[Top, CoordMap] = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in _walk_bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    raise _NotConnected("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """``L.Crop(top_from, top_to)`` with the crop_param (axis, offsets) that aligns them."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    if ax is None:
        raise _CropImpossible("no spatial layer between the tops: nothing to crop")
    if not (a == 1).all():
        raise _CropImpossible(f"scale mismatch on crop (a = {a})")
    if not (b <= 0).all():
        raise _CropImpossible(f"cannot crop negative offset (b = {b})")
    if not (np.round(b) == b).all():
        raise _CropImpossible(f"cannot crop noninteger offset (b = {b})")
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=int(ax) + 1,  # +1: the first cropped axis
                                  offset=[int(v) for v in -np.round(b).astype(int)]))
