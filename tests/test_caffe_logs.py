"""Net construction against BVLC Caffe's own setup logs (../shared/caffe-reference/timing/*.log):
the layers it created (splits included), every top shape, which layers need backward, the net's
outputs and its "Memory required for data" total."""
from __future__ import annotations

import re

import numpy as np
import pytest

import pycaffe_fc as caffe

from conftest import REF

NETS = ["lenet_b64", "cifar10_quick_b100", "alexnet_b8", "nin_imagenet_b8", "googlenet_b8"]
LINE = re.compile(r"^\S+ \S+ \d+ net\.cpp:\d+\] (.*)$")


def parse_log(path):
    layers, backward, outputs, memory = [], {}, [], None
    for raw in path.read_text().splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        msg = m.group(1)
        if msg.startswith("Creating Layer "):
            layers.append((msg[len("Creating Layer "):], []))
        elif msg.startswith("Top shape: "):
            dims = msg[len("Top shape: "):].rsplit(" (", 1)[0].split()
            layers[-1][1].append(tuple(int(d) for d in dims))
        elif msg.endswith(" needs backward computation."):
            backward[msg[: -len(" needs backward computation.")]] = True
        elif msg.endswith(" does not need backward computation."):
            backward[msg[: -len(" does not need backward computation.")]] = False
        elif msg.startswith("This network produces output "):
            outputs.append(msg[len("This network produces output "):])
        elif msg.startswith("Memory required for data: "):
            memory = int(msg.split(": ")[1])
    return layers, backward, outputs, memory


@pytest.mark.parametrize("key", NETS)
def test_net_setup_matches_caffe_log(key):
    path = REF / "timing" / f"{key}.log"
    if not path.exists():
        pytest.skip("reference logs not present")
    layers, backward, outputs, memory = parse_log(path)
    net = caffe.Net(str(REF / "timing" / f"{key}.prototxt"), caffe.TRAIN)
    ours = [(name, [t.shape for t in tops]) for name, tops in zip(net._layer_names, net.top_vecs)]
    assert [n for n, _ in ours] == [n for n, _ in layers]
    for (name, shapes), (_, theirs) in zip(ours, layers):
        assert shapes == theirs, name
    assert {n: bool(b) for n, b in zip(net._layer_names, net.layer_need_backward)} == backward
    assert net.outputs == outputs
    assert sum(int(np.prod(t.shape)) for tops in net.top_vecs for t in tops) * 4 == memory
