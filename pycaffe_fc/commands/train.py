"""``fc-caffe train``: train or fine-tune a model, as ``caffe train`` (tools/caffe.cpp).

Caffe's flags: ``--solver``, ``--snapshot`` (resume) or ``--weights`` (fine-tune, comma list),
``--gpus``, ``--level``, ``--stage``, ``--sigint_effect`` (default stop) and ``--sighup_effect``
(default snapshot). ``--gpus`` takes Caffe's device list (``0,1,2``) or ``all``, and also, as
FireCaffe's launcher does, a count ``N`` (N workers on devices 0..N-1; ``0`` keeps Caffe's meaning:
device 0, one worker). More than one worker, or running under an MPI launcher with more than one
rank, trains data-parallel (``pycaffe_fc.parallel.launch.train_parallel``) with the FireCaffe
flags ``--sync``, ``--segment-bytes``, ``--check-sync``, ``--batch-per-worker``, ``--overlap``.
Caffe's single-dash spellings (``-solver x``, gflags style) are accepted too. SIGTERM snapshots
and stops (an fc-caffe addition: what a scheduler sends before it kills a job). This module only
parses: the job is ``parallel.train_job.TrainJob``, run by ``train_single`` or ``train_parallel``.
"""
from __future__ import annotations

import argparse

from ..parallel.comm import launcher_world_size
from ..parallel.train_job import TrainJob, parse_gpus, train_single  # noqa: F401 - parse_gpus: the CLI's --gpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", "-solver", required=True,
                   help="the solver definition protocol buffer text file")
    p.add_argument("--snapshot", "-snapshot", default="",
                   help="a .solverstate(.h5) to resume training from")
    p.add_argument("--weights", "-weights", default="",
                   help="pretrained .caffemodel file(s) to fine-tune from, comma-separated "
                        "(cannot be given together with --snapshot)")
    p.add_argument("--gpus", "--gpu", "-gpus", "-gpu", dest="gpus", default="",
                   help="devices to use: a list '0,1,2', 'all', or a worker count N; default: the "
                        "solver's solver_mode, else the CPU")
    p.add_argument("--level", "-level", type=int, default=0, help="the train net's NetState level")
    p.add_argument("--stage", "-stage", action="append", default=[],
                   help="a train net NetState stage (repeat, or a comma-separated list)")
    p.add_argument("--sigint_effect", "-sigint_effect", default="stop",
                   choices=("stop", "snapshot", "none"),
                   help="what a SIGINT (Ctrl-C) does during training (default: stop)")
    p.add_argument("--sighup_effect", "-sighup_effect", default="snapshot",
                   choices=("stop", "snapshot", "none"),
                   help="what a SIGHUP does during training (default: snapshot)")
    g = p.add_argument_group("data-parallel training (FireCaffe)")
    g.add_argument("--sync", default="tree", choices=("tree", "ps", "mpi", "pipelined-tree"),
                   help="gradient synchronisation: reduction tree (default), parameter server, "
                        "MPI allreduce, or the pipelined tree")
    g.add_argument("--segment-bytes", dest="segment_bytes", type=int, default=None,
                   help="message segment size in bytes for the pipelined tree")
    g.add_argument("--check-sync", dest="check_sync", type=int, default=0, metavar="K",
                   help="every K iterations, check that all workers hold identical weights (0: never)")
    g.add_argument("--batch-per-worker", dest="batch_per_worker", type=int, nargs="?", const=True,
                   default=None, metavar="B",
                   help="BVLC Caffe's multi-GPU meaning: the net's batch_size (or B) is each worker's "
                        "batch (default: the net's batch_size is the global batch, split across workers)")
    g.add_argument("--overlap", dest="overlap", action="store_true", default=True,
                   help="overlap gradient communication with backward (default)")
    g.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="communicate only after the whole backward pass")


def main(args: argparse.Namespace) -> int:
    """Parse into a ``TrainJob`` and run it: in this process, or data-parallel when it asks for
    more than one worker or runs under an MPI launcher with more than one rank (where a mistake
    is checked once the ranks can abort together, so that it ends every rank)."""
    job = TrainJob.from_namespace(args)
    if launcher_world_size() <= 1:
        job.validate()
        if job.workers <= 1:
            return train_single(job)
    from ..parallel.launch import train_parallel
    return int(train_parallel(job) or 0)
