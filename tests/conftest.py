"""Shared test fixtures: the path of ../shared and the BVLC Caffe reference loaders."""
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
