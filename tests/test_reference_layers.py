"""The 80 single-layer cases that BVLC Caffe computed (../shared/caffe-reference/layers.*):
forward outputs, bottom and parameter gradients, and BatchNorm's running statistics."""
from __future__ import annotations

import json

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc.proto import caffe_pb2
from google.protobuf import text_format

from conftest import REF

CASES = sorted(json.loads((REF / "layers.json").read_text())) if (REF / "layers.json").exists() else []
# float32 round-off of the same arithmetic in another order
RTOL, ATOL = 2e-5, 2e-6


def _close(ours, theirs, what):
    theirs = np.asarray(theirs, np.float32)
    ours = np.asarray(ours).reshape(theirs.shape)
    scale = max(1.0, float(np.abs(theirs).max()) if theirs.size else 1.0)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def run_case(case, js, npz):
    spec = js[case]
    param = caffe_pb2.NetParameter()
    text_format.Parse(spec["prototxt"], param)
    phase = caffe.TRAIN if spec["phase"] == "TRAIN" else caffe.TEST
    net = caffe.Net(param, phase)
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            b.data[...] = npz[f"{case}/param/{lname}/{i}"]
    for name in spec["inputs"]:
        net.blobs[name].data[...] = npz[f"{case}/input/{name}"]
    net.forward()
    for name in spec["outputs"]:
        _close(net.blobs[name].data, npz[f"{case}/output/{name}"], f"{case}: output {name}")
    for key in npz.files:
        if key.startswith(f"{case}/param_after_forward/"):
            _, _, lname, i = key.split("/")
            _close(net.params[lname][int(i)].data, npz[key], f"{case}: {lname}[{i}] after forward")
    if not spec["backward"]:
        return
    for name in spec["outputs"]:
        key = f"{case}/top_diff/{name}"
        if key in npz.files and name not in spec["loss_tops"]:
            net.blobs[name].diff[...] = npz[key]
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    net.backward()
    for name in spec["inputs"]:
        key = f"{case}/bottom_diff/{name}"
        if key in npz.files and np.any(npz[key]):
            _close(net.blobs[name].diff, npz[key], f"{case}: bottom diff {name}")
    for key in npz.files:
        if key.startswith(f"{case}/param_diff/"):
            _, _, lname, i = key.split("/")
            _close(net.params[lname][int(i)].diff, npz[key], f"{case}: param diff {lname}[{i}]")


@pytest.mark.parametrize("case", CASES)
def test_layer_matches_bvlc_caffe(case, layer_cases):
    js, npz = layer_cases
    run_case(case, js, npz)
