"""pycaffe's Net conveniences: forward_all, forward_backward_all, set_input_arrays, and the
forward/backward(start, end), top_names/bottom_names/layer_dict surface scripts lean on."""
from __future__ import annotations

import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import pycaffe_extras
from pycaffe_fc.errors import CaffeError

pycaffe_extras.install(caffe.Net)  # the package does this on import once wired

IP_NET = """
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "tanh" type: "TanH" bottom: "ip" top: "out" }
"""


def ip_net(tmp_path):
    p = tmp_path / "ip.prototxt"
    p.write_text(IP_NET)
    net = caffe.Net(str(p), caffe.TEST)
    w, b = net.params["ip"]
    w.data[...] = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    b.data[...] = [0.5, -0.5]
    return net, w.data.copy(), b.data.copy()


def test_forward_all_batches_and_drops_the_padding(tmp_path):
    net, w, b = ip_net(tmp_path)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)  # 2 full batches + 2
    out = net.forward_all(data=x)
    assert set(out) == {"out"} and out["out"].shape == (10, 2)
    np.testing.assert_allclose(out["out"], np.tanh(x @ w.T + b), rtol=1e-5)
    more = net.forward_all(blobs=["ip", "data"], data=x)
    assert set(more) == {"out", "ip", "data"}
    np.testing.assert_allclose(more["data"], x)
    np.testing.assert_allclose(more["ip"], x @ w.T + b, rtol=1e-5)
    # the outputs are copies: the next batch does not overwrite them
    assert not np.shares_memory(out["out"], net.blobs["out"].data)


def test_forward_backward_all(tmp_path):
    net, w, b = ip_net(tmp_path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    g = rng.standard_normal((6, 2)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, out=g)
    y = np.tanh(x @ w.T + b)
    np.testing.assert_allclose(outs["out"], y, rtol=1e-5)
    assert diffs["data"].shape == (6, 3)
    np.testing.assert_allclose(diffs["data"], (g * (1 - y ** 2)) @ w, rtol=1e-4, atol=1e-6)
    outs, diffs = net.forward_backward_all(blobs=["ip"], diffs=["ip"], data=x, out=g)
    assert set(outs) == {"out", "ip"} and set(diffs) == {"data", "ip"}
    np.testing.assert_allclose(diffs["ip"], g * (1 - y ** 2), rtol=1e-4, atol=1e-6)
    with pytest.raises(CaffeError, match="neither inputs"):
        net.forward_backward_all(nonsense=x)


def test_forward_backward_start_end_and_names(tmp_path):
    net, w, b = ip_net(tmp_path)
    assert net._layer_names == ["data", "ip", "tanh"] and list(net.layer_dict) == net._layer_names
    assert net.top_names["ip"] == ["ip"] and net.bottom_names["tanh"] == ["ip"]
    assert net.inputs == ["data"] and net.outputs == ["out"]
    x = np.ones((4, 3), np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward(end="ip")
    assert set(out) == {"ip"}
    np.testing.assert_allclose(out["ip"], x @ w.T + b, rtol=1e-6)
    net.blobs["out"].data[...] = 0
    out = net.forward(start="tanh", blobs=["ip"])
    np.testing.assert_allclose(out["out"], np.tanh(x @ w.T + b), rtol=1e-6)
    assert set(out) == {"out", "ip"}
    net.blobs["out"].diff[...] = 1
    d = net.backward(end="tanh")
    assert set(d) == {"ip"}  # backward(end=layer) returns that layer's bottom diffs
    np.testing.assert_allclose(d["ip"], 1 - np.tanh(x @ w.T + b) ** 2, rtol=1e-5)
    d = net.backward(start="ip", diffs=["ip"])
    np.testing.assert_allclose(d["data"], d["ip"] @ w, rtol=1e-5)


def test_set_input_arrays_feeds_memory_data(tmp_path):
    p = tmp_path / "mem.prototxt"
    p.write_text("""
        layer { name: "mem" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
        layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
    """)
    net = caffe.Net(str(p), caffe.TRAIN)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    labels = np.array([3, 1, 4, 1], np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [3, 1])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [4, 1])
    ip, _, _ = ip_net(tmp_path)
    with pytest.raises(CaffeError, match="needs a MemoryData layer"):
        ip.set_input_arrays(data, labels)


def test_random_seed_and_layer_type_list(tmp_path):
    p = tmp_path / "g.prototxt"
    p.write_text(IP_NET)
    caffe.set_random_seed(11)
    n1 = caffe.Net(str(p), caffe.TEST)
    caffe.set_random_seed(11)
    n2 = caffe.Net(str(p), caffe.TEST)
    np.testing.assert_array_equal(n1.params["ip"][0].data, n2.params["ip"][0].data)
    types = caffe.layer_type_list()
    assert types == sorted(types) and {"Python", "Convolution", "MemoryData", "InnerProduct"} <= set(types)
