"""``fc-caffe upgrade_net_proto_text IN OUT``: Caffe's upgrade tool for V0/V1 net prototxts."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="net prototxt in any format Caffe has used")
    p.add_argument("output", help="where to write the upgraded prototxt")


def main(args: argparse.Namespace) -> int:
    from ..proto.upgrade_tools import upgrade_net_proto_text

    upgrade_net_proto_text(args.input, args.output)
    print(f"Wrote upgraded NetParameter text proto to {args.output}")
    return 0
