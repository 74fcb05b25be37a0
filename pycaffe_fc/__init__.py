"""fc-caffe: BVLC Caffe's engine and FireCaffe's data-parallel training, in Python.

``import pycaffe_fc as caffe`` gives pycaffe's surface: ``caffe.Net``, ``caffe.TRAIN``/``TEST``,
``caffe.set_mode_cpu()``/``set_mode_gpu()``/``set_device()``, ``caffe.SGDSolver``/``get_solver``,
``caffe.io``, ``caffe.layer_type_list()``, ``caffe.set_random_seed``, ``caffe.coord_map``,
``caffe.Timer``, ``caffe.NCCL``/``has_nccl``, ``caffe.solver_count``/``solver_rank`` and their
setters, ``caffe.set_multiprocess``, ``caffe.init_log``/``log``.
"""
from __future__ import annotations

import importlib as _importlib

from . import _blas  # noqa: F401  (first: it must run before numpy loads the BLAS)
from .backend import set_device, set_mode_cpu, set_mode_gpu  # noqa: F401
from .blob import Blob  # noqa: F401
from .errors import CaffeError  # noqa: F401
from .layers.base import TEST, TRAIN, Layer, layer_type_list  # noqa: F401
from .net import Net  # noqa: F401
from .rng import set_random_seed  # noqa: F401
from . import net_spec as _net_spec
from .pycaffe_extras import install as _install_extras
from .pycaffe_extras import install_solver as _install_solver_extras
from .pycaffe_extras import (NCCL, Timer, has_nccl, init_log, log, set_multiprocess,  # noqa: F401
                             set_solver_count, set_solver_rank, solver_count, solver_rank)
from .solvers.solver import Solver  # noqa: F401  (pycaffe's caffe.Solver base class)

# pycaffe's ``caffe.layers`` is NetSpec's layer factory; our layer implementations stay importable
# as the ``pycaffe_fc.layers`` subpackage (the factory forwards lower-case module names to it).
layers = _net_spec.layers
_install_extras(Net)
_install_solver_extras(Solver)

__version__ = "0.1.0"

# Modules that arrive with later parts of the package are imported lazily, so that the engine
# works on its own and ``caffe.io`` / ``caffe.SGDSolver`` resolve when first used.
_LAZY = {
    "io": ("pycaffe_fc.io", None),
    "draw": ("pycaffe_fc.draw", None),
    "coord_map": ("pycaffe_fc.coord_map", None),
    "NetSpec": ("pycaffe_fc.net_spec", "NetSpec"),
    "params": ("pycaffe_fc.net_spec", "params"),
    "to_proto": ("pycaffe_fc.net_spec", "to_proto"),
    "Classifier": ("pycaffe_fc.classifier", "Classifier"),
    "Detector": ("pycaffe_fc.detector", "Detector"),
    "get_solver": ("pycaffe_fc.solvers", "get_solver"),
    "SGDSolver": ("pycaffe_fc.solvers", "SGDSolver"),
    "NesterovSolver": ("pycaffe_fc.solvers", "NesterovSolver"),
    "AdaGradSolver": ("pycaffe_fc.solvers", "AdaGradSolver"),
    "RMSPropSolver": ("pycaffe_fc.solvers", "RMSPropSolver"),
    "AdaDeltaSolver": ("pycaffe_fc.solvers", "AdaDeltaSolver"),
    "AdamSolver": ("pycaffe_fc.solvers", "AdamSolver"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        m = _importlib.import_module(mod)
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'pycaffe_fc' has no attribute '{name}'")
