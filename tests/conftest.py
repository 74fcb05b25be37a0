"""Shared test fixtures: the path of ../shared, the BVLC Caffe reference loaders, and the test mode
(CPU, or GPU on the CuPy stand-in with FC_CAFFE_TEST_MODE=gpu)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FC_SHARED", ROOT.parent / "shared"))
REF = SHARED / "caffe-reference"
MODELS = SHARED / "caffe-models"

# FC_CAFFE_TEST_MODE=gpu runs the suite in GPU mode on the strict CuPy stand-in (tests/standin):
# it must be importable as ``cupy`` before pycaffe_fc is imported, here and in every subprocess
# (CLI runs, mpiexec ranks), which inherit PYTHONPATH and FC_CAFFE_TEST_MODE.
GPU_TEST_MODE = os.environ.get("FC_CAFFE_TEST_MODE", "cpu") == "gpu"
# FC_CAFFE_CUPY=real (benchmarks/gpu_check.py on a machine with a GPU): GPU mode on the real CuPy
REAL_CUPY = GPU_TEST_MODE and os.environ.get("FC_CAFFE_CUPY", "") == "real"
STANDIN = ROOT / "tests" / "standin"
if GPU_TEST_MODE and not REAL_CUPY:
    import sys
    sys.path.insert(0, str(STANDIN))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(STANDIN)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    import cupy  # noqa: E402,F401  (the stand-in, before pycaffe_fc)
    if not hasattr(cupy, "__file__") or not str(cupy.__file__).startswith(str(STANDIN)):
        raise RuntimeError(f"FC_CAFFE_TEST_MODE=gpu: 'import cupy' found {cupy!r}, not the stand-in")


@pytest.fixture(autouse=True)
def _test_mode():
    """Every test starts in the mode of the run (GPU on the stand-in, or CPU)."""
    from pycaffe_fc import backend
    if GPU_TEST_MODE:
        backend.set_mode_gpu()
    else:
        backend.set_mode_cpu()
    yield
    backend.set_mode_cpu()


#: test modules the GPU-mode CI run leaves to the CPU run (``-m "not slow_non_numeric"``): end-to-end
#: runs of the tooling around the engine, slow and with nothing device-specific to check.
SLOW_NON_NUMERIC = {
    "test_reproduce.py": "the reproduction pipeline (benchmarks/reproduce.py), minutes of CPU training",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow_non_numeric: slow end-to-end test the GPU-mode CI run skips")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_NON_NUMERIC:
            item.add_marker(pytest.mark.slow_non_numeric)


def cpu_only(reason: str):
    """Mark a test that is inherently CPU-only (skipped in the GPU-mode run, with the reason)."""
    return pytest.mark.skipif(GPU_TEST_MODE, reason=f"CPU-only: {reason}")


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data {path} is not present")
    return path


@pytest.fixture(scope="session")
def layer_cases():
    """(layers.json, layers.npz) of the BVLC single-layer suite."""
    js = json.loads(need_shared(REF / "layers.json").read_text())
    npz = np.load(REF / "layers.npz")
    return js, npz
