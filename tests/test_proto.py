"""pycaffe_fc.proto: the schema (proto/caffe.proto), caffe_pb2 generation, and io.py."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import MODELS, REF, ROOT, need_shared
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2, io


def _field(message_cls, name):
    return message_cls.DESCRIPTOR.fields_by_name[name]


# --- schema ---------------------------------------------------------------

# A sample of upstream field numbers that old files depend on; a wrong number
# here would silently misread every .caffemodel or .solverstate.
@pytest.mark.parametrize("msg, field, number", [
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2),
    ("NetParameter", "input_dim", 4), ("NetParameter", "input_shape", 8),
    ("LayerParameter", "blobs", 7), ("LayerParameter", "param", 6),
    ("LayerParameter", "transform_param", 100), ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "batch_norm_param", 139), ("LayerParameter", "input_param", 143),
    ("LayerParameter", "swish_param", 147), ("LayerParameter", "clip_param", 148),
    ("BlobProto", "shape", 7), ("BlobProto", "double_data", 8),
    ("SolverParameter", "type", 40), ("SolverParameter", "solver_type", 30),
    ("SolverParameter", "layer_wise_reduce", 41), ("SolverParameter", "weights", 42),
    ("SolverState", "history", 3), ("V1LayerParameter", "layer", 1),
    ("V1LayerParameter", "blob_share_mode", 1002), ("V0LayerParameter", "hdf5_output_param", 1001),
    ("ConvolutionParameter", "dilation", 18), ("PoolingParameter", "round_mode", 13),
])
def test_upstream_field_numbers(msg, field, number):
    assert _field(getattr(caffe_pb2, msg), field).number == number


def test_defaults_match_caffe():
    s = caffe_pb2.SolverParameter()
    assert (s.type, s.solver_mode, s.random_seed, s.snapshot_format) == (
        "SGD", caffe_pb2.SolverParameter.GPU, -1, caffe_pb2.SolverParameter.BINARYPROTO)
    assert s.momentum2 == pytest.approx(0.999) and s.delta == pytest.approx(1e-8)
    assert s.regularization_type == "L2" and s.clip_gradients == -1 and s.iter_size == 1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.ParamSpec().decay_mult == 1
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.DataParameter().backend == caffe_pb2.DataParameter.LEVELDB
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL


def test_fc_extensions_are_numbered_out_of_upstreams_way():
    for name in ("warmup_iter", "warmup_start_lr_ratio"):
        assert _field(caffe_pb2.SolverParameter, name).number >= 1000
    for msg in (caffe_pb2.NetParameter, caffe_pb2.LayerParameter, caffe_pb2.BlobProto):
        # Only SolverParameter carries extensions (V1/V0 1001/1002 are upstream's), and
        # NetParameter its checksum (1010-1011).
        assert all(f.number < 1000 or (msg is caffe_pb2.NetParameter and f.number in (1010, 1011))
                   for f in msg.DESCRIPTOR.fields)


def test_committed_caffe_pb2_matches_generator(tmp_path):
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    fresh = gen_proto.generate(tmp_path)
    committed = ROOT / "pycaffe_fc" / "proto" / "caffe_pb2.py"
    assert fresh.read_text() == committed.read_text(), \
        "caffe_pb2.py is stale: run `python tools/gen_proto.py`"


# --- every published file parses -------------------------------------------

def _model_prototxts():
    if not MODELS.exists():
        return []
    return sorted(MODELS.rglob("*.prototxt"))


def _is_solver(path: Path) -> bool:
    return "solver" in path.name


@pytest.mark.parametrize("path", _model_prototxts(), ids=lambda p: str(p.relative_to(MODELS)))
def test_published_prototxt_parses_and_upgrades(path):
    if _is_solver(path):
        solver = io.read_solver_param(path)
        assert not solver.HasField("solver_type")
    else:
        net = io.read_net_param(path)
        assert len(net.layers) == 0 and len(net.input) == 0
        assert len(net.layer) > 0


def test_reference_caffemodels_parse_and_round_trip():
    models = sorted(need_shared(REF).rglob("*.caffemodel"))
    assert models
    for path in models:
        raw = path.read_bytes()
        net = io.read_net_param_binary(path, upgrade_net=False)
        assert net.SerializeToString() == raw  # no unknown or mis-typed fields
        conv = [l for l in net.layer if l.type == "Convolution"][0]
        assert len(conv.blobs) == 2 and len(conv.blobs[0].shape.dim) == 4


# --- io.py -----------------------------------------------------------------

def test_parse_error_names_path_line_and_column(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  bogus_field: 3\n}\n')
    with pytest.raises(CaffeError) as e:
        io.read_net_param(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4:3: ") and "bogus_field" in msg
    assert "\n" not in msg


def test_missing_file_names_path(tmp_path):
    p = tmp_path / "nope.prototxt"
    with pytest.raises(CaffeError, match="nope.prototxt: file not found"):
        io.read_net_param(p)
    with pytest.raises(CaffeError, match="nope.prototxt"):
        io.read_blobproto(p)


def test_garbage_binary_is_an_error(tmp_path):
    p = tmp_path / "x.caffemodel"
    p.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(CaffeError, match="not a binary NetParameter"):
        io.read_net_param_binary(p)


def test_write_text_and_binary_round_trip(tmp_path):
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    layer.inner_product_param.num_output = 3
    layer.blobs.append(io.array_to_blobproto(np.arange(6, dtype=np.float32).reshape(3, 2)))
    io.write_proto_text(net, tmp_path / "n.prototxt")
    io.write_proto_binary(net, tmp_path / "n.caffemodel")
    assert io.read_net_param(tmp_path / "n.prototxt") == net
    assert io.read_net_param_binary(tmp_path / "n.caffemodel") == net
    # Atomic writes leave no temporary files behind.
    assert sorted(os.listdir(tmp_path)) == ["n.caffemodel", "n.prototxt"]
    # Overwriting replaces the file.
    net.name = "m"
    io.write_proto_binary(net, tmp_path / "n.caffemodel")
    assert io.read_net_param_binary(tmp_path / "n.caffemodel").name == "m"


def test_write_into_missing_directory_is_an_error(tmp_path):
    with pytest.raises(CaffeError, match="cannot write"):
        io.write_proto_text(caffe_pb2.NetParameter(), tmp_path / "no" / "x.prototxt")


def test_read_prototxt_accepts_class_or_instance(tmp_path):
    p = tmp_path / "s.prototxt"
    p.write_text('base_lr: 0.1\ntype: "Adam"\n')
    assert io.read_prototxt(p, caffe_pb2.SolverParameter).type == "Adam"
    s = caffe_pb2.SolverParameter()
    assert io.read_prototxt(p, s) is s and s.base_lr == pytest.approx(0.1)


def test_blobproto_array_round_trip():
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    d = -a
    bp = io.array_to_blobproto(a, diff=d)
    assert list(bp.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(io.blobproto_to_array(bp), a)
    np.testing.assert_array_equal(io.blobproto_to_array(bp, return_diff=True), d)


def test_blobproto_legacy_dims_and_double_data():
    # Blob::FromProto: any of num/channels/height/width set wins over shape.
    bp = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    bp.double_data.extend(range(6))
    arr = io.blobproto_to_array(bp)
    assert arr.shape == (1, 2, 1, 3) and arr.dtype == np.float64
    bp = caffe_pb2.BlobProto(data=[1.0, 2.0])
    bp.shape.dim.extend([3])
    with pytest.raises(CaffeError, match="needs 3 values"):
        io.blobproto_to_array(bp)


def test_reference_mean_binaryproto():
    bp = io.read_blobproto(need_shared(REF / "data" / "mean_resize32.binaryproto"))
    mean = io.blobproto_to_array(bp)
    assert mean.shape == (1, 3, 32, 32) and mean.dtype == np.float32
    assert np.isfinite(mean).all() and 0 <= mean.min() and mean.max() <= 255


def test_text_output_is_readable_by_text_format():
    s = caffe_pb2.SolverParameter(net="a.prototxt", base_lr=0.01, warmup_iter=5)
    again = text_format.Parse(text_format.MessageToString(s), caffe_pb2.SolverParameter())
    assert again == s
