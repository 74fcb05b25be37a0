"""``fc-caffe parse_log LOGFILE [OUTPUT_DIR]``: Caffe's tools/extra/parse_log.py.

Writes OUTPUT_DIR/<log name>.train and .test (CSV, ``--delimiter``), one row per iteration.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logfile_path", help="path to the training log file")
    p.add_argument("output_dir", nargs="?", default=".", help="directory in which to place the output CSVs")
    p.add_argument("--verbose", action="store_true", help="print some extra info (e.g. output filenames)")
    p.add_argument("--delimiter", default=",", help="column delimiter in output files (default: ',')")


def main(args: argparse.Namespace) -> int:
    from ..errors import CaffeError
    from ..training_log import parse_log, save_csv_files

    if not os.path.isfile(args.logfile_path):
        raise CaffeError(f"{args.logfile_path}: no such file")
    if not os.path.isdir(args.output_dir):
        raise CaffeError(f"{args.output_dir}: no such directory")
    train, test = parse_log(args.logfile_path)
    save_csv_files(args.logfile_path, args.output_dir, train, test, args.delimiter, args.verbose)
    return 0


def run(argv: list[str], prog: str) -> int:
    """The script form (tools/parse_log.py): same flags, errors as ``prog: error: ...``."""
    from ..errors import CaffeError

    p = argparse.ArgumentParser(prog=prog,
                                description="Parse a Caffe training log into .train and .test CSV files")
    add_arguments(p)
    try:
        return main(p.parse_args(argv))
    except CaffeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
