"""``fc-caffe classify INPUT OUTPUT.npy``: pycaffe's python/classify.py, same flags.

INPUT is an image, a folder (every ``*.<--ext>`` in it, in the order the file system lists them,
as glob does) or a .npy of images (N x H x W x K); the predictions of the net's first output, one
row per image, are saved to OUTPUT with np.save. By default the 10 oversampled crops are averaged;
``--center_only`` uses the centre crop.

Deliberate differences from classify.py: fc-caffe bundles no CaffeNet, so ``--model_def`` and
``--pretrained_model`` are required and ``--mean_file`` has no default; a mean whose H x W differ
from the net's input is reduced to its channel means (pycaffe's Transformer would refuse it), and
a .binaryproto mean is read too.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from ..errors import CaffeError
from ._transformflags import (_ints, add_model_arguments, add_preprocessing_arguments, load_mean,
                              preprocessing, set_mode)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_file", help="input image, directory, or npy")
    p.add_argument("output_file", help="output npy filename")
    add_model_arguments(p)
    p.add_argument("--gpu", action="store_true", help="switch for gpu computation")
    p.add_argument("--center_only", action="store_true",
                   help="switch for prediction from center crop alone instead of averaging predictions "
                        "across crops (default)")
    p.add_argument("--images_dim", default="256,256",
                   help="canonical 'height,width' dimensions of input images")
    p.add_argument("--mean_file", default="", help="data set image mean of [Channels x Height x Width] "
                   "dimensions (numpy array, or a .binaryproto); default: none")
    add_preprocessing_arguments(p)
    p.add_argument("--ext", default="jpg",
                   help="image file extension to take as input when a directory is given as the input file")


def _deploy_input_hw(model_def: str):
    # the input H x W, to fit the mean before the Classifier is built
    from ..layers.base import TEST
    from ..net import Net
    net = Net(model_def, TEST)
    if not net.inputs:
        raise CaffeError(f"{model_def}: the net has no input blob (an Input layer)")
    return net.blobs[net.inputs[0]].shape[2:]


def main(args: argparse.Namespace) -> int:
    from .. import io as caffe_io
    from ..classifier import Classifier

    image_dims = _ints(args.images_dim, "--images_dim")
    kwargs = preprocessing(args)
    mean = load_mean(args.mean_file, _deploy_input_hw(args.model_def)) if args.mean_file else None
    set_mode(args.gpu)
    classifier = Classifier(args.model_def, args.pretrained_model, image_dims=image_dims, mean=mean,
                            **kwargs)
    input_file = os.path.expanduser(args.input_file)
    if input_file.endswith("npy"):
        print(f"Loading file: {input_file}")
        inputs = np.load(input_file)
    elif os.path.isdir(input_file):
        print(f"Loading folder: {input_file}")
        inputs = [caffe_io.load_image(f) for f in glob.glob(input_file + "/*." + args.ext)]
    else:
        print(f"Loading file: {input_file}")
        inputs = [caffe_io.load_image(input_file)]
    print(f"Classifying {len(inputs)} inputs.")
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print(f"Done in {time.time() - start:.2f} s.")
    print(f"Saving results into {args.output_file}")
    np.save(args.output_file, predictions)
    return 0
