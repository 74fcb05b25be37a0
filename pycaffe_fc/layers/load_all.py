"""Imports every layer family so that each registers its Caffe type strings."""
import importlib

FAMILIES = (
    "input", "conv", "pooling", "inner_product", "normalization", "activation", "shape",
    "eltwise", "loss", "misc", "data", "python_layer", "recurrent", "hdf5_output", "window_data",
)

for _name in FAMILIES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as e:  # a family not present in this build
        if e.name != f"{__package__}.{_name}":
            raise
