"""Upgrading old net and solver definitions, as Caffe's src/caffe/util/upgrade_proto.cpp.

Caffe has changed its net format several times and silently upgrades old files
when it reads them. The chain, in UpgradeNetAsNeeded's order:

1. V0 -> V1: `layers { layer { type: "conv" ... } }` becomes
   `layers { type: CONVOLUTION convolution_param { ... } }`; "padding" layers
   are folded into the pad of the conv/pool layer they feed.
2. Data transformation: scale/mean_file/crop_size/mirror move from
   data_param/image_data_param/window_data_param into transform_param.
3. V1 -> V2: `layers` (enum type) becomes `layer` (string type); blobs_lr,
   weight_decay, param and blob_share_mode become `param { ... }` ParamSpecs.
4. Input: net-level `input` + `input_shape`/`input_dim` become an "Input" layer.
5. BatchNorm: the three param specs old BatchNorm nets had to declare get
   lr_mult 0 and decay_mult 0.

Solvers: the `solver_type` enum becomes the `type` string.

All functions work in place on the given message, like the C++ ones, and return
Caffe's "fully compatible" flag; Caffe's LOG(FATAL) cases raise CaffeError.
"""
from __future__ import annotations

import logging

from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2

log = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter


# ---------------------------------------------------------------------------
# Which upgrades a net needs

def net_needs_v0_to_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if any V1 `layers` entry wraps a V0 `layer` (NetNeedsV0ToV1Upgrade)."""
    return any(l.HasField("layer") for l in net.layers)


def net_needs_v1_to_v2_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if the net uses the deprecated `layers` field (NetNeedsV1ToV2Upgrade)."""
    return len(net.layers) > 0


