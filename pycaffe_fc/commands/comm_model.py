"""``fc-caffe comm-model``: FireCaffe's communication model (Eq. 1-4) for a net prototxt."""
from __future__ import annotations

import argparse

from ..errors import CaffeError


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got '{text}'")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..parallel.comm_model import DEFAULT_BANDWIDTH
    p.add_argument("--model", required=True, help="the net prototxt (train_val or deploy)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size for |D| (default: the prototxt's)")
    p.add_argument("--gpus", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                   help="worker counts p to tabulate, comma-separated (default 1,2,4,...,256)")
    p.add_argument("--bandwidth", type=float, default=DEFAULT_BANDWIDTH,
                   help="link bandwidth BW in bytes/s (default 7e9: 56 Gbit/s FDR Infiniband)")
    p.add_argument("--compute-time", type=float, default=None,
                   help="seconds of forward+backward per batch on one GPU: adds the predicted speedups")
    p.add_argument("--phase", default="TRAIN", help="net phase whose layers count (TRAIN or TEST)")
    p.add_argument("--input-shape", default=None,
                   help="C,H,W of the data layers' images when the prototxt does not tell")


def main(args: argparse.Namespace) -> int:
    from ..parallel.comm_model import TEST, TRAIN, format_report, net_sizes
    phase = str(args.phase).upper()
    if phase not in ("TRAIN", "TEST"):
        raise CaffeError(f"--phase must be TRAIN or TEST, got '{args.phase}'")
    if args.batch is not None and args.batch < 1:
        raise CaffeError(f"--batch must be positive, got {args.batch}")
    if args.bandwidth <= 0:
        raise CaffeError(f"--bandwidth must be positive, got {args.bandwidth}")
    if args.compute_time is not None and args.compute_time <= 0:
        raise CaffeError(f"--compute-time must be positive, got {args.compute_time}")
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(x) for x in args.input_shape.split(","))
        except ValueError:
            raise CaffeError(f"--input-shape must be C,H,W, got '{args.input_shape}'") from None
    sizes = net_sizes(args.model, batch=args.batch, phase=TRAIN if phase == "TRAIN" else TEST,
                      input_shape=shape)
    print(format_report(sizes, args.gpus, args.bandwidth, args.compute_time))
    return 0
