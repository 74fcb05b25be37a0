"""``fc-caffe upgrade_net_proto_binary IN OUT``: Caffe's upgrade tool for binary nets
(.caffemodel) written in the V0/V1 formats; exits 1 when the upgrade was only partly possible."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="binary NetParameter (.caffemodel) in any format Caffe has used")
    p.add_argument("output", help="where to write the upgraded binary NetParameter")


def main(args: argparse.Namespace) -> int:
    from ..proto.upgrade_tools import upgrade_net_proto_binary
    from ._dataflags import install_log

    install_log()
    ok = upgrade_net_proto_binary(args.input, args.output)
    print(f"Wrote upgraded NetParameter binary proto to {args.output}")
    return 0 if ok else 1
