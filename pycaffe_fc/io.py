"""caffe.io: pycaffe's image and proto helpers (python/caffe/io.py).

``Transformer`` turns H x W x K images (float, RGB, [0, 1], as ``load_image`` gives) into the net's
K x H x W input and back; ``load_image``/``resize_image``/``oversample`` prepare images; the
Datum/BlobProto converters read and write Caffe's records. Images are read and resized with OpenCV
(Caffe's own image library); ``load_image`` still returns RGB in [0, 1], as pycaffe does.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .data.datum import array_to_datum, datum_to_array  # noqa: F401  (caffe.io surface)
from .errors import CaffeError
from .proto import caffe_pb2
from .proto.io import array_to_blobproto as _array_to_blobproto
from .proto.io import blobproto_to_array as _blobproto_to_array

# -- BlobProto / Datum ---------------------------------------------------------------------------


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The BlobProto's data (or diff) as an array of its shape (legacy 4-d fields win)."""
    return _blobproto_to_array(blob, return_diff)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with ``shape`` set from ``arr`` (and its diff)."""
    return _array_to_blobproto(arr, diff)


def arraylist_to_blobprotovector_str(arraylist: Iterable[np.ndarray]) -> bytes:
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(s: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(s)
    return [blobproto_to_array(b) for b in vec.blobs]


# -- images ----------------------------------------------------------------------------------------

_REC709_GREY = np.array([0.2125, 0.7154, 0.0721], np.float32)  # what pycaffe's as_grey loading uses


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """An image as float32 H x W x 3 RGB in [0, 1] (``color=False``: H x W x 1 grey).

    As pycaffe's load_image: integer images are scaled by their type's maximum, an alpha channel is
    dropped, a grey file loaded in colour is repeated over 3 channels, and grey conversion uses the
    Rec. 709 luma weights.
    """
    import cv2

    img = cv2.imread(str(filename), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaffeError(f"{filename}: cannot read image (missing file or unknown format)")
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)
    else:
        img = img.astype(np.float32)
    if img.ndim == 3:
        img = img[:, :, :3][:, :, ::-1]  # OpenCV reads BGR(A)
        if img.shape[2] == 1:
            img = img[:, :, 0]
    if img.ndim == 2:
        img = img[:, :, None]
        return np.ascontiguousarray(np.tile(img, (1, 1, 3)) if color else img)
    if not color:
        return np.ascontiguousarray((img @ _REC709_GREY)[:, :, None])
    return np.ascontiguousarray(img)


_CV_MAX_CHANNELS = 128  # CV_CN_MAX of OpenCV 5 (512 in OpenCV 4)
_INTERP = {0: "INTER_NEAREST", 1: "INTER_LINEAR", 2: "INTER_CUBIC", 3: "INTER_CUBIC"}


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` (height, width), K kept; float32 out.

    ``interp_order`` 0 is nearest, 1 bilinear (default), 2-3 bicubic, all by OpenCV's cv::resize.
    A constant image is returned as that constant, as pycaffe does.
    """
    import cv2

    h, w = int(new_dims[0]), int(new_dims[1])
    im = np.asarray(im)
    if im.ndim != 3:
        raise CaffeError(f"resize_image: expected an H x W x K image, got shape {list(im.shape)}")
    if im.shape[:2] == (h, w):
        return im.astype(np.float32)
    im_min, im_max = (im.min(), im.max()) if im.size else (0, 0)
    if im_max == im_min:
        return np.full((h, w, im.shape[2]), im_min, np.float32)
    interp = getattr(cv2, _INTERP.get(interp_order, "INTER_LINEAR"))
    src = im.astype(np.float32)
    # cv::resize takes at most _CV_MAX_CHANNELS channels at once: wider stacks go in channel slabs.
    slabs = [cv2.resize(np.ascontiguousarray(src[:, :, c:c + _CV_MAX_CHANNELS]), (w, h),
                        interpolation=interp).reshape(h, w, -1)
             for c in range(0, src.shape[2], _CV_MAX_CHANNELS)]
    return slabs[0] if len(slabs) == 1 else np.concatenate(slabs, axis=2)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """10 crops per image (4 corners, centre, and their horizontal mirrors), as pycaffe's oversample.

    ``images``: N images of one shape H x W x K; returns (10N) x h x w x K float32, for each image the
    crops top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored.
    """
    ims = np.asarray(images, dtype=np.float32)
    if ims.ndim != 4:
        raise CaffeError(f"oversample: expected N images of shape H x W x K, got shape {list(ims.shape)}")
    H, W = ims.shape[1:3]
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    if ch > H or cw > W:
        raise CaffeError(f"oversample: crop {ch}x{cw} is larger than the images ({H}x{W})")
    cy, cx = int(H / 2.0 - ch / 2.0), int(W / 2.0 - cw / 2.0)  # truncation as pycaffe's int cast
    corners = [(0, 0), (0, W - cw), (H - ch, 0), (H - ch, W - cw), (cy, cx)]
    crops = np.stack([ims[:, y:y + ch, x:x + cw, :] for y, x in corners], axis=1)  # N x 5 x h x w x K
    crops = np.concatenate([crops, crops[:, :, :, ::-1, :]], axis=1)
    return np.ascontiguousarray(crops.reshape((-1,) + crops.shape[2:]))


