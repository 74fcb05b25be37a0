"""pycaffe_fc.proto.upgrade against the before/after pairs BVLC produced with its own tools."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from conftest import MODELS, need_shared
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2, io, upgrade, upgrade_tools

LEGACY = MODELS / "legacy"


def _pairs(before: str, after: str):
    d = LEGACY / before
    if not d.exists():
        return []
    names = sorted(p.name for p in d.iterdir())
    return [pytest.param(d / name, LEGACY / after / name, id=name) for name in names]


def _parse(path) -> caffe_pb2.NetParameter:
    return io.read_prototxt(path, caffe_pb2.NetParameter)


def _upgraded(path) -> caffe_pb2.NetParameter:
    net = _parse(path)
    assert upgrade.upgrade_net_as_needed(net, str(path))
    return net


def _text(msg) -> str:
    return text_format.MessageToString(msg)


# --- the published pairs -----------------------------------------------------

@pytest.mark.parametrize("before, after", _pairs("v0_before_1fbb5bb3", "v0_upgraded_at_1fbb5bb3"))
def test_v0_pairs(before, after):
    # The "after" files are V1 as Caffe wrote them at 1fbb5bb3, with the
    # transformation fields still in data_param: compare once both have gone
    # through the rest of the chain.
    assert upgrade.net_needs_v0_to_v1_upgrade(_parse(before))
    v1 = _parse(before)
    assert upgrade.upgrade_v0_net(v1)
    assert not upgrade.net_needs_v0_to_v1_upgrade(v1) and len(v1.layers) > 0
    assert _text(_upgraded(before)) == _text(_upgraded(after))


@pytest.mark.parametrize("before, after", _pairs("v1_before_e6c80dac", "v1_upgraded_at_e6c80dac"))
def test_v1_pairs(before, after):
    net = _parse(before)
    assert upgrade.net_needs_v1_to_v2_upgrade(net)
    # Stage check: V1 -> V2 alone gives exactly the file Caffe wrote.
    assert upgrade.upgrade_v1_net(net)
    assert _text(net) == _text(_parse(after))
    # And the whole chain agrees with the chain run on the "after" file.
    assert _text(_upgraded(before)) == _text(_upgraded(after))


@pytest.mark.parametrize("before", sorted((LEGACY / "solver_type_enum_before_9563537e").glob("*"))
                         if LEGACY.exists() else [], ids=lambda p: p.name)
def test_solver_type_enum_pairs(before):
    # The current files in mnist_lenet/ are the same solvers with `type: "..."`.
    current = MODELS / "mnist_lenet" / before.name.split("__", 1)[1]
    old = io.read_solver_param(before)
    assert not old.HasField("solver_type")
    assert old == io.read_solver_param(current)


@pytest.mark.parametrize("net_dir", ["nin_imagenet", "nin_cifar10"])
def test_nin_v1_nets(net_dir):
    net = io.read_net_param(need_shared(MODELS / net_dir / "train_val.prototxt"))
    assert len(net.layers) == 0
    conv1 = next(l for l in net.layer if l.name == "conv1")
    assert conv1.type == "Convolution"
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    data = [l for l in net.layer if l.type == "Data"]
    assert [r.phase for l in data for r in l.include] == [caffe_pb2.TRAIN, caffe_pb2.TEST]
    assert {l.type for l in net.layer} >= {"Convolution", "ReLU", "Pooling", "Data"}


# --- single upgrade steps -------------------------------------------------------

V0_PADDING_NET = """
name: "padded"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1
                 biasterm: false blobs_lr: 1 weight_decay: 1 } bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }
