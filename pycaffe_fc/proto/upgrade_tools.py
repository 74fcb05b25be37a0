"""Caffe's tools/upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text:
read a file, upgrade it with pycaffe_fc.proto.upgrade, write it back.

Apart from upgrade.py so that the upgrade functions need no file I/O (io.py calls them when it
reads a file): proto.io -> proto.upgrade, and only this module uses both.
"""
from __future__ import annotations

import os

from pycaffe_fc.proto import caffe_pb2, io
from pycaffe_fc.proto.upgrade import (log, net_needs_upgrade, solver_needs_type_upgrade, upgrade_net_as_needed,
                                      upgrade_solver_as_needed)


def _upgrade(msg, in_path, needs_upgrade, upgrade_as_needed) -> bool:
    # the tools upgrade only what needs it and say when nothing did; False: only partly possible
    if needs_upgrade(msg):
        return upgrade_as_needed(msg, str(in_path))
    log.warning("File already in latest proto format: %s", in_path)
    return True


def upgrade_net_proto_text(in_path: str | os.PathLike, out_path: str | os.PathLike) -> bool:
    """Upgrade a net prototxt to the current format, as tools/upgrade_net_proto_text.

    Writes `out_path` even when nothing needed upgrading (as Caffe does) and
    returns False if the upgrade was only partly possible.
    """
    net = io.read_prototxt(in_path, caffe_pb2.NetParameter)
    ok = _upgrade(net, in_path, net_needs_upgrade, upgrade_net_as_needed)
    if not ok:
        log.error("Encountered error(s) while upgrading prototxt; see details above.")
    io.write_proto_text(net, out_path)
    log.info("Wrote upgraded NetParameter text proto to %s", out_path)
    return ok


def upgrade_net_proto_binary(in_path: str | os.PathLike, out_path: str | os.PathLike) -> bool:
    """Upgrade a binary net (.caffemodel), as tools/upgrade_net_proto_binary."""
    net = io.read_net_param_binary(in_path, upgrade_net=False)
    ok = _upgrade(net, in_path, net_needs_upgrade, upgrade_net_as_needed)
    io.write_proto_binary(net, out_path)
    return ok


def upgrade_solver_proto_text(in_path: str | os.PathLike, out_path: str | os.PathLike) -> bool:
    """Upgrade a solver prototxt, as tools/upgrade_solver_proto_text."""
    solver = io.read_prototxt(in_path, caffe_pb2.SolverParameter)
    ok = _upgrade(solver, in_path, solver_needs_type_upgrade, upgrade_solver_as_needed)
    io.write_proto_text(solver, out_path)
    return ok
