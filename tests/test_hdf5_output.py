"""HDF5Output (pycaffe_fc/layers/hdf5_output.py): what it writes, and HDF5Data reading it back."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import pycaffe_fc as caffe
from gradcheck import setup_layer
from pycaffe_fc.errors import CaffeError


def _net(tmp_path, out, n=3):
    f = tmp_path / "out.prototxt"
    f.write_text(f"""
input: "feat" input_shape {{ dim: {n} dim: 2 dim: 3 }}
input: "y" input_shape {{ dim: {n} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "feat" top: "ip"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "save" type: "HDF5Output" bottom: "ip" bottom: "y" hdf5_output_param {{ file_name: "{out}" }} }}
""")
    return caffe.Net(str(f), caffe.TEST)


def test_writes_data_and_label_per_batch_and_hdf5data_reads_them(tmp_path):
    out = tmp_path / "features.h5"
    out.write_bytes(b"stale")
    net = _net(tmp_path, out)
    with h5py.File(out, "r") as f:  # created (truncated) at setup, as H5Fcreate(H5F_ACC_TRUNC)
        assert list(f.keys()) == []
    g = np.random.default_rng(0)
    feats, ips, labels = [], [], []
    for k in range(2):
        x = g.standard_normal((3, 2, 3)).astype(np.float32)
        net.blobs["feat"].data[...] = x
        net.blobs["y"].data[...] = [3 * k, 3 * k + 1, 3 * k + 2]
        net.forward()
        ips.append(net.blobs["ip"].data.copy())
        labels.append(net.blobs["y"].data.copy())
        with h5py.File(out, "r") as f:  # complete after every forward
            assert f["data"].shape == (3 * (k + 1), 4, 1, 1)
        feats.append(x)
    with h5py.File(out, "r") as f:
        assert f["data"].dtype == np.float32 and f["label"].dtype == np.float32
        assert f["label"].shape == (6, 1, 1, 1)  # Caffe's legacy 4-d blob shape
        np.testing.assert_array_equal(f["data"][...].reshape(6, 4), np.concatenate(ips))
        np.testing.assert_array_equal(f["label"][...].reshape(-1), np.concatenate(labels))
    # the file is HDF5Data's input format
    (tmp_path / "list.txt").write_text(f"{out}\n")
    rd = tmp_path / "read.prototxt"
    rd.write_text(f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" '
                  f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 6 }} }}')
    back = caffe.Net(str(rd), caffe.TEST)
    back.forward()
    np.testing.assert_array_equal(back.blobs["data"].data.reshape(6, 4), np.concatenate(ips))
    np.testing.assert_array_equal(back.blobs["label"].data.reshape(-1), np.arange(6))


def test_errors(tmp_path):
    a, b = np.zeros((2, 3), np.float32), np.zeros((3,), np.float32)
    text = f'name: "save" type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path / "o.h5"}" }}'
    with pytest.raises(CaffeError, match="same batch size"):
        setup_layer(text, [a, b], n_top=0)
    with pytest.raises(CaffeError, match="file_name"):
        setup_layer('name: "save" type: "HDF5Output"', [a, a[:, 0]], n_top=0)
    bad = tmp_path / "no_such_dir" / "o.h5"
    with pytest.raises(CaffeError, match="failed to open HDF5 file"):
        setup_layer(f'name: "save" type: "HDF5Output" hdf5_output_param {{ file_name: "{bad}" }}',
                    [a, a[:, 0]], n_top=0)
    layer, bottom, top = setup_layer(text, [a, a[:, 0]], n_top=0)
    layer.Forward(bottom, top)
    bottom[0].reshape(2, 5)
    with pytest.raises(CaffeError, match="cannot be appended"):
        layer.Forward(bottom, top)
