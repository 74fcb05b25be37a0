"""``fc-caffe convert_mnist_data``: MNIST-format IDX files (raw or gzip) into an LMDB.

    fc-caffe convert_mnist_data [--backend lmdb] INPUT_IMAGE_FILE INPUT_LABEL_FILE OUTPUT_DB
"""
from __future__ import annotations

import argparse

from ._dataflags import add_flag, check_backend, install_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image_file", metavar="INPUT_IMAGE_FILE")
    p.add_argument("label_file", metavar="INPUT_LABEL_FILE")
    p.add_argument("db_name", metavar="OUTPUT_DB")
    add_flag(p, "backend", "the backend {lmdb, leveldb} for storing the result", str, "lmdb")


def main(args: argparse.Namespace) -> int:
    from ..data.convert import convert_mnist_data

    install_log()
    check_backend(args.backend)
    convert_mnist_data(args.image_file, args.label_file, args.db_name, backend=args.backend)
    return 0
