"""The stand-in's array type, ufuncs and functions (see the package docstring for the rules)."""
from __future__ import annotations

import builtins
import json
import os

import numpy

from . import _fusing, record

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "facts.json")) as _f:
    FACTS = json.load(_f)
NAMES = frozenset(FACTS["names"])
_FUNC_SIGS = FACTS["functions"]
_METHOD_SIGS = FACTS["ndarray_methods"]

_SCALARS = (bool, int, float, complex, numpy.generic)


def _launch(n: int = 1) -> None:
    record("launches", n)


def _transfer() -> None:
    record("transfers")


def _sync() -> None:
    record("syncs")


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _check_kwargs(where: str, allowed, kwargs) -> None:
    for k in kwargs:
        if k not in allowed:
            raise TypeError(f"{where}() got an unexpected keyword argument '{k}'")


def _method_kwargs(name: str, kwargs) -> None:
    _check_kwargs(f"ndarray.{name}", _METHOD_SIGS.get(name, ()), kwargs)


def _func_kwargs(name: str, kwargs) -> None:
    sig = _FUNC_SIGS.get(name)
    if sig is None or sig["varkw"]:
        return
    _check_kwargs(name, sig["params"] + sig["kwonly"], kwargs)


# -- conversions between the private numpy arrays and the wrapper ----------------------------
def _u(x, where: str = ""):
    """The numpy array inside a device array; scalars pass; host arrays raise as CuPy does."""
    if type(x) is ndarray:
        return x._a
    if isinstance(x, numpy.ndarray):
        if x.ndim == 0:
            return x
        raise _unsupported(x)
    if isinstance(x, _SCALARS) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        raise _unsupported(x)
    raise _unsupported(x)


def _u_index(key):
    """Indices: device arrays unwrap; host index arrays are copied to the device (a transfer)."""
    if type(key) is ndarray:
        return key._a
    if isinstance(key, numpy.ndarray):
        if key.ndim:
            _transfer()
        return key
    if isinstance(key, tuple):
        return tuple(_u_index(k) for k in key)
    if isinstance(key, list):
        if any(isinstance(k, (ndarray, numpy.ndarray)) for k in key):
            raise _unsupported(key)
        _transfer()
        return key
    return key


def _w(a):
    """Wrap a numpy result: arrays and scalars (CuPy returns 0-d arrays, never scalars)."""
    if isinstance(a, numpy.ndarray):
        r = object.__new__(ndarray)
        r._a = a
        return r
    if isinstance(a, (numpy.generic, bool, int, float, complex)):
        r = object.__new__(ndarray)
        r._a = numpy.asarray(a)
        return r
    if isinstance(a, tuple):
        return tuple(_w(x) for x in a)
    if isinstance(a, list):
        return [_w(x) for x in a]
    return a


def _out(out):
    if out is None:
        return None
    if type(out) is not ndarray:
        raise TypeError(f"Output array must be cupy.ndarray (got {type(out)})")
    return out._a


def _result(res, out):
    if out is not None:
        return out
    return _w(res)


def _has_bool_index(key) -> bool:
    ks = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, numpy.ndarray) and k.dtype == numpy.bool_ for k in ks)


def _is_basic(key) -> bool:
    ks = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (slice, int, numpy.integer)) for k in ks)


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


class MemoryPointer:
    """cupy.cuda.MemoryPointer: ``ptr`` is the address (here: of the private host buffer)."""

    def __init__(self, a):
        self.ptr = int(a.__array_interface__["data"][0])
        self.mem = None

    def __int__(self):
        return self.ptr


