"""WindowData (window_data_layer.cpp): R-CNN's fine-tuning input, warped windows of images.

The window file (``window_data_param.source``) repeats, for each image::

    # image_index
    image_path            (prefixed with root_folder)
    channels
    height
    width
    num_windows
    class_label overlap x1 y1 x2 y2     (num_windows lines, 0-based inclusive pixel corners)

A window whose overlap is >= fg_threshold is foreground (its label must be > 0); one whose overlap
is < bg_threshold is background (label and overlap forced to 0); others are dropped. Each batch
holds batch_size - int(batch_size * fg_fraction) background windows then the foreground ones,
each drawn uniformly (with replacement) from its list. A window is cut from its image (read in
colour, BGR), enlarged by ``context_pad`` pixels of the warped output on each side (``square``
crop_mode first makes it square), clipped to the image, warped with bilinear interpolation to
``transform_param.crop_size`` and placed where the unclipped window would be, the rest left 0;
mirrored at random with ``transform_param.mirror``. Pixels become ``(x - mean) * scale`` with the
mean from ``transform_param.mean_file`` (at the crop's offset in the centred mean) or
``mean_value``, and ``scale`` from ``window_data_param`` (as Caffe reads it; the deprecated
window_data_param crop_size/mirror/mean_file are not used, as in Caffe).

The window and mirror draws are counter-based (pycaffe_fc.rng): keyed by the layer's stream and
each sample's global stream position, like the other data layers' crops and mirrors.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from .. import rng as rngmod
from ..data.prefetch import map_decode
from ..data.sharding import get_shard, plan_batch
from ..errors import CaffeError
from .base import register
from .data import BasePrefetchingDataLayer

F32 = np.float32
log = logging.getLogger("pycaffe_fc.layers")


def _cround(x) -> int:
    """C's round(): halves away from zero (Python's round() rounds them to even)."""
    x = float(x)
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def read_window_file(path: str, root_folder: str, fg_threshold: float, bg_threshold: float, what: str):
    """Parse an R-CNN window file: (images [(path, (c, h, w))], fg windows, bg windows), each
    window a tuple (image_index, label, overlap, x1, y1, x2, y2)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaffeError(f"{what}: failed to open window file '{path}' ({e.strerror})") from None
    tokens = [(tok, n) for n, line in enumerate(text.splitlines(), 1) for tok in line.split()]
    if not tokens:
        raise CaffeError(f"{what}: window file '{path}' is empty")
    pos = 0

    def take(kind, name):
        nonlocal pos
        if pos >= len(tokens):
            raise CaffeError(f"{what}: {path}: unexpected end of file reading {name}")
        tok, line = tokens[pos]
        pos += 1
        try:
            return kind(tok), line
        except ValueError:
            raise CaffeError(f"{what}: {path}:{line}: expected {name}, got '{tok}'") from None

    images, fg, bg = [], [], []
    fg_t, bg_t = F32(fg_threshold), F32(bg_threshold)
    while pos < len(tokens):
        tag, line = take(str, "'#'")
        if tag != "#":
            raise CaffeError(f"{what}: {path}:{line}: expected '# image_index', got '{tag}'")
        index, _ = take(int, "image_index")
        image_path, _ = take(str, "image path")
        size = tuple(take(int, k)[0] for k in ("channels", "height", "width"))
        images.append((root_folder + image_path, size))
        count, line = take(int, "num_windows")
        for _ in range(count):
            label, line = take(int, "class_label")
            overlap = F32(take(float, "overlap")[0])
            x1, y1, x2, y2 = (take(int, k)[0] for k in ("x1", "y1", "x2", "y2"))
            if overlap >= fg_t:
                if label <= 0:
                    raise CaffeError(f"{what}: {path}:{line}: foreground window (overlap {overlap}) "
                                     f"needs a class_label > 0, got {label}")
                fg.append((index, label, float(overlap), x1, y1, x2, y2))
            elif overlap < bg_t:
                bg.append((index, 0, 0.0, x1, y1, x2, y2))
    for w in fg + bg:
        # Caffe looks the image up by the number after '#', as a position in the file's list
        if not 0 <= w[0] < len(images):
            raise CaffeError(f"{what}: {path}: image_index {w[0]} is not the position of an image in "
                             f"the file (0..{len(images) - 1})")
    return images, fg, bg


