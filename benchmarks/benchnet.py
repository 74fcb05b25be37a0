"""The benchmark nets: a deploy prototxt with its Input batch set, as `caffe time` builds it.

Shared by bench_nets.py, bench_gpu_launches.py and gpu_check.py so that the three time, count and
compare the very same net: the published prototxt, ``force_backward`` on (Caffe's realistic full
backward, input gradients included), every Input layer's first dimension set to ``batch``.
"""
from __future__ import annotations


def input_net_param(path: str, batch: int):
    """The NetParameter of ``path`` with force_backward on and each Input's batch set to ``batch``."""
    from pycaffe_fc.proto.io import read_net_param

    param = read_net_param(path)
    param.force_backward = True
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    return param
