"""``fc-caffe compute_image_mean``: the mean image of a database, as Caffe's tool.

    fc-caffe compute_image_mean [--backend lmdb] INPUT_DB [OUTPUT_FILE]
"""
from __future__ import annotations

import argparse

from ._dataflags import add_flag, check_backend, install_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_db", metavar="INPUT_DB")
    p.add_argument("output_file", metavar="OUTPUT_FILE", nargs="?", default=None,
                   help="the mean .binaryproto to write (without it the means are only logged)")
    add_flag(p, "backend", "the backend {lmdb, leveldb} of the input", str, "lmdb")


def main(args: argparse.Namespace) -> int:
    from ..data.convert import compute_image_mean

    install_log()
    check_backend(args.backend)
    compute_image_mean(args.input_db, args.output_file, backend=args.backend)
    return 0
