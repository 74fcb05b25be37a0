"""gflags-style flags for Caffe's data tools: ``--gray``, ``--gray=true``, ``-gray`` all work."""
from __future__ import annotations

import argparse

from ..errors import CaffeError


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "t", "yes", "y"):
        return True
    if t in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_flag(p: argparse.ArgumentParser, name: str, help: str, kind=str, default=None) -> None:
    """Add ``--name`` and gflags' single-dash ``-name``. A boolean is set by ``--name`` alone (it never
    takes the next word, which is a path) or by ``--name=true`` / ``--name=false``."""
    opts = [f"--{name}", f"-{name}"]
    if kind is bool:
        p.add_argument(*opts, dest=name, action="store_true", default=bool(default), help=help)
        # argparse matches an exact option string before splitting at '=', so the explicit forms
        # are aliases storing a constant
        for word in ("true", "false", "1", "0", "yes", "no", "t", "f"):
            p.add_argument(*(f"{o}={word}" for o in opts), dest=name, action="store_const",
                           const=parse_bool(word), help=argparse.SUPPRESS)
    else:
        p.add_argument(*opts, dest=name, type=kind, default=default, help=help)


def check_backend(name: str) -> str:
    if str(name).lower() not in ("lmdb", "leveldb"):
        raise CaffeError(f"--backend must be lmdb or leveldb, got '{name}'")
    return name


def install_log() -> None:
    """glog-style lines on stderr, as Caffe's tools print them."""
    try:
        from ..solvers.log import install
        install()
    except ImportError:  # pragma: no cover - the solver package is part of fc-caffe
        import logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
