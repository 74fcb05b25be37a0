"""Layer and LossLayer: Caffe's four verbs and the type-string registry.

A layer subclass implements ``setup`` (Caffe's LayerSetUp, once), ``reshape`` (whenever bottom
shapes may have changed; decides top shapes), ``forward`` and ``backward``. The framework calls the
capitalised wrappers ``SetUp``/``Forward``/``Backward``, which, as in Caffe's layer.hpp, reshape
before every forward and turn the loss tops into the weighted loss.

Contract every layer keeps (as Caffe's layers do):
- parameter gradients are *accumulated* into ``self.blobs[i].diff`` (the solver clears them), so
  iter_size and shared parameters sum correctly;
- bottom gradients are *written* (overwritten), the Net sums multiple consumers through Split layers;
- ``backward`` fills ``bottom[i].diff`` only where ``propagate_down[i]`` is true;
- an in-place layer receives the same Blob object as bottom[0] and top[0].
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .. import backend
from ..blob import HEAD_AT_GPU, SYNCED, Blob
from ..errors import CaffeError

TRAIN, TEST = 0, 1
_side = backend._side  # which side (host/device) blob.data gives the calling thread

LAYER_REGISTRY: dict[str, type["Layer"]] = {}


def register(*type_names: str) -> Callable[[type["Layer"]], type["Layer"]]:
    """Class decorator: make a layer constructible from its Caffe type string(s)."""

    def deco(cls: type["Layer"]) -> type["Layer"]:
        for name in type_names:
            LAYER_REGISTRY[name] = cls
        cls.type = type_names[0]
        return cls

    return deco


def layer_type_list() -> list[str]:
    """As ``caffe.layer_type_list()``: every registered type string."""
    from . import load_all  # noqa: F401  (the families register on import)
    return sorted(LAYER_REGISTRY)


#: The 61 layer types BVLC Caffe (master) registers, to tell a Caffe layer fc-caffe lacks from a
#: fork's own layer in the unknown-type error.
BVLC_LAYER_TYPES = frozenset("""
    AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution
    Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
    HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit
    Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU
    Reduction Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax
    SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData""".split())


class UnknownLayerType(CaffeError):
    """LayerRegistry::CreateLayer's "Unknown layer type" (the Net adds the prototxt file:line)."""

    def __init__(self, layer_name: str, type_name: str, where: str = "") -> None:
        self.layer_name, self.type_name = layer_name, type_name
        if type_name in BVLC_LAYER_TYPES:
            kind = "a BVLC Caffe layer type that fc-caffe does not implement"
        else:
            kind = "not a BVLC Caffe layer type (a fork's custom layer?)"
        prefix = f"{where}: " if where else ""
        # Caffe's own wording and list: "Unknown layer type: X (known types: A, B, ...)"
        super().__init__(f"{prefix}layer '{layer_name}': Unknown layer type: {type_name} ({kind}) "
                         f"(known types: {', '.join(layer_type_list())})")

    def at(self, where: str) -> "UnknownLayerType":
        """The same error, located (``path:line:col``)."""
        return UnknownLayerType(self.layer_name, self.type_name, where)


def create_layer(param, phase: int) -> "Layer":
    """LayerRegistry::CreateLayer: build the layer of ``param.type``."""
    from . import load_all  # noqa: F401
    cls = LAYER_REGISTRY.get(param.type)
    if cls is None:
        raise UnknownLayerType(param.name, param.type)
    return cls(param, phase)


class BlobVec(list):
    """A layer's learnable blobs; ``add_blob`` as pycaffe's Python layers use it."""

    def add_blob(self, *shape: int) -> Blob:
        b = Blob(shape)
        self.append(b)
        return b


