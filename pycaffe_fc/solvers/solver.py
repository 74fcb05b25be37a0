"""Solver: Caffe's training loop (solver.cpp: Init, Step, Solve, TestAll, Snapshot, Restore).

The update rule itself lives in the subclasses (updates.py: ``apply_update``, the history blobs,
the solver-state snapshot); this class owns everything around it: building the train and test
nets from the SolverParameter, the iteration loop in Caffe's order, the smoothed-loss display,
periodic testing with weights shared from the train net, snapshots and restoring.

Each iteration, as ``Solver::Step``: clear the parameter diffs, test if due, the callbacks'
``on_start()``, ``iter_size`` forward/backward passes, the smoothed loss and the display, the
callbacks' ``on_gradients_ready()`` (where data-parallel training all-reduces the gradients),
``apply_update()``, ``iter += 1``, snapshot if due. Only the root solver (``is_root``) logs, tests
and snapshots, as ``Caffe::root_solver()``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np
from google.protobuf import text_format

from .. import rng
from ..errors import CaffeError
from ..layers.base import TEST, TRAIN
from ..net import Net
from ..proto import caffe_pb2
from . import snapshot as snap
from .log import ProgressBar, fmt, info

f32 = np.float32

# SolverAction::Enum
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"
#: fc-caffe's SIGTERM effect (Caffe has none): snapshot, then stop, even with snapshot_after_train off
SNAPSHOT_STOP = "snapshot_stop"


def read_solver_file(path: str) -> caffe_pb2.SolverParameter:
    """ReadSolverParamsFromTextFileOrDie: parse, upgrade ``solver_type``, and fill in
    ``snapshot_prefix`` as UpgradeSnapshotPrefixProperty does (unset: the solver file's path
    without its extension; a directory: that directory plus the solver file's stem)."""
    from ..proto.io import read_solver_param
    param = read_solver_param(path)
    stem = os.path.splitext(str(path))[0]
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = stem
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, os.path.basename(stem))
    return param


