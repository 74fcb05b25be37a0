"""Flags shared by several subcommands: Caffe's --phase/--level/--stage and --gpu."""
from __future__ import annotations

import argparse

from .. import backend
from ..errors import CaffeError
from ..layers.base import TEST, TRAIN


def add_net_state_arguments(p: argparse.ArgumentParser, default_phase: str = "TEST") -> None:
    p.add_argument("--phase", default=default_phase, help="network phase (TRAIN or TEST)")
    p.add_argument("--level", type=int, default=0, help="network level")
    p.add_argument("--stage", action="append", default=[],
                   help="network stage (repeat, or a comma-separated list)")


def net_state_from_args(args: argparse.Namespace) -> tuple[int, int, list[str]]:
    """The NetState of Caffe's get_phase_from_flags / get_stages_from_flags."""
    phase = str(args.phase).upper()
    if phase not in ("TRAIN", "TEST"):
        raise CaffeError(f"--phase must be TRAIN or TEST, got '{args.phase}'")
    stages = [s for arg in args.stage for s in arg.split(",") if s]
    return (TRAIN if phase == "TRAIN" else TEST), args.level, stages


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", default=None,
                   help="run in GPU mode on the given device id (CuPy); default: CPU")


def apply_device(args: argparse.Namespace) -> None:
    gpu = getattr(args, "gpu", None)
    if gpu is None or gpu == "":
        backend.set_mode_cpu()
        return
    dev = 0 if gpu == "all" else int(str(gpu).split(",")[0])
    backend.set_device(dev)
    backend.set_mode_gpu()
