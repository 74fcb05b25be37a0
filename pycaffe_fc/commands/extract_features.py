"""``fc-caffe extract_features``: Caffe's tools/extract_features.cpp, same positional arguments.

    fc-caffe extract_features pretrained_net_param feature_extraction_proto_file \\
        extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...] \\
        num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]

The net is built in TEST phase from the prototxt (its data layer feeds the batches), the weights
copied from the .caffemodel; each named blob is written, one Datum of float_data per image, to its
own new database (db_type lmdb or leveldb).
"""
from __future__ import annotations

import argparse

from ..errors import CaffeError
from ._dataflags import check_backend, install_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pretrained_net_param", help="the trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("feature_extraction_proto_file", help="the net prototxt whose data layer gives the images")
    p.add_argument("extract_feature_blob_names", help="blob name(s), comma-separated")
    p.add_argument("save_feature_dataset_names", help="database name(s), comma-separated, one per blob")
    p.add_argument("num_mini_batches", type=int, help="how many batches to run forward")
    p.add_argument("db_type", help="lmdb or leveldb")
    p.add_argument("mode", nargs="?", default="CPU", help="CPU (default) or GPU")
    p.add_argument("device_id", nargs="?", type=int, default=0, help="the GPU's id (GPU mode)")


def main(args: argparse.Namespace) -> int:
    from .. import backend
    from ..features import extract_features
    from ..layers.base import TEST
    from ..net import Net

    install_log()
    check_backend(args.db_type)
    blobs = args.extract_feature_blob_names.split(",")
    datasets = args.save_feature_dataset_names.split(",")
    if len(blobs) != len(datasets):
        raise CaffeError(f"the number of blob names ({len(blobs)}) and dataset names ({len(datasets)}) "
                         "must be equal")
    if args.num_mini_batches < 0:
        raise CaffeError(f"num_mini_batches must be >= 0, got {args.num_mini_batches}")
    if args.mode == "GPU":  # Caffe: anything but "GPU" means the CPU
        if args.device_id < 0:
            raise CaffeError(f"DEVICE_ID must be >= 0, got {args.device_id}")
        backend.set_device(args.device_id)
        backend.set_mode_gpu()
    else:
        backend.set_mode_cpu()
    net = Net(args.feature_extraction_proto_file, TEST)
    net.copy_from(args.pretrained_net_param)
    extract_features(net, blobs, datasets, args.num_mini_batches, args.db_type)
    return 0
