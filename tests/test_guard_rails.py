"""Guard rails before anything is allocated, and ``fc-caffe time``'s log as Caffe's.

- more CPU workers than cores: a warning with the numbers, before mpiexec starts;
- blobs that will not fit in memory: a warning with the estimate (bytes, largest layers);
- ``fc-caffe time``: Caffe's log lines (per-layer top shapes and memory, "Performing Forward",
  one line per timed iteration, the per-layer table), checked against a real Caffe log; a pass
  that runs long says which layer it is in.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import GPU_TEST_MODE, REF, ROOT, need_shared


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _messages(text: str) -> list[str]:
    """The messages of glog lines (prefix and source location dropped)."""
    return [m.group(1) for m in re.finditer(r"^[IWEF]\d{4,8} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$", text, re.M)]


def test_time_logs_as_caffe_does():
    model = need_shared(REF / "timing" / "lenet_b64.prototxt")
    caffe_log = (REF / "timing" / "lenet_b64.log").read_text()
    r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "time", "--model", str(model), "--iterations", "3"],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ours, theirs = _messages(r.stderr), _messages(caffe_log)

    def pick(msgs, pattern):
        return [m for m in msgs if re.match(pattern, m)]
    # every layer's top shapes and Caffe's running memory total, exactly
    for pattern in (r"Top shape:", r"Memory required for data:", r"Setting up "):
        assert pick(ours, pattern) == pick(theirs, pattern), pattern
    skeleton = r"(Use CPU\.|Performing|Initial loss|\*\*\* Benchmark|Testing for|Average)"
    assert [re.sub(r"\d[\d.e+-]*", "N", m) for m in pick(ours, skeleton)] == \
           [re.sub(r"\d[\d.e+-]*", "N", m) for m in pick(theirs, skeleton)]
    assert len(pick(ours, r"Iteration: \d+ forward-backward time: \d+ ms\.$")) == 3
    layer_lines = pick(ours, r"\s*\w+\t(forward|backward): [\d.e-]+ ms\.$")
    assert [l.split("\t")[0] for l in layer_lines] == [l.split("\t")[0] for l in pick(theirs, r"\s*\w+\t")]
    assert r.stdout == ""


SLOW_LAYER = '''
import time
import pycaffe_fc as caffe

class Slow(caffe.Layer):
    def setup(self, bottom, top):
        time.sleep(0.4)
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        time.sleep(0.4)
        top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


def test_time_says_where_a_long_pass_is(tmp_path, monkeypatch, capsys):
    from pycaffe_fc import cli
    from pycaffe_fc.commands import time as time_cmd
    (tmp_path / "slow_layer.py").write_text(SLOW_LAYER)
    net = tmp_path / "slow.prototxt"
    net.write_text('name: "slow"\nlayer { name: "in" type: "Input" top: "d" input_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "sleepy" type: "Python" bottom: "d" top: "e" '
                   'python_param { module: "slow_layer" layer: "Slow" } }\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(time_cmd, "HEARTBEAT_S", 0.15)
    assert cli.main(["time", "--model", str(net), "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    beats = [m for m in _messages(err) if m.startswith("... still running")]
    assert any("setting up the net's layers" in b for b in beats), err[-2000:]
    assert any("forward of layer 2/2 'sleepy'" in b for b in beats), err[-2000:]
    assert any("iteration 1, forward of layer 2/2 'sleepy'" in b for b in beats), err[-2000:]


def test_time_warns_before_allocating_a_net_too_big(tmp_path):
    """A net of about 8 TB of blobs: the warning names the estimate before the net is built."""
    net = tmp_path / "huge.prototxt"
    net.write_text('name: "huge"\nlayer { name: "in" type: "Input" top: "d" '
                   'input_param { shape { dim: 1000 dim: 1000 dim: 1000 dim: 1000 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" '
                   'inner_product_param { num_output: 10 } }\n')
    r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "time", "--model", str(net), "--iterations", "1"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert "Traceback" not in r.stderr
    warn = [l for l in r.stderr.splitlines() if l.startswith("W") and "blobs need about" in l]
    assert len(warn) == 1, r.stderr[-2000:]
    assert "net 'huge'" in warn[0] and "TiB" in warn[0] and "largest: ip" in warn[0]
    assert "Performing Forward" not in r.stderr.split(warn[0])[0]


def test_memory_estimate_and_warning(monkeypatch):
    from pycaffe_fc import memory
    from pycaffe_fc.proto import caffe_pb2
    from google.protobuf import text_format
    from pycaffe_fc.parallel.train_job import check_memory, check_resources, estimate_memory
    net = text_format.Parse(
        'name: "n" layer { name: "in" type: "Input" top: "d" input_param { shape { dim: 10 dim: 3 dim: 8 dim: 8 } } }'
        'layer { name: "conv" type: "Convolution" bottom: "d" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }'
        'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }',
        caffe_pb2.NetParameter())
    est = estimate_memory(net)
    acts = 10 * 3 * 8 * 8 + 10 * 4 * 6 * 6      # in-place ReLU adds no blob
    params = 4 * 3 * 3 * 3 + 4
    assert (est.activation_values, est.parameter_values) == (acts, params)
    assert est.total_bytes == 2 * 4 * (acts + params)
    assert estimate_memory(net, workers=4, split_batch=False).total_bytes == 2 * 4 * 4 * (acts + params)
    monkeypatch.setattr(memory, "available_memory", lambda: est.total_bytes + 1)
    assert check_memory(est) is None
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    msg = check_memory(est)
    assert f"({est.total_bytes} bytes)" in msg and "1000 bytes" in msg and "largest: conv" in msg
    solver = caffe_pb2.SolverParameter(net_param=net)
    warnings = []
    monkeypatch.setattr("pycaffe_fc.parallel.train_job.warn", lambda m, src="": warnings.append(m))
    check_resources(solver, workers=32, on_device=False, n_gpus=0)
    assert any("32 workers but no GPU" in w for w in warnings) or os.cpu_count() >= 32
    assert any("blobs need about" in w and "on 32 workers" in w for w in warnings)


def test_check_workers_numbers():
    from pycaffe_fc.parallel.train_job import check_workers
    msg = check_workers(32, n_gpus=0, cores=2)
    assert msg.startswith("32 workers but no GPU and only 2 CPU cores") and "about 16x slower" in msg
    assert check_workers(2, n_gpus=0, cores=2) is None and check_workers(32, n_gpus=4, cores=2) is None


@pytest.mark.skipif(GPU_TEST_MODE or not hasattr(os, "sched_setaffinity"), reason="CPU workers, Linux affinity")
def test_more_cpu_workers_than_cores_warns_before_starting(tmp_path):
    """``--gpus 3`` pinned to one core: the warning with the numbers comes before mpiexec starts
    (the net's data source is missing, so the job then ends with its one error line)."""
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Data" top: "data" top: "label" '
        'data_param { source: "no_lmdb" batch_size: 6 backend: LMDB } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n')
    core = min(os.sched_getaffinity(0))
    r = subprocess.run([sys.executable, "-m", "pycaffe_fc", "train", "--solver", "solver.prototxt", "--gpus", "3"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    assert r.returncode != 0
    head = r.stderr.split("Starting 3 data-parallel workers")[0]
    assert "3 workers but no GPU and only 1 CPU core for this job (os.sched_getaffinity)" in head, r.stderr[-2000:]