# V1 data layer types and the *_param holding the old transformation fields.
_DATA_TRANSFORM_PARAMS = {
    V1.DATA: "data_param",
    V1.IMAGE_DATA: "image_data_param",
    V1.WINDOW_DATA: "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def net_needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if a V1 data layer keeps transformation fields in its own param (NetNeedsDataUpgrade)."""
    for layer in net.layers:
        field = _DATA_TRANSFORM_PARAMS.get(layer.type)
        if field is not None:
            param = getattr(layer, field)
            if any(param.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def net_needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if the net declares net-level inputs (NetNeedsInputUpgrade)."""
    return len(net.input) > 0


def net_needs_batch_norm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if a BatchNorm layer declares three param specs (NetNeedsBatchNormUpgrade)."""
    return any(l.type == "BatchNorm" and len(l.param) == 3 for l in net.layer)


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if any of the upgrades applies (NetNeedsUpgrade)."""
    return (net_needs_v0_to_v1_upgrade(net) or net_needs_v1_to_v2_upgrade(net)
            or net_needs_data_upgrade(net) or net_needs_input_upgrade(net)
            or net_needs_batch_norm_upgrade(net))


# ---------------------------------------------------------------------------
# V0 -> V1

_V0_LAYER_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION, "data": V1.DATA, "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS, "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN, "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING, "relu": V1.RELU, "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT,
    "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}


def upgrade_v0_layer_type(type_name: str) -> int:
    """The V1 LayerType enum value for a V0 type string (UpgradeV0LayerType)."""
    try:
        return _V0_LAYER_TYPES[type_name]
    except KeyError:
        raise CaffeError(f"unknown V0 layer type '{type_name}'") from None


# V0 field -> {V0 layer type: (V1 sub-message, field in it)}. "*" means any type:
# UpgradeV0LayerParameter sends the old transformation fields to
# transform_param whatever the layer type.
_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_V0_FIELD_MAP: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    # V0 and V2 PoolMethod enums have the same values.
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}


def _assign(msg, field: str, value) -> None:
    """Set `field` of `msg` (append if repeated, copy if a message; '' = msg itself)."""
    if not field:
        msg.CopyFrom(value)
        return
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if fd.is_repeated:
        getattr(msg, field).append(value)
    elif fd.message_type is not None:
        getattr(msg, field).CopyFrom(value)
    else:
        setattr(msg, field, value)


def upgrade_v0_layer_parameter(v0: caffe_pb2.V1LayerParameter,
                               out: caffe_pb2.V1LayerParameter) -> bool:
    """Fill V1 layer `out` from V0-wrapping `v0` (UpgradeV0LayerParameter)."""
    out.Clear()
    out.bottom.extend(v0.bottom)
    out.top.extend(v0.top)
    if not v0.HasField("layer"):
        return True
    old = v0.layer
    ok = True
    if old.HasField("name"):
        out.name = old.name
    if old.HasField("type"):
        out.type = upgrade_v0_layer_type(old.type)
    out.blobs.extend(old.blobs)
    out.blobs_lr.extend(old.blobs_lr)
    out.weight_decay.extend(old.weight_decay)
    for v0_field, targets in _V0_FIELD_MAP.items():
        if not old.HasField(v0_field):
            continue
        target = targets.get(old.type) or targets.get("*")
        if target is None:
            # Caffe logs and carries on, reporting the net as not fully compatible.
            log.error("Unknown parameter %s for layer type %s", v0_field, old.type)
            ok = False
            continue
        sub, field = target
        _assign(getattr(out, sub), field, getattr(old, v0_field))
    return ok


def upgrade_v0_padding_layers(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of V0 `net` with "padding" layers folded into the next conv/pool (UpgradeV0PaddingLayers)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    # Index (in `net`) of the layer that last produced each blob; -1 = net input.
    last_top = {name: -1 for name in net.input}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise CaffeError(f"unknown blob input '{blob}' to layer '{v0.name}'")
            src_idx = last_top[blob]
            if src_idx == -1:
                continue
            src = net.layers[src_idx]
            if src.layer.type == "padding":
                # Caffe only defines padding feeding a single-input conv or pool.
                if v0.type not in ("conv", "pool"):
                    raise CaffeError(f"padding layer '{src.layer.name}' feeds "
                                     f"non-convolution/non-pooling layer type '{v0.type}'")
                if len(conn.bottom) != 1 or len(src.bottom) != 1 or len(src.top) != 1:
                    raise CaffeError(f"padding layer '{src.layer.name}' and layer '{v0.name}' "
                                     "must each take a single blob")
                last = out.layers[-1]
                last.layer.pad = src.layer.pad
                last.bottom[j] = src.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def upgrade_v0_net(net: caffe_pb2.NetParameter) -> bool:
    """Turn a V0 net into a V1 net in place (UpgradeV0Net)."""
    padded = upgrade_v0_padding_layers(net)
    ok = True
    # Only these net-level fields survive, as in Caffe.
    net.Clear()
    if padded.HasField("name"):
        net.name = padded.name
    for conn in padded.layers:
        ok &= upgrade_v0_layer_parameter(conn, net.layers.add())
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward
    return ok


# ---------------------------------------------------------------------------
# Data transformation fields -> transform_param

def upgrade_net_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move scale/mean_file/crop_size/mirror into transform_param (UpgradeNetDataTransformation)."""
    for layer in net.layers:
        field = _DATA_TRANSFORM_PARAMS.get(layer.type)
        if field is None:
            continue
        param = getattr(layer, field)
        # Caffe's mutable_*() calls create both sub-messages even when empty.
        param.SetInParent()
        layer.transform_param.SetInParent()
        for f in _TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(layer.transform_param, f, getattr(param, f))
                param.ClearField(f)


# ---------------------------------------------------------------------------
# V1 -> V2

_V1_LAYER_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL", V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data",
    V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN",
    V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split",
    V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# The *_param sub-messages V1 layers can carry; all are copied verbatim.
_V1_COPIED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param",
    "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param",
    "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param",
    "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param",
)


def upgrade_v1_layer_type(layer_type: int) -> str:
    """The layer type string for a V1 LayerType enum value (UpgradeV1LayerType)."""
    try:
        return _V1_LAYER_TYPES[layer_type]
    except KeyError:
        raise CaffeError(f"unknown V1LayerParameter layer type {layer_type}") from None


def upgrade_v1_layer_parameter(v1: caffe_pb2.V1LayerParameter,
                               layer: caffe_pb2.LayerParameter) -> bool:
    """Fill `layer` from V1 layer `v1` (UpgradeV1LayerParameter)."""
    layer.Clear()
    ok = True
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = upgrade_v1_layer_type(v1.type)
    layer.blobs.extend(v1.blobs)

    def param(i: int) -> caffe_pb2.ParamSpec:
        # Caffe grows the ParamSpec list on demand for each per-blob field.
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        # V1 and V2 DimCheckMode enums have the same values.
        param(i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        param(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field in _V1_COPIED_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    if v1.HasField("layer"):
        log.error("Input NetParameter has V0 layer -- ignoring.")
        ok = False
    return ok


def upgrade_v1_net(net: caffe_pb2.NetParameter) -> bool:
    """Turn `layers` into `layer` in place (UpgradeV1Net)."""
    if len(net.layer) > 0:
        raise CaffeError(
            "refusing to upgrade inconsistent NetParameter: it has both 'layer' and "
            "'layers' fields; switch the definition to 'layer { type: \"Type\" ... }' format")
    v1_layers = list(net.layers)
    # Keep references alive: copy before clearing the repeated field.
    v1_copies = [caffe_pb2.V1LayerParameter() for _ in v1_layers]
    for dst, src in zip(v1_copies, v1_layers):
        dst.CopyFrom(src)
    del net.layers[:]
    ok = True
    for i, v1 in enumerate(v1_copies):
        if not upgrade_v1_layer_parameter(v1, net.layer.add()):
            log.error("Upgrade of input layer %d failed.", i)
            ok = False
    return ok


# ---------------------------------------------------------------------------
# Net inputs -> Input layer, BatchNorm params

def upgrade_net_input(net: caffe_pb2.NetParameter) -> None:
    """Replace net-level inputs by a leading "Input" layer named "input" (UpgradeNetInput).

    An `input` without shape or dims (as in old .caffemodel files) is just
    dropped.
    """
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        input_param = layer.input_param
        input_param.SetInParent()
        for i, name in enumerate(net.input):
            layer.top.append(name)
            if has_shape:
                if i >= len(net.input_shape):
                    raise CaffeError(f"net input '{name}' has no input_shape")
                input_param.shape.add().CopyFrom(net.input_shape[i])
            else:
                dims = net.input_dim[4 * i:4 * i + 4]
                if len(dims) != 4:
                    raise CaffeError(f"net input '{name}' needs 4 input_dim values")
                input_param.shape.add().dim.extend(dims)
        layers = [caffe_pb2.LayerParameter() for _ in net.layer]
        for dst, src in zip(layers, net.layer):
            dst.CopyFrom(src)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_net_batch_norm(net: caffe_pb2.NetParameter) -> None:
    """Zero lr_mult and decay_mult of BatchNorm layers with 3 param specs (UpgradeNetBatchNorm).

    Old BatchNorm definitions had to declare three `param { lr_mult: 0 }`; Caffe
    master keeps the specs (names may be shared) but forces them not to learn.
    """
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------------------
# The whole chain

def upgrade_net_as_needed(net: caffe_pb2.NetParameter, source_name: str = "") -> bool:
    """Apply every needed upgrade in place, as Caffe's UpgradeNetAsNeeded.

    Returns False when an upgrade was only partly possible (Caffe then logs an
    error and continues); inconsistent input raises CaffeError.
    """
    ok = True
    src = source_name or "<net>"
    try:
        if net_needs_v0_to_v1_upgrade(net):
            log.info("Attempting to upgrade input file specified using deprecated "
                     "V0LayerParameter: %s", src)
            if not upgrade_v0_net(net):
                ok = False
                log.error("Warning: had one or more problems upgrading V0NetParameter "
                          "to NetParameter (see above); continuing anyway.")
        if net_needs_data_upgrade(net):
            log.info("Attempting to upgrade input file specified using deprecated "
                     "transformation parameters: %s", src)
            upgrade_net_data_transformation(net)
        if net_needs_v1_to_v2_upgrade(net):
            log.info("Attempting to upgrade input file specified using deprecated "
                     "V1LayerParameter: %s", src)
            if not upgrade_v1_net(net):
                ok = False
                log.error("Warning: had one or more problems upgrading V1LayerParameter "
                          "(see above); continuing anyway.")
        if net_needs_input_upgrade(net):
            log.info("Attempting to upgrade input file specified using deprecated "
                     "input fields: %s", src)
            upgrade_net_input(net)
        if net_needs_batch_norm_upgrade(net):
            log.info("Attempting to upgrade batch norm layers using deprecated "
                     "params: %s", src)
            upgrade_net_batch_norm(net)
    except CaffeError as e:
        # Name the file: the messages above only name the layer or blob.
        raise CaffeError(f"{src}: {e}") from None
    return ok


# ---------------------------------------------------------------------------
# Solvers

_SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def solver_needs_type_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    """True if the deprecated `solver_type` enum is set (SolverNeedsTypeUpgrade)."""
    return solver.HasField("solver_type")


def upgrade_solver_type(solver: caffe_pb2.SolverParameter) -> bool:
    """Replace `solver_type` by the `type` string in place (UpgradeSolverType)."""
    if solver.HasField("solver_type") and solver.HasField("type"):
        # Caffe refuses both, even when they agree.
        raise CaffeError("old solver_type field (enum) and new type field (string) "
                         "cannot both be specified")
    if not solver.HasField("solver_type"):
        log.error("Warning: solver type already up to date.")
        return False
    solver.type = _SOLVER_TYPE_NAMES[solver.solver_type]
    solver.ClearField("solver_type")
    return True


def upgrade_solver_as_needed(solver: caffe_pb2.SolverParameter, source_name: str = "") -> bool:
    """Apply the solver upgrades in place, as Caffe's UpgradeSolverAsNeeded."""
    ok = True
    src = source_name or "<solver>"
    if solver_needs_type_upgrade(solver):
        log.info("Attempting to upgrade input file specified using deprecated "
                 "'solver_type' field (enum)': %s", src)
        try:
            ok = upgrade_solver_type(solver)
        except CaffeError as e:
            raise CaffeError(f"{src}: {e}") from None
    return ok

