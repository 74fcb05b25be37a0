"""``fc-caffe convert_imageset``: images and a list file into an LMDB, as Caffe's tool.

    fc-caffe convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE lines are ``subfolder1/file1.JPEG 7``; the key of line i is ``%08d_<path>``.
"""
from __future__ import annotations

import argparse
import os

from ._dataflags import add_flag, check_backend, install_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root_folder", metavar="ROOTFOLDER/", help="prefix of every path in the list file")
    p.add_argument("list_file", metavar="LISTFILE", help="lines of 'relative/path label'")
    p.add_argument("db_name", metavar="DB_NAME", help="the database to create (must not exist)")
    add_flag(p, "gray", "treat images as grayscale ones", bool, False)
    add_flag(p, "shuffle", "randomly shuffle the order of images and their labels", bool, False)
    add_flag(p, "backend", "the backend {lmdb, leveldb} for storing the result", str, "lmdb")
    add_flag(p, "resize_width", "width images are resized to", int, 0)
    add_flag(p, "resize_height", "height images are resized to", int, 0)
    add_flag(p, "check_size", "check that all the datum have the same size", bool, False)
    add_flag(p, "encoded", "store the encoded image in the datum", bool, False)
    add_flag(p, "encode_type", "what type the images are encoded as ('png','jpg',...)", str, "")
    add_flag(p, "processes", "worker processes decoding and resizing images (default: all cores)",
             int, os.cpu_count() or 1)
    add_flag(p, "seed", "random seed of --shuffle (default: random)", int, None)


def main(args: argparse.Namespace) -> int:
    from ..data.convert import convert_imageset
    from ..rng import set_random_seed

    install_log()
    check_backend(args.backend)
    if args.seed is not None:
        set_random_seed(args.seed)
    convert_imageset(args.root_folder, args.list_file, args.db_name,
                     resize_height=args.resize_height, resize_width=args.resize_width,
                     gray=args.gray, shuffle=args.shuffle, encoded=args.encoded,
                     encode_type=args.encode_type, check_size=args.check_size,
                     backend=args.backend, processes=max(1, args.processes))
    return 0
