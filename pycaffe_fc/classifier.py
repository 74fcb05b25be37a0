"""caffe.Classifier: classify images with a deploy net, as pycaffe's classifier.py.

Each image (H x W x K, as ``caffe.io.load_image`` gives) is resized to ``image_dims``, then either
cut into the 10 oversampled crops (4 corners, centre, mirrors) whose predictions are averaged, or
centre-cropped to the net's input size; the Transformer does the rest of the preprocessing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import io as caffe_io
from .errors import CaffeError
from .layers.base import TEST
from .net import Net
from .pycaffe_extras import forward_all


class Classifier(Net):
    """A Net in TEST phase with image preprocessing; ``predict`` gives class probabilities."""

    def __init__(self, model_file, pretrained_file, image_dims: Sequence[int] | None = None,
                 mean: np.ndarray | None = None, input_scale: float | None = None,
                 raw_scale: float | None = None, channel_swap: Sequence[int] | None = None) -> None:
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, "Classifier", mean, input_scale, raw_scale, channel_swap)
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = np.asarray(image_dims, dtype=int)

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class scores of the net's first output, one row per image (N x C)."""
        if len(inputs) == 0:
            raise CaffeError("Classifier.predict: no images given")
        h, w = (int(d) for d in self.image_dims)
        k = inputs[0].shape[2]
        # Images differ in size, so each is resized on its own (one OpenCV call per image).
        input_ = np.zeros((len(inputs), h, w, k), np.float32)
        for ix, im in enumerate(inputs):
            input_[ix] = caffe_io.resize_image(im, (h, w))
        if oversample:
            input_ = caffe_io.oversample(input_, self.crop_dims)
        else:
            center = np.array([h, w]) / 2.0
            crop = np.concatenate([center - self.crop_dims / 2.0, center + self.crop_dims / 2.0]).astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        in_ = self.inputs[0]
        caffe_in = self.transformer.preprocess_batch(in_, input_)
        out = forward_all(self, **{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions


def input_transformer(net: Net, who: str, mean=None, input_scale=None, raw_scale=None,
                      channel_swap=None) -> "caffe_io.Transformer":
    """The Transformer pycaffe's Classifier and Detector set up for the net's first input:
    HxWxC images to CxHxW, then the optional mean, input scale, raw scale and channel swap."""
    if not net.inputs:
        raise CaffeError(f"{who}: net '{net.name}' has no input blob (an Input layer)")
    in_ = net.inputs[0]
    t = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t
