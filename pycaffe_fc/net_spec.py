"""NetSpec: write a net in Python and get its NetParameter, as pycaffe's caffe.net_spec.

``n = caffe.NetSpec(); n.data, n.label = L.Data(source=..., ntop=2); n.conv1 = L.Convolution(n.data,
kernel_size=5, num_output=20)`` ... ``n.to_proto()``. The semantics are pycaffe's:

- ``L.<Type>(*bottoms, **kwargs)`` makes a layer of that type string. A kwarg whose name ends in
  ``param`` (``transform_param``, ``param``) is a LayerParameter field; any other kwarg is looked up
  in the type's own ``<type>_param`` message first (``num_output`` -> convolution_param) and is a
  LayerParameter field otherwise (``include``, ``loss_weight``, ``name``...).
- values: a dict fills a message, a list of dicts adds repeated messages, a scalar given to a
  repeated field becomes a one-element list.
- ``ntop=k`` returns k tops (``ntop=0`` returns the layer itself), ``in_place=True`` makes the tops
  the bottoms.
- names: a layer is named after its first top as assigned in the NetSpec (``n.conv1 = ...`` makes
  layer and top ``conv1``); unnamed tops get ``<Type><k>`` with k counting per type from 1.
- ``P.Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX``.
"""
from __future__ import annotations

import importlib
from collections import Counter, OrderedDict
from typing import Any

from google.protobuf.message import Message

from .errors import CaffeError
from .proto import caffe_pb2


def _param_field_names() -> dict[str, str]:
    """Layer type -> its ``*_param`` field, from the message type names (ConvolutionParameter ->
    Convolution -> convolution_param), as pycaffe's param_name_dict."""
    out = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            tname = f.message_type.name
            if tname.endswith("Parameter"):
                out[tname[: -len("Parameter")]] = f.name
    # Deconvolution reads convolution_param (one message for both in caffe.proto).
    out.setdefault("Deconvolution", "convolution_param")
    return out


_PARAM_FIELDS = _param_field_names()


def param_name_dict() -> dict[str, str]:
    """pycaffe's param_name_dict: layer type -> the prefix of its ``*_param`` field
    (``'Convolution' -> 'convolution'``)."""
    return {t: f[: -len("_param")] for t, f in _PARAM_FIELDS.items()}


def _is_repeated(proto: Message, name: str) -> bool:
    f = proto.DESCRIPTOR.fields_by_name.get(name)
    return f is not None and f.is_repeated


def _enum_value(proto: Message, name: str, v: Any) -> Any:
    # Enum fields also take their value names ('MAX'), as the prototxt spells them.
    f = proto.DESCRIPTOR.fields_by_name[name]
    if isinstance(v, str) and f.enum_type is not None:
        ev = f.enum_type.values_by_name.get(v)
        if ev is None:
            raise ValueError(f"'{v}' is not a value of enum {f.enum_type.name}")
        return ev.number
    return v


def assign_proto(proto: Message, name: str, val: Any) -> None:
    """Set ``proto.<name>`` from a Python value (dicts fill messages, lists fill repeated fields)."""
    if name not in proto.DESCRIPTOR.fields_by_name:
        raise AttributeError(f"{proto.DESCRIPTOR.name} has no field '{name}'")
    if _is_repeated(proto, name):
        vals = val if isinstance(val, (list, tuple)) else [val]
        field = getattr(proto, name)
        for v in vals:
            if isinstance(v, dict):
                item = field.add()
                for k, x in v.items():
                    assign_proto(item, k, x)
            elif isinstance(v, Message):
                field.add().CopyFrom(v)
            else:
                field.append(_enum_value(proto, name, v))
    elif isinstance(val, dict):
        sub = getattr(proto, name)
        sub.SetInParent()  # an empty dict still marks the message present
        for k, x in val.items():
            assign_proto(sub, k, x)
    elif isinstance(val, Message):
        getattr(proto, name).CopyFrom(val)
    else:
        setattr(proto, name, _enum_value(proto, name, val))


class Top:
    """One output of a Function (a layer being specified); what NetSpec attributes hold."""

    def __init__(self, fn: "Function", n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this top depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """A layer being specified: its type string, bottom Tops and keyword parameters."""

    def __init__(self, type_name: str, inputs: tuple, params: dict) -> None:
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                # pycaffe raises TypeError here (scripts catch it); the message names layer and bottom
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp).__name__})")
        self.inputs = inputs
        params = dict(params)
        self.ntop = int(params.pop("ntop", 1))
        self.in_place = bool(params.pop("in_place", False))
        self.params = params
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    @staticmethod
    def _get_top_name(top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers: "OrderedDict[Function, Any]", names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for k, v in self.params.items():
            self._assign(layer, k, v)
        layers[self] = layer

    def _assign(self, layer, key: str, val) -> None:
        try:
            if key.endswith("param"):
                assign_proto(layer, key, val)
                return
            pfield = _PARAM_FIELDS.get(self.type_name)
            if pfield is not None and key in getattr(layer, pfield).DESCRIPTOR.fields_by_name:
                assign_proto(getattr(layer, pfield), key, val)
            else:
                assign_proto(layer, key, val)
        except (AttributeError, TypeError, ValueError) as e:
            where = f" or {_PARAM_FIELDS[self.type_name]}" if self.type_name in _PARAM_FIELDS else ""
            raise CaffeError(f"layer '{layer.name}' ({self.type_name}): cannot set '{key}' = {val!r} "
                             f"in LayerParameter{where}: {e}") from e


class NetSpec:
    """An ordered collection of named Tops; ``to_proto()`` names layers and tops after them."""

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str):
        return self.__getattr__(item)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops.keys())

    def vals(self) -> list:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter, layers in the order their tops were assigned (bottoms first)."""
        names = {v: k for k, v in self.tops.items()}
        autonames: Counter = Counter()
        layers: "OrderedDict[Function, Any]" = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The NetParameter producing ``tops`` (auto-named, as pycaffe's caffe.to_proto)."""
    layers: "OrderedDict[Function, Any]" = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers:
    """``L.<Type>(*bottoms, **params)``: a Top, a tuple of Tops (ntop > 1) or the Function (ntop=0)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if not name[:1].isupper():
            # Layer types are CamelCase. ``caffe.layers`` is this factory yet ``pycaffe_fc.layers`` is
            # also the layers subpackage: lower-case names (``base``, ``register``) resolve to the
            # subpackage, so ``import pycaffe_fc.layers.base as b`` still works.
            return _layers_package_attr(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


def _layers_package_attr(name: str):
    pkg = importlib.import_module("pycaffe_fc.layers")
    if hasattr(pkg, name):
        return getattr(pkg, name)
    try:
        return importlib.import_module(f"pycaffe_fc.layers.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"pycaffe_fc.layers.{name}":
            raise
    raise AttributeError(f"'{name}' is neither a layer type (those are CamelCase) nor in pycaffe_fc.layers")


class Parameters:
    """``P.<Type>.<ENUM>``: the enum values of ``caffe_pb2.<Type>Parameter``."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        msg = getattr(caffe_pb2, name + "Parameter", None)
        if msg is None:
            raise AttributeError(f"caffe.proto has no message {name}Parameter")

        class Param:
            def __getattr__(self, param_name: str):
                return getattr(msg, param_name)
        return Param()


layers = Layers()
params = Parameters()
