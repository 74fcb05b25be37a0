"""Net: Caffe's graph of layers wired by blob name (net.cpp, insert_splits.cpp).

Implements NetState filtering, automatic Split insertion, in-place layers, Input layers as net
inputs, loss weights, backward-needed pruning, force_backward, parameter sharing by name with
lr_mult/decay_mult kept per learnable parameter, and copying weights by layer name.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

from . import backend
from .blob import Blob
from .errors import CaffeError
from .memory import AllocationError
from .layers.base import Layer, UnknownLayerType, create_layer
from .proto import caffe_pb2

PERMISSIVE = 1  # ParamSpec.DimCheckMode


# -- NetState filtering (Net::FilterNet / StateMeetsRule) ----------------------------------------
def state_meets_rule(state, rule) -> bool:
    """Net::StateMeetsRule: phase, min/max level, required stages, forbidden stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param):
    """Net::FilterNet: keep the layers whose include/exclude rules admit ``param.state``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if len(lp.include) and len(lp.exclude):
            raise CaffeError(f"layer '{lp.name}': specify either include rules or exclude rules; not both")
        if len(lp.include):
            keep = any(state_meets_rule(param.state, r) for r in lp.include)
        else:
            keep = not any(state_meets_rule(param.state, r) for r in lp.exclude)
        if keep:
            out.layer.add().CopyFrom(lp)
    return out


# -- Split insertion (insert_splits.cpp) ---------------------------------------------------------
def split_layer_name(layer: str, blob: str, top_idx: int) -> str:
    return f"{layer}_{blob}_{top_idx}_split"


def split_blob_name(layer: str, blob: str, top_idx: int, split_idx: int) -> str:
    return f"{layer}_{blob}_{top_idx}_split_{split_idx}"


def insert_splits(param):
    """InsertSplits: a top consumed more than once (a weighted loss counts as a consumer) feeds a
    Split layer whose outputs go one to each consumer, so that backward sums their gradients."""
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, lp in enumerate(param.layer):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise CaffeError(f"layer '{lp.name}': unknown bottom blob '{name}' (bottom index {j})")
            src = last_top[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            src = last_top[lp.top[j]]
            loss_weight[src] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                consumers[src] = consumers.get(src, 0) + 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    split_idx: dict[tuple[int, int], int] = {}
    for i, src_lp in enumerate(param.layer):
        lp = out.layer.add()
        lp.CopyFrom(src_lp)
        for j, name in enumerate(lp.bottom):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = split_idx.get(src, 0)
                lp.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
                split_idx[src] = k + 1
        for j, name in enumerate(lp.top):
            count = consumers.get((i, j), 0)
            if count > 1:
                sp = out.layer.add()
                sp.name = split_layer_name(lp.name, name, j)
                sp.type = "Split"
                sp.bottom.append(name)
                w = loss_weight.get((i, j), 0.0)
                for k in range(count):
                    sp.top.append(split_blob_name(lp.name, name, j, k))
                    if w:
                        sp.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    del lp.loss_weight[:]
                    split_idx[(i, j)] = split_idx.get((i, j), 0) + 1
    return out


class Net:
    """caffe::Net with pycaffe's Python surface (``blobs``, ``params``, ``forward``...)."""

    def __init__(self, network, *args, phase: int | None = None, weights: str | None = None,
                 level: int = 0, stages: Iterable[str] = (), source: str | None = None) -> None:
        # pycaffe forms: Net(proto, phase), Net(proto, weights, phase), Net(proto, phase, weights=...)
        for a in args:
            if isinstance(a, (int, np.integer)):
                phase = int(a)
            elif isinstance(a, str):
                weights = a
            else:
                raise CaffeError(f"Net: unexpected argument {a!r}")
        if phase is None:
            raise CaffeError("Net: a phase is required (caffe.TRAIN or caffe.TEST)")
        if isinstance(network, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(network)
            from .proto.upgrade import upgrade_net_as_needed
            upgrade_net_as_needed(param, source or "<NetParameter>")
            # the file it was read from, when the caller knows it (errors then name file:line)
            self.source = source or "<NetParameter>"
        else:
            from .proto.io import read_net_param
            param = read_net_param(str(network))
            self.source = str(network)
        param.state.phase = phase
        if level:
            param.state.level = level
        for s in stages:
            param.state.stage.append(s)
        self.phase = phase
        self._init(param)
        if weights:
            self.copy_from(weights)

    # -- construction (Net::Init) ---------------------------------------------------------
    def _init(self, in_param) -> None:
        param = insert_splits(filter_net(in_param))
        self.param = param
        self.name = param.name
        self.layers: list[Layer] = []
        self._layer_names: list[str] = []
        self._blobs: list[Blob] = []
        self._blob_names: list[str] = []
        self._blob_index: dict[str, int] = {}
        self._blob_need_backward: list[bool] = []
        self._blob_loss_weights: list[float] = []
        self.bottom_vecs: list[list[Blob]] = []
        self.top_vecs: list[list[Blob]] = []
        self.bottom_ids: list[list[int]] = []
        self.top_ids: list[list[int]] = []
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self._input_ids: list[int] = []
        self.params_list: list[Blob] = []           # Net::params_ (every param blob, shared too)
        self.param_owners: list[int] = []
        self.param_layer_indices: list[tuple[int, int]] = []
        self.param_display_names: list[str] = []
        self.learnable_params: list[Blob] = []
        self.learnable_param_ids: list[int] = []
        self.params_lr: list[float] = []
        self.params_weight_decay: list[float] = []
        self._has_lr: list[bool] = []
        self._has_decay: list[bool] = []
        self._param_names_index: dict[str, int] = {}
        available: set[str] = set()

        for layer_id, lp in enumerate(param.layer):
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise CaffeError(f"layer '{lp.name}': propagate_down must be given 0 or {len(lp.bottom)} times")
            try:
                layer = create_layer(lp, param.state.phase)
            except UnknownLayerType as e:
                where = None
                if os.path.isfile(self.source):
                    from .proto.io import locate_layer
                    where = locate_layer(self.source, lp.name, lp.type)
                raise e.at(where or self.source) from None
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            bvec, bids, bneed = [], [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise CaffeError(f"layer '{lp.name}': unknown bottom blob '{name}' (bottom index {j})")
                bid = self._blob_index[name]
                available.discard(name)
                nb = self._blob_need_backward[bid]
                if len(lp.propagate_down):
                    nb = bool(lp.propagate_down[j])
                bvec.append(self._blobs[bid])
                bids.append(bid)
                bneed.append(nb)
                need_backward |= self._blob_need_backward[bid]
            tvec, tids = [], []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and name == lp.bottom[j]:
                    bid = self._blob_index[name]  # in-place: the very same blob
                elif name in self._blob_index:
                    raise CaffeError(f"layer '{lp.name}': top blob '{name}' produced by multiple sources")
                else:
                    bid = len(self._blobs)
                    self._blobs.append(Blob(name=name))
                    self._blob_names.append(name)
                    self._blob_index[name] = bid
                    self._blob_need_backward.append(False)
                    self._blob_loss_weights.append(0.0)
                    if lp.type == "Input":
                        self._input_ids.append(bid)
                available.add(name)
                tvec.append(self._blobs[bid])
                tids.append(bid)
            if layer.auto_top_blobs:
                # Layer::AutoTopBlobs: e.g. a loss layer written without a top still gets one,
                # anonymous, which no other layer can consume.
                needed = max(layer.min_top, layer.exact_num_top)
                while len(tvec) < needed:
                    bid = len(self._blobs)
                    self._blobs.append(Blob(name="(automatic)"))
                    self._blob_names.append("(automatic)")
                    self._blob_need_backward.append(False)
                    self._blob_loss_weights.append(0.0)
                    tvec.append(self._blobs[bid])
                    tids.append(bid)
            self.bottom_vecs.append(bvec)
            self.top_vecs.append(tvec)
            self.bottom_ids.append(bids)
            self.top_ids.append(tids)
            self.bottom_need_backward.append(bneed)
            try:
                layer.SetUp(bvec, tvec)
            except AllocationError as e:
                raise CaffeError(f"layer '{lp.name}' ({lp.type}): {e}") from None
            except MemoryError:
                raise CaffeError(f"layer '{lp.name}' ({lp.type}): out of memory while setting up "
                                 f"(top shapes {[list(b.shape) for b in tvec]})") from None
            except CaffeError:
                raise
            except (ValueError, IndexError, TypeError) as e:
                if getattr(e, "caffe_context", None):
                    raise  # a user's Python layer: its own exception propagates, as in pycaffe
                raise CaffeError(f"layer '{lp.name}' ({lp.type}): setup failed: {e}") from e
            for j, bid in enumerate(tids):
                self._blob_loss_weights[bid] = layer.loss_weights[j] if j < len(layer.loss_weights) else 0.0
            nparams = len(layer.blobs)
            if len(lp.param) > nparams:
                raise CaffeError(f"layer '{lp.name}': too many param specs ({len(lp.param)} given, "
                                 f"the layer has {nparams} parameter blobs)")
            if len(layer.param_propagate_down) != nparams:
                layer.param_propagate_down = [True] * nparams
            for pid in range(nparams):
                spec = lp.param[pid] if pid < len(lp.param) else caffe_pb2.ParamSpec()
                pneed = spec.lr_mult != 0
                need_backward |= pneed
                layer.param_propagate_down[pid] = pneed
            for pid in range(nparams):
                self._append_param(layer_id, pid)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for bid in tids:
                    self._blob_need_backward[bid] = True

        self._prune_backward(param)
        self._output_ids = [self._blob_index[n] for n in sorted(available)]  # std::set order
        self._mode = backend.mode()  # the mode the layers were built in (see _follow_mode)
        self._on_device = any(layer.xp is not np for layer in self.layers)

    def _follow_mode(self) -> None:
        """Caffe reads Caffe::mode() at every Forward/Backward, so a net built in CPU mode computes
        on the GPU after set_mode_gpu() (and back). Each computing layer is rebuilt for the current
        mode from its LayerParameter on the same bottom/top Blobs, then given back its old parameter
        Blobs (same objects: net.params, shared params and solver references stay valid; the
        SyncedMemory moves their values when first read) and the state it carries between passes.
        Data sources (layers without bottoms), Python layers and HDF5Output stay as they are: they
        produce or consume host data in either mode and own readers, prefetchers or files."""
        from . import rng
        xp = backend.xp()
        state = rng.process_state()  # the new layers' throwaway fillers must not move the seeded stream
        try:
            for i, old in enumerate(self.layers):
                if old.xp is xp or not self.bottom_vecs[i] or old.type in _HOST_LAYER_TYPES:
                    continue
                new = create_layer(old.layer_param, old.phase)
                new.SetUp(self.bottom_vecs[i], self.top_vecs[i])
                new.blobs = old.blobs
                new.param_propagate_down = list(old.param_propagate_down)
                _carry_layer_state(old, new)
                self.layers[i] = new
        finally:
            rng.set_process_state(state)
        self._mode = backend.mode()
        self._on_device = self._mode == backend.GPU and any(layer.xp is not np for layer in self.layers)

    def _append_param(self, layer_id: int, param_id: int) -> None:
        layer = self.layers[layer_id]
        lp = layer.layer_param
        spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
        pname = spec.name
        self.param_display_names.append(pname or str(param_id))
        net_param_id = len(self.params_list)
        self.params_list.append(layer.blobs[param_id])
        self.param_layer_indices.append((layer_id, param_id))
        if not pname or pname not in self._param_names_index:
            self.param_owners.append(-1)
            if pname:
                self._param_names_index[pname] = net_param_id
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[param_id])
            self._has_lr.append(spec.HasField("lr_mult"))
            self._has_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner_id = self._param_names_index[pname]
        self.param_owners.append(owner_id)
        olayer, opid = self.param_layer_indices[owner_id]
        owner = self.layers[olayer].blobs[opid]
        mine = layer.blobs[param_id]
        if spec.share_mode == PERMISSIVE:
            if mine.count != owner.count:
                raise CaffeError(f"layer '{lp.name}': cannot share param '{pname}' owned by layer "
                                 f"'{self._layer_names[olayer]}': count {mine.count} vs {owner.count}")
            mine.share_data(owner)
            mine.share_diff(owner)
        else:
            if mine.shape != owner.shape:
                raise CaffeError(f"layer '{lp.name}': cannot share param '{pname}' owned by layer "
                                 f"'{self._layer_names[olayer]}': shape {list(mine.shape)} vs {list(owner.shape)}")
            layer.blobs[param_id] = owner
            self.params_list[net_param_id] = owner
        lid = self.learnable_param_ids[owner_id]
        self.learnable_param_ids.append(lid)
        for has, vals, field in ((self._has_lr, self.params_lr, "lr_mult"),
                                 (self._has_decay, self.params_weight_decay, "decay_mult")):
            if spec.HasField(field):
                if has[lid]:
                    if vals[lid] != getattr(spec, field):
                        raise CaffeError(f"layer '{lp.name}': shared param '{pname}' has mismatched {field}")
                else:
                    has[lid] = True
                    vals[lid] = getattr(spec, field)

    def _prune_backward(self, param) -> None:
        under_loss: set[str] = set()
        skip_backp: set[str] = set()
        for lid in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[lid]
            contributes, skip = False, True
            for j, bid in enumerate(self.top_ids[lid]):
                name = self._blob_names[bid]
                w = layer.loss_weights[j] if j < len(layer.loss_weights) else 0.0
                if w or name in under_loss:
                    contributes = True
                if name not in skip_backp:
                    skip = False
                if contributes and not skip:
                    break
            if self.layer_need_backward[lid] and skip:
                self.layer_need_backward[lid] = False
                self.bottom_need_backward[lid] = [False] * len(self.bottom_ids[lid])
            if not contributes:
                self.layer_need_backward[lid] = False
            for j, bid in enumerate(self.bottom_ids[lid]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[lid][j] = False
                if not self.bottom_need_backward[lid][j]:
                    skip_backp.add(name)
        if param.force_backward:
            for lid, layer in enumerate(self.layers):
                self.layer_need_backward[lid] = True
                for j, bid in enumerate(self.bottom_ids[lid]):
                    nb = self.bottom_need_backward[lid][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[lid][j] = nb
                    self._blob_need_backward[bid] = self._blob_need_backward[bid] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)

    # -- running (Net::ForwardFromTo / BackwardFromTo) ------------------------------------
    def forward_from_to(self, start: int = 0, end: int | None = None) -> float:
        end = len(self.layers) - 1 if end is None else end
        if self._mode != backend.mode():
            self._follow_mode()
        loss = 0.0
        before, after = self.callbacks["before_forward"], self.callbacks["after_forward"]
        for i in range(start, end + 1):
            for fn in before:
                fn(i)
            loss += self.layers[i].Forward(self.bottom_vecs[i], self.top_vecs[i])
            for fn in after:
                fn(i)
        return loss

    def backward_from_to(self, start: int | None = None, end: int = 0) -> None:
        start = len(self.layers) - 1 if start is None else start
        if self._mode != backend.mode():
            self._follow_mode()
        before, after = self.callbacks["before_backward"], self.callbacks["after_backward"]
        for i in range(start, end - 1, -1):
            for fn in before:
                fn(i)
            if self.layer_need_backward[i]:
                self.layers[i].Backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])
                hook = self._after_backward
                if hook is not None:
                    hook(i)
            for fn in after:  # Net::BackwardFromTo runs them for every layer, needed or not
                fn(i)

    _after_backward = None  # set by data-parallel training to overlap gradient reduction

    @property
    def callbacks(self) -> dict[str, list]:
        """Net::Callback lists (before/after forward/backward), each called with the layer index;
        filled by pycaffe's ``net.before_forward(fn)`` and friends (pycaffe_extras)."""
        cbs = self.__dict__.get("_callbacks")
        if cbs is None:
            cbs = self.__dict__["_callbacks"] = {k: [] for k in (
                "before_forward", "after_forward", "before_backward", "after_backward")}
        return cbs

    def set_after_backward(self, hook) -> None:
        """Call ``hook(layer_id)`` after each layer's backward (used to overlap communication)."""
        self._after_backward = hook

    def Forward(self) -> float:
        """Net::Forward: run every layer, return the weighted loss."""
        return self.forward_from_to()

    def Backward(self) -> None:
        self.backward_from_to()

    def forward_backward(self) -> float:
        """Net::ForwardBackward: loss of one forward followed by a backward."""
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def keep_forward_columns(self, on: bool = True) -> None:
        """Let the layers that unroll their input (Convolution) keep the forward's columns for the
        backward instead of recomputing them as Caffe does: only for nets whose every backward
        follows a forward of the same bottoms (training, timing). See layers/conv.py."""
        for i, layer in enumerate(self.layers):
            keep = getattr(layer, "keep_forward_columns", None)
            if keep is not None:
                keep(on and self.layer_need_backward[i])

    def reshape(self) -> None:
        """Net::Reshape: propagate changed input shapes through every layer."""
        if self._mode != backend.mode():
            self._follow_mode()
        for i, layer in enumerate(self.layers):
            layer.Reshape(self.bottom_vecs[i], self.top_vecs[i])

    def clear_param_diffs(self) -> None:
        """Zero every learnable parameter's diff (Solver::Step's ClearParamDiffs), on the side the
        net computes on (no transfer in GPU mode)."""
        if self._mode != backend.mode():
            self._follow_mode()
        with backend.device_side(self.on_device):
            for b in self.learnable_params:
                b.diff[...] = 0

    @property
    def on_device(self) -> bool:
        """Whether this net's layers compute on the GPU (built in, or last run in, GPU mode)."""
        return self._on_device

    # -- pycaffe surface -----------------------------------------------------------------------
    @property
    def blobs(self) -> "OrderedDict[str, Blob]":
        return OrderedDict(zip(self._blob_names, self._blobs))

    @property
    def params(self) -> "OrderedDict[str, list[Blob]]":
        return OrderedDict((n, l.blobs) for n, l in zip(self._layer_names, self.layers) if len(l.blobs))

    @property
    def layer_dict(self) -> "OrderedDict[str, Layer]":
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def blob_loss_weights(self) -> "OrderedDict[str, float]":
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def inputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._input_ids]

    @property
    def outputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._output_ids]

    @property
    def top_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((n, [self._blob_names[b] for b in ids]) for n, ids in zip(self._layer_names, self.top_ids))

    @property
    def bottom_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((n, [self._blob_names[b] for b in ids])
                           for n, ids in zip(self._layer_names, self.bottom_ids))

    def layer_index(self, name: str) -> int:
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise CaffeError(f"net '{self.name}': no layer named '{name}'") from None

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs) -> dict:
        """pycaffe Net.forward: set inputs from kwargs, run [start, end], return the outputs."""
        outputs = set(self.outputs if end is None else self.top_names[end]) | set(blobs or ())
        for name, value in kwargs.items():
            if name not in self._blob_index:
                raise CaffeError(f"net '{self.name}': no input blob named '{name}'")
            b = self._blobs[self._blob_index[name]]
            if value.shape != b.shape:
                raise CaffeError(f"input '{name}': expected shape {list(b.shape)}, got {list(value.shape)}")
            backend.assign(b.overwrite_cpu_data(), value)  # the batch goes up when a layer reads it
        s = 0 if start is None else self.layer_index(start)
        e = len(self.layers) - 1 if end is None else self.layer_index(end)
        self.forward_from_to(s, e)
        # cpu_data: the host copies pycaffe returns, leaving the device copies current
        return {n: self._blobs[self._blob_index[n]].cpu_data() for n in outputs}

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs) -> dict:
        """pycaffe Net.backward: set top diffs from kwargs, run [start, end] backwards, return input diffs."""
        outputs = set(self.inputs if end is None else self.bottom_names[end]) | set(diffs or ())
        for name, value in kwargs.items():
            b = self._blobs[self._blob_index[name]]
            if value.shape != b.shape:
                raise CaffeError(f"top diff '{name}': expected shape {list(b.shape)}, got {list(value.shape)}")
            backend.assign(b.overwrite_cpu_diff(), value)
        s = len(self.layers) - 1 if start is None else self.layer_index(start)
        e = 0 if end is None else self.layer_index(end)
        self.backward_from_to(s, e)
        return {n: self._blobs[self._blob_index[n]].cpu_diff() for n in outputs}

    # -- weights (Net::CopyTrainedLayersFrom / ToProto) ----------------------------------------
    def copy_from(self, source) -> None:
        """Net::CopyTrainedLayersFrom: copy blobs by layer name from a .caffemodel (binary or HDF5),
        a NetParameter, or another Net; layers absent here are ignored, as Caffe does."""
        if isinstance(source, Net):
            for name, blobs in source.params.items():
                if name in self._layer_names:
                    self._copy_layer_blobs(name, [b.cpu_data() for b in blobs], str(source.name))
            return
        if isinstance(source, caffe_pb2.NetParameter):
            src, path = source, "<NetParameter>"
        else:
            path = str(source)
            if path.endswith((".h5", ".hdf5")):
                from .proto.hdf5 import read_hdf5_weights
                for name, arrays in read_hdf5_weights(path):
                    if name in self._layer_names:
                        self._copy_layer_blobs(name, arrays, path)
                return
            from .proto.io import read_net_param_binary
            src = read_net_param_binary(path)
        from .proto.io import blobproto_to_array
        layers = list(src.layer) if len(src.layer) else list(src.layers)
        for lp in layers:
            if lp.name in self._layer_names:
                self._copy_layer_blobs(lp.name, [blobproto_to_array(b, what=f"{path}: layer '{lp.name}' blob {j}")
                                                 for j, b in enumerate(lp.blobs)], path)

    def _copy_layer_blobs(self, name: str, arrays: list, source: str) -> None:
        layer = self.layers[self._layer_names.index(name)]
        if len(arrays) != len(layer.blobs):
            raise CaffeError(f"{source}: layer '{name}': incompatible number of blobs "
                             f"({len(arrays)} in the file, {len(layer.blobs)} in the net)")
        for j, (arr, blob) in enumerate(zip(arrays, layer.blobs)):
            if arr is None:
                continue  # HDF5 weights leave out a parameter shared from another layer
            if tuple(arr.shape) != blob.shape:
                # Caffe accepts legacy 4-d shapes that match once leading 1s are dropped.
                if arr.size == blob.count and _squeeze_lead(arr.shape) == _squeeze_lead(blob.shape):
                    arr = arr.reshape(blob.shape)
                else:
                    raise CaffeError(f"{source}: cannot copy param {j} weights from layer '{name}'; shape "
                                     f"mismatch: source {list(arr.shape)}, target {list(blob.shape)}")
            blob.data[...] = arr  # the host copy (pycaffe's mutable_cpu_data); layers copy it up when used

    def to_proto(self, write_diff: bool = False):
        """Net::ToProto: the net's layers with their blobs, as a .caffemodel holds them."""
        from .proto.io import fill_blobproto
        out = caffe_pb2.NetParameter()
        out.name = self.param.name
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            for b in layer.blobs:
                # cpu_data: reading for the file leaves the device copy current (no upload after)
                fill_blobproto(lp.blobs.add(), b.cpu_data(), b.cpu_diff() if write_diff else None)
        return out

    def save(self, path: str) -> None:
        """pycaffe Net.save: write the weights as a binary .caffemodel (atomically)."""
        from .proto.io import write_proto_binary
        write_proto_binary(self.to_proto(), path)

    def share_with(self, other: "Net") -> None:
        """Net::ShareTrainedLayersWith: use ``other``'s parameter blobs (test nets share the train net's)."""
        for name, blobs in other.params.items():
            if name not in self._layer_names:
                continue
            layer = self.layers[self._layer_names.index(name)]
            if len(layer.blobs) != len(blobs):
                raise CaffeError(f"layer '{name}': incompatible number of blobs for sharing")
            for j, b in enumerate(blobs):
                if layer.blobs[j].shape != b.shape:
                    raise CaffeError(f"layer '{name}': cannot share param {j}: shape {list(layer.blobs[j].shape)} "
                                     f"vs {list(b.shape)}")
                layer.blobs[j] = b

    def __repr__(self) -> str:
        return f"<Net '{self.name}': {len(self.layers)} layers>"


#: layers a mode switch leaves as they are (besides data sources): they run on the host in both modes
_HOST_LAYER_TYPES = frozenset(("Python", "HDF5Output"))


def _carry_layer_state(old: Layer, new: Layer) -> None:
    """What a rebuilt layer must keep from the old one besides its parameter Blobs: its random
    stream position (Dropout's masks go on, not restart), a recurrent layer's carried hidden state,
    and a Convolution's keep_forward_columns choice."""
    stream = old.__dict__.get("random_stream")
    if stream is not None:
        new.random_stream = stream
    carried = getattr(old, "_state", None)
    if isinstance(carried, list) and getattr(new, "_state", None) is not None:
        new._state = [new.xp.asarray(backend.to_numpy(s)) for s in carried]
    if getattr(old, "_kept", None) is not None:
        old.keep_forward_columns(False)
        new.keep_forward_columns(True)


def _squeeze_lead(shape) -> tuple:
    # Blob::ShapeEquals on a legacy 4-d BlobProto indexes from the end (LegacyShape): leading 1s
    # are padding, down to a 0-axis blob stored as 1x1x1x1.
    shape = tuple(shape)
    while len(shape) > 0 and shape[0] == 1:
        shape = shape[1:]
    return shape
