"""DataTransformer: Caffe's crop, mirror, mean subtraction and scale, vectorised over a batch.

For every output pixel Caffe computes ``(x[src] - mean[src]) * scale`` where ``src`` is the pixel's
position in the *uncropped* source image (so a mean file of the full image size is cropped along
with the image), and a mirrored image takes its columns right to left. Crops are random in TRAIN
and centred in TEST; mirroring is random whenever ``mirror: true`` (Caffe draws it in every phase).

The random offsets and mirror flags are counter-based (pycaffe_fc.rng): keyed by the layer's
stream and the sample's global stream position, so they do not depend on the worker count or on
what was drawn before (an fc-caffe extension; Caffe draws them from the prefetch thread's stream).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..errors import CaffeError
from ..proto import caffe_pb2
from ..proto.io import blobproto_to_array, read_blobproto
from .. import rng as rngmod


class DataTransformer:
    """caffe::DataTransformer for batches of (N,C,H,W) uint8 or float images."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int,
                 rng: np.random.Generator | int | None = None, what: str = "DataTransformer") -> None:
        """``rng``: the 64-bit key of the crop/mirror draws (a data layer passes its stream's), or
        a numpy Generator to draw one from; None draws one from the process stream."""
        self.param = param
        self.phase = phase
        self.what = what
        if rng is None:
            rng = rngmod.get_rng()
        self.rekey(int(rng.integers(0, 2 ** 63)) if isinstance(rng, np.random.Generator) else int(rng))
        #: stream position of the next sample when ``transform`` is not told the positions
        self.next_position = 0
        self.scale = np.float32(param.scale)
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise CaffeError(f"{what}: cannot set both force_color and force_gray")
        self.mean: np.ndarray | None = None
        self._mean_dev = {}
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise CaffeError(f"{what}: cannot specify mean_file and mean_value at the same time")
            bp = read_blobproto(param.mean_file)
            arr = blobproto_to_array(bp, what=f"mean_file {param.mean_file}").astype(np.float32)
            if arr.ndim == 4 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 3:
                raise CaffeError(f"{what}: mean_file '{param.mean_file}' has shape {list(arr.shape)}, "
                                 "expected (1, C, H, W)")
            self.mean = np.ascontiguousarray(arr)
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)

    def rekey(self, key: int) -> None:
        """Key the crop and mirror draws by ``key`` (a data layer's stream, restored on resume)."""
        self.key = int(key)
        self._keys = {part: rngmod.make_key(self.key, part) for part in ("crop_h", "crop_w", "mirror")}

    # -- shapes -----------------------------------------------------------------------------
    def infer_shape(self, chw: tuple[int, int, int]) -> tuple[int, int, int]:
        """DataTransformer::InferBlobShape of one (C,H,W) image, with the checks Caffe makes."""
        c, h, w = (int(s) for s in chw)
        crop = self.crop_size
        if crop and (h < crop or w < crop):
            raise CaffeError(f"{self.what}: image {h}x{w} is smaller than crop_size {crop}")
        self._check_mean(c, h, w)
        return (c, crop, crop) if crop else (c, h, w)

    def _check_mean(self, c: int, h: int, w: int) -> None:
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise CaffeError(f"{self.what}: mean_file '{self.param.mean_file}' has shape "
                             f"{list(self.mean.shape)}, the data {[c, h, w]}")
        nv = self.mean_values.size
        if nv and nv != 1 and nv != c:
            raise CaffeError(f"{self.what}: specify either 1 mean_value or as many as channels ({c}), "
                             f"got {nv}")

    # -- the transform ----------------------------------------------------------------------
    def draw(self, n: int, h: int, w: int, positions=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image crop offsets and mirror flags for a batch of n images of size h x w at the
        given global stream ``positions`` (default: the n positions after the last batch's)."""
        if positions is None:
            positions = self.next_position + np.arange(n, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        self.next_position = int(positions[-1]) + 1 if n else self.next_position
        crop = self.crop_size
        if crop and self.phase == caffe_pb2.TRAIN:
            h_off = rngmod.random_integers(np, self._keys["crop_h"], positions, h - crop + 1)
            w_off = rngmod.random_integers(np, self._keys["crop_w"], positions, w - crop + 1)
        elif crop:
            h_off = np.full(n, (h - crop) // 2)
            w_off = np.full(n, (w - crop) // 2)
        else:
            h_off = w_off = np.zeros(n, dtype=np.int64)
        if self.mirror:
            mirror = rngmod.random_integers(np, self._keys["mirror"], positions, 2).astype(bool)
        else:
            mirror = np.zeros(n, bool)
        return h_off, w_off, mirror

    def transform(self, x, positions=None) -> "np.ndarray":
        """Transform a batch (N,C,H,W) of uint8 or float pixels into float32 (N,C,h,w); the
        random crops and mirrors are those of the samples' global stream ``positions``.

        Works on numpy or CuPy input alike (the module is taken from ``x``)."""
        xp = get_array_module(x)
        n, c, h, w = x.shape
        oc, oh, ow = self.infer_shape((c, h, w))
        h_off, w_off, mirror = self.draw(n, h, w, positions)
        mean = self._mean_on(xp)
        uniform = not mirror.any() and (n == 0 or (np.all(h_off == h_off[0]) and np.all(w_off == w_off[0])))
        if uniform:
            # one window for the whole batch (TEST, or no crop): plain slicing
            h0 = int(h_off[0]) if n else 0
            w0 = int(w_off[0]) if n else 0
            src = x[:, :, h0:h0 + oh, w0:w0 + ow]
            msrc = mean[:, h0:h0 + oh, w0:w0 + ow] if mean is not None else None
        else:
            # per-image windows; a mirrored image reads its window's columns right to left, and
            # the mean is read at the same source position as the pixel
            j = np.arange(ow)
            rows = xp.asarray(h_off[:, None] + np.arange(oh)[None, :])
            cols = xp.asarray(w_off[:, None] + np.where(mirror[:, None], ow - 1 - j, j))
            ni = xp.arange(n)[:, None, None, None]
            ci = xp.arange(c)[None, :, None, None]
            ri = rows[:, None, :, None]
            wi = cols[:, None, None, :]
            src = x[ni, ci, ri, wi]
            msrc = mean[ci, ri, wi] if mean is not None else None
        out = src.astype(np.float32)
        if msrc is not None:
            out -= msrc
        elif self.mean_values.size:
            mv = self.mean_values if self.mean_values.size == c else np.repeat(self.mean_values, c)
            out -= xp.asarray(mv)[None, :, None, None]
        if self.scale != 1:
            out *= self.scale
        return xp.ascontiguousarray(out)

    def transform_hwc(self, images, positions=None) -> "np.ndarray":
        """Transform a batch of (H,W,C) images (OpenCV's layout), as Transform(cv::Mat)."""
        xp = get_array_module(images)
        batch = images if hasattr(images, "ndim") else np.stack(images)
        return self.transform(xp.asarray(batch).transpose(0, 3, 1, 2), positions)

    def _mean_on(self, xp):
        if self.mean is None:
            return None
        if xp is np:
            return self.mean
        key = id(xp)
        if key not in self._mean_dev:
            self._mean_dev[key] = xp.asarray(self.mean)
        return self._mean_dev[key]
