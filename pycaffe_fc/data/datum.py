"""Datum <-> arrays and images, as Caffe's util/io.cpp and pycaffe's caffe.io.

A Datum holds one image: either raw uint8 pixels in CHW order (``data``), float values
(``float_data``), or the bytes of an encoded image file (``encoded: true``) that OpenCV decodes.
Colour images are BGR, as OpenCV reads them and Caffe stores them.
"""
from __future__ import annotations

import numpy as np

from ..errors import CaffeError
from ..proto import caffe_pb2

try:  # OpenCV decodes, resizes and encodes images, exactly as Caffe's io.cpp does.
    import cv2  # type: ignore
except Exception:  # pragma: no cover - opencv-python-headless is a dependency
    cv2 = None


def _need_cv2() -> None:
    if cv2 is None:  # pragma: no cover
        raise CaffeError("OpenCV is required for images (pip install opencv-python-headless)")


# -- pycaffe's caffe.io surface ------------------------------------------------------------------
def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """caffe.io.array_to_datum: a (C,H,W) array as a Datum; uint8 goes to ``data`` as bytes,
    anything else to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(s) for s in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """caffe.io.datum_to_array: the Datum's pixels as (C,H,W); uint8 for ``data`` (encoded
    images are decoded as Caffe's DecodeDatumNative does), float64 for ``float_data`` (pycaffe)."""
    if datum.encoded:
        return decode_datum(datum)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(
            datum.channels, datum.height, datum.width).copy()
    return np.asarray(datum.float_data, dtype=np.float64).reshape(
        datum.channels, datum.height, datum.width)


# -- decoding ---------------------------------------------------------------------------------
def imdecode_flag(force_color: bool = False, force_gray: bool = False) -> int:
    """The cv::imdecode flag of DecodeDatumToCVMat (colour or grey) or DecodeDatumToCVMatNative."""
    _need_cv2()
    if force_color and force_gray:
        raise CaffeError("cannot force_color and force_gray at the same time")
    if force_color:
        return cv2.IMREAD_COLOR
    if force_gray:
        return cv2.IMREAD_GRAYSCALE
    return cv2.IMREAD_UNCHANGED


def decode_image_bytes(buf: bytes, flag: int, what: str = "datum") -> np.ndarray:
    """cv::imdecode of an encoded image into an (H,W,C) uint8 array (C is 1 for grey)."""
    _need_cv2()
    img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), flag)
    if img is None:
        raise CaffeError(f"{what}: could not decode the encoded image ({len(buf)} bytes)")
    if img.dtype != np.uint8:
        # Caffe: CHECK(cv_img.depth() == CV_8U) << "Image data type must be unsigned byte"
        raise CaffeError(f"{what}: image data type must be unsigned byte, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    return img


def decode_datum(datum: caffe_pb2.Datum, force_color: bool = False, force_gray: bool = False,
                 what: str = "datum") -> np.ndarray:
    """The (C,H,W) uint8 pixels of an encoded Datum, BGR for colour (DecodeDatum*)."""
    img = decode_image_bytes(datum.data, imdecode_flag(force_color, force_gray), what)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def datum_pixels(datum: caffe_pb2.Datum, force_color: bool = False, force_gray: bool = False,
                 what: str = "datum") -> np.ndarray:
    """The Datum as the DataTransformer sees it: (C,H,W) uint8 from ``data`` or a decoded image,
    float32 from ``float_data``. force_color/force_gray apply to encoded data only, as in Caffe."""
    if datum.encoded:
        return decode_datum(datum, force_color, force_gray, what)
    c, h, w = datum.channels, datum.height, datum.width
    n = c * h * w
    if len(datum.data):
        if len(datum.data) != n:
            raise CaffeError(f"{what}: data has {len(datum.data)} bytes, expected {c}x{h}x{w} = {n}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n:
        raise CaffeError(f"{what}: float_data has {len(datum.float_data)} values, expected {c}x{h}x{w} = {n}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


# -- images (ReadImageToCVMat, CVMatToDatum, ReadImageToDatum) -----------------------------------
def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray | None:
    """ReadImageToCVMat: cv::imread in colour (BGR) or grey, resized with cv::resize's default
    bilinear interpolation when both height and width are positive; (H,W,C) uint8, or None when
    OpenCV cannot read the file (Caffe logs and skips it)."""
    _need_cv2()
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    img = cv2.imread(path, flag)
    if img is None:
        return None
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height))
    if img.ndim == 2:
        img = img[:, :, None]
    return img


def image_to_datum(img: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """CVMatToDatum: an (H,W,C) uint8 image as a raw CHW Datum with ``encoded: false`` set
    explicitly (Caffe sets it, so the field is serialised)."""
    if img.dtype != np.uint8:
        raise CaffeError(f"image data type must be unsigned byte, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    datum = caffe_pb2.Datum()
    datum.channels = img.shape[2]
    datum.height = img.shape[0]
    datum.width = img.shape[1]
    datum.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
    if label is not None:
        datum.label = int(label)
    datum.encoded = False
    return datum


def _match_ext(filename: str, encoding: str) -> bool:
    # io.cpp matchExt: the file's extension equals the encoding, "jpeg" counting as "jpg".
    p = filename.rfind(".")
    ext = (filename[p + 1:] if p >= 0 else filename).lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def read_image_to_datum(path: str, label: int, height: int = 0, width: int = 0, is_color: bool = True,
                        encoding: str = "") -> caffe_pb2.Datum | None:
    """ReadImageToDatum: raw pixels, or with ``encoding`` the image bytes: the file itself when it
    needs no conversion (same extension, no resize, colour as asked), else cv::imencode's output."""
    img = read_image(path, height, width, is_color)
    if img is None:
        return None
    if encoding:
        datum = caffe_pb2.Datum()
        if (img.shape[2] == 3) == is_color and not height and not width and _match_ext(path, encoding):
            with open(path, "rb") as f:
                datum.data = f.read()
        else:
            ok, buf = cv2.imencode("." + encoding, img)
            if not ok:
                raise CaffeError(f"{path}: OpenCV cannot encode as '{encoding}'")
            datum.data = buf.tobytes()
        datum.label = int(label)
        datum.encoded = True
        return datum
    return image_to_datum(img, label)


def guess_encoding(filename: str) -> str:
    """convert_imageset's guess of the encoding from a file name (its lower-case extension)."""
    # tools/convert_imageset.cpp: everything after the last '.', the whole name when there is none
    return filename[filename.rfind(".") + 1:].lower()
