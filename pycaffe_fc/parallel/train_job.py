"""One ``caffe train`` job as data: its flags, its worker count, the single-process run, and the
guard rails checked before anything is allocated.

tools/caffe.cpp ``train()`` reads the flags, picks the devices (``get_gpus``) and, for one
device, builds the solver and calls ``Solve()``. Here that is split so that the command line only
parses and calls: ``TrainJob`` holds what the flags say (and writes them back as a command line
for the ranks of a data-parallel job), ``parse_gpus`` is ``get_gpus`` with FireCaffe's worker
count, ``train_single`` is the one-process run, and ``check_resources`` warns, with the numbers,
when a job asks for more CPU workers than the machine has cores or for more memory than it has.
``parallel.launch`` builds on this module; ``commands.train`` and ``commands.time`` on both.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields

from .. import backend
from ..errors import CaffeError
from ..solvers.log import info

EFFECTS = ("stop", "snapshot", "none")
SYNC_MODES = ("tree", "ps", "mpi", "pipelined-tree")
FLOAT_BYTES = 4


def parse_gpus(spec: str, n_devices: int) -> tuple[int, list[int] | None]:
    """``--gpus`` as (number of workers, device ids or None for the CPU).

    ``""`` -> 1 worker, no device; ``"all"`` -> every device (1 CPU worker when there is none);
    ``"0,2"`` -> 2 workers on devices 0 and 2; ``"N"`` -> N workers on devices 0..N-1 (``"0"`` is
    Caffe's device 0).
    """
    spec = (spec or "").strip()
    if not spec:
        return 1, None
    if spec == "all":
        return (n_devices, list(range(n_devices))) if n_devices else (1, None)
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    try:
        ids = [int(s) for s in parts]
    except ValueError:
        raise CaffeError(f"--gpus: expected 'all', a count N or a device list like 0,1,2; got '{spec}'") from None
    if any(i < 0 for i in ids) or not ids:
        raise CaffeError(f"--gpus: device ids and counts must be non-negative; got '{spec}'")
    if len(ids) == 1:
        n = ids[0]
        return (1, [0]) if n == 0 else (n, list(range(n)))
    if len(set(ids)) != len(ids):
        raise CaffeError(f"--gpus: device {ids} listed twice")
    return len(ids), ids


@dataclass
class TrainJob:
    """What ``fc-caffe train`` was asked to do (Caffe's flags and FireCaffe's)."""

    solver: str
    snapshot: str = ""
    weights: str = ""
    gpus: str = ""
    level: int = 0
    stage: list[str] = field(default_factory=list)
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    sync: str = "tree"
    segment_bytes: int | None = None
    check_sync: int = 0
    batch_per_worker: int | bool | None = None
    overlap: bool = True
    #: resolved from ``gpus`` by ``resolve()``
    workers: int = 1
    devices: list[int] | None = None

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "TrainJob":
        """The job of parsed ``fc-caffe train`` flags (attributes missing from ``ns`` keep the defaults)."""
        kw = {f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)}
        if kw.get("workers") is None:
            kw.pop("workers", None)
        return cls(**kw)

    @property
    def stages(self) -> list[str]:
        return [s for arg in self.stage or [] for s in str(arg).split(",") if s]

    def validate(self) -> "TrainJob":
        """caffe.cpp's flag checks, and the worker count and devices from ``--gpus``."""
        if self.snapshot and self.weights:
            raise CaffeError("Give a snapshot to resume training or weights to finetune but not both.")
        if not os.path.exists(self.solver):
            raise CaffeError(f"{self.solver}: file not found")
        for flag, effect in (("--sigint_effect", self.sigint_effect), ("--sighup_effect", self.sighup_effect)):
            if effect not in EFFECTS:
                raise CaffeError(f"{flag}: Invalid signal effect \"{effect}\" was specified (stop, snapshot or none)")
        if self.sync not in SYNC_MODES:
            raise CaffeError(f"--sync must be one of {', '.join(SYNC_MODES)}, got '{self.sync}'")
        self.workers, self.devices = parse_gpus(self.gpus, backend.gpu_available())
        return self

    def argv(self) -> list[str]:
        """The ``fc-caffe train`` flags that give this job again (only those off their defaults;
        ``--overlap``/``--no-overlap`` always), for the command line of every rank."""
        default = TrainJob(solver="")
        out: list[str] = ["--solver", self.solver]
        for name, flag in (("snapshot", "--snapshot"), ("weights", "--weights"), ("gpus", "--gpus"),
                           ("level", "--level"), ("sigint_effect", "--sigint_effect"),
                           ("sighup_effect", "--sighup_effect"), ("sync", "--sync"),
                           ("segment_bytes", "--segment-bytes"), ("check_sync", "--check-sync")):
            value = getattr(self, name)
            if value != getattr(default, name) and value is not None:
                out += [flag, str(value)]
        for s in self.stage or []:
            out += ["--stage", str(s)]
        if self.batch_per_worker is True:
            out.append("--batch-per-worker")
        elif self.batch_per_worker not in (None, False):
            out += ["--batch-per-worker", str(int(self.batch_per_worker))]
        out.append("--overlap" if self.overlap else "--no-overlap")
        return out


def train_single(job: TrainJob) -> int:
    """One process: pick the device as caffe.cpp does, check the resources, then ``solvers.train``."""
    from ..proto import caffe_pb2
    from ..solvers import read_solver_file, train
    param = read_solver_file(job.solver)
    devices = job.devices
    if devices is None and param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        devices = [param.device_id]  # caffe.cpp: no --gpus, solver_mode GPU -> device_id
    if devices and backend.cupy is not None:
        backend.require_gpu("--gpus")  # CuPy is there but cannot run: say what is missing
    if devices and backend.gpu_available():
        backend.set_device(devices[0])
        backend.set_mode_gpu()
        info(f"Use GPU with device ID {devices[0]}", "caffe.cpp:215")
    else:
        backend.set_mode_cpu()
        if devices:
            info(f"No GPU available (asked for device {','.join(map(str, devices))}); running on the CPU.",
                 "caffe.cpp:197")
        info("Use CPU.", "caffe.cpp:197")
    check_resources(param, workers=1, on_device=backend.mode() == backend.GPU)
    train(param, snapshot=job.snapshot or None, weights=job.weights or None, level=job.level,
          stages=job.stages, sigint_effect=job.sigint_effect, sighup_effect=job.sighup_effect)
    return 0


# -- guard rails -------------------------------------------------------------------------------
def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a scheduler or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def warn(msg: str, src: str = "caffe.cpp:0") -> None:
    """LOG(WARNING) with glog's prefix."""
    from ..solvers import log as slog
    slog.install().warning(msg, extra={"caffe_src": src})


def check_workers(workers: int, n_gpus: int, cores: int | None = None) -> str | None:
    """More CPU workers than cores: the warning (returned and logged), else None."""
    cores = usable_cores() if cores is None else cores
    if n_gpus or workers <= cores:
        return None
    msg = (f"{workers} workers but no GPU and only {cores} CPU core{'s' if cores != 1 else ''} for this job "
           f"(os.sched_getaffinity): the workers will share the cores, each about {workers / cores:.0f}x slower, "
           f"and each holds a copy of the net. Use --gpus {cores} or fewer on this machine.")
    warn(msg, "parallel.cpp:0")
    return msg


@dataclass
class MemoryEstimate:
    """Bytes of the blobs of a train net (data and diff), from shapes inferred without allocating."""

    activation_values: int
    parameter_values: int
    workers: int
    per_layer: list[tuple[str, int]]  # (layer, bytes of its top blobs, data and diff), largest first

    @property
    def total_bytes(self) -> int:
        return 2 * FLOAT_BYTES * (self.activation_values + self.workers * self.parameter_values)


def estimate_memory(net_param, phase: int = 0, workers: int = 1, split_batch: bool = True) -> MemoryEstimate | None:
    """What the blobs of ``net_param`` will take in all (data + diff, float32) on ``workers``
    workers of one machine: every top blob and parameter, by Caffe's shape rules without allocating
    (``comm_model.net_sizes``). With the batch split across the workers the activations of
    all workers together are those of one net at the prototxt's batch; with ``--batch-per-worker``
    each worker has them all. None when the shapes cannot be told from the prototxt alone."""
    from .comm_model import net_sizes
    try:
        sizes = net_sizes(net_param, phase=phase)
    except Exception:  # noqa: BLE001 - an estimate only: the net's own setup reports real mistakes
        return None
    params = sum(l.weights + l.bias for l in sizes.layers) + sizes.other_params
    scale = 1 if split_batch else workers
    per_layer = sorted(((l.name, 2 * FLOAT_BYTES * l.activations * scale) for l in sizes.layers),
                       key=lambda t: -t[1])
    return MemoryEstimate(sizes.all_activations * scale, params, workers, per_layer)


def check_memory(est: MemoryEstimate | None, on_device: bool = False, what: str = "the train net") -> str | None:
    """Warn (with the estimate and the largest layers) when the blobs will not fit in the memory
    available now; returns the warning or None."""
    from ..memory import available_device_memory, available_memory, format_bytes
    if est is None:
        return None
    avail = available_device_memory() if on_device else available_memory()
    if avail is None or est.total_bytes <= avail:
        return None
    top = ", ".join(f"{name} {format_bytes(b)}" for name, b in est.per_layer[:3])
    per = f" on {est.workers} workers" if est.workers > 1 else ""
    msg = (f"{what}'s blobs need about {format_bytes(est.total_bytes)}{per} (data and diff of every blob, "
           f"{est.activation_values} activation and {est.workers} x {est.parameter_values} parameter values), "
           f"more than the {format_bytes(avail)} of {'GPU ' if on_device else ''}memory available"
           + (f"; largest: {top}" if top else "") + ". Expect swapping or the OOM killer: lower the batch_size.")
    warn(msg, "net.cpp:0")
    return msg


def check_resources(solver_param, workers: int, on_device: bool, split_batch: bool = True,
                    n_gpus: int | None = None) -> None:
    """The guard rails of a training job, before anything is allocated: CPU workers vs cores and
    the train net's blobs vs memory (warnings with the numbers; training goes on)."""
    if n_gpus is None:
        n_gpus = backend.gpu_available()
    check_workers(workers, n_gpus)
    net = train_net_param(solver_param)
    if net is None:
        return
    # N GPU workers each hold their share on their own device; CPU workers share the machine.
    est = estimate_memory(net, phase=0, workers=1 if on_device else workers, split_batch=split_batch)
    if est is not None and on_device and workers > 1 and split_batch:
        est.activation_values //= workers
    check_memory(est, on_device=on_device)


def train_net_param(solver_param):
    """The solver's train NetParameter with its train_state applied, or None when unreadable."""
    from ..proto import caffe_pb2
    from ..proto.io import read_net_param
    p = solver_param
    try:
        if p.HasField("train_net_param"):
            net = caffe_pb2.NetParameter()
            net.CopyFrom(p.train_net_param)
        elif p.HasField("train_net"):
            net = read_net_param(p.train_net)
        elif p.HasField("net_param"):
            net = caffe_pb2.NetParameter()
            net.CopyFrom(p.net_param)
        elif p.HasField("net"):
            net = read_net_param(p.net)
        else:
            return None
    except Exception:  # noqa: BLE001 - the solver's own setup reports it properly
        return None
    net.state.CopyFrom(p.train_state)
    net.state.phase = caffe_pb2.TRAIN
    return net
