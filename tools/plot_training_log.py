#!/usr/bin/env python3
"""Plot training logs to a PNG, as Caffe's tools/extra/plot_training_log.py (matplotlib).

    python tools/plot_training_log.py CHART_TYPE OUTPUT.png LOG [LOG ...]

A thin wrapper of ``fc-caffe plot_training_log`` (pycaffe_fc.training_log draws the chart).
"""
from __future__ import annotations

import sys

from pycaffe_fc.training_log import CHARTS, LABELS, parse_log, plot_chart  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    from pycaffe_fc.commands.plot_training_log import run
    return run(sys.argv[1:] if argv is None else argv, prog="plot_training_log.py")


if __name__ == "__main__":
    sys.exit(main())
