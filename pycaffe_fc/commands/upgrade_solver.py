"""``fc-caffe upgrade_solver_proto_text IN OUT``: replace the legacy solver_type enum by ``type``."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="solver prototxt")
    p.add_argument("output", help="where to write the upgraded prototxt")


def main(args: argparse.Namespace) -> int:
    from ..proto.io import read_solver_param, write_proto_text

    write_proto_text(read_solver_param(args.input), args.output)
    print(f"Wrote upgraded SolverParameter text proto to {args.output}")
    return 0
