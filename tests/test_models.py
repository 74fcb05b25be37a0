"""Our models/ nets are layer for layer equivalent to the published ones in ../shared/caffe-models
(types, blob shapes, parameter shapes) and carry FireCaffe's large-batch solver settings."""
from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import text_format

import pycaffe_fc as caffe
from pycaffe_fc.proto.io import read_net_param, read_solver_param

from conftest import MODELS, ROOT, need_shared

PAIRS = [("nin/train_val.prototxt", "nin_imagenet/train_val.prototxt"),
         ("googlenet/train_val.prototxt", "bvlc_googlenet/train_val.prototxt")]


def _with_input(param, batch=2):
    """Replace the Data layers (no ImageNet LMDB here) by one Input of the same tops."""
    keep = [l for l in param.layer if l.type != "Data"]
    del param.layer[:]
    text_format.Parse('name: "data" type: "Input" top: "data" top: "label" '
                      f'input_param {{ shape {{ dim: {batch} dim: 3 dim: 224 dim: 224 }} shape {{ dim: {batch} }} }}',
                      param.layer.add())
    param.layer.extend(keep)
    return param


def _signature(net):
    layers = [(name, l.type, [tuple(b.shape) for b in l.blobs]) for name, l in zip(net._layer_names, net.layers)]
    blobs = {n: b.shape for n, b in net.blobs.items()}
    return layers, blobs


@pytest.mark.parametrize("ours,published", PAIRS)
@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_model_equivalent_to_published(ours, published, phase):
    a = caffe.Net(_with_input(read_net_param(str(ROOT / "models" / ours))), phase)
    b = caffe.Net(_with_input(read_net_param(str(need_shared(MODELS / published)))), phase)
    la, ba = _signature(a)
    lb, bb = _signature(b)
    assert [(t, s) for _, t, s in la] == [(t, s) for _, t, s in lb]
    # the published NiN's loss layer has no top (Caffe then makes an anonymous one); ours names it
    anonymous = {"(automatic)", "loss"}
    assert {k: v for k, v in ba.items() if k not in anonymous} == {k: v for k, v in bb.items() if k not in anonymous}
    assert a.params_lr == b.params_lr and a.params_weight_decay == b.params_weight_decay


def test_models_are_current_with_generator(tmp_path):
    """models/ is what tools/make_models.py writes (so the generator is the source of truth)."""
    before = {p: p.read_text() for p in (ROOT / "models").glob("*/*.prototxt") if p.parent.name in ("nin", "googlenet")}
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_models.py")], check=True, capture_output=True)
    after = {p: p.read_text() for p in before}
    assert before == after


def test_firecaffe_solver_settings():
    nin = read_solver_param(str(ROOT / "models" / "nin" / "solver.prototxt"))
    assert (nin.base_lr, nin.lr_policy) == (pytest.approx(0.04), "step")
    g = read_solver_param(str(ROOT / "models" / "googlenet" / "solver.prototxt"))
    assert (g.base_lr, g.lr_policy, g.power, g.momentum) == (pytest.approx(0.08), "poly", 0.5, pytest.approx(0.9))
    assert g.weight_decay == pytest.approx(0.0002)
    assert g.max_iter * 1024 == pytest.approx(72 * 1281167, rel=1e-3)
    assert nin.max_iter * 1024 == pytest.approx(47 * 1281167, rel=1e-3)
