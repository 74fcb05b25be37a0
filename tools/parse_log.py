#!/usr/bin/env python3
"""Parse a Caffe (or fc-caffe) training log into CSV files, as Caffe's tools/extra/parse_log.py.

    python tools/parse_log.py LOGFILE [OUTPUT_DIR] [--delimiter ,] [--verbose]

A thin wrapper of ``fc-caffe parse_log``; the parser is pycaffe_fc.training_log (its names are
re-exported here for scripts that import this file).
"""
from __future__ import annotations

import sys

from pycaffe_fc.training_log import (RE_GLOG_TIME, RE_ITERATION, RE_LEARNING_RATE,  # noqa: F401
                                     RE_TEST_OUTPUT, RE_TRAIN_OUTPUT, line_time, log_year, parse_log,
                                     save_csv_files, write_csv)


def main(argv: list[str] | None = None) -> int:
    from pycaffe_fc.commands.parse_log import run
    return run(sys.argv[1:] if argv is None else argv, prog="parse_log.py")


if __name__ == "__main__":
    sys.exit(main())
