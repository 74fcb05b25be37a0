"""The flags and set-up pycaffe's python/classify.py and python/detect.py share: the model, the
Transformer's preprocessing (input/raw scale, channel swap, mean) and the CPU/GPU switch."""
from __future__ import annotations

import argparse
import os

import numpy as np

from ..errors import CaffeError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model_def`` and ``--pretrained_model``; required, as fc-caffe bundles no model."""
    p.add_argument("--model_def", required=True, help="model definition file (deploy prototxt)")
    p.add_argument("--pretrained_model", required=True, help="trained model weights file")


def add_preprocessing_arguments(p: argparse.ArgumentParser) -> None:
    """``--input_scale``, ``--raw_scale`` and ``--channel_swap``, with pycaffe's defaults."""
    p.add_argument("--input_scale", type=float, help="multiply input features by this scale to finish "
                   "preprocessing")
    p.add_argument("--raw_scale", type=float, default=255.0,
                   help="multiply raw input by this scale before preprocessing")
    p.add_argument("--channel_swap", default="2,1,0",
                   help="order to permute input channels; the default converts RGB -> BGR")


def preprocessing(args: argparse.Namespace) -> dict:
    """The Classifier/Detector keywords the preprocessing flags give (the mean aside)."""
    channel_swap = _ints(args.channel_swap, "--channel_swap") if args.channel_swap else None
    return dict(input_scale=args.input_scale, raw_scale=args.raw_scale, channel_swap=channel_swap)


def load_mean(path: str, input_hw=None) -> np.ndarray:
    """A mean from a .npy or a .binaryproto; reduced to channel means when its H x W differ from
    ``input_hw`` (a 256x256 ImageNet mean for a 227x227 net, say)."""
    if not os.path.isfile(path):
        raise CaffeError(f"{path}: no such mean file")
    if path.endswith(".binaryproto"):
        from ..proto.io import blobproto_to_array, read_blobproto
        mean = blobproto_to_array(read_blobproto(path))
        mean = mean.reshape(mean.shape[-3:]) if mean.ndim == 4 else mean
    else:
        try:
            mean = np.load(path)
        except (OSError, ValueError) as e:
            raise CaffeError(f"{path}: not a .npy mean ({e})") from None
    if mean.ndim == 3 and input_hw is not None and tuple(mean.shape[1:]) != tuple(input_hw):
        mean = mean.mean(1).mean(1)
    return np.asarray(mean, np.float32)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise CaffeError(f"{flag} must be comma-separated integers, got '{text}'") from None


def set_mode(gpu: bool) -> None:
    """``--gpu``: caffe.set_mode_gpu() or set_mode_cpu(), printed as the scripts do."""
    from .. import backend
    if gpu:
        backend.set_mode_gpu()
        print("GPU mode")
    else:
        backend.set_mode_cpu()
        print("CPU mode")
