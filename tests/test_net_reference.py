"""Whole nets against BVLC Caffe (../shared/caffe-reference/<net>.npz): the seeded-weight recipe,
the .caffemodel Caffe wrote, forward values of every blob, parameter and input gradients."""
from __future__ import annotations

import json

import numpy as np
import pytest

import pycaffe_fc as caffe

from conftest import REF, need_shared

NETS = ["lenet", "cifar10_quick"]
pytestmark = pytest.mark.skipif(not REF.exists(), reason="../shared/caffe-reference is not present")


def _rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _seeded_net(name):
    net = caffe.Net(str(need_shared(REF / f"{name}.prototxt")), caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape).astype(np.float32) * np.float32(0.05)
    return net


@pytest.mark.parametrize("name", NETS)
def test_weight_recipe_matches_caffemodel(name):
    """Our regeneration of the recipe equals the weights Caffe saved (read from the .caffemodel)."""
    ours = _seeded_net(name)
    theirs = caffe.Net(str(REF / f"{name}.prototxt"), str(REF / f"{name}_seeded_weights.caffemodel"), caffe.TEST)
    summary = json.loads((REF / "numeric_summary.json").read_text())[name]
    assert [(l, i, list(s)) for l, i, s in summary["param_order"]] == \
        [(l, i, list(b.shape)) for l, bl in ours.params.items() for i, b in enumerate(bl)]
    for lname, blobs in ours.params.items():
        for i, b in enumerate(blobs):
            np.testing.assert_array_equal(b.data, theirs.params[lname][i].data)


@pytest.mark.parametrize("name", NETS)
def test_forward_backward_matches_caffe(name):
    npz = np.load(REF / f"{name}.npz")
    net = caffe.Net(str(REF / f"{name}.prototxt"), str(REF / f"{name}_seeded_weights.caffemodel"), caffe.TEST)
    net.blobs["data"].data[...] = npz["input"]
    net.blobs["label"].data[...] = npz["label"]
    out = net.forward()
    assert abs(float(out["loss"]) - float(npz["loss"])) <= 1e-5 * abs(float(npz["loss"]))
    for key in npz.files:
        if key.startswith("full/data/"):
            blob = key[len("full/data/"):]
            assert blob in net.blobs, f"blob {blob} missing (Caffe's split naming?)"
            assert _rel_l2(net.blobs[blob].data, npz[key]) < 1e-5, blob
    net.clear_param_diffs()
    net.backward()
    for key in npz.files:
        if key.startswith("full/diff/") and np.any(npz[key]):
            blob = key[len("full/diff/"):]
            assert _rel_l2(net.blobs[blob].diff, npz[key]) < 1e-4, f"diff of {blob}"
        if key.startswith("full/param_diff/"):
            _, _, lname, i = key.split("/")
            assert _rel_l2(net.params[lname][int(i)].diff, npz[key]) < 1e-4, f"param diff {lname}[{i}]"


def test_save_and_reload_roundtrip(tmp_path):
    net = _seeded_net("lenet")
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    again = caffe.Net(str(REF / "lenet.prototxt"), str(path), caffe.TEST)
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            np.testing.assert_array_equal(b.data, again.params[lname][i].data)


def test_caffemodel_shape_mismatch_names_layer(tmp_path):
    from pycaffe_fc.proto import caffe_pb2
    from pycaffe_fc.proto.io import read_net_param_binary, write_proto_binary

    param = read_net_param_binary(str(REF / "lenet_seeded_weights.caffemodel"))
    for lp in param.layer:
        if lp.name == "ip2":
            del lp.blobs[0].shape.dim[:]
            lp.blobs[0].shape.dim.extend([5, 1000])
    bad = tmp_path / "bad.caffemodel"
    write_proto_binary(param, str(bad))
    with pytest.raises(caffe.CaffeError, match=r"param 0.*'ip2'.*\[5, 1000\].*\[10, 500\]"):
        caffe.Net(str(REF / "lenet.prototxt"), str(bad), caffe.TEST)
