"""Regenerate pycaffe_fc/proto/caffe_pb2.py from proto/caffe.proto.

Caffe's build runs protoc on src/caffe/proto/caffe.proto; fc-caffe does the
same with grpc_tools' bundled protoc so no system protoc is needed. Run from
anywhere: paths are resolved from this file's location (the repo root is its
parent's parent).

    python tools/gen_proto.py            # write pycaffe_fc/proto/caffe_pb2.py
    python tools/gen_proto.py --out DIR  # write DIR/caffe_pb2.py instead
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
DEFAULT_OUT = REPO_ROOT / "pycaffe_fc" / "proto"


def generate(out_dir: Path = DEFAULT_OUT) -> Path:
    """Run protoc --python_out=out_dir on proto/caffe.proto; return the .py path."""
    from grpc_tools import protoc  # imported here so the module loads without it

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out_dir}",
        str(PROTO_DIR / "caffe.proto"),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc} on {PROTO_DIR / 'caffe.proto'}")
    return out_dir / "caffe_pb2.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    print(generate(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