class ndarray:
    """cupy.ndarray stand-in: a device array (a private numpy array here)."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100.0
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise TypeError("the stand-in's ndarray() takes no memptr/strides")
        self._a = numpy.empty(shape, dtype, order=order)

    # -- what makes it a device array --------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # numpy scalars on the left of an operator come here (f32(2) * x): dispatch as CuPy does;
        # host arrays raise.
        mine = _UFUNCS.get(ufunc.__name__)
        if mine is None or method != "__call__":
            raise TypeError(f"numpy.{ufunc.__name__}.{method} on a cupy.ndarray (use the cupy function)")
        return mine(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__}() applied to a cupy.ndarray: implicit conversion to a NumPy "
                        "array is not allowed (use the cupy function, or .get() for a host copy)")

    # -- attributes --------------------------------------------------------------------------
    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def strides(self):
        return self._a.strides

    @property
    def itemsize(self):
        return self._a.itemsize

    @property
    def nbytes(self):
        return self._a.nbytes

    @property
    def flags(self):
        return _Flags(self._a)

    @property
    def base(self):
        b = self._a.base
        return _w(b) if isinstance(b, numpy.ndarray) else None

    @property
    def data(self):
        return MemoryPointer(self._a)

    @property
    def device(self):
        from cupy.cuda import Device
        return Device(0)

    @property
    def T(self):
        return _w(self._a.T)

    @property
    def mT(self):
        return _w(numpy.swapaxes(self._a, -1, -2))

    @property
    def real(self):
        return _w(self._a.real)

    @property
    def imag(self):
        return _w(self._a.imag)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # -- host reads (synchronising) ----------------------------------------------------------
    def _scalar(self):
        if self._a.size != 1:
            raise TypeError("only length-1 arrays can be converted to Python scalars")
        _sync()
        return self._a.reshape(-1)[0]

    def __float__(self):
        return float(self._scalar())

    def __int__(self):
        return int(self._scalar())

    def __complex__(self):
        return complex(self._scalar())

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return bool(self._scalar())

    def item(self):
        return self._scalar().item()

    def tolist(self):
        _sync()
        _transfer()
        return self._a.tolist()

    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync()
        _transfer()
        if out is not None:
            if not isinstance(out, numpy.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.shape != self._a.shape or out.dtype != self._a.dtype:
                raise ValueError("Shape or dtype mismatch between out and the array")
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray (got {type(arr)})")
        if arr.dtype != self._a.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self._a.dtype} array")
        if arr.shape != self._a.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._a.shape}, new shape: {arr.shape}")
        if not self._a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        _transfer()
        self._a[...] = arr

    def tobytes(self, order="C"):
        _sync()
        _transfer()
        return self._a.tobytes(order)

    def __repr__(self):
        _sync()
        _transfer()
        return "array(" + repr(self._a)[6:] if repr(self._a).startswith("array(") else repr(self._a)

    def __str__(self):
        _sync()
        _transfer()
        return str(self._a)

    def __format__(self, spec):
        if self._a.ndim == 0:
            return format(self._scalar(), spec)
        return format(str(self), spec)

    def __reduce__(self):
        _sync()
        _transfer()
        return (_rebuild, (numpy.array(self._a),))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # -- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key):
        k = _u_index(key)
        if _has_bool_index(k):
            _sync()  # the result's size depends on the data
        if _is_basic(k):
            r = self._a[k]
            if not isinstance(r, numpy.ndarray):
                r = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
            return _w(r)
        _launch()
        return _w(self._a[k])

    def __setitem__(self, key, value):
        k = _u_index(key)
        if type(value) is ndarray:
            v = value._a
        elif isinstance(value, numpy.ndarray):
            if value.ndim != 0:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            v = value
        elif isinstance(value, _SCALARS):
            v = value
        else:
            raise _unsupported(value)
        if _has_bool_index(k):
            _sync()
        _launch()
        self._a[k] = v

    # -- methods -----------------------------------------------------------------------------
    def fill(self, value):
        if isinstance(value, numpy.ndarray) and value.ndim:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if type(value) is ndarray:
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            value = value._a
        _launch()
        self._a.fill(value)

    def copy(self, order="C"):
        _launch()
        return _w(self._a.copy(order=order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and numpy.dtype(dtype) == self._a.dtype:
            return self
        _launch()
        return _w(self._a.astype(dtype, order=order, casting=casting or "unsafe"))

    def view(self, dtype=None, array_class=None):
        return _w(self._a.view() if dtype is None else self._a.view(dtype))

    def reshape(self, *shape, order="C", copy=None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        r = self._a.reshape(shape, order=order)
        if not numpy.may_share_memory(r, self._a):
            _launch()
        return _w(r)

    def ravel(self, order="C"):
        r = self._a.ravel(order)
        if not numpy.may_share_memory(r, self._a):
            _launch()
        return _w(r)

    def flatten(self, order="C"):
        _launch()
        return _w(self._a.flatten(order))

    def transpose(self, *axes):
        return _w(self._a.transpose(*axes))

    def swapaxes(self, axis1, axis2):
        return _w(self._a.swapaxes(axis1, axis2))

    def squeeze(self, axis=None):
        return _w(self._a.squeeze(axis))

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return _w(self._a.diagonal(offset, axis1, axis2))

    def _reduce(self, name, kwargs):
        _method_kwargs(name, kwargs)
        out = kwargs.pop("out", None)
        if out is not None:
            kwargs["out"] = _out(out)
        _launch()
        return _result(getattr(self._a, name)(**kwargs), out)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._reduce("sum", dict(axis=axis, dtype=dtype, out=out, keepdims=keepdims))

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._reduce("mean", dict(axis=axis, dtype=dtype, out=out, keepdims=keepdims))

    def prod(self, axis=None, dtype=None, out=None, keepdims=None):
        return self._reduce("prod", dict(axis=axis, dtype=dtype, out=out, keepdims=bool(keepdims)))

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return self._reduce("var", dict(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims))

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return self._reduce("std", dict(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims))

    def max(self, axis=None, out=None, keepdims=False):
        return self._reduce("max", dict(axis=axis, out=out, keepdims=keepdims))

    def min(self, axis=None, out=None, keepdims=False):
        return self._reduce("min", dict(axis=axis, out=out, keepdims=keepdims))

    def all(self, axis=None, out=None, keepdims=False):
        return self._reduce("all", dict(axis=axis, out=out, keepdims=keepdims))

    def any(self, axis=None, out=None, keepdims=False):
        return self._reduce("any", dict(axis=axis, out=out, keepdims=keepdims))

    def argmax(self, axis=None, out=None, dtype=None, keepdims=False):
        r = self._reduce("argmax", dict(axis=axis, out=out, keepdims=keepdims))
        return r if dtype is None else r.astype(dtype, copy=False)

    def argmin(self, axis=None, out=None, dtype=None, keepdims=False):
        r = self._reduce("argmin", dict(axis=axis, out=out, keepdims=keepdims))
        return r if dtype is None else r.astype(dtype, copy=False)

    def ptp(self, axis=None, out=None, keepdims=False):
        _launch()
        return _result(numpy.ptp(self._a, axis=axis, out=_out(out), keepdims=keepdims), out)

    def cumsum(self, axis=None, dtype=None, out=None):
        return self._reduce("cumsum", dict(axis=axis, dtype=dtype, out=out))

    def cumprod(self, axis=None, dtype=None, out=None):
        return self._reduce("cumprod", dict(axis=axis, dtype=dtype, out=out))

    def clip(self, min=None, max=None, out=None):
        _launch()
        return _result(numpy.clip(self._a, _u(min), _u(max), out=_out(out)), out)

    def round(self, decimals=0, out=None):
        _launch()
        return _result(numpy.round(self._a, decimals, out=_out(out)), out)

    def dot(self, b, out=None):
        if type(b) is not ndarray:
            raise _unsupported(b)
        _launch()
        return _result(numpy.dot(self._a, b._a, out=_out(out)), out)

    def take(self, indices, axis=None, out=None):
        _launch()
        return _result(self._a.take(_u_index(indices), axis=axis, out=_out(out)), out)

    def repeat(self, repeats, axis=None):
        _launch()
        return _w(self._a.repeat(_u(repeats), axis))

    def put(self, indices, values, mode="wrap"):
        _launch()
        self._a.put(_u_index(indices), _u(values), mode=mode)

    def sort(self, axis=-1, kind=None):
        _launch()
        self._a.sort(axis=axis)

    def argsort(self, axis=-1, kind=None):
        _launch()
        return _w(self._a.argsort(axis=axis))

    def nonzero(self):
        _sync()
        _launch()
        return _w(self._a.nonzero())

    def conj(self):
        _launch()
        return _w(self._a.conj())

    conjugate = conj

    def trace(self, offset=0, axis1=0, axis2=1, dtype=None, out=None):
        _launch()
        return _result(self._a.trace(offset, axis1, axis2, dtype, _out(out)), out)

    def searchsorted(self, v, side="left", sorter=None):
        _launch()
        return _w(self._a.searchsorted(_u(v), side, _u(sorter)))

    def compress(self, condition, axis=None, out=None):
        _sync()
        _launch()
        return _result(self._a.compress(_u(condition), axis, _out(out)), out)

    def scatter_add(self, slices, value):
        _launch()
        numpy.add.at(self._a, _u_index(slices), _u(value))

    def scatter_max(self, slices, value):
        _launch()
        numpy.maximum.at(self._a, _u_index(slices), _u(value))

    def scatter_min(self, slices, value):
        _launch()
        numpy.minimum.at(self._a, _u_index(slices), _u(value))

    # -- operators ---------------------------------------------------------------------------
    def __neg__(self):
        return negative(self)

    def __pos__(self):
        return positive(self)

    def __abs__(self):
        return absolute(self)

    def __invert__(self):
        return invert(self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __imatmul__(self, other):
        return matmul(self, other, out=self)

    def __divmod__(self, other):
        return (floor_divide(self, other), remainder(self, other))


ndarray.__module__ = "cupy"  # as type(x) shows it: cupy.ndarray


def _rebuild(host):
    r = object.__new__(ndarray)
    r._a = host
    _transfer()
    return r


# -- ufuncs ------------------------------------------------------------------------------------
class ufunc:
    """cupy.ufunc: one kernel launch per call; out=/dtype=/casting=/where= as CuPy's."""

    def __init__(self, np_ufunc):
        self._np = np_ufunc
        self.__name__ = self.name = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def __repr__(self):
        return f"<ufunc '{self.name}'>"

    def __call__(self, *args, **kwargs):
        _check_kwargs(f"ufunc {self.name}", ("out", "dtype", "casting", "where"), kwargs)
        ins = [_u(a) for a in args[:self.nin]]
        outs = list(args[self.nin:])
        out = kwargs.pop("out", None)
        if out is not None:
            outs = list(out) if isinstance(out, tuple) else [out]
        if "where" in kwargs:
            kwargs["where"] = _u(kwargs["where"])
        np_outs = [_out(o) for o in outs]
        _launch()
        if np_outs:
            res = self._np(*ins, out=tuple(np_outs) if len(np_outs) > 1 else np_outs[0], **kwargs)
            return outs[0] if len(outs) == 1 else tuple(outs)
        res = self._np(*ins, **kwargs)
        return _w(res)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        _launch()
        return _result(self._np.reduce(_u(array), axis=axis, dtype=dtype, out=_out(out), keepdims=keepdims), out)

    def accumulate(self, array, axis=0, dtype=None, out=None):
        _launch()
        return _result(self._np.accumulate(_u(array), axis=axis, dtype=dtype, out=_out(out)), out)

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        _launch()
        return _result(self._np.reduceat(_u(array), _u_index(indices), axis=axis, dtype=dtype, out=_out(out)), out)

    def outer(self, A, B, **kwargs):
        _launch()
        return _w(self._np.outer(_u(A), _u(B), **kwargs))

    def at(self, a, indices, b=None):
        _launch()
        if b is None:
            self._np.at(_u(a), _u_index(indices))
        else:
            self._np.at(_u(a), _u_index(indices), _u(b))