class _WindowLoader:
    """Samples and warps one batch of windows (load_batch); holds no reference to the layer."""

    def __init__(self, images, fg, bg, plan, stream: rngmod.LayerStream, crop: int, context_pad: int,
                 square: bool, mirror: bool, fg_fraction: float, scale, mean, mean_values, cache,
                 own_batch: bool, what: str) -> None:
        self.images, self.fg, self.bg, self.plan, self.stream = images, fg, bg, plan, stream
        self.crop, self.context_pad, self.square, self.mirror = crop, context_pad, square, mirror
        self.fg_fraction, self.scale, self.mean, self.mean_values = fg_fraction, scale, mean, mean_values
        self.cache, self.own_batch, self.what = cache, own_batch, what
        self.channels = images[-1][1][0]

    def __call__(self, start: int):
        positions = (start + self.plan.offsets).astype(np.int64)
        n = len(positions)
        # background first, then foreground, as Caffe lays out a batch: of the global batch when
        # the workers split one (so together they read what one worker reads), else of this one's
        if self.own_batch:
            slot, size = np.arange(n), n
        else:
            slot, size = self.plan.offsets, self.plan.block
        is_fg = slot >= size - int(F32(size) * F32(self.fg_fraction))
        draws = rngmod.random_bits(np, self.stream.key("window"), positions)
        flips = (rngmod.random_bits(np, self.stream.key("mirror"), positions) % np.uint64(2)).astype(bool)
        flips &= self.mirror
        windows = []
        for k in range(n):
            pool = self.fg if is_fg[k] else self.bg
            if not pool:
                kind = "foreground" if is_fg[k] else "background"
                raise CaffeError(f"{self.what}: the window file has no {kind} windows to sample")
            windows.append(pool[int(draws[k] % np.uint64(len(pool)))])
        data = np.zeros((n, self.channels, self.crop, self.crop), np.float32)
        labels = np.asarray([w[1] for w in windows], np.float32)

        def warp(k):
            self._warp(windows[k], bool(flips[k]), data[k])

        map_decode(warp, list(range(n)))
        return data, labels

    def _read(self, index: int):
        import cv2
        path = self.images[index][0]
        if self.cache is not None:
            img = cv2.imdecode(np.frombuffer(self.cache[index], np.uint8), cv2.IMREAD_COLOR)
        else:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise CaffeError(f"{self.what}: could not open or find file {path}")
        return img

    def _warp(self, window, do_mirror: bool, out: np.ndarray) -> None:
        import cv2
        img = self._read(window[0])
        rows, cols = img.shape[:2]
        crop, pad = self.crop, self.context_pad
        x1, y1, x2, y2 = window[3:]
        out_w = out_h = crop
        pad_w = pad_h = 0
        if pad > 0 or self.square:
            # enlarge the window so that, once warped to crop x crop, it has exactly context_pad
            # pixels of context on each side (the arithmetic in float, as Caffe's Dtype)
            context_scale = F32(crop) / F32(crop - 2 * pad)
            half_h = F32((y2 - y1 + 1) / 2.0)
            half_w = F32((x2 - x1 + 1) / 2.0)
            cx, cy = F32(x1) + half_w, F32(y1) + half_h
            if self.square:
                half_w = half_h = max(half_h, half_w)
            x1, x2 = _cround(cx - half_w * context_scale), _cround(cx + half_w * context_scale)
            y1, y2 = _cround(cy - half_h * context_scale), _cround(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = F32(crop) / F32(unclipped_w), F32(crop) / F32(unclipped_h)
            out_w = _cround(F32(x2 - x1 + 1) * scale_x)
            out_h = _cround(F32(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _cround(F32(pad_x1) * scale_x), _cround(F32(pad_x2) * scale_x)
            pad_y1 = _cround(F32(pad_y1) * scale_y)
            pad_h = pad_y1
            pad_w = pad_x2 if do_mirror else pad_x1  # a mirrored window mirrors its padding too
            out_h = min(out_h, crop - pad_h)  # rounding may overshoot the crop
            out_w = min(out_w, crop - pad_w)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows) or out_w <= 0 or out_h <= 0:
            raise CaffeError(f"{self.what}: window ({window[3]}, {window[4]}, {window[5]}, {window[6]}) "
                             f"lies outside image {self.images[window[0]][0]} ({cols}x{rows})")
        patch = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if do_mirror:
            patch = patch[:, ::-1]
        region = out[:, pad_h:pad_h + out_h, pad_w:pad_w + out_w]
        region[...] = patch.transpose(2, 0, 1)
        if self.mean is not None:
            # Caffe centres the mean on the crop using its width for both offsets
            off = (self.mean.shape[2] - crop) // 2
            region -= self.mean[:, off + pad_h:off + pad_h + out_h, off + pad_w:off + pad_w + out_w]
        elif self.mean_values is not None:
            region -= self.mean_values[:, None, None]
        region *= self.scale


@register("WindowData")
class WindowDataLayer(BasePrefetchingDataLayer):
    """WindowDataLayer: tops data (batch_size, channels, crop_size, crop_size) and label
    (batch_size,), sampled from an R-CNN window file; loaded ahead on a thread."""

    exact_num_top = 2
    min_top = max_top = -1

    def data_layer_setup(self):
        p = self.layer_param.window_data_param
        tp = self.layer_param.transform_param
        what = f"layer '{self.name}'"
        crop = int(tp.crop_size)
        if crop <= 0:
            hint = (" (window_data_param.crop_size is deprecated and not read; move it to transform_param)"
                    if p.crop_size else "")
            raise CaffeError(f"{what}: WindowData needs transform_param.crop_size > 0{hint}")
        pad = int(p.context_pad)
        if 2 * pad >= crop:
            raise CaffeError(f"{what}: context_pad {pad} leaves no room in crop_size {crop}")
        if tp.HasField("scale") and tp.scale != 1:
            # e.g. a V1 net whose window_data_param.scale the upgrade moved: Caffe drops it too
            log.warning("%s: WindowData ignores transform_param.scale %g and uses window_data_param.scale "
                        "%g, as Caffe", what, tp.scale, p.scale)
        images, fg, bg = read_window_file(p.source, p.root_folder, p.fg_threshold, p.bg_threshold, what)
        channels = images[-1][1][0]  # Caffe shapes the top with the last image's channels
        if channels != 3:
            raise CaffeError(f"{what}: WindowData reads images in colour; the window file gives "
                             f"{channels} channels")
        plan = plan_batch(p.batch_size, self.name, self.phase)
        mean, mean_values = None, None
        t = self.transformer
        if t.mean is not None:
            m = t.mean
            off = (m.shape[2] - crop) // 2
            if m.shape[0] != channels or off < 0 or off + crop > m.shape[1]:
                raise CaffeError(f"{what}: mean_file of shape {list(m.shape)} cannot be centred on a "
                                 f"{channels}x{crop}x{crop} crop")
            mean = m
        elif len(t.mean_values):
            if len(t.mean_values) not in (1, channels):
                raise CaffeError(f"{what}: specify either 1 mean_value or as many as channels: {channels}")
            mean_values = np.broadcast_to(t.mean_values, (channels,)).astype(np.float32)
        cache = None
        if p.cache_images:
            cache = []
            for path, _ in images:
                try:
                    with open(path, "rb") as f:
                        cache.append(f.read())
                except OSError as e:
                    raise CaffeError(f"{what}: could not open or find file {path} ({e.strerror})") from None
        else:
            # Caffe finds a missing image only when it samples one of its windows; say it now
            missing = [path for path, _ in images if not os.path.isfile(path)]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise CaffeError(f"{what}: could not open or find file {missing[0]}{more}")
        self.images, self.fg_windows, self.bg_windows = images, fg, bg
        self.plan = plan
        shard = get_shard()  # BVLC's multi-GPU meaning: each worker samples a whole batch of its own
        own_batch = shard is not None and not shard.split_batch and plan.block != plan.local_batch
        loader = _WindowLoader(images, fg, bg, plan, self.random_stream, crop, pad, p.crop_mode == "square",
                               bool(tp.mirror), float(p.fg_fraction), F32(p.scale), mean, mean_values,
                               cache, own_batch, what)
        return loader, None, (plan.local_batch, channels, crop, crop)
