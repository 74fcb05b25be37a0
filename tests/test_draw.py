"""caffe.draw and ``fc-caffe draw_net``: nets drawn with pydot + graphviz, as pycaffe's draw_net.py."""
from __future__ import annotations

import shutil
import sys

import cv2
import numpy as np
import pytest

import pycaffe_fc as caffe
from pycaffe_fc import cli, net_spec
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto.io import read_net_param

from conftest import MODELS, need_shared

try:
    import pydot  # noqa: F401
    HAVE_DRAW = shutil.which("dot") is not None
except ImportError:
    HAVE_DRAW = False
needs_graphviz = pytest.mark.skipif(not HAVE_DRAW, reason="pydot or graphviz's dot is not installed")

GOOGLENET = MODELS / "bvlc_googlenet" / "deploy.prototxt"
LENET = MODELS / "mnist_lenet" / "lenet_train_test.prototxt"


@needs_graphviz
def test_googlenet_png(tmp_path):
    net = read_net_param(need_shared(GOOGLENET))
    out = tmp_path / "googlenet.png"
    caffe.draw.draw_net_to_file(net, str(out), rankdir="LR")
    im = cv2.imread(str(out))
    assert im is not None and im.ndim == 3
    h, w = im.shape[:2]
    assert w > 10000 and 500 < h < w  # 140+ layers laid out left to right
    assert im.mean() > 128  # mostly white background, not an empty/black image


@needs_graphviz
def test_draw_net_bytes_labels_and_phase_filter():
    net = read_net_param(need_shared(LENET))
    png = caffe.draw.draw_net(net, "TB", "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[0] > decoded.shape[1]  # top to bottom: taller than wide
    dot_all = caffe.draw.get_pydot_graph(net, "LR").to_string()
    assert "accuracy_Accuracy" in dot_all and 'kernel size: 5' in dot_all and '"Batch 64"' in dot_all
    assert '"Batch 100"' in dot_all  # both data layers
    train = caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TRAIN).to_string()
    assert "accuracy_Accuracy" not in train and '"Batch 100"' not in train and '"Batch 64"' in train
    test = caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TEST).to_string()
    assert "accuracy_Accuracy" in test and '"Batch 64"' not in test
    svg = caffe.draw.draw_net(net, "LR", "svg", phase=caffe.TEST).decode()
    assert "<svg" in svg and "conv1" in svg and "(MAX Pooling)" in svg


@needs_graphviz
def test_cli_draw_net(tmp_path, capsys):
    out = tmp_path / "lenet.png"
    rc = cli.main(["draw_net", str(need_shared(LENET)), str(out), "--rankdir", "TB", "--phase", "TRAIN"])
    assert rc == 0 and cv2.imread(str(out)) is not None
    assert cli.main(["draw_net", str(LENET), str(out), "--phase", "VAL"]) == 1
    assert "--phase must be TRAIN, TEST or ALL" in capsys.readouterr().err
    assert cli.main(["draw_net", str(LENET), str(tmp_path / "noext")]) == 1
    assert "extension" in capsys.readouterr().err


def test_missing_graphviz_or_pydot_says_what_to_install(monkeypatch):
    net = caffe.NetSpec()
    net.x = net_spec.layers.Input(shape=dict(dim=[1]))
    proto = net.to_proto()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CaffeError, match="apt-get install graphviz") as ei:
        caffe.draw.draw_net(proto, "LR", "png")
    assert "\n" not in str(ei.value)
    monkeypatch.setitem(sys.modules, "pydot", None)  # import pydot now fails
    with pytest.raises(CaffeError, match="pip install pydot"):
        caffe.draw.draw_net(proto, "LR", "png")
