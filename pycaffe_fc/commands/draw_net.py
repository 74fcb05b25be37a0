"""``fc-caffe draw_net IN.prototxt OUT.png``: pycaffe's draw_net.py (graphviz via pydot)."""
from __future__ import annotations

import argparse

from ..errors import CaffeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_net_proto_file", help="net prototxt to draw")
    p.add_argument("output_image_file", help="image to write; its extension picks the format (png, pdf, svg...)")
    p.add_argument("--rankdir", default="LR",
                   help="graph direction: LR (left to right), TB, BT or RL (default LR)")
    p.add_argument("--phase", default="ALL",
                   help="draw the TRAIN or TEST phase's layers, or ALL layers (default ALL)")
    p.add_argument("--display_lrm", action="store_true", help="show the lr_mult of each layer's params")


def main(args: argparse.Namespace) -> int:
    from ..draw import draw_net_to_file
    from ..layers.base import TEST, TRAIN
    from ..proto.io import read_net_param

    phases = {"TRAIN": TRAIN, "TEST": TEST, "ALL": None}
    phase_name = str(args.phase).upper()
    if phase_name not in phases:
        raise CaffeError(f"--phase must be TRAIN, TEST or ALL, got '{args.phase}'")
    if args.rankdir not in ("LR", "TB", "BT", "RL"):
        raise CaffeError(f"--rankdir must be LR, TB, BT or RL, got '{args.rankdir}'")
    net = read_net_param(args.input_net_proto_file)
    print(f"Drawing net to {args.output_image_file}")
    draw_net_to_file(net, args.output_image_file, args.rankdir, phases[phase_name], args.display_lrm)
    return 0
