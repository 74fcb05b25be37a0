"""caffe.Detector: classify windows of images with a deploy net, as pycaffe's detector.py (R-CNN).

``detect_windows([(image_file, [(ymin, xmin, ymax, xmax), ...]), ...])`` crops each window (with
``context_pad`` pixels of context at the net's input scale, padded with the mean where the context
leaves the image), warps it to the net's input size and returns one prediction per window.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from . import io as caffe_io
from .errors import CaffeError
from .layers.base import TEST
from .net import Net
from .classifier import input_transformer
from .pycaffe_extras import forward_all


class Detector(Net):
    """A Net in TEST phase that scores image windows (R-CNN style)."""

    def __init__(self, model_file, pretrained_file, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None, context_pad: int | None = None) -> None:
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, "Detector", mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable) -> list[dict]:
        """One dict per window: ``window``, ``prediction`` (the first output's row), ``filename``."""
        images_windows = [(f, [np.asarray(w) for w in ws]) for f, ws in images_windows]
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            window_inputs.extend(self.crop(image, w) for w in windows)
        if not window_inputs:
            return []
        in_ = self.inputs[0]
        # Windows differ in size: each is warped to the input size on its own.
        caffe_in = np.stack([self.transformer.preprocess(in_, w) for w in window_inputs])
        predictions = forward_all(self, **{in_: caffe_in})[self.outputs[0]]
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def crop(self, im: np.ndarray, window) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of ``im``, with context padding when configured."""
        window = np.asarray(window)
        y0, x0, y1, x1 = (int(v) for v in window[:4])
        crop = im[y0:y1, x0:x1]
        if not self.context_pad:
            return crop
        box = window[:4].astype(np.float64)
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input, as pycaffe
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = (box[0] + half_h, box[1] + half_w)
        scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(center, 2) + scaled_dims)
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # context outside the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise CaffeError(f"Detector: window {window.tolist()} lies outside the {im_h}x{im_w} image")
        crop_h = int(round(clip_h * scale_h))
        crop_w = int(round(clip_w * scale_w))
        crop_h = min(crop_h, crop_size - pad_y)
        crop_w = min(crop_w, crop_size - pad_x)
        b = box.astype(int)
        context_crop = caffe_io.resize_image(im[b[0]:b[2], b[1]:b[3]], (crop_h, crop_w))
        out = np.ones(self.crop_dims, np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return out

    def configure_crop(self, context_pad: int | None) -> None:
        """Crop dimensions (H x W x K) and the mean, in raw image space, that pads context crops."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, np.float32)
            return
        crop_mean = np.array(mean, np.float32).transpose(inv_tpose)
        if channel_order is not None:
            order = list(channel_order)
            crop_mean = crop_mean[:, :, [order.index(i) for i in range(crop_mean.shape[2])]]
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
