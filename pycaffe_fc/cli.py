"""``fc-caffe``: Caffe's command-line tool (train, test, time, ...) and its data tools.

Each subcommand lives in ``pycaffe_fc/commands/<name>.py`` with ``add_arguments(parser)`` and
``main(args) -> int``; this module only dispatches and turns a user's mistake (a CaffeError) into
one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CaffeError

#: subcommand -> (module under pycaffe_fc.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train or fine-tune a model (as `caffe train`)"),
    "test": ("test", "score a model (as `caffe test`)"),
    "time": ("time", "benchmark per-layer forward/backward time (as `caffe time`)"),
    "device_query": ("device_query", "show the compute devices"),
    "upgrade_net_proto_text": ("upgrade", "upgrade a V0/V1 net prototxt to the current format"),
    "upgrade_solver_proto_text": ("upgrade_solver", "upgrade a solver prototxt (solver_type enum)"),
    "upgrade_net_proto_binary": ("upgrade_binary", "upgrade a V0/V1 binary net (.caffemodel) to the current format"),
    "convert_imageset": ("convert_imageset", "convert images + list file into an LMDB or LevelDB of Datum"),
    "compute_image_mean": ("compute_image_mean", "compute the mean image of an LMDB or LevelDB"),
    "convert_mnist_data": ("convert_mnist_data", "convert MNIST-format IDX files into an LMDB or LevelDB"),
    "extract_features": ("extract_features", "write a net's blobs, image by image, into databases "
                         "(as Caffe's extract_features)"),
    "classify": ("classify", "classify images with a deploy net (as pycaffe's classify.py)"),
    "detect": ("detect", "score image windows with a deploy net (as pycaffe's detect.py)"),
    "parse_log": ("parse_log", "parse a training log into .train/.test CSV files (Caffe's parse_log.py)"),
    "plot_training_log": ("plot_training_log", "plot training logs to a PNG (Caffe's plot_training_log.py)"),
    "comm-model": ("comm_model", "FireCaffe's communication model (Eq. 1-4) for a net"),
    "draw_net": ("draw_net", "draw a net prototxt to an image (graphviz)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fc-caffe", description="Caffe's command-line tool and data tools, with FireCaffe's data-parallel training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"pycaffe_fc.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"pycaffe_fc.commands.{module}":
                continue  # not in this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        return int(args._main(args) or 0)
    except CaffeError as e:
        print(f"fc-caffe {args.command}: error: {getattr(e, 'caffe_context', None) or e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user gave that cannot be read or written
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"fc-caffe {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fc-caffe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # raised inside a user's Python layer: it carries one line of context (layer, verb, line)
        context = getattr(e, "caffe_context", None)
        if not context:
            raise
        print(f"fc-caffe {args.command}: error: {context}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
