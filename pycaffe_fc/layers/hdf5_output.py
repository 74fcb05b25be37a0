"""HDF5Output (hdf5_output_layer.cpp): write the two bottoms to an HDF5 file.

Caffe creates (truncates) ``hdf5_output_param.file_name`` at setup and, at each forward, stores
bottom 0 as the float dataset ``data`` and bottom 1 as ``label``, each in Caffe's legacy 4-d shape
(num, channels, height, width), which is what HDF5Data reads back. BVLC's layer makes the datasets
with H5LTmake_dataset, so its second forward aborts ("Failed to make float dataset data",
BVLC/caffe issue 1726); here every later batch is appended along the first axis instead, so one
forward gives the file BVLC writes and a test pass over many batches collects them all. The file
is opened and closed around each write, so it is complete (readable by other processes) between
forwards.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import CaffeError
from .base import Layer, register

DATA, LABEL = "data", "label"  # HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """HDF5OutputLayer: bottoms (data, label) with the same num, no tops, no gradient."""

    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        import h5py
        self.file_name = str(self.layer_param.hdf5_output_param.file_name)
        if not self.file_name:
            raise CaffeError(f"layer '{self.name}': hdf5_output_param.file_name is not set")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as e:
            raise CaffeError(f"layer '{self.name}': failed to open HDF5 file '{self.file_name}' ({e})") from None
        self.rows = 0

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if b.num_axes > 4:
                raise CaffeError(f"layer '{self.name}': bottom {i} has {b.num_axes} axes; HDF5Output "
                                 f"stores Caffe's 4-d (num, channels, height, width) blobs")
        if bottom[0].num != bottom[1].num:
            raise CaffeError(f"layer '{self.name}': data blob and label blob must have the same batch "
                             f"size ({bottom[0].num} vs {bottom[1].num})")

    def forward(self, bottom, top):
        import h5py
        arrays = []
        for b in bottom:
            legacy = (b.num, b.channels, b.height, b.width)
            arrays.append(np.ascontiguousarray(backend.to_numpy(b.data), dtype=np.float32).reshape(legacy))
        try:
            with h5py.File(self.file_name, "a") as f:
                for name, a in zip((DATA, LABEL), arrays):
                    self._append(f, name, a)
        except OSError as e:
            raise CaffeError(f"layer '{self.name}': failed to write HDF5 file '{self.file_name}' ({e})") from None
        self.rows += arrays[0].shape[0]

    def _append(self, f, name: str, a: np.ndarray) -> None:
        if name not in f:
            f.create_dataset(name, data=a, maxshape=(None,) + a.shape[1:], chunks=True)
            return
        ds = f[name]
        if ds.shape[1:] != a.shape[1:]:
            raise CaffeError(f"layer '{self.name}': '{name}' batch of shape {list(a.shape)} cannot be appended "
                             f"to the dataset of shape {list(ds.shape)} in '{self.file_name}'")
        n = ds.shape[0]
        ds.resize(n + a.shape[0], axis=0)
        ds[n:] = a
