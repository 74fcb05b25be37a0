#!/usr/bin/env python3
"""Writes our ImageNet train_val and solver prototxts for NiN and GoogLeNet (models/nin/,
models/googlenet/) from the architectures their papers describe, with FireCaffe's settings for
a global batch of 1024. Run from the repository root: ``python tools/make_models.py``.

Data paths are those that the README's ImageNet recipe produces with ``fc-caffe
convert_imageset`` and ``fc-caffe compute_image_mean``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from google.protobuf import text_format  # noqa: E402

from pycaffe_fc.proto import caffe_pb2  # noqa: E402

TRAIN_LMDB = "data/ilsvrc12/ilsvrc12_train_lmdb"
VAL_LMDB = "data/ilsvrc12/ilsvrc12_val_lmdb"
MEAN_FILE = "data/ilsvrc12/imagenet_mean.binaryproto"
GLOBAL_BATCH = 1024          # FireCaffe: e.g. 32 GPUs x 32 images
IMAGENET_TRAIN_IMAGES = 1281167


class Builder:
    """Appends LayerParameters to a NetParameter in the order Caffe nets list them."""

    def __init__(self, name: str) -> None:
        self.net = caffe_pb2.NetParameter()
        self.net.name = name

    def layer(self, name, type_, bottom=(), top=(), **fields):
        lp = self.net.layer.add()
        lp.name, lp.type = name, type_
        lp.bottom.extend([bottom] if isinstance(bottom, str) else bottom)
        lp.top.extend([top] if isinstance(top, str) else top)
        for key, text in fields.items():
            text_format.Parse(text, getattr(lp, key) if key.endswith("_param") else lp)
        return lp

    def data(self, batch_train: int, batch_test: int, transform_train: str, transform_test: str) -> None:
        for phase, source, batch, tp in (("TRAIN", TRAIN_LMDB, batch_train, transform_train),
                                         ("TEST", VAL_LMDB, batch_test, transform_test)):
            lp = self.layer("data", "Data", (), ("data", "label"),
                            data_param=f'source: "{source}" batch_size: {batch} backend: LMDB',
                            transform_param=tp)
            text_format.Parse(f"include {{ phase: {phase} }}", lp)

    def conv(self, name, bottom, top, num, k, stride=1, pad=0, weight="", bias=""):
        p = f"num_output: {num} kernel_size: {k}"
        p += f" stride: {stride}" if stride != 1 else ""
        p += f" pad: {pad}" if pad else ""
        p += f" weight_filler {{ {weight} }} bias_filler {{ {bias} }}"
        lp = self.layer(name, "Convolution", bottom, top, convolution_param=p)
        text_format.Parse("param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }", lp)
        return lp

    def fc(self, name, bottom, top, num, weight, bias):
        lp = self.layer(name, "InnerProduct", bottom, top,
                        inner_product_param=f"num_output: {num} weight_filler {{ {weight} }} bias_filler {{ {bias} }}")
        text_format.Parse("param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }", lp)
        return lp

    def relu(self, name, blob):
        return self.layer(name, "ReLU", blob, blob)

    def pool(self, name, bottom, top, method, k, stride, pad=0):
        p = f"pool: {method} kernel_size: {k} stride: {stride}" + (f" pad: {pad}" if pad else "")
        return self.layer(name, "Pooling", bottom, top, pooling_param=p)

    def text(self) -> str:
        return text_format.MessageToString(self.net)


def nin() -> str:
    """Network in Network for ImageNet (Lin et al. 2014): four mlpconv blocks (a k×k conv then two
    1×1 'cccp' convs, each with ReLU), max pooling between, dropout, global average pooling."""
    b = Builder("nin_imagenet")
    b.data(GLOBAL_BATCH, 50,
           f'crop_size: 224 mirror: true mean_file: "{MEAN_FILE}"',
           f'crop_size: 224 mirror: false mean_file: "{MEAN_FILE}"')
    g = lambda std: f'type: "gaussian" mean: 0 std: {std}'  # noqa: E731
    zero = 'type: "constant" value: 0'
    relu_ids = iter(range(13))
    blocks = [  # (conv name, top, outputs, kernel, stride, pad, conv std, cccp names, cccp outputs, last std)
        ("conv1", "conv1", 96, 11, 4, 0, 0.01, ("cccp1", "cccp2"), (96, 96), 0.05),
        ("conv2", "conv2", 256, 5, 1, 2, 0.05, ("cccp3", "cccp4"), (256, 256), 0.05),
        ("conv3", "conv3", 384, 3, 1, 1, 0.01, ("cccp5", "cccp6"), (384, 384), 0.05),
        ("conv4-1024", "conv4", 1024, 3, 1, 1, 0.05, ("cccp7-1024", "cccp8-1024"), (1024, 1000), 0.01),
    ]
    bottom = "data"
    pools = ["pool0", "pool2", "pool3", None]
    for (name, top, num, k, s, pad, std, cccps, couts, last_std), pool in zip(blocks, pools):
        b.conv(name, bottom, top, num, k, s, pad, g(std), zero)
        b.relu(f"relu{next(relu_ids)}", top)
        if name == "conv2":
            next(relu_ids)  # the published net has no relu4
        for j, (cname, cout) in enumerate(zip(cccps, couts)):
            ctop = cname.split("-")[0]
            b.conv(cname, top, ctop, cout, 1, 1, 0, g(last_std if j == 1 and name == "conv4-1024" else 0.05), zero)
            b.relu(f"relu{next(relu_ids)}", ctop)
            top = ctop
        if pool:
            b.pool(pool, top, pool, "MAX", 3, 2)
            bottom = pool
        else:
            bottom = top
        if pool == "pool3":
            b.layer("drop", "Dropout", "pool3", "pool3", dropout_param="dropout_ratio: 0.5")
    b.pool("pool4", bottom, "pool4", "AVE", 6, 1)
    acc = b.layer("accuracy", "Accuracy", ("pool4", "label"), "accuracy")
    text_format.Parse("include { phase: TEST }", acc)
    loss = b.layer("loss", "SoftmaxWithLoss", ("pool4", "label"), "loss")
    text_format.Parse("include { phase: TRAIN }", loss)
    return b.text()


INCEPTION = {  # GoogLeNet (Szegedy et al. 2015), Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def googlenet() -> str:
    """GoogLeNet with its two auxiliary classifiers (loss weight 0.3) and top-1/top-5 accuracy."""
    b = Builder("GoogleNet")
    tp = 'crop_size: 224 mirror: {m} mean_value: 104 mean_value: 117 mean_value: 123'
    b.data(GLOBAL_BATCH, 50, tp.format(m="true"), tp.format(m="false"))
    xav, c02, c0 = 'type: "xavier"', 'type: "constant" value: 0.2', 'type: "constant" value: 0'
    lrn = "local_size: 5 alpha: 0.0001 beta: 0.75"
    b.conv("conv1/7x7_s2", "data", "conv1/7x7_s2", 64, 7, 2, 3, xav, c02)
    b.relu("conv1/relu_7x7", "conv1/7x7_s2")
    b.pool("pool1/3x3_s2", "conv1/7x7_s2", "pool1/3x3_s2", "MAX", 3, 2)
    b.layer("pool1/norm1", "LRN", "pool1/3x3_s2", "pool1/norm1", lrn_param=lrn)
    b.conv("conv2/3x3_reduce", "pool1/norm1", "conv2/3x3_reduce", 64, 1, 1, 0, xav, c02)
    b.relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce")
    b.conv("conv2/3x3", "conv2/3x3_reduce", "conv2/3x3", 192, 3, 1, 1, xav, c02)
    b.relu("conv2/relu_3x3", "conv2/3x3")
    b.layer("conv2/norm2", "LRN", "conv2/3x3", "conv2/norm2", lrn_param=lrn)
    b.pool("pool2/3x3_s2", "conv2/norm2", "pool2/3x3_s2", "MAX", 3, 2)
    bottom = "pool2/3x3_s2"

    def inception(name: str, bottom: str) -> str:
        n1, r3, n3, r5, n5, pp = INCEPTION[name]
        p = f"inception_{name}/"
        for conv, src, num, k, pad in (("1x1", bottom, n1, 1, 0), ("3x3_reduce", bottom, r3, 1, 0),
                                       ("3x3", p + "3x3_reduce", n3, 3, 1), ("5x5_reduce", bottom, r5, 1, 0),
                                       ("5x5", p + "5x5_reduce", n5, 5, 2)):
            b.conv(p + conv, src, p + conv, num, k, 1, pad, xav, c02)
            b.relu(p + "relu_" + conv, p + conv)
        b.pool(p + "pool", bottom, p + "pool", "MAX", 3, 1, 1)
        b.conv(p + "pool_proj", p + "pool", p + "pool_proj", pp, 1, 1, 0, xav, c02)
        b.relu(p + "relu_pool_proj", p + "pool_proj")
        b.layer(p + "output", "Concat", [p + x for x in ("1x1", "3x3", "5x5", "pool_proj")], p + "output")
        return p + "output"

    def classifier(k: int, bottom: str, weight: float) -> None:
        p = f"loss{k}/"
        if k < 3:
            b.pool(p + "ave_pool", bottom, p + "ave_pool", "AVE", 5, 3)
            b.conv(p + "conv", p + "ave_pool", p + "conv", 128, 1, 1, 0, xav, c02)
            b.relu(p + "relu_conv", p + "conv")
            b.fc(p + "fc", p + "conv", p + "fc", 1024, xav, c02)
            b.relu(p + "relu_fc", p + "fc")
            b.layer(p + "drop_fc", "Dropout", p + "fc", p + "fc", dropout_param="dropout_ratio: 0.7")
            b.fc(p + "classifier", p + "fc", p + "classifier", 1000, xav, c0)
        else:
            b.fc(p + "classifier", bottom, p + "classifier", 1000, xav, c0)
        loss = b.layer(p + ("loss" if k < 3 else "loss3"), "SoftmaxWithLoss", (p + "classifier", "label"),
                       f"{p}loss{k}")
        loss.loss_weight.append(weight)
        for top_k in (1, 5):
            acc = b.layer(f"{p}top-{top_k}", "Accuracy", (p + "classifier", "label"), f"{p}top-{top_k}")
            text_format.Parse("include { phase: TEST }", acc)
            if top_k == 5:
                text_format.Parse("top_k: 5", acc.accuracy_param)

    for name in ("3a", "3b"):
        bottom = inception(name, bottom)
    b.pool("pool3/3x3_s2", bottom, "pool3/3x3_s2", "MAX", 3, 2)
    bottom = "pool3/3x3_s2"
    for name in ("4a", "4b", "4c", "4d", "4e"):
        bottom = inception(name, bottom)
        if name in ("4a", "4d"):
            classifier(1 if name == "4a" else 2, bottom, 0.3)
    b.pool("pool4/3x3_s2", bottom, "pool4/3x3_s2", "MAX", 3, 2)
    bottom = "pool4/3x3_s2"
    for name in ("5a", "5b"):
        bottom = inception(name, bottom)
    b.pool("pool5/7x7_s1", bottom, "pool5/7x7_s1", "AVE", 7, 1)
    b.layer("pool5/drop_7x7_s1", "Dropout", "pool5/7x7_s1", "pool5/7x7_s1", dropout_param="dropout_ratio: 0.4")
    classifier(3, "pool5/7x7_s1", 1.0)
    return b.text()


def iters(epochs: int) -> int:
    return round(epochs * IMAGENET_TRAIN_IMAGES / GLOBAL_BATCH)


NIN_SOLVER = f"""# NiN on ImageNet-1k with FireCaffe's large-batch settings (Iandola et al. 2016, Sec. 5):
# global batch {GLOBAL_BATCH} (e.g. `fc-caffe train --gpus 32`: 32 workers x 32 images), 47 epochs
# ({iters(47)} iterations of {GLOBAL_BATCH} images), base_lr 0.04 = 0.01 x {GLOBAL_BATCH}/256 (the
# batch-256 rate scaled by the batch ratio), step policy.
net: "models/nin/train_val.prototxt"
test_iter: 1000          # 50,000 validation images / batch 50
test_interval: 1000
base_lr: 0.04
lr_policy: "step"
gamma: 0.1
stepsize: {iters(47) * 2 // 5}   # divide the rate by 10 twice, at 40% and 80% of training
max_iter: {iters(47)}
momentum: 0.9
weight_decay: 0.0005
display: 20
snapshot: 5000
snapshot_prefix: "models/nin/nin_imagenet"
solver_mode: GPU
"""

GOOGLENET_SOLVER = f"""# GoogLeNet on ImageNet-1k with FireCaffe's large-batch settings (Iandola et al. 2016, Sec. 5):
# global batch {GLOBAL_BATCH}, 72 epochs ({iters(72)} iterations), base_lr 0.08, the `poly` policy
# with power 0.5, momentum 0.9, weight_decay 0.0002.
net: "models/googlenet/train_val.prototxt"
test_iter: 1000          # 50,000 validation images / batch 50
test_interval: 4000
test_initialization: false
display: 40
average_loss: 40
base_lr: 0.08
lr_policy: "poly"
power: 0.5
max_iter: {iters(72)}
momentum: 0.9
weight_decay: 0.0002
snapshot: 4000
snapshot_prefix: "models/googlenet/googlenet"
solver_mode: GPU
"""

HEADER = ("# Written by fc-caffe's tools/make_models.py from the {paper}; layer for layer equivalent to\n"
          "# the published Caffe model. Data: see the README's ImageNet recipe.\n")


def main() -> int:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")
    files = {
        "nin/train_val.prototxt": HEADER.format(paper="NiN paper (Lin et al. 2014)") + nin(),
        "nin/solver.prototxt": NIN_SOLVER,
        "googlenet/train_val.prototxt": HEADER.format(paper="GoogLeNet paper (Szegedy et al. 2015)") + googlenet(),
        "googlenet/solver.prototxt": GOOGLENET_SOLVER,
    }
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote models/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