_UFUNCS: dict[str, ufunc] = {}
for _n in sorted(NAMES):
    _f = getattr(numpy, _n, None)
    if isinstance(_f, numpy.ufunc):
        _UFUNCS[_n] = ufunc(_f)
        _UFUNCS.setdefault(_f.__name__, _UFUNCS[_n])
globals().update({k: v for k, v in _UFUNCS.items() if k in NAMES})
absolute = _UFUNCS["absolute"]
negative, positive, invert = _UFUNCS["negative"], _UFUNCS["positive"], _UFUNCS["invert"]
floor_divide, remainder = _UFUNCS["floor_divide"], _UFUNCS["remainder"]
matmul = _UFUNCS["matmul"]


def _binop(uf, reflected=False):
    if reflected:
        def op(self, other):
            return uf(other, self)
    else:
        def op(self, other):
            return uf(self, other)
    return op


def _iop(uf):
    def op(self, other):
        return uf(self, other, out=self)
    return op


for _op, _name in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                   ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"), ("and", "bitwise_and"),
                   ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"),
                   ("rshift", "right_shift")):
    setattr(ndarray, f"__{_op}__", _binop(_UFUNCS[_name]))
    setattr(ndarray, f"__r{_op}__", _binop(_UFUNCS[_name], True))
    setattr(ndarray, f"__i{_op}__", _iop(_UFUNCS[_name]))
