"""The published deploy nets build with Caffe's blob shapes and parameter counts."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_fc as caffe

from conftest import MODELS, REF, need_shared

# (prototxt, output blob, output shape, number of learnable parameters). The parameter counts are
# those of the BVLC models (e.g. AlexNet's well-known 60,965,224; GoogLeNet deploy 6,998,552).
DEPLOY = [
    ("bvlc_alexnet/deploy.prototxt", "prob", (10, 1000), 60965224),
    ("bvlc_reference_caffenet/deploy.prototxt", "prob", (10, 1000), 60965224),
    ("bvlc_googlenet/deploy.prototxt", "prob", (10, 1000), 6998552),
    ("mnist_lenet/lenet.prototxt", "prob", (64, 10), 431080),
    ("cifar10/cifar10_quick.prototxt", "prob", (1, 10), 145578),
]


def _count(net) -> int:
    return sum(int(np.prod(b.shape)) for bl in net.params.values() for b in bl)


@pytest.mark.parametrize("path,out,shape,nparams", DEPLOY)
def test_deploy_net_shapes(path, out, shape, nparams):
    net = caffe.Net(str(need_shared(MODELS / path)), caffe.TEST)
    assert net.blobs[out].shape == shape
    assert _count(net) == nparams


def test_nin_reference_deploy_shapes():
    net = caffe.Net(str(need_shared(REF / "timing" / "nin_imagenet_b8.prototxt")), caffe.TEST)
    assert net.blobs["conv1"].shape == (8, 96, 54, 54)
    assert net.blobs["pool0"].shape == (8, 96, 27, 27)
    assert net.blobs["pool2"].shape == (8, 256, 13, 13)
    assert net.blobs["pool3"].shape == (8, 384, 6, 6)
    assert net.blobs["pool4"].shape == (8, 1000, 1, 1)


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_nin_imagenet_v1_train_val_builds(phase, tmp_path):
    """The V1-format NiN (layers { type: CONVOLUTION blobs_lr ... }) upgrades and builds once its
    data layers are replaced by an Input of the same shape (no ImageNet LMDB here)."""
    from google.protobuf import text_format
    from pycaffe_fc.proto.io import read_net_param

    param = read_net_param(str(need_shared(MODELS / "nin_imagenet" / "train_val.prototxt")))
    conv1 = [l for l in param.layer if l.name == "conv1"][0]
    assert conv1.type == "Convolution"
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    keep = [l for l in param.layer if l.type != "Data"]
    del param.layer[:]
    inp = param.layer.add()
    text_format.Parse('name: "data" type: "Input" top: "data" top: "label" '
                      'input_param { shape { dim: 2 dim: 3 dim: 224 dim: 224 } shape { dim: 2 } }', inp)
    param.layer.extend(keep)
    net = caffe.Net(param, phase)
    assert net.blobs["pool4"].shape[:2] == (2, 1000)
    assert 7_000_000 < _count(net) < 8_000_000  # NiN-ImageNet has about 7.6M parameters
