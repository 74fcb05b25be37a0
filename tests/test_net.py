"""Net's graph semantics (net.cpp / insert_splits.cpp): filtering, splits, in-place, loss weights,
backward pruning, force_backward, propagate_down, parameter sharing, reshape, errors."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_fc as caffe
from pycaffe_fc.net import filter_net, insert_splits
from pycaffe_fc.proto import caffe_pb2


def netp(text: str) -> caffe_pb2.NetParameter:
    p = caffe_pb2.NetParameter()
    text_format.Parse(text, p)
    return p


INPUT = 'layer { name: "in" type: "Input" top: "data" top: "label" ' \
        'input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }\n'
IP = 'layer {{ name: "{n}" type: "InnerProduct" bottom: "{b}" top: "{t}" {extra} ' \
     'inner_product_param {{ num_output: {o} weight_filler {{ type: "gaussian" std: 0.5 }} ' \
     'bias_filler {{ type: "constant" value: 0.1 }} }} }}\n'


def ip(n, b, t, o=2, extra=""):
    return IP.format(n=n, b=b, t=t, o=o, extra=extra)


def test_filter_by_phase_level_stage():
    p = netp('''
      state { phase: TRAIN level: 2 stage: "a" }
      layer { name: "l0" type: "Input" top: "x" include { phase: TRAIN } }
      layer { name: "l1" type: "Input" top: "y" include { phase: TEST } }
      layer { name: "l2" type: "Input" top: "z" include { min_level: 3 } }
      layer { name: "l3" type: "Input" top: "w" include { max_level: 2 stage: "a" } }
      layer { name: "l4" type: "Input" top: "v" exclude { stage: "a" } }
      layer { name: "l5" type: "Input" top: "u" include { not_stage: "b" } }
      layer { name: "l6" type: "Input" top: "t" include { stage: "a" stage: "b" } }''')
    assert [l.name for l in filter_net(p).layer] == ["l0", "l3", "l5"]


def test_include_and_exclude_together_is_an_error():
    p = netp('layer { name: "bad" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(caffe.CaffeError, match="bad"):
        filter_net(p)


def test_split_insertion_names_and_loss_weight():
    p = netp(INPUT + ip("ip", "data", "ip") +
             'layer { name: "a" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "l1" }\n'
             'layer { name: "b" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "l2" loss_weight: 0.5 }')
    s = insert_splits(p)
    names = [l.name for l in s.layer]
    assert names == ["in", "in_label_1_split", "ip", "ip_ip_0_split", "a", "b"]
    assert list(s.layer[4].bottom) == ["ip_ip_0_split_0", "in_label_1_split_0"]
    assert list(s.layer[5].bottom) == ["ip_ip_0_split_1", "in_label_1_split_1"]


def test_split_gradients_sum():
    """Two consumers of one blob: its gradient is the sum of both (via the Split layer)."""
    p = netp('force_backward: true\n' + INPUT + ip("ip", "data", "ip") +
             'layer { name: "a" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "l1" }\n'
             'layer { name: "b" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "l2" loss_weight: 3 }')
    net = caffe.Net(p, caffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal((4, 3))
    net.blobs["label"].data[...] = rng.standard_normal((4, 2))
    net.forward()
    net.backward()
    ip_out = net.blobs["ip"].data
    expected = 4 * (ip_out - net.blobs["label"].data) / 4  # (1 + 3) * d(euclidean)/dip, N = 4
    np.testing.assert_allclose(net.blobs["ip"].diff, expected, rtol=1e-5, atol=1e-6)


def test_in_place_and_outputs_sorted():
    p = netp(INPUT + ip("ip", "data", "ip") +
             'layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }\n'
             'layer { name: "s" type: "Silence" bottom: "label" }\n' + ip("zz", "ip", "zz") + ip("aa", "ip", "aa"))
    net = caffe.Net(p, caffe.TEST)
    assert net.outputs == ["aa", "zz"]  # std::set order, as Caffe
    assert net.inputs == ["data", "label"]
    assert "relu_ip_0_split_0" in net.blobs  # the last producer of "ip" is the in-place ReLU
    net.blobs["data"].data[...] = np.random.default_rng(1).standard_normal((4, 3))
    net.forward()
    assert (net.blobs["ip"].data >= 0).all()


def test_backward_pruning_and_loss_weight_default():
    p = netp(INPUT + ip("ip", "data", "ip") +
             'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }')
    net = caffe.Net(p, caffe.TRAIN)
    assert net.blob_loss_weights["loss"] == 1.0
    # the input needs no gradient without force_backward; the loss layer and ip do
    assert net.layer_need_backward == [False, True, True, True][: len(net.layers)] or \
        net.layer_need_backward[net._layer_names.index("ip")]
    assert not any(net.bottom_need_backward[net._layer_names.index("ip")])
    p.force_backward = True
    net = caffe.Net(p, caffe.TRAIN)
    assert net.bottom_need_backward[net._layer_names.index("ip")] == [True]


def test_lr_mult_zero_prunes_backward_and_propagate_down():
    p = netp(INPUT + ip("ip1", "data", "h", 3, 'param { lr_mult: 0 } param { lr_mult: 0 }') + ip("ip2", "h", "o") +
             'layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "label" top: "loss" '
             'propagate_down: true propagate_down: false }')
    net = caffe.Net(p, caffe.TRAIN)
    assert not net.layer_need_backward[net._layer_names.index("ip1")]
    assert net.layer_need_backward[net._layer_names.index("ip2")]
    assert net.params_lr[:2] == [0.0, 0.0]
    assert net.bottom_need_backward[net._layer_names.index("loss")] == [True, False]


def test_param_sharing_by_name():
    p = netp('force_backward: true\n' + INPUT +
             ip("a", "data", "ha", 2, 'param { name: "w" lr_mult: 1 } param { name: "b" lr_mult: 2 }') +
             ip("b", "data", "hb", 2, 'param { name: "w" } param { name: "b" }') +
             'layer { name: "sum" type: "Eltwise" bottom: "ha" bottom: "hb" top: "h" }\n'
             'layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "label" top: "loss" }')
    net = caffe.Net(p, caffe.TRAIN)
    assert net.params["a"][0] is net.params["b"][0]
    assert len(net.learnable_params) == 2
    assert net.params_lr == [1.0, 2.0]
    rng = np.random.default_rng(2)
    net.blobs["data"].data[...] = rng.standard_normal((4, 3))
    net.blobs["label"].data[...] = rng.standard_normal((4, 2))
    net.clear_param_diffs()
    net.forward()
    net.backward()
    # the shared weight's gradient is the sum of both layers' contributions
    x = net.blobs["data"].data
    g = net.blobs["h"].diff
    np.testing.assert_allclose(net.params["a"][0].diff, 2 * g.T @ x, rtol=1e-4, atol=1e-6)


def test_mismatched_shared_shape_is_an_error():
    p = netp(INPUT + ip("a", "data", "ha", 2, 'param { name: "w" }') + ip("b", "data", "hb", 3, 'param { name: "w" }'))
    with pytest.raises(caffe.CaffeError, match="'b'.*'w'"):
        caffe.Net(p, caffe.TEST)


def test_unknown_bottom_and_type_errors():
    with pytest.raises(caffe.CaffeError, match="layer 'x'.*unknown bottom blob 'nope'"):
        caffe.Net(netp(INPUT + ip("x", "nope", "y")), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match="layer 'f': Unknown layer type: Frobnicate"):
        caffe.Net(netp(INPUT + 'layer { name: "f" type: "Frobnicate" bottom: "data" top: "y" }'), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match="multiple sources"):
        caffe.Net(netp(INPUT + ip("x", "data", "y") + ip("z", "label", "y")), caffe.TEST)


def test_reshape_propagates_new_input_shape():
    net = caffe.Net(netp(INPUT + ip("ip", "data", "ip", 5)), caffe.TEST)
    net.blobs["data"].reshape(7, 3)
    net.reshape()
    assert net.blobs["ip"].shape == (7, 5)
    out = net.forward(data=np.ones((7, 3), np.float32))
    assert out["ip"].shape == (7, 5)


def test_copy_from_other_net_by_layer_name():
    a = caffe.Net(netp(INPUT + ip("ip", "data", "ip", 5)), caffe.TEST)
    b = caffe.Net(netp(INPUT + ip("ip", "data", "ip", 5) + ip("other", "ip", "o")), caffe.TEST)
    b.copy_from(a)
    np.testing.assert_array_equal(a.params["ip"][0].data, b.params["ip"][0].data)