for _op, _name in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                   ("eq", "equal"), ("ne", "not_equal")):
    setattr(ndarray, f"__{_op}__", _binop(_UFUNCS[_name]))


# -- creation and transfers --------------------------------------------------------------------
def empty(shape, dtype=float, order="C"):
    return _w(numpy.empty(shape, dtype, order))


def zeros(shape, dtype=float, order="C"):
    _launch()
    return _w(numpy.zeros(shape, dtype, order))


def ones(shape, dtype=float, order="C"):
    _launch()
    return _w(numpy.ones(shape, dtype, order))


def full(shape, fill_value, dtype=None, order="C"):
    if isinstance(fill_value, numpy.ndarray) and fill_value.ndim:
        raise _unsupported(fill_value)
    _launch()
    return _w(numpy.full(shape, _u(fill_value), dtype, order))


def _like(fn, a, dtype, order, subok, shape, *extra):
    if type(a) is not ndarray:
        raise _unsupported(a)
    return _w(fn(a._a, *extra, dtype=dtype, order=order, shape=shape))


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return _like(numpy.empty_like, prototype, dtype, order, subok, shape)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    _launch()
    return _like(numpy.zeros_like, a, dtype, order, subok, shape)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    _launch()
    return _like(numpy.ones_like, a, dtype, order, subok, shape)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    _launch()
    return _like(numpy.full_like, a, dtype, order, subok, shape, _u(fill_value))


