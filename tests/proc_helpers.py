"""What the tests that start real processes share: the child environment (this checkout on
PYTHONPATH, one BLAS thread per process since ranks share the machine's cores, unbuffered output),
mpiexec, LeNet's solver, and reading a snapshot's weights for bitwise comparisons."""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np

from conftest import ROOT

MPIEXEC = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")


def proc_env(**extra) -> dict:
    """os.environ for a child ``fc-caffe``/mpiexec; ``PYTHONPATH`` in ``extra`` goes after ROOT."""
    env = dict(os.environ)
    paths = [str(ROOT), extra.pop("PYTHONPATH", ""), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def snapshot_weights(path) -> np.ndarray:
    """Every learnable blob of a .caffemodel, flattened and concatenated in layer order."""
    from pycaffe_fc.proto.io import blobproto_to_array, read_net_param_binary
    net = read_net_param_binary(str(path))
    return np.concatenate([blobproto_to_array(b).ravel() for l in net.layer for b in l.blobs])


def rel(a, b) -> float:
    """|a - b| / |b| (L2)."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def lenet_solver(net: str, max_iter: int, snapshot: int, prefix: str, display: int = 0, extra: str = "") -> str:
    """A solver prototxt with Caffe's examples/mnist/lenet_solver.prototxt settings (SGD with
    momentum, the "inv" policy, random_seed 1701) on the CPU, plus ``extra`` lines."""
    return f"""net: "{net}"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: {display}
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 1701
solver_mode: CPU
{extra}"""
