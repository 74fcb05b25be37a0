"""caffe.draw: draw a NetParameter as a graph with graphviz, as pycaffe's draw.py.

Layers are boxes (convolutions red, pooling orange, inner products purple, others blue; in-place
layers green), blobs are grey octagons; edges out of Data/Convolution/InnerProduct layers carry the
batch size or number of outputs. ``phase`` (caffe.TRAIN/TEST) keeps only the layers of that phase.
Needs pydot (``pip install pydot``) and graphviz's ``dot`` program (``apt-get install graphviz``).
"""
from __future__ import annotations

import os
import shutil

from .errors import CaffeError
from .proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

_LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}


def _pydot():
    try:
        import pydot  # type: ignore
    except ImportError:
        raise CaffeError("drawing a net needs pydot and graphviz: pip install pydot "
                         "(and apt-get install graphviz for the dot program)") from None
    if shutil.which("dot") is None:
        raise CaffeError("drawing a net needs graphviz's dot program, not found on PATH: "
                         "apt-get install graphviz (or brew install graphviz)")
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """PoolingParameter.PoolMethod value -> name."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def get_edge_label(layer) -> str:
    """The label of a layer's output edges: batch size (Data) or num_output (Convolution, InnerProduct)."""
    if layer.type == "Data":
        return f'"Batch {layer.data_param.batch_size}"'
    if layer.type in ("Convolution", "Deconvolution"):
        return f'"{layer.convolution_param.num_output}"'
    if layer.type == "InnerProduct":
        return f'"{layer.inner_product_param.num_output}"'
    return '""'


def _lr_mults(layer) -> str:
    return ", ".join(f"{p.lr_mult:g}" for p in layer.param) if len(layer.param) else ""


def get_layer_label(layer, rankdir: str, display_lrm: bool = False) -> str:
    """A layer's box text: name, (type), and kernel/stride/pad for convolution and pooling."""
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    if layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        kernel = cp.kernel_size[0] if len(cp.kernel_size) else (cp.kernel_h or 1)
        stride = cp.stride[0] if len(cp.stride) else (cp.stride_h or 1)
        pad = cp.pad[0] if len(cp.pad) else cp.pad_h
        parts = [layer.name, f"({layer.type})", f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]
    elif layer.type == "Pooling":
        pp = layer.pooling_param
        kernel = pp.kernel_size or pp.kernel_h
        stride = pp.stride_h if pp.HasField("stride_h") else pp.stride
        pad = pp.pad or pp.pad_h
        pool = get_pooling_types_dict()[pp.pool]
        parts = [layer.name, f"({pool} {layer.type})",
                 "global" if pp.global_pooling else f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]
    else:
        parts = [layer.name, f"({layer.type})"]
    if display_lrm and _lr_mults(layer):
        parts.append(f"lr mult: {_lr_mults(layer)}")
    return '"' + sep.join(p.replace('"', '\\"') for p in parts) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    """Box colour of a layer type."""
    return _LAYER_COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def _included(layer, phase: int | None) -> bool:
    # pycaffe's draw filter: by phase only (levels and stages are not drawn about)
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise CaffeError(f"layer '{layer.name}' has both include and exclude specified")
    included = not len(layer.include)
    for rule in layer.include:
        included = included or (rule.HasField("phase") and rule.phase == phase)
    for rule in layer.exclude:
        included = included and not (rule.HasField("phase") and rule.phase == phase)
    return included


def get_pydot_graph(caffe_net, rankdir: str = "LR", label_edges: bool = True, phase: int | None = None,
                    display_lrm: bool = False):
    """The pydot.Dot graph of a NetParameter (layers, blobs and the edges between them)."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict = {}
    edges: list[tuple[str, str, str]] = []
    layers = list(caffe_net.layer)
    if not layers and len(caffe_net.layers):
        from .proto.upgrade import upgrade_net_as_needed  # a V1 net: draw it as the upgraded net
        up = caffe_pb2.NetParameter()
        up.CopyFrom(caffe_net)
        upgrade_net_as_needed(up, "<NetParameter>")
        layers = list(up.layer)
    for layer in layers:
        if not _included(layer, phase):
            continue
        node_name = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir, display_lrm)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            style = NEURON_LAYER_STYLE  # an in-place (neuron) layer
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        nodes[node_name] = pydot.Node(node_name, label=label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom + "_blob", label=f'"{bottom}"', **BLOB_STYLE)
            edges.append((bottom + "_blob", node_name, '""'))
        for top in layer.top:
            nodes.setdefault(top + "_blob", pydot.Node(top + "_blob", label=f'"{top}"', **BLOB_STYLE))
            edges.append((node_name, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net, rankdir: str = "LR", ext: str = "png", phase: int | None = None,
             display_lrm: bool = False) -> bytes:
    """The net drawn in format ``ext`` (png, pdf, svg, ...), as bytes."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    try:
        return graph.create(format=ext)
    except FileNotFoundError as e:
        raise CaffeError(f"graphviz's dot program could not be run ({e}): apt-get install graphviz") from e
    except Exception as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise CaffeError(f"graphviz could not draw the net as '{ext}': {lines[-1]}") from e


def draw_net_to_file(caffe_net, filename: str, rankdir: str = "LR", phase: int | None = None,
                     display_lrm: bool = False) -> None:
    """Draw the net into ``filename``; its extension (.png, .pdf, .svg...) picks the format."""
    ext = os.path.splitext(str(filename))[1].lstrip(".")
    if not ext:
        raise CaffeError(f"{filename}: give the output file an extension (.png, .pdf, .svg...) to pick the format")
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    try:
        with open(filename, "wb") as f:
            f.write(data)
    except OSError as e:
        raise CaffeError(f"{filename}: cannot write ({e.strerror})") from None
