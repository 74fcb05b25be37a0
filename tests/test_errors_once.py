"""One mistake, one line: a data-parallel job prints the first failing rank's ``rank r: ...`` once,
not once per rank and not MPICH's Abort banner, and exits non-zero (real mpiexec ranks)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

MPIEXEC = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
pytestmark = pytest.mark.skipif(not os.path.exists(MPIEXEC), reason="no mpiexec")

NET = """name: "tiny"
layer {{ name: "data" type: "{data_type}" top: "data" top: "label"
  {data_param} }}
{extra}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""
DUMMY = ('dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 } '
         'data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } }')
SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
display: 1
max_iter: 6
snapshot_prefix: "tiny"
random_seed: 1
solver_mode: CPU
"""
# fails on rank 1 only, at its second forward pass: a mistake that one worker alone makes
ONE_RANK_LAYER = '''
import os
import pycaffe_fc as caffe

class FailOnRank1(caffe.Layer):
    def setup(self, bottom, top):
        self.calls = 0
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        self.calls += 1
        if os.environ.get("PMI_RANK") == "1" and self.calls == 2:
            raise ValueError("label file for shard 1 is empty")
        top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff


class KillRank1(FailOnRank1):
    def forward(self, bottom, top):
        self.calls += 1
        if os.environ.get("PMI_RANK") == "1" and self.calls == 2:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, say
        top[0].data[...] = bottom[0].data
'''


def _env(extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT), str(extra_path or ""), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def write_job(d: Path, data_type="Data", data_param='data_param { source: "no_such_lmdb" batch_size: 8 backend: LMDB }',
              extra="") -> Path:
    (d / "net.prototxt").write_text(NET.format(data_type=data_type, data_param=data_param, extra=extra))
    (d / "solver.prototxt").write_text(SOLVER)
    return d


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    """What the user reads besides the log: every line that is not a glog line or the solver
    parameters the log prints."""
    text = r.stdout + r.stderr
    assert "Traceback" not in text and "Abort(" not in text and "BAD TERMINATION" not in text, text[-3000:]
    return [l for l in text.splitlines() if re.search(r"error|rank \d", l) and not re.match(r"[IWEF]\d{4} ", l)]


def train(d: Path, *args, env=None, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pycaffe_fc", "train", *args], cwd=d, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("workers", [2, 4])
def test_missing_data_source_is_one_line(tmp_path, workers):
    d = write_job(tmp_path)
    r = train(d, "--solver", "solver.prototxt", "--gpus", str(workers))
    assert r.returncode != 0
    lines = error_lines(r)
    assert len(lines) == 1, lines
    assert re.fullmatch(r"fc-caffe train: rank \d: error: layer 'data': cannot open LMDB 'no_such_lmdb'.*", lines[0]), lines


@pytest.mark.parametrize("layer,expect", [
    ("FailOnRank1", r"fc-caffe train: rank 1: error: .*label file for shard 1 is empty.*"),
    ("KillRank1", r"fc-caffe train: a worker \(pid \d+ on \S+\) ended: Killed \(signal 9\); mpiexec ended the others"),
], ids=["raises", "killed"])
def test_a_mistake_on_one_rank_only(tmp_path, layer, expect):
    """Rank 1 raises (or is killed) at its second iteration, while rank 0 waits for its gradients:
    one line (hydra's eleven-line banner for a killed rank becomes one too)."""
    d = write_job(tmp_path, data_type="DummyData", data_param=DUMMY, extra=(
        'layer { name: "check" type: "Python" bottom: "data" top: "data" '
        f'python_param {{ module: "one_rank_layer" layer: "{layer}" }} }}'))
    (d / "one_rank_layer.py").write_text(ONE_RANK_LAYER)
    r = train(d, "--solver", "solver.prototxt", "--gpus", "2", env=_env(d))
    assert r.returncode != 0
    lines = error_lines(r) if layer == "FailOnRank1" else \
        [l for l in (r.stdout + r.stderr).splitlines() if "BAD TERMINATION" in l or "worker" in l and "ended" in l]
    assert len(lines) == 1 and re.fullmatch(expect, lines[0]), lines


def test_a_users_own_mpiexec_with_a_mistake_on_one_rank(tmp_path):
    """``mpiexec -n 1 ... : -n 1 ...`` where only rank 1's solver file is missing: the job ends
    (it used to hang in the first collective) with rank 1's line once."""
    d = write_job(tmp_path, data_type="DummyData", data_param=DUMMY)
    train_cmd = [sys.executable, "-m", "pycaffe_fc", "train", "--solver"]
    r = subprocess.run([MPIEXEC, "-n", "1", *train_cmd, "solver.prototxt", ":", "-n", "1", *train_cmd,
                        "missing.prototxt"], cwd=d, env=_env(), capture_output=True, text=True, timeout=90)
    assert r.returncode != 0
    assert error_lines(r) == ["fc-caffe train: rank 1: error: missing.prototxt: file not found"]
