"""Layers, one module per family, each registered by its Caffe type string."""
from .base import LAYER_REGISTRY, Layer, LossLayer, create_layer, layer_type_list, register  # noqa: F401
