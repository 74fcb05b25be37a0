"""FireCaffe's communication model (paper, Sec. 3, Eq. 1-4), computed from a net prototxt.

- Eq. 1, the parameter size |W| = Σ ch·numFilt·filterW·filterH·4 bytes over the convolution and
  fully-connected layers (``ch`` per group, i.e. the weight blob as Caffe allocates it); biases
  are reported separately.
- Eq. 2, the data size |D| = Σ numFilt·activationW·activationH·batch·4 bytes: the outputs of the
  same layers for one batch.
- Eq. 3, a parameter server's communication time per iteration: |W|·p/BW.
- Eq. 4, a reduction tree's: 2·log2(p)·|W|/BW.

The shapes come from the prototxt alone, by Caffe's shape rules (a layer-free shape inference, so
that VGG-19's 575 MB of weights need not be allocated); data layers take their shape from the
transform (crop_size), the LMDB's first Datum when the source exists, or ``input_shape``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..errors import CaffeError
from ..proto import caffe_pb2

TRAIN, TEST = 0, 1
FLOAT_BYTES = 4
#: FDR Infiniband, 56 Gbit/s: the interconnect class the paper recommends.
DEFAULT_BANDWIDTH = 56e9 / 8

#: layers whose top has the shape of their first bottom
_ELEMENTWISE = {
    "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold",
    "Dropout", "LRN", "BatchNorm", "Scale", "Bias", "MVN", "Softmax", "Eltwise", "Clip", "Swish",
    "Silence", "Python", "Tile",
}
_LOSS = {"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss",
         "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss"}


@dataclass
class LayerSize:
    """One convolution / fully-connected layer's share of |W| and |D|."""

    name: str
    type: str
    weight_shape: tuple[int, ...]
    bias: int
    top_shape: tuple[int, ...]

    @property
    def weights(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def activations(self) -> int:
        return math.prod(self.top_shape)


@dataclass
class NetSizes:
    """|W| (Eq. 1) and |D| (Eq. 2) of a net, with the per-layer breakdown."""

    name: str
    batch: int
    layers: list[LayerSize] = field(default_factory=list)
    other_params: int = 0            # learnable parameters of other layers (Scale, PReLU, ...)
    all_activations: int = 0         # every top blob, for reference
    notes: list[str] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        """Eq. 1: Σ ch·numFilt·filterW·filterH·4 over conv and fully-connected layers."""
        return FLOAT_BYTES * sum(l.weights for l in self.layers)

    @property
    def bias_bytes(self) -> int:
        return FLOAT_BYTES * sum(l.bias for l in self.layers)

    @property
    def data_bytes(self) -> int:
        """Eq. 2: Σ numFilt·activationW·activationH·batch·4 over the same layers."""
        return FLOAT_BYTES * sum(l.activations for l in self.layers)

    @property
    def gradient_bytes(self) -> int:
        """What data-parallel training actually all-reduces: every learnable parameter."""
        return self.weight_bytes + self.bias_bytes + FLOAT_BYTES * self.other_params


# -- Eq. 3 and 4 -----------------------------------------------------------------------------------
def parameter_server_seconds(weight_bytes: float, p: int, bandwidth: float) -> float:
    """Eq. 3: |W|·p/BW (zero for a single worker, which communicates nothing)."""
    return 0.0 if p <= 1 else weight_bytes * p / bandwidth


def reduction_tree_seconds(weight_bytes: float, p: int, bandwidth: float) -> float:
    """Eq. 4: 2·log2(p)·|W|/BW."""
    return 0.0 if p <= 1 else 2 * math.log2(p) * weight_bytes / bandwidth


def speedup(compute_seconds: float, comm_seconds: float, p: int) -> float:
    """Strong scaling of a fixed global batch: t / (t/p + communication)."""
    return compute_seconds / (compute_seconds / p + comm_seconds)


# -- shape inference ---------------------------------------------------------------------------
def _pair(values, h_field, w_field, param, default):
    """Caffe's kernel/stride/pad: repeated field (1 value or one per axis) or the _h/_w pair."""
    if param.HasField(h_field) or param.HasField(w_field):
        return int(getattr(param, h_field)), int(getattr(param, w_field))
    vals = list(values)
    if not vals:
        return default, default
    if len(vals) == 1:
        return int(vals[0]), int(vals[0])
    return int(vals[0]), int(vals[1])


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _peek_datum_shape(source: str, backend: int) -> tuple[int, int, int] | None:
    """(C, H, W) of the first Datum of an LMDB, when the source is there to read."""
    if not source or not os.path.isdir(source):
        return None
    try:
        import lmdb
        from ..data.db import check_lmdb_file
        check_lmdb_file(source)  # a truncated data.mdb would raise SIGBUS, not an exception
        env = lmdb.open(source, readonly=True, lock=False, subdir=True)
        with env.begin() as txn:
            cur = txn.cursor()
            if not cur.first():
                return None
            d = caffe_pb2.Datum()
            d.ParseFromString(cur.value())
        env.close()
        if d.encoded:
            import cv2
            import numpy as np
            img = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED)
            return (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
        return (d.channels, d.height, d.width)
    except Exception:
        return None


def _data_shape(lp, batch: int | None, input_shape, notes: list[str]) -> tuple[int, ...]:
    """The data top of a Data/ImageData/... layer: (batch, C, H, W)."""
    t = lp.type
    crop = lp.transform_param.crop_size
    if t == "MemoryData":
        mp = lp.memory_data_param
        n = batch or mp.batch_size
        return (n, mp.channels, mp.height, mp.width)
    if t == "ImageData":
        n = batch or lp.image_data_param.batch_size
        c = 3 if lp.image_data_param.is_color else 1
        h, w = lp.image_data_param.new_height, lp.image_data_param.new_width
    elif t == "WindowData":
        n = batch or lp.window_data_param.batch_size
        c, h, w = 3, lp.window_data_param.crop_size, lp.window_data_param.crop_size
    elif t == "HDF5Data":
        n = batch or lp.hdf5_data_param.batch_size
        c = h = w = 0
    else:
        n = batch or lp.data_param.batch_size
        peek = _peek_datum_shape(lp.data_param.source, lp.data_param.backend)
        c, h, w = peek if peek else (3, 0, 0)
    if input_shape:
        dims = tuple(int(x) for x in input_shape)
        return (n,) + dims[-3:] if len(dims) >= 3 else (n,) + dims
    if crop:
        h = w = crop
    if not (h and w):
        raise CaffeError(f"layer '{lp.name}' ({t}): cannot tell the input shape from the prototxt "
                         "(no crop_size and no readable source); give --input-shape C,H,W")
    if crop and t == "Data" and c == 3:
        notes.append(f"layer '{lp.name}': assumed 3 channels (source not readable here)")
    return (n, c, h, w)


def _filtered(param: caffe_pb2.NetParameter, phase: int) -> caffe_pb2.NetParameter:
    from ..net import filter_net
    p = caffe_pb2.NetParameter()
    p.CopyFrom(param)
    p.state.phase = phase
    return filter_net(p)


def net_sizes(model, batch: int | None = None, phase: int = TRAIN,
              input_shape: tuple[int, ...] | None = None) -> NetSizes:
    """|W|, |D| and the per-layer breakdown of a net (path or NetParameter), by Caffe's shape
    rules. ``batch`` overrides the prototxt's; ``input_shape`` (C,H,W) the data layers' images."""
    if isinstance(model, caffe_pb2.NetParameter):
        param = model
    else:
        from ..proto.io import read_net_param
        param = read_net_param(os.fspath(model))
    param = _filtered(param, phase)
    shapes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    sizes = NetSizes(name=param.name, batch=0, notes=notes)
    for lp in param.layer:
        t = lp.type
        bottoms = []
        for b in lp.bottom:
            if b not in shapes:
                raise CaffeError(f"layer '{lp.name}': unknown bottom blob '{b}'")
            bottoms.append(shapes[b])
        tops: list[tuple[int, ...]] = []
        if t == "Input":
            for j, top in enumerate(lp.top):
                s = lp.input_param.shape[j if len(lp.input_param.shape) > 1 else 0]
                dims = tuple(int(d) for d in s.dim)
                if batch and dims:
                    dims = (batch,) + dims[1:]
                tops.append(dims)
        elif t in ("Data", "ImageData", "MemoryData", "WindowData", "HDF5Data", "AnnotatedData"):
            data = _data_shape(lp, batch, input_shape, notes)
            tops = [data] + [(data[0],)] * (len(lp.top) - 1)
        elif t == "DummyData":
            for j in range(len(lp.top)):
                s = lp.dummy_data_param.shape[j if len(lp.dummy_data_param.shape) > 1 else 0]
                dims = tuple(int(d) for d in s.dim)
                tops.append((batch,) + dims[1:] if batch and dims else dims)
        elif t in ("Convolution", "Deconvolution"):
            cp = lp.convolution_param
            n, c, h, w = bottoms[0]
            kh, kw = _pair(cp.kernel_size, "kernel_h", "kernel_w", cp, 0)
            sh, sw = _pair(cp.stride, "stride_h", "stride_w", cp, 1)
            ph, pw = _pair(cp.pad, "pad_h", "pad_w", cp, 0)
            dil = list(cp.dilation)
            dh = dw = int(dil[0]) if dil else 1
            if len(dil) > 1:
                dh, dw = int(dil[0]), int(dil[1])
            g = cp.group or 1
            if t == "Convolution":
                oh, ow = _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)
                wshape = (cp.num_output, c // g, kh, kw)
            else:
                oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
                ow = sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw
                wshape = (c, cp.num_output // g, kh, kw)
            top = (n, cp.num_output, oh, ow)
            tops = [top] * len(lp.top)
            sizes.layers.append(LayerSize(lp.name, t, wshape, cp.num_output if cp.bias_term else 0, top))
        elif t == "InnerProduct":
            ip = lp.inner_product_param
            b = bottoms[0]
            axis = ip.axis % len(b) if b else 1
            k = math.prod(b[axis:])
            top = tuple(b[:axis]) + (ip.num_output,)
            wshape = (k, ip.num_output) if ip.transpose else (ip.num_output, k)
            tops = [top]
            sizes.layers.append(LayerSize(lp.name, t, wshape, ip.num_output if ip.bias_term else 0, top))
        elif t == "Pooling":
            pp = lp.pooling_param
            n, c, h, w = bottoms[0]
            if pp.global_pooling:
                oh = ow = 1
            else:
                kh, kw = _pair([pp.kernel_size] if pp.HasField("kernel_size") else [], "kernel_h", "kernel_w", pp, 0)
                sh, sw = _pair([pp.stride] if pp.HasField("stride") else [], "stride_h", "stride_w", pp, 1)
                ph, pw = _pair([pp.pad] if pp.HasField("pad") else [], "pad_h", "pad_w", pp, 0)
                oh = int(math.ceil((h + 2 * ph - kh) / sh)) + 1
                ow = int(math.ceil((w + 2 * pw - kw) / sw)) + 1
                if ph and (oh - 1) * sh >= h + ph:
                    oh -= 1
                if pw and (ow - 1) * sw >= w + pw:
                    ow -= 1
            tops = [(n, c, oh, ow)] * len(lp.top)
        elif t == "Concat":
            axis = lp.concat_param.axis if lp.concat_param.HasField("axis") else lp.concat_param.concat_dim \
                if lp.concat_param.HasField("concat_dim") else 1
            axis %= len(bottoms[0])
            top = list(bottoms[0])
            top[axis] = sum(b[axis] for b in bottoms)
            tops = [tuple(top)]
        elif t == "Split":
            tops = [bottoms[0]] * len(lp.top)
        elif t == "Flatten":
            b = bottoms[0]
            a = lp.flatten_param.axis % len(b)
            e = lp.flatten_param.end_axis % len(b)
            tops = [tuple(b[:a]) + (math.prod(b[a:e + 1]),) + tuple(b[e + 1:])]
        elif t == "Reshape":
            b = bottoms[0]
            dims = [int(d) for d in lp.reshape_param.shape.dim]
            out = [b[i] if d == 0 else d for i, d in enumerate(dims)]
            if -1 in out:
                known = math.prod(d for d in out if d != -1)
                out[out.index(-1)] = math.prod(b) // max(1, known)
            tops = [tuple(out)]
        elif t == "Slice":
            b = bottoms[0]
            axis = lp.slice_param.axis % len(b)
            pts = [0] + list(lp.slice_param.slice_point) + [b[axis]]
            if len(lp.slice_param.slice_point) == 0:
                step = b[axis] // len(lp.top)
                pts = [i * step for i in range(len(lp.top) + 1)]
            tops = [tuple(b[:axis]) + (pts[i + 1] - pts[i],) + tuple(b[axis + 1:]) for i in range(len(lp.top))]
        elif t == "Crop":
            a = lp.crop_param.axis % len(bottoms[0])
            tops = [tuple(bottoms[0][:a]) + tuple(bottoms[1][a:])]
        elif t in _LOSS or t == "Accuracy":
            tops = [()] * len(lp.top)
        elif t == "ArgMax":
            ap = lp.argmax_param
            b = bottoms[0]
            tops = [(b[0], 2 if ap.out_max_val else 1, ap.top_k)]
        else:
            if t not in _ELEMENTWISE:
                notes.append(f"layer '{lp.name}': type {t} taken as shape-preserving")
            tops = [bottoms[0] if bottoms else ()] * len(lp.top)
            if t in ("Scale", "Bias") and len(bottoms) == 1:
                sizes.other_params += bottoms[0][1] if len(bottoms[0]) > 1 else 1
            elif t == "PReLU":
                sizes.other_params += 1 if lp.prelu_param.channel_shared else bottoms[0][1]
        for name, shape in zip(lp.top, tops):
            if name not in lp.bottom:
                sizes.all_activations += math.prod(shape) if shape else 1
            shapes[name] = shape
        if not sizes.batch and tops and tops[0]:
            sizes.batch = tops[0][0]
    return sizes


# -- the table -----------------------------------------------------------------------------------
def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def format_report(sizes: NetSizes, gpus: list[int], bandwidth: float,
                  compute_seconds: float | None = None) -> str:
    """The comm-model report: sizes, then Eq. 3 and Eq. 4 (and speedups) for each p."""
    w = sizes.weight_bytes
    lines = [
        f"net: {sizes.name}   batch: {sizes.batch}",
        f"|W| parameter size (Eq. 1, conv + fully-connected weights): {w} bytes ({mb(w)})",
        f"    biases: {sizes.bias_bytes} bytes ({mb(sizes.bias_bytes)}); other learnable parameters: "
        f"{FLOAT_BYTES * sizes.other_params} bytes; all-reduced per iteration: {sizes.gradient_bytes} bytes "
        f"({mb(sizes.gradient_bytes)})",
        f"|D| data size (Eq. 2, their outputs for batch {sizes.batch}): {sizes.data_bytes} bytes "
        f"({mb(sizes.data_bytes)})",
        f"bandwidth: {bandwidth:.4g} bytes/s ({bandwidth * 8 / 1e9:.3g} Gbit/s)",
        "",
    ]
    head = f"{'GPUs':>6} {'param server (Eq.3) s':>22} {'reduction tree (Eq.4) s':>24}"
    if compute_seconds is not None:
        head += f" {'speedup PS':>11} {'speedup tree':>13}"
    lines.append(head)
    for p in gpus:
        ps = parameter_server_seconds(w, p, bandwidth)
        tr = reduction_tree_seconds(w, p, bandwidth)
        row = f"{p:>6} {ps:>22.6f} {tr:>24.6f}"
        if compute_seconds is not None:
            row += f" {speedup(compute_seconds, ps, p):>11.2f} {speedup(compute_seconds, tr, p):>13.2f}"
        lines.append(row)
    for n in sizes.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
