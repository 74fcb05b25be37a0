"""Python: a layer written by the user in Python, as Caffe's PythonLayer (python_layer.hpp).

``python_param { module: "m" layer: "Cls" param_str: "..." }`` imports ``m`` (from PYTHONPATH, or
the current directory as pycaffe users expect) and instantiates ``m.Cls(layer_param)``. ``Cls``
subclasses ``caffe.Layer`` and implements pycaffe's ``setup``/``reshape``/``forward``/``backward``;
before ``setup`` it is given ``self.param_str`` and ``self.phase``. Learnable blobs added with
``self.blobs.add_blob(*shape)`` are parameters like any other layer's (solver updates, .caffemodel).

The Net holds the user's own object (so ``net.layer_dict['data'].my_method()`` works); its class is a
thin subclass of the user's class that (a) lets any exception raised by the user's code propagate
with its own type, as pycaffe does (``except MyError`` keeps working), adding a note that names the
layer, the verb and the user's line (``e.caffe_context``, one line, what the CLI prints), and (b)
on the GPU, runs the user's code on the host side, where ``blob.data``/``diff`` are numpy (the Blob's
SyncedMemory copies down and up as needed), as Caffe's PythonLayer runs on the CPU.
``share_in_parallel`` is accepted; fc-caffe's data parallelism runs one process per worker, so a
Python layer is never shared between solvers.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from typing import Sequence

import numpy as np

from .. import backend
from ..blob import Blob
from ..errors import CaffeError
from .base import TEST, Layer, register

@register("Python")
class PythonLayer(Layer):
    """The registry entry for ``type: "Python"``: constructing it builds the user's layer object."""

    def __new__(cls, param, phase: int = TEST):
        user_cls = load_layer_class(param)
        shell = _shell_class(user_cls)
        obj = shell.__new__(shell)
        obj.param_str = param.python_param.param_str
        try:
            obj.__init__(param)  # pycaffe calls the class with the LayerParameter only
        except Exception as e:
            _annotate(param.name, user_cls, "__init__", e)
            raise
        obj.phase = phase
        obj.param_str = param.python_param.param_str
        obj.xp = np  # the user's code computes with numpy, in either mode
        return obj


def load_layer_class(param) -> type[Layer]:
    """Import ``python_param.module`` and return its ``python_param.layer`` class (GetPythonLayer)."""
    pp = param.python_param
    if not pp.module or not pp.layer:
        raise CaffeError(f"layer '{param.name}' (Python): python_param needs both 'module' and 'layer'")
    module = _import_user_module(param.name, pp.module)
    user_cls = getattr(module, pp.layer, None)
    if user_cls is None:
        raise CaffeError(f"layer '{param.name}' (Python): module '{pp.module}' "
                         f"({getattr(module, '__file__', '?')}) has no class '{pp.layer}'")
    if not (isinstance(user_cls, type) and issubclass(user_cls, Layer)):
        raise CaffeError(f"layer '{param.name}' (Python): {pp.module}.{pp.layer} must be a class "
                         f"subclassing caffe.Layer")
    return user_cls


def _import_user_module(layer_name: str, module: str):
    cwd = os.getcwd()
    for attempt in range(2):
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing_self = e.name is not None and module.split(".")[0] == e.name.split(".")[0]
            if not missing_self:
                raise CaffeError(f"layer '{layer_name}' (Python): importing module '{module}' failed: "
                                 f"{type(e).__name__}: {e}{_where(e)}") from e
            if attempt or cwd in sys.path:
                raise CaffeError(f"layer '{layer_name}' (Python): no module named '{module}' on PYTHONPATH "
                                 f"or in the current directory {cwd}") from e
            # pycaffe users keep their layer modules next to the prototxt they run from.
            sys.path.append(cwd)
        except Exception as e:
            raise CaffeError(f"layer '{layer_name}' (Python): importing module '{module}' failed: "
                             f"{type(e).__name__}: {e}{_where(e)}") from e
    raise AssertionError("unreachable")


def _where(e: BaseException, user_file: str | None = None) -> str:
    """' (at file:line)' of the deepest frame in the user's file (else the deepest frame)."""
    tb = traceback.extract_tb(e.__traceback__)
    mine = [f for f in tb if user_file and os.path.abspath(f.filename) == os.path.abspath(user_file)]
    frame = (mine or tb or [None])[-1]
    return f" (at {frame.filename}:{frame.lineno})" if frame else ""


#: attribute set on an exception that left a user's Python layer: its one-line context
CONTEXT_ATTR = "caffe_context"


def _annotate(name: str, user_cls: type, verb: str, e: BaseException) -> None:
    """Add the layer, verb and user's line to ``e`` as a note (pycaffe propagates the user's own
    exception; we keep its type and only add context). The innermost layer's note wins."""
    if getattr(e, CONTEXT_ATTR, None):
        return
    user_file = getattr(sys.modules.get(user_cls.__module__), "__file__", None)
    msg = " ".join(str(e).split())  # one line, as every CaffeError
    context = (f"layer '{name}' (Python {user_cls.__module__}.{user_cls.__name__}): {verb} raised "
               f"{type(e).__name__}: {msg}{_where(e, user_file)}")
    try:
        setattr(e, CONTEXT_ATTR, context)
    except AttributeError:  # an exception type with __slots__: the note alone carries it
        pass
    e.add_note(context)


def exception_context(e: BaseException) -> str | None:
    """The one-line context of an exception raised inside a user's Python layer, else None."""
    return getattr(e, CONTEXT_ATTR, None)


_SHELLS: dict[type, type] = {}


def _shell_class(user_cls: type[Layer]) -> type[Layer]:
    """A subclass of the user's class whose four verbs are guarded (cached per user class)."""
    shell = _SHELLS.get(user_cls)
    if shell is None:
        shell = type(user_cls.__name__, (_PythonLayerShell, user_cls),
                     {"__module__": user_cls.__module__, "__qualname__": user_cls.__qualname__,
                      "type": "Python", "_user_class": user_cls})
        _SHELLS[user_cls] = shell
    return shell


class _PythonLayerShell:
    """Placed before the user's class in the MRO: guards each verb, runs it on the host side."""

    type = "Python"
    _user_class: type = object

    def setup(self, bottom, top):
        with self._guard("setup", bottom, top) as (b, t):
            super().setup(b, t)

    def reshape(self, bottom, top):
        with self._guard("reshape", bottom, top) as (b, t):
            super().reshape(b, t)

    def forward(self, bottom, top):
        with self._guard("forward", bottom, top) as (b, t):
            super().forward(b, t)

    def backward(self, top, propagate_down, bottom):
        with self._guard("backward", top, bottom) as (t, b):
            super().backward(t, list(propagate_down), b)

    @contextlib.contextmanager
    def _guard(self, verb: str, first: Sequence[Blob], second: Sequence[Blob]):
        try:
            # Caffe's PythonLayer runs on the CPU: the user's code is on the host side, where
            # blob.data/diff are numpy (mutable_cpu_data: copied down when the device has newer
            # values; the next GPU layer copies up what the user wrote).
            with backend.device_side(False):
                yield list(first), list(second)
        except Exception as e:
            _annotate(self.name, self._user_class, verb, e)
            raise