"""


def test_v0_padding_layer_folds_into_conv():
    net = text_format.Parse(V0_PADDING_NET, caffe_pb2.NetParameter())
    assert upgrade.upgrade_net_as_needed(net, "padded")
    assert [l.type for l in net.layer] == ["Input", "Convolution", "Pooling", "Dropout"]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride), cp.num_output, cp.bias_term) == (
        [2], [3], [1], 4, False)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1)]
    assert net.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert net.layer[3].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_v0_field_on_wrong_layer_type_is_reported_not_fatal():
    net = text_format.Parse(
        'layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "x" }'
        ' input: "x"', caffe_pb2.NetParameter())
    assert not upgrade.upgrade_net_as_needed(net)
    assert net.layer[0].type == "ReLU"


def test_v0_unknown_type_is_an_error():
    net = text_format.Parse('layers { layer { name: "q" type: "quux" } }', caffe_pb2.NetParameter())
    with pytest.raises(CaffeError, match="net.prototxt: unknown V0 layer type 'quux'"):
        upgrade.upgrade_net_as_needed(net, "net.prototxt")


def test_v1_params_names_share_mode_and_all_sub_params():
    net = text_format.Parse("""
      layers { name: "ip" type: INNER_PRODUCT bottom: "a" top: "b"
               param: "w" param: "bias" blob_share_mode: PERMISSIVE
               blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 loss_weight: 0.5
               inner_product_param { num_output: 7 }
               include { phase: TEST stage: "s" } }
      layers { name: "l" type: SOFTMAX_LOSS bottom: "b" bottom: "y" top: "loss"
               loss_param { ignore_label: 3 } exclude { phase: TRAIN } }
      layers { name: "d" type: DECONVOLUTION convolution_param { num_output: 2 } }
    """, caffe_pb2.NetParameter())
    assert upgrade.upgrade_net_as_needed(net)
    ip, loss, deconv = net.layer
    assert ip.type == "InnerProduct" and ip.inner_product_param.num_output == 7
    assert [(p.name, p.share_mode, p.lr_mult, p.decay_mult) for p in ip.param] == [
        ("w", caffe_pb2.ParamSpec.PERMISSIVE, 1, 1), ("bias", caffe_pb2.ParamSpec.STRICT, 2, 0)]
    assert not ip.param[1].HasField("share_mode")
    assert list(ip.loss_weight) == [0.5] and ip.include[0].stage == ["s"]
    assert loss.type == "SoftmaxWithLoss" and loss.loss_param.ignore_label == 3
    assert loss.exclude[0].phase == caffe_pb2.TRAIN
    assert deconv.type == "Deconvolution"


def test_v1_layer_type_names_cover_the_enum():
    for value in caffe_pb2.V1LayerParameter.LayerType.values():
        upgrade.upgrade_v1_layer_type(value)  # no CaffeError
    assert upgrade.upgrade_v1_layer_type(caffe_pb2.V1LayerParameter.IMAGE_DATA) == "ImageData"


def test_layer_and_layers_together_is_an_error():
    net = text_format.Parse('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }',
                            caffe_pb2.NetParameter())
    with pytest.raises(CaffeError, match="both 'layer' and 'layers'"):
        upgrade.upgrade_net_as_needed(net, "x")


def test_data_transformation_upgrade():
    net = text_format.Parse("""
      layers { name: "d" type: IMAGE_DATA top: "data"
               image_data_param { source: "list.txt" scale: 0.5 mean_file: "m" crop_size: 9
                                  mirror: true batch_size: 4 } }
    """, caffe_pb2.NetParameter())
    assert upgrade.net_needs_data_upgrade(net)
    assert upgrade.upgrade_net_as_needed(net)
    layer = net.layer[0]
    tp, ip = layer.transform_param, layer.image_data_param
    assert (tp.scale, tp.mean_file, tp.crop_size, tp.mirror) == (0.5, "m", 9, True)
    assert not any(ip.HasField(f) for f in ("scale", "mean_file", "crop_size", "mirror"))
    assert (ip.source, ip.batch_size) == ("list.txt", 4)


def test_input_shape_upgrade_puts_input_layer_first():
    net = text_format.Parse("""
      input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 5 }
      layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """, caffe_pb2.NetParameter())
    assert upgrade.upgrade_net_as_needed(net)
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in first.input_param.shape] == [[2, 3], [5]]
    assert net.layer[1].name == "c"
    assert not net.input and not net.input_shape and not net.input_dim


def test_bare_input_without_dims_is_dropped():
    # Old .caffemodel files carry `input` names only.
    net = text_format.Parse('input: "data" layer { name: "r" type: "ReLU" }', caffe_pb2.NetParameter())
    upgrade.upgrade_net_as_needed(net)
    assert [l.name for l in net.layer] == ["r"] and not net.input


def test_batch_norm_upgrade_zeroes_three_param_specs():
    net = text_format.Parse("""
      layer { name: "bn" type: "BatchNorm" param { name: "m" lr_mult: 1 } param { lr_mult: 0 }
              param { decay_mult: 1 } }
      layer { name: "bn2" type: "BatchNorm" param { lr_mult: 0 } }
    """, caffe_pb2.NetParameter())
    assert upgrade.net_needs_batch_norm_upgrade(net)
    upgrade.upgrade_net_as_needed(net)
    assert [(p.name, p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [
        ("m", 0, 0), ("", 0, 0), ("", 0, 0)]
    assert net.layer[1].param[0].decay_mult == 1  # not three specs: left alone
    # As in Caffe, three specs still "need" the upgrade afterwards; it is idempotent.
    again = caffe_pb2.NetParameter()
    again.CopyFrom(net)
    upgrade.upgrade_net_as_needed(again)
    assert again == net


# --- solvers -------------------------------------------------------------------

@pytest.mark.parametrize("enum_name, type_name", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
    ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum(enum_name, type_name):
    s = text_format.Parse(f"solver_type: {enum_name}", caffe_pb2.SolverParameter())
    assert upgrade.upgrade_solver_as_needed(s)
    assert s.type == type_name and not s.HasField("solver_type")


def test_solver_type_and_enum_together_is_an_error(tmp_path):
    p = tmp_path / "solver.prototxt"
    p.write_text('solver_type: ADAM\ntype: "Adam"\n')
    with pytest.raises(CaffeError, match=r"solver\.prototxt: .*cannot both be specified"):
        io.read_solver_param(p)


# --- the upgrade_net_proto_text tool ----------------------------------------------

def test_upgrade_net_proto_text(tmp_path):
    src = need_shared(LEGACY / "v1_before_e6c80dac" / "mnist__lenet_train_test.prototxt")
    out = tmp_path / "out.prototxt"
    assert upgrade_tools.upgrade_net_proto_text(src, out)
    written = _parse(out)
    assert not upgrade.net_needs_upgrade(written)
    assert written == _parse(LEGACY / "v1_upgraded_at_e6c80dac" / "mnist__lenet_train_test.prototxt")
    # An up-to-date file is written back unchanged.
    out2 = tmp_path / "out2.prototxt"
    assert upgrade_tools.upgrade_net_proto_text(out, out2)
    assert _parse(out2) == written


def test_upgrade_solver_and_binary_tools(tmp_path):
    src = need_shared(LEGACY / "solver_type_enum_before_9563537e" / "mnist__lenet_solver_adam.prototxt")
    assert upgrade_tools.upgrade_solver_proto_text(src, tmp_path / "s.prototxt")
    assert io.read_prototxt(tmp_path / "s.prototxt", caffe_pb2.SolverParameter).type == "Adam"
    v1 = text_format.Parse('layers { name: "r" type: RELU bottom: "x" top: "x" }',
                           caffe_pb2.NetParameter())
    io.write_proto_binary(v1, tmp_path / "old.caffemodel")
    assert upgrade_tools.upgrade_net_proto_binary(tmp_path / "old.caffemodel", tmp_path / "new.caffemodel")
    new = io.read_net_param_binary(tmp_path / "new.caffemodel", upgrade_net=False)
    assert [(l.name, l.type) for l in new.layer] == [("r", "ReLU")] and not new.layers