def arange(start, stop=None, step=1, dtype=None):
    _launch()
    return _w(numpy.arange(start, stop, step, dtype=dtype) if stop is not None
              else numpy.arange(start, dtype=dtype))


def _from_host(obj, dtype, order, copy_host=True):
    if isinstance(obj, (list, tuple)) and any(type(x) is ndarray for x in obj):
        # CuPy stacks a sequence of device arrays on the device
        _launch()
        return _w(numpy.array([_u(x) for x in obj], dtype=dtype, order=order))
    _transfer()
    return _w(numpy.array(obj, dtype=dtype, order=order or "K", copy=True))


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if type(a) is ndarray:
        if (dtype is None or numpy.dtype(dtype) == a.dtype) and not copy:
            return a
        return a.astype(dtype or a.dtype, copy=True)
    return _from_host(a, dtype, order)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if type(obj) is ndarray:
        if not copy and (dtype is None or numpy.dtype(dtype) == obj.dtype) and obj.ndim >= ndmin:
            return obj
        _launch()
        return _w(numpy.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin))
    r = _from_host(obj, dtype, order)
    if r.ndim < ndmin:
        r = _w(r._a.reshape((1,) * (ndmin - r.ndim) + r.shape))
    return r


def ascontiguousarray(a, dtype=None):
    if type(a) is not ndarray:
        raise _unsupported(a)
    if a._a.flags.c_contiguous and (dtype is None or numpy.dtype(dtype) == a.dtype):
        return a
    _launch()
    return _w(numpy.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if type(a) is ndarray:
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    if out is not None:
        out[...] = a
        return out
    return numpy.asarray(a, order=order)


def get_array_module(*args):
    import cupy
    for a in args:
        if type(a) is ndarray:
            return cupy
    return numpy


def copyto(dst, src, casting="same_kind", where=None):
    if type(dst) is not ndarray:
        raise TypeError(f"dst must be cupy.ndarray (got {type(dst)})")
    if isinstance(src, numpy.ndarray) and src.size != 1:
        raise TypeError(f"Unsupported type {type(src)}")
    s = _u(src) if not isinstance(src, numpy.ndarray) else src.reshape(())
    _launch()
    numpy.copyto(dst._a, s, casting=casting, where=True if where is None else _u(where))


def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    arrays = [_u(x) for x in tup]
    _launch()
    return _result(numpy.concatenate(arrays, axis=axis, out=_out(out), dtype=dtype, casting=casting), out)


def stack(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    arrays = [_u(x) for x in tup]
    _launch()
    return _result(numpy.stack(arrays, axis=axis, out=_out(out), dtype=dtype, casting=casting), out)


def where(condition, x=None, y=None):
    if x is None and y is None:
        return nonzero(condition)
    _launch()
    return _w(numpy.where(_u(condition), _u(x), _u(y)))


def nonzero(a):
    _sync()
    _launch()
    return _w(numpy.nonzero(_u(a)))


def clip(a, a_min, a_max, out=None):
    _launch()
    return _result(numpy.clip(_u(a), _u(a_min), _u(a_max), out=_out(out)), out)


def dot(a, b, out=None):
    _launch()
    return _result(numpy.dot(_u(a), _u(b), out=_out(out)), out)


def take(a, indices, axis=None, out=None):
    _launch()
    return _result(numpy.take(_u(a), _u_index(indices), axis=axis, out=_out(out)), out)


def bincount(x, weights=None, minlength=None):
    _sync()  # CuPy reads the maximum back to size the result
    _launch()
    return _w(numpy.bincount(_u(x), _u(weights), minlength or 0))


# views: no launch
def _view_fn(name):
    npf = getattr(numpy, name)

    def f(*args, **kwargs):
        _func_kwargs(name, kwargs)
        return _w(npf(*[_u(a) if not isinstance(a, (tuple, list, int)) else a for a in args], **kwargs))
    f.__name__ = name
    return f


_VIEWS = ("broadcast_to", "expand_dims", "moveaxis", "rollaxis", "swapaxes", "transpose", "squeeze",
          "atleast_1d", "atleast_2d", "atleast_3d", "diagonal", "real", "imag", "permute_dims", "matrix_transpose")


def reshape(a, newshape, order="C", *, copy=None):
    if type(a) is not ndarray:
        raise _unsupported(a)
    return a.reshape(newshape, order=order)


def ravel(a, order="C"):
    if type(a) is not ndarray:
        raise _unsupported(a)
    return a.ravel(order)


def broadcast_arrays(*args):
    return [_w(x) for x in numpy.broadcast_arrays(*[_u(a) for a in args])]


# everything else that produces a new array: one launch
_SYNCING = {"argwhere", "flatnonzero", "unique", "unique_all", "unique_counts", "unique_inverse",
            "unique_values", "extract", "compress", "histogram", "trim_zeros", "intersect1d", "setdiff1d",
            "union1d", "setxor1d"}


def _generic(name):
    npf = getattr(numpy, name)

    def conv(x):
        if isinstance(x, (list, tuple)):
            if any(type(e) is ndarray for e in x):
                return type(x)(conv(e) for e in x)
            return x
        return _u(x) if (type(x) is ndarray or isinstance(x, numpy.ndarray)) else x

    def f(*args, **kwargs):
        _func_kwargs(name, kwargs)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _out(out)
        a2 = [conv(a) for a in args]
        k2 = {k: conv(v) for k, v in kwargs.items()}
        if name in _SYNCING:
            _sync()
        _launch()
        return _result(npf(*a2, **k2), out)
    f.__name__ = name
    return f


_DEFINED = {n for n, v in list(globals().items()) if callable(v) and not n.startswith("_")}
_EXPORTS: dict[str, object] = {}
for _n in sorted(NAMES):
    if _n in _UFUNCS:
        _EXPORTS[_n] = _UFUNCS[_n]
    elif _n in _DEFINED and _n in globals():
        _EXPORTS[_n] = globals()[_n]
    elif _n in _VIEWS and callable(getattr(numpy, _n, None)):
        _EXPORTS[_n] = _view_fn(_n)
    elif _n in _FUNC_SIGS and callable(getattr(numpy, _n, None)) and not isinstance(getattr(numpy, _n), type):
        _EXPORTS[_n] = _generic(_n)
    elif isinstance(getattr(numpy, _n, None), type) and issubclass(getattr(numpy, _n), numpy.generic):
        _EXPORTS[_n] = getattr(numpy, _n)  # dtypes: cupy re-exports numpy's scalar types
    elif _n in ("dtype", "finfo", "iinfo", "newaxis", "pi", "e", "inf", "nan", "euler_gamma", "can_cast",
                "result_type", "promote_types", "min_scalar_type", "isscalar", "issubdtype", "ndim", "shape",
                "size", "bool", "bool_", "float32", "float64", "s_", "index_exp", "common_type", "mintypecode",
                "dtypes", "AxisError", "ComplexWarning", "VisibleDeprecationWarning", "Inf", "Infinity",
                "NaN", "NAN", "NINF", "NZERO", "PINF", "PZERO", "infty"):
        if hasattr(numpy, _n) or _n in ("bool",):
            _EXPORTS[_n] = getattr(numpy, _n, builtins.bool if _n == "bool" else None)
_EXPORTS["ndarray"] = ndarray
_EXPORTS["ufunc"] = ufunc
_EXPORTS["abs"] = _UFUNCS["absolute"]


def _shape_like(name):
    # ndim/shape/size of a device array are metadata: no launch, no sync
    def f(a, *args):
        return getattr(numpy, name)(_u(a), *args)
    return f


for _n in ("ndim", "shape", "size"):
    _EXPORTS[_n] = _shape_like(_n)


# -- fuse and the custom kernels ---------------------------------------------------------------
def fuse(*args, **kwargs):
    """cupy.fuse: the decorated function's elementwise ops count as one kernel launch per call."""
    def deco(fn):
        def fused(*a, **kw):
            _launch()
            _fusing.depth = getattr(_fusing, "depth", 0) + 1
            try:
                return fn(*a, **kw)
            finally:
                _fusing.depth -= 1
        fused.__name__ = getattr(fn, "__name__", "fused")
        return fused
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return deco(args[0])
    return deco


class _CustomKernel:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__}: the CuPy stand-in cannot run custom CUDA kernels")

    def get_function(self, name):
        return RawKernel(name)


class ElementwiseKernel(_CustomKernel):
    pass


class ReductionKernel(_CustomKernel):
    pass


class RawKernel(_CustomKernel):
    pass


class RawModule(_CustomKernel):
    pass


for _n in ("fuse", "ElementwiseKernel", "ReductionKernel", "RawKernel", "RawModule"):
    _EXPORTS[_n] = globals()[_n]

_unknown = sorted(set(_EXPORTS) - NAMES)
assert not _unknown, f"stand-in exports names CuPy 14 lacks: {_unknown}"
