"""``fc-caffe plot_training_log CHART_TYPE OUTPUT.png LOG [LOG ...]``: Caffe's
tools/extra/plot_training_log.py (chart types 0-7, see ``--help``; needs matplotlib)."""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training_log import CHART_HELP

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = CHART_HELP
    p.add_argument("chart_type", type=int, help="0..7 (below)")
    p.add_argument("output", help="the .png file to write")
    p.add_argument("logs", nargs="+", help="training logs, one line each")


def main(args: argparse.Namespace) -> int:
    from ..errors import CaffeError
    from ..training_log import CHARTS, plot_chart

    if args.chart_type not in CHARTS:
        raise CaffeError(f"chart type must be 0..7, got {args.chart_type}")
    if not args.output.lower().endswith(".png"):
        raise CaffeError(f"{args.output}: the output must be a .png file")
    missing = [log for log in args.logs if not os.path.isfile(log)]
    if missing:
        raise CaffeError(f"{missing[0]}: no such file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CaffeError("plot_training_log needs matplotlib (pip install fc-caffe[plot])") from None
    try:
        plot_chart(args.chart_type, args.output, args.logs)
    except ValueError as e:
        raise CaffeError(str(e)) from None
    return 0


def run(argv: list[str], prog: str) -> int:
    """The script form (tools/plot_training_log.py): Caffe's positional arguments."""
    from ..errors import CaffeError
    from ..training_log import CHARTS, CHART_HELP

    if len(argv) < 3 or not argv[0].isdigit() or int(argv[0]) not in CHARTS:
        print(f"usage: {prog} CHART_TYPE OUTPUT.png LOG [LOG ...]\n{CHART_HELP}", file=sys.stderr)
        return 1
    args = argparse.Namespace(chart_type=int(argv[0]), output=argv[1], logs=argv[2:])
    try:
        return main(args)
    except CaffeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