def as_solver_param(solver) -> caffe_pb2.SolverParameter:
    """A SolverParameter from a path or a SolverParameter (copied)."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        p = caffe_pb2.SolverParameter()
        p.CopyFrom(solver)
        from ..proto.upgrade import upgrade_solver_as_needed
        upgrade_solver_as_needed(p, "<SolverParameter>")
        return p
    return read_solver_file(os.fspath(solver))


def load_net_weights(net: Net, model_list: str, root: bool = True) -> None:
    """LoadNetWeights: a comma-separated list of .caffemodel(.h5) files, copied in order."""
    for name in model_list.split(","):
        name = name.strip()
        if not name:
            continue
        if root:
            info(f"Finetuning from {name}", "solver.cpp:72")
        net.copy_from(name)


class Solver:
    """caffe::Solver with pycaffe's surface (``net``, ``test_nets``, ``iter``, ``step``, ``solve``,
    ``snapshot``, ``restore``, ``add_callback``). Subclasses implement the update rule."""

    type = ""

    def __init__(self, solver, *, rank: int = 0, is_root: bool = True) -> None:
        param = as_solver_param(solver)
        self.param = param
        self.rank = int(rank)
        #: only the root solver logs, tests and snapshots (Caffe::root_solver()).
        self.is_root = bool(is_root)
        self.iter = 0
        self.current_step = 0
        self.callbacks: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.action_function: Callable[[], str] | None = None
        self.requested_early_exit = False
        self._losses: list = []
        self._smoothed_loss = f32(0)
        self._iterations_last = 0
        self._timer = time.perf_counter()
        if self.is_root:
            info("Initializing solver from parameters: \n" + text_format.MessageToString(param),
                 "solver.cpp:45")
        if param.average_loss < 1:
            raise CaffeError(f"solver: average_loss should be >= 1 (got {param.average_loss})")
        if param.iter_size < 1:
            raise CaffeError(f"solver: iter_size should be >= 1 (got {param.iter_size})")
        self._check_snapshot_write_permissions()
        if self.is_root and param.snapshot_prefix:
            # temporaries of snapshots cut short by a kill -9 of an earlier run of this prefix
            snap.remove_stale_temporaries(param.snapshot_prefix)
        if param.random_seed >= 0:
            # the process stream is offset by rank as Caffe's solver_rank; the counter-based
            # per-sample streams share random_seed, so every worker draws alike
            rng.set_random_seed(param.random_seed + self.rank, common=param.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        for tn in self.test_nets:
            tn.share_with(self.net)
        if self.is_root:
            info("Solver scaffolding done.", "solver.cpp:57")
        self.pre_solve()

    # -- construction -------------------------------------------------------------------
    def _check_snapshot_write_permissions(self) -> None:
        p = self.param
        if not (self.is_root and p.snapshot):
            return
        if not p.HasField("snapshot_prefix"):
            raise CaffeError("In solver params, snapshot is specified but snapshot_prefix is not")
        probe = snap.snapshot_filename(p.snapshot_prefix, self.iter, ".tempfile")
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError:
            raise CaffeError(f"Cannot write to snapshot prefix '{p.snapshot_prefix}'. Make sure that the "
                             "directory exists and is writable.") from None

    def _init_train_net(self) -> Net:
        p = self.param
        fields = ("net", "net_param", "train_net", "train_net_param")
        n = sum(p.HasField(f) for f in fields)
        if n < 1:
            raise CaffeError("SolverParameter must specify a train net using one of these fields: "
                             + ", ".join(fields))
        if n > 1:
            raise CaffeError("SolverParameter must not contain more than one of these fields specifying "
                             "a train_net: " + ", ".join(fields))
        from ..proto.io import read_net_param
        if p.HasField("train_net_param"):
            self._log("Creating training net specified in train_net_param.", "solver.cpp:92")
            net_param, source = _copy(p.train_net_param), "train_net_param"
        elif p.HasField("train_net"):
            self._log(f"Creating training net from train_net file: {p.train_net}", "solver.cpp:96")
            net_param, source = read_net_param(p.train_net), p.train_net
        elif p.HasField("net_param"):
            self._log("Creating training net specified in net_param.", "solver.cpp:98")
            net_param, source = _copy(p.net_param), "net_param"
        else:
            self._log(f"Creating training net from net file: {p.net}", "solver.cpp:102")
            net_param, source = read_net_param(p.net), p.net
        # Precedence, lowest first: solver default (TRAIN), the net's own state, train_state.
        state = caffe_pb2.NetState(phase=TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        net = Net(net_param, state.phase, source=source)
        net.source = source
        # every backward of the training net follows its forward: no need to unroll twice
        net.keep_forward_columns()
        for w in p.weights:
            load_net_weights(net, w, self.is_root)
        return net

    def _init_test_nets(self) -> list[Net]:
        p = self.param
        from ..proto.io import read_net_param
        generic = p.HasField("net_param") + p.HasField("net")
        if generic > 1:
            raise CaffeError("Both net_param and net_file may not be specified.")
        n_specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < n_specific or not generic and len(p.test_iter) != n_specific:
            raise CaffeError(f"test_iter must be specified for each test network ({len(p.test_iter)} "
                             f"test_iter for {n_specific} test nets)")
        n_instances = n_specific + (len(p.test_iter) - n_specific)
        if len(p.test_state) and len(p.test_state) != n_instances:
            raise CaffeError("test_state must be unspecified or specified once per test net.")
        if n_instances and p.test_interval <= 0:
            raise CaffeError(f"solver: test nets need test_interval > 0 (got {p.test_interval})")
        sources: list[tuple[str, caffe_pb2.NetParameter]] = []
        for tp in p.test_net_param:
            sources.append(("test_net_param", _copy(tp)))
        for tf in p.test_net:
            sources.append((f"test_net file: {tf}", read_net_param(tf)))
        remaining = len(p.test_iter) - len(sources)
        for _ in range(remaining):
            if p.HasField("net_param"):
                sources.append(("net_param", _copy(p.net_param)))
            else:
                sources.append((f"net file: {p.net}", read_net_param(p.net)))
        nets = []
        for i, (source, net_param) in enumerate(sources):
            state = caffe_pb2.NetState(phase=TEST)
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            self._log(f"Creating test net (#{i}) specified by {source}", "solver.cpp:190")
            net = Net(net_param, state.phase, source=source)
            net.source = source
            for w in p.weights:
                load_net_weights(net, w, self.is_root)
            nets.append(net)
        return nets

    # -- what update rules implement ------------------------------------------------------
    def pre_solve(self) -> None:
        """Allocate the update rule's state (SGDSolver::PreSolve)."""

    def apply_update(self) -> None:
        raise NotImplementedError

    def snapshot_solver_state(self, model_filename: str) -> str:
        raise NotImplementedError

    def restore_solver_state(self, record: snap.SolverStateRecord, path: str) -> None:
        raise NotImplementedError

    # -- pycaffe surface --------------------------------------------------------------------
    def add_callback(self, on_start: Callable[[], None], on_gradients_ready: Callable[[], None]) -> None:
        """Solver::add_callback: ``on_start()`` before each iteration's forward/backward,
        ``on_gradients_ready()`` after it and before the update."""
        self.callbacks.append((on_start, on_gradients_ready))

    def set_action_function(self, func: Callable[[], str] | None) -> None:
        """Solver::SetActionFunction: polled once per iteration (and per test batch); returns
        "none", "stop" or "snapshot" (the CLI's SIGINT/SIGHUP effects)."""
        self.action_function = func

    def get_requested_action(self) -> str:
        return self.action_function() if self.action_function is not None else NONE

    @property
    def smoothed_loss(self) -> float:
        return float(self._smoothed_loss)

    def step(self, iters: int) -> None:
        """Solver::Step: run ``iters`` iterations."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        self._losses = []
        self._smoothed_loss = f32(0)
        self._timer = time.perf_counter()
        self._iterations_last = self.iter
        # no bar for pycaffe's step(1) loops: it would flash once per call
        bar = ProgressBar(stop_iter - start_iter, 0, enabled=self.is_root and stop_iter - start_iter > 1)
        try:
            while self.iter < stop_iter:
                self.net.clear_param_diffs()
                if (p.test_interval and self.iter % p.test_interval == 0
                        and (self.iter > 0 or p.test_initialization)):
                    if self.is_root:
                        self.test_all()
                    if self.requested_early_exit:
                        break
                for on_start, _ in self.callbacks:
                    on_start()
                display = bool(p.display) and self.iter % p.display == 0
                loss = f32(0)
                for _ in range(p.iter_size):
                    loss += f32(self.net.forward_backward())
                loss = f32(loss / f32(p.iter_size))
                if not math.isfinite(float(loss)):
                    raise CaffeError(f"Iteration {self.iter}: the training loss is {fmt(loss)}; training "
                                     "diverged (try a lower base_lr, gradient clipping or check the data)")
                self._update_smoothed_loss(loss, start_iter, average_loss)
                bar.set_loss(self._smoothed_loss)
                if display and self.is_root:
                    self._display()
                for _, on_gradients_ready in self.callbacks:
                    on_gradients_ready()
                self.apply_update()
                self.iter += 1
                bar.update(1)
                request = self.get_requested_action()
                # SNAPSHOT_STOP snapshots here only when Solve() would not (snapshot_after_train off)
                if self.is_root and ((p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT
                                     or (request == SNAPSHOT_STOP and not p.snapshot_after_train)):
                    self.snapshot()
                if request in (STOP, SNAPSHOT_STOP):
                    self.requested_early_exit = True
                    break
        finally:
            bar.close()

    def solve(self, resume_file: str | None = None) -> None:
        """Solver::Solve: restore if asked, step to max_iter, snapshot after training, then one more
        forward to display the final loss and a final test, as Caffe does."""
        p = self.param
        self._log(f"Solving {self.net.name}", "solver.cpp:289")
        self._log(f"Learning Rate Policy: {p.lr_policy}", "solver.cpp:290")
        self.requested_early_exit = False
        if resume_file:
            self._log(f"Restoring previous solver status from {resume_file}", "solver.cpp:296")
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if not self.is_root:
            return
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            info("Optimization stopped early.", "solver.cpp:310")
            return
        if p.display and self.iter % p.display == 0:
            loss = f32(self.net.Forward())
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            info(f"Iteration {self.iter}, loss = {fmt(self._smoothed_loss)}", "solver.cpp:327")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        info("Optimization Done.", "solver.cpp:332")

    # -- testing (Solver::TestAll / Test) ------------------------------------------------------
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id: int = 0) -> list[tuple[str, float]]:
        """Solver::Test: ``test_iter`` forward passes of a test net with the train net's weights;
        logs (and returns) the mean of every output element."""
        p = self.param
        info(f"Iteration {self.iter}, Testing net (#{test_net_id})", "solver.cpp:347")
        net = self.test_nets[test_net_id]
        net.share_with(self.net)
        n_iter = p.test_iter[test_net_id]
        scores = None
        loss = f32(0)
        for _ in range(n_iter):
            request = self.get_requested_action()
            while request != NONE:
                if request == SNAPSHOT or (request == SNAPSHOT_STOP and not p.snapshot_after_train):
                    self.snapshot()
                if request in (STOP, SNAPSHOT_STOP):
                    self.requested_early_exit = True
                request = self.get_requested_action()
            if self.requested_early_exit:
                break
            iter_loss = net.Forward()
            if p.test_compute_loss:
                loss += f32(iter_loss)
            values = [np.asarray(net.blobs[name].cpu_data(), dtype=np.float32).ravel() for name in net.outputs]
            batch = np.concatenate(values) if values else np.zeros(0, np.float32)
            scores = batch.copy() if scores is None else scores + batch
        if self.requested_early_exit:
            info("Test interrupted.", "solver.cpp:393")
            return []
        if p.test_compute_loss:
            info(f"Test loss: {fmt(loss / f32(n_iter))}", "solver.cpp:397")
        results = []
        if scores is None:
            return results
        names, weights = [], []
        lw = net.blob_loss_weights
        for name in net.outputs:
            count = int(np.prod(net.blobs[name].shape, dtype=np.int64))
            names += [name] * count
            weights += [lw[name]] * count
        for i, (name, w) in enumerate(zip(names, weights)):
            mean = f32(scores[i] / f32(n_iter))
            extra = f" (* {fmt(w)} = {fmt(f32(w) * mean)} loss)" if w else ""
            info(f"    Test net output #{i}: {name} = {fmt(mean)}{extra}", "solver.cpp:414")
            results.append((name, float(mean)))
        return results

    # -- snapshots (Solver::Snapshot / Restore) ----------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Solver::Snapshot: the model, then the solver state; returns both file names."""
        p = self.param
        if p.snapshot_format == snap.HDF5:
            model = snap.snapshot_filename(p.snapshot_prefix, self.iter, ".caffemodel.h5")
            info(f"Snapshotting to HDF5 file {model}", "solver.cpp:472")
        else:
            model = snap.snapshot_filename(p.snapshot_prefix, self.iter, ".caffemodel")
            info(f"Snapshotting to binary proto file {model}", "solver.cpp:464")
        snap.write_model(self.net, model, p.snapshot_format, p.snapshot_diff)
        state = self.snapshot_solver_state(model)
        return model, state

    def restore(self, state_file: str) -> None:
        """Solver::Restore: a .solverstate (binary) or .solverstate.h5 (HDF5), with its model;
        then fc-caffe's resume state (data positions, random streams) when the file has it."""
        record = snap.read_state(state_file)
        self.restore_solver_state(record, str(state_file))
        self.restore_streams(record, str(state_file))

    # -- exact resume (fc-caffe extension) -------------------------------------------------------
    def _stream_layers(self):
        for net_id, net in enumerate([self.net] + list(self.test_nets)):
            for name, layer in zip(net._layer_names, net.layers):
                yield net_id, name, layer

    @staticmethod
    def _layer_state(layer) -> dict | None:
        if hasattr(layer, "resume_state"):
            return layer.resume_state()
        stream = getattr(layer, "random_stream", None)   # made on first use (rng.attach_stream)
        if isinstance(stream, rng.LayerStream):
            seed, draws = stream.state()
            return {"seed": seed, "draws": draws, "position": 0}
        return None

    def stream_states(self) -> dict:
        """The SolverStateRecord fields of fc-caffe's resume state: every data layer's position
        of the next batch to consume and every layer's random stream, the process stream, and
        the number of workers."""
        import json
        from ..data.sharding import get_shard
        states = []
        for net_id, name, layer in self._stream_layers():
            st = self._layer_state(layer)
            if st is not None:
                states.append({"net": net_id, "layer": name, **st})
        shard = get_shard()
        return {"layer_states": states, "process_rng": json.dumps(rng.process_state()),
                "workers": shard.size if shard is not None else 1}

    def restore_streams(self, record: snap.SolverStateRecord, path: str) -> None:
        """Put back what ``stream_states`` saved; a Caffe state has none of it, and the data
        layers then start again from the first record, as in Caffe."""
        if not record.layer_states and record.process_rng is None:
            return
        import json
        by_key = {(d["net"], d["layer"]): d for d in record.layer_states}
        restored = 0
        for net_id, name, layer in self._stream_layers():
            d = by_key.get((net_id, name))
            if d is None:
                continue
            if hasattr(layer, "restore_resume_state"):
                layer.restore_resume_state(d["seed"], d["draws"], d["position"])
            else:
                rng.attach_stream(layer).restore(d["seed"], d["draws"])
            restored += 1
        if record.process_rng is not None and self.rank == 0:
            try:
                rng.set_process_state(json.loads(record.process_rng))
            except (ValueError, TypeError, KeyError) as e:
                raise CaffeError(f"{path}: damaged random stream state ({e})") from None
        if record.workers and self.is_root:
            from ..data.sharding import get_shard
            shard = get_shard()
            now = shard.size if shard is not None else 1
            more = f" (written by {record.workers} workers, resumed on {now})" if record.workers != now else ""
            info(f"Restored the data positions and random streams of {restored} layers{more}",
                 "solver.cpp:0")

    # -- helpers -----------------------------------------------------------------------------
    def _update_smoothed_loss(self, loss, start_iter: int, average_loss: int) -> None:
        """Solver::UpdateSmoothedLoss: the mean of the last ``average_loss`` losses (float math)."""
        loss = f32(loss)
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self._smoothed_loss = f32((self._smoothed_loss * f32(size - 1) + loss) / f32(size))
        else:
            idx = (self.iter - start_iter) % average_loss
            self._smoothed_loss = f32(self._smoothed_loss + (loss - self._losses[idx]) / f32(average_loss))
            self._losses[idx] = loss

    def _display(self) -> None:
        p = self.param
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse if lapse else 1.0)
        info(f"Iteration {self.iter} ({fmt(per_s)} iter/s, {fmt(lapse)}s/{p.display} iters), "
             f"loss = {fmt(self._smoothed_loss)}", "solver.cpp:239")
        self._timer = now
        self._iterations_last = self.iter
        lw = self.net.blob_loss_weights
        k = 0
        for name in self.net.outputs:
            values = np.asarray(self.net.blobs[name].cpu_data(), dtype=np.float32).ravel()
            w = lw[name]
            for v in values:
                extra = f" (* {fmt(w)} = {fmt(f32(w) * v)} loss)" if w else ""
                info(f"    Train net output #{k}: {name} = {fmt(v)}{extra}", "solver.cpp:258")
                k += 1

    def _log(self, msg: str, src: str) -> None:
        if self.is_root:
            info(msg, src)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.net.name}' iter {self.iter}>"


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out
