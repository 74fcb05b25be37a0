"""Python: a layer written by the user in Python, as Caffe's PythonLayer (python_layer.hpp).

``python_param { module: "m" layer: "Cls" param_str: "..." }`` imports ``m`` (from PYTHONPATH, or
the current directory as pycaffe users expect) and instantiates ``m.Cls(layer_param)``. ``Cls``
subclasses ``caffe.Layer`` and implements pycaffe's ``setup``/``reshape``/``forward``/``backward``;
before ``setup`` it is given ``self.param_str`` and ``self.phase``. Learnable blobs added with
``self.blobs.add_blob(*shape)`` are parameters like any other layer's (solver updates, .caffemodel).

The Net holds the user's own object (so ``net.layer_dict['data'].my_method()`` works); its class is a
thin subclass of the user's class that (a) turns any exception raised by the user's code into a
CaffeError naming the layer, chained to the original so its traceback shows, and (b) on the GPU,
hands the user host (numpy) views of the blobs, as Caffe's PythonLayer runs on the CPU.
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
from .base import TEST, BlobVec, Layer, register

#: Hand the user host views of the blobs even on the CPU (tests exercise the GPU path with it).
FORCE_HOST_VIEWS = False


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
        except CaffeError:
            raise
        except Exception as e:
            raise _layer_error(param.name, user_cls, "__init__", e) from e
        obj.phase = phase
        obj.param_str = param.python_param.param_str
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


def _layer_error(name: str, user_cls: type, verb: str, e: BaseException) -> CaffeError:
    user_file = getattr(sys.modules.get(user_cls.__module__), "__file__", None)
    msg = " ".join(str(e).split())  # one line, as every CaffeError
    return CaffeError(f"layer '{name}' (Python {user_cls.__module__}.{user_cls.__name__}): {verb} raised "
                      f"{type(e).__name__}: {msg}{_where(e, user_file)}")


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
    """Placed before the user's class in the MRO: guards each verb, gives host views on the GPU."""

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
        host = FORCE_HOST_VIEWS or self.xp is not np
        views: dict[int, _HostBlob] = {}
        real_blobs = self.blobs
        try:
            if host:
                def view(b):
                    return views.setdefault(id(b), _HostBlob(b))
                self.blobs = _HostBlobVec(real_blobs, views)
                yield [view(b) for b in first], [view(b) for b in second]
                for v in views.values():
                    v.sync()
            else:
                yield list(first), list(second)
        except CaffeError as e:
            if str(e).startswith(f"layer '{self.name}'"):
                raise
            raise _layer_error(self.name, self._user_class, verb, e) from e
        except Exception as e:
            raise _layer_error(self.name, self._user_class, verb, e) from e
        finally:
            if host:
                self.blobs = real_blobs


class _HostBlob:
    """A numpy view of a device Blob for user code; ``sync`` writes what was touched back."""

    __slots__ = ("_blob", "_data", "_diff")

    def __init__(self, blob: Blob) -> None:
        self._blob = blob
        self._data = None
        self._diff = None

    @staticmethod
    def _host(a) -> np.ndarray:
        h = backend.to_numpy(a)
        return h.copy() if h is a else h

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = self._host(self._blob.data)
        return self._data

    @data.setter
    def data(self, value) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None:
            self._diff = self._host(self._blob.diff)
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self.diff[...] = value

    def reshape(self, *shape) -> None:
        self.sync()
        self._blob.reshape(*shape)
        self._data = self._diff = None

    def sync(self) -> None:
        xp = backend.get_array_module(self._blob.data)
        if self._data is not None:
            self._blob.data[...] = xp.asarray(self._data)
        if self._diff is not None:
            self._blob.diff[...] = xp.asarray(self._diff)

    def __getattr__(self, name):  # shape, count, num, channels, height, width, name ...
        return getattr(self._blob, name)

    def __repr__(self) -> str:
        return f"HostView({self._blob!r})"


class _HostBlobVec(BlobVec):
    """``self.blobs`` during a host-view call: views of the real blobs; ``add_blob`` adds a real one."""

    def __init__(self, real: BlobVec, views: dict) -> None:
        super().__init__(views.setdefault(id(b), _HostBlob(b)) for b in real)
        self._real = real
        self._views = views

    def add_blob(self, *shape: int):
        b = self._real.add_blob(*shape)
        v = self._views.setdefault(id(b), _HostBlob(b))
        self.append(v)
        return v