class Layer:
    """Base of every layer (caffe::Layer)."""

    type = ""
    #: bottom/top count constraints checked at SetUp, as Caffe's ExactNum*/Min*/Max* Blobs.
    exact_num_bottom = -1
    min_bottom = -1
    max_bottom = -1
    exact_num_top = -1
    min_top = -1
    max_top = -1
    #: loss layers give their first top a loss_weight of 1 by default.
    auto_top_blobs = False
    equal_num_bottom_top = False

    def __init__(self, param, phase: int = TEST) -> None:
        self.layer_param = param
        self.phase = phase
        self.name = param.name
        self.blobs: BlobVec = BlobVec()
        self.param_propagate_down: list[bool] = []
        self.loss_weights: list[float] = []
        self.xp = backend.xp()

    # -- what subclasses implement --------------------------------------------------
    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """LayerSetUp: read parameters, create and fill ``self.blobs``."""

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        """Default for layers that propagate nothing (data layers, Accuracy, ...)."""

    def default_loss_weight(self, top_index: int) -> float:
        return 0.0

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    # -- the framework's verbs (Layer::SetUp / Forward / Backward) ------------------
    def SetUp(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        if self.xp is not np and not _side.device:
            # a GPU layer works on the device copies of its blobs (Caffe's *_gpu verbs)
            with backend.device_side():
                return self.SetUp(bottom, top)
        self._check_blob_counts(bottom, top)
        self.setup(bottom, top)
        self.reshape(bottom, top)
        self._set_loss_weights(top)

    def Forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> float:
        if self.xp is not np and not _side.device:
            with backend.device_side():
                # Caffe's Forward_gpu reads its bottoms through gpu_data(): a bottom copied up
                # (or already current on both sides) stays SYNCED, so a pycaffe script writing
                # net.blobs['data'].data[...] next time does not first copy the old batch down.
                inputs = _synced_bottoms(bottom, top)
                loss = self.Forward(bottom, top)
                for m in inputs:
                    if m.head == HEAD_AT_GPU:
                        m.head = SYNCED
                return loss
        self.reshape(bottom, top)
        self.forward(bottom, top)
        loss = 0.0
        for t, w in zip(top, self.loss_weights):
            if w:
                # on a GPU, as Caffe's Forward reads the loss through cpu_data(): one copy down,
                # after which the host copy is current and the solver's display reads it free
                v = t.cpu_data() if self.xp is not np else t.data
                loss += w * float(v.sum(dtype=np.float64))
        return loss

    def Backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        if self.xp is not np and not _side.device:
            with backend.device_side():
                return self.backward(top, propagate_down, bottom)
        self.backward(top, propagate_down, bottom)

    def Reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Layer::Reshape as the Net calls it (on the device side for a GPU layer)."""
        if self.xp is not np and not _side.device:
            with backend.device_side():
                return self.reshape(bottom, top)
        self.reshape(bottom, top)

    def _set_loss_weights(self, top: Sequence[Blob]) -> None:
        lw = list(self.layer_param.loss_weight)
        if lw and len(lw) != len(top):
            raise CaffeError(f"layer '{self.name}': loss_weight must be unspecified or given once per top "
                             f"({len(lw)} given, {len(top)} tops)")
        if not lw:
            lw = [self.default_loss_weight(i) for i in range(len(top))]
        self.loss_weights = [float(w) for w in lw]
        for t, w in zip(top, self.loss_weights):
            if w:
                # Caffe stores the weight in the top's diff, which backward reads as dL/dtop.
                t.diff[...] = w

    def _check_blob_counts(self, bottom, top) -> None:
        def bad(what, n, cond):
            raise CaffeError(f"layer '{self.name}' ({self.type}) takes {cond} {what} blob(s), got {n}")
        nb, nt = len(bottom), len(top)
        if self.exact_num_bottom >= 0 and nb != self.exact_num_bottom:
            bad("bottom", nb, f"exactly {self.exact_num_bottom}")
        if self.min_bottom >= 0 and nb < self.min_bottom:
            bad("bottom", nb, f"at least {self.min_bottom}")
        if self.max_bottom >= 0 and nb > self.max_bottom:
            bad("bottom", nb, f"at most {self.max_bottom}")
        if self.exact_num_top >= 0 and nt != self.exact_num_top:
            bad("top", nt, f"exactly {self.exact_num_top}")
        if self.min_top >= 0 and nt < self.min_top:
            bad("top", nt, f"at least {self.min_top}")
        if self.max_top >= 0 and nt > self.max_top:
            bad("top", nt, f"at most {self.max_top}")
        if self.equal_num_bottom_top and nb != nt:
            raise CaffeError(f"layer '{self.name}' ({self.type}) needs as many tops as bottoms ({nb} vs {nt})")

    # -- helpers for subclasses ------------------------------------------------------
    def init_param_propagate_down(self) -> None:
        self.param_propagate_down = [True] * len(self.blobs)

    def check_shape(self, what: str, expected, actual) -> None:
        if tuple(expected) != tuple(actual):
            raise CaffeError(f"layer '{self.name}': {what}: expected shape {list(expected)}, got {list(actual)}")

    def __repr__(self) -> str:
        return f"<{self.type} layer '{self.name}'>"


def _synced_bottoms(bottom: Sequence[Blob], top: Sequence[Blob]) -> list:
    """The data memories of the bottoms that are inputs only (no top shares them), made current
    on the device (Blob::gpu_data) and now SYNCED."""
    outs = {id(t._dm) for t in top}
    synced = []
    for b in bottom:
        m = b._dm
        if id(m) in outs:
            continue
        b.gpu_data()
        if m.head == SYNCED:
            synced.append(m)
    return synced


class LossLayer(Layer):
    """caffe::LossLayer: two bottoms (prediction, label), a scalar loss top weighted 1 by default."""

    exact_num_bottom = 2
    exact_num_top = 1
    auto_top_blobs = True

    def default_loss_weight(self, top_index: int) -> float:
        return 1.0 if top_index == 0 else 0.0

    def allow_force_backward(self, bottom_index: int) -> bool:
        # labels never get a gradient
        return bottom_index != 1

    def setup(self, bottom, top) -> None:
        pass

    def reshape(self, bottom, top) -> None:
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise CaffeError(f"layer '{self.name}': the data and label should have the same first dimension "
                             f"({list(bottom[0].shape)} vs {list(bottom[1].shape)})")
        top[0].reshape(())


def get_normalizer(mode: int, outer_num: int, inner_num: int, valid_count: int) -> float:
    """LossLayer::GetNormalizer: FULL, VALID (-1 valid_count means all), BATCH_SIZE, NONE; at least 1."""
    FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3
    if mode == FULL:
        n = outer_num * inner_num
    elif mode == VALID:
        n = outer_num * inner_num if valid_count == -1 else valid_count
    elif mode == BATCH_SIZE:
        n = outer_num
    elif mode == NONE:
        n = 1
    else:
        raise CaffeError(f"unknown loss normalization mode {mode}")
    return max(1.0, float(n))