# -- Transformer -----------------------------------------------------------------------------------


class Transformer:
    """Preprocess H x W x K images into a net's K x H x W inputs (and deprocess back), per input.

    ``preprocess`` does, in pycaffe's order: cast to float32, resize to the input's H x W, transpose,
    swap channels, multiply by raw_scale, subtract the mean, multiply by input_scale.
    """

    def __init__(self, inputs: dict) -> None:
        self.inputs = {k: tuple(int(d) for d in v) for k, v in inputs.items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise CaffeError(f"Transformer: '{in_}' is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """One image (H x W x K) as the net input ``in_`` expects it (K x H x W)."""
        self._check_input(in_)
        x = np.asarray(data).astype(np.float32, copy=True)
        in_dims = self.inputs[in_][2:]
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        return self._apply(in_, x, batch=False)

    def preprocess_batch(self, in_: str, data: np.ndarray) -> np.ndarray:
        """``preprocess`` of N same-sized images (N x H x W x K) at once."""
        self._check_input(in_)
        x = np.asarray(data).astype(np.float32, copy=True)
        in_dims = self.inputs[in_][2:]
        if x.shape[1:3] != in_dims:
            return np.stack([self.preprocess(in_, im) for im in x]) if len(x) else x
        return self._apply(in_, x, batch=True)

    def _apply(self, in_: str, x: np.ndarray, batch: bool) -> np.ndarray:
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if transpose is not None:
            x = x.transpose(((0,) + tuple(t + 1 for t in transpose)) if batch else tuple(transpose))
        if channel_swap is not None:
            x = x[:, list(channel_swap)] if batch else x[list(channel_swap)]
        # x is our own copy (made in preprocess), so scaling in place is safe.
        if raw_scale is not None:
            x *= np.float32(raw_scale)
        if mean is not None:
            x -= mean.astype(np.float32)
        if input_scale is not None:
            x *= np.float32(input_scale)
        return np.ascontiguousarray(x)

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo ``preprocess`` (not the resize): a net input back to an H x W x K image."""
        self._check_input(in_)
        x = np.array(data, dtype=np.float32).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            x /= np.float32(input_scale)
        if mean is not None:
            x += mean.astype(np.float32)
        if raw_scale is not None:
            x /= np.float32(raw_scale)
        if channel_swap is not None:
            x = x[np.argsort(channel_swap)]
        if transpose is not None:
            x = x.transpose(np.argsort(transpose))
        return x

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """The axis order taking an input image to the net's layout, e.g. (2, 0, 1) for HxWxK -> KxHxW."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CaffeError(f"Transformer '{in_}': transpose order {list(order)} needs "
                             f"{len(self.inputs[in_]) - 1} axes, as the input has")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Reorder channels after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise CaffeError(f"Transformer '{in_}': channel swap {list(order)} needs one entry per input "
                             f"channel ({self.inputs[in_][1]})")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Multiply the raw input by ``scale`` (e.g. 255 for models trained on [0, 255] pixels)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Subtract ``mean``: per channel (K,) or elementwise (K x H x W, or H x W for one channel)."""
        self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise CaffeError(f"Transformer '{in_}': mean has {mean.shape[0]} channels, the input "
                                 f"{self.inputs[in_][1]}")
            mean = mean[:, None, None]
        else:
            ms = mean.shape if mean.ndim != 2 else (1,) + mean.shape
            if len(ms) != 3:
                raise CaffeError(f"Transformer '{in_}': mean shape {list(mean.shape)} is not (K,), (H, W) "
                                 f"or (K, H, W)")
            if tuple(ms) != self.inputs[in_][1:]:
                raise CaffeError(f"Transformer '{in_}': mean shape {list(mean.shape)} does not match the "
                                 f"input {list(self.inputs[in_][1:])}")
            mean = mean.reshape(ms)
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Multiply the mean-subtracted input by ``scale`` (e.g. 0.017 for std normalisation)."""
        self._check_input(in_)
        self.input_scale[in_] = scale
