"""The ``fc-caffe`` command line: one-line errors, no tracebacks, `time` and upgrade."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MODELS, REF, need_shared


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pycaffe_fc", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_parse_error_is_one_line_with_line_and_column(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    r = run("time", "--model", str(bad), "--iterations", "1")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert f"{bad}:4:" in lines[0]


def test_missing_file_and_unknown_type(tmp_path):
    r = run("time", "--model", str(tmp_path / "nope.prototxt"))
    assert r.returncode != 0 and "nope.prototxt" in r.stderr and "Traceback" not in r.stderr
    net = tmp_path / "t.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "d" input_param { shape { dim: 1 } } }\n'
                   'layer { name: "weird" type: "Weird" bottom: "d" top: "e" }\n')
    r = run("time", "--model", str(net))
    assert r.returncode != 0 and f"{net}:2:23: layer 'weird': Unknown layer type: Weird" in r.stderr


def test_time_prints_per_layer_table():
    model = need_shared(REF / "timing" / "lenet_b64.prototxt")
    r = run("time", "--model", str(model), "--iterations", "2")
    assert r.returncode == 0, r.stderr
    assert "conv1\tforward:" in r.stderr and "Average Forward-Backward:" in r.stderr  # glog lines, as Caffe


def test_upgrade_net_proto_text(tmp_path):
    src = need_shared(MODELS / "nin_cifar10" / "train_val.prototxt")
    out = tmp_path / "up.prototxt"
    r = run("upgrade_net_proto_text", str(src), str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text and "lr_mult" in text
