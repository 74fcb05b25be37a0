"""The six update rules (sgd_solvers/*.cpp): SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

``SGDSolver.apply_update`` is Caffe's ``SGDSolver::ApplyUpdate``: the learning rate of this
iteration, ClipGradients (global L2 norm of all diffs, before normalisation, as Caffe), then per
learnable parameter Normalize (1/iter_size), Regularize (L2: diff += local_decay * data; L1:
diff += local_decay * sign(data); local_decay = weight_decay * decay_mult) and ComputeUpdateValue
(the rule, leaving the step in diff, scaled by local_rate = rate * lr_mult), and finally
``Net::Update`` (data -= diff) on every learnable parameter. A parameter with lr_mult 0 gets a
zero step as in Caffe (its local rate is 0; its gradient was never computed).

All arithmetic is float32 elementwise, in the order of Caffe's BLAS calls, on the array module of
the parameters (numpy or CuPy).

fc-caffe extension ``lars: true`` (SolverParameter fields 1002/1003, SGD and Nesterov only): LARS
(You, Gitman & Ginsburg 2017) multiplies each blob's rate by ``lars_eta * ||w|| / (||g|| +
weight_decay * decay_mult * ||w||)``, g the loss gradient after ClipGradients and Normalize's
1/iter_size, before Regularize (``SGDSolver.lars_factors``).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..errors import CaffeError
from . import snapshot as snap
from .log import fmt, info
from .lr_policy import learning_rate
from .solver import Solver

f32 = np.float32
#: the update rules the ``lars`` extension applies to: LARS scales the rate of momentum SGD; the
#: adaptive rules already normalise their steps per element.
LARS_SOLVERS = ("SGD", "Nesterov")


class SGDSolver(Solver):
    """SGDSolver: history = momentum * history + local_rate * diff; data -= history."""

    type = "SGD"
    #: history blobs per learnable parameter (AdaDelta and Adam keep two).
    history_sets = 1

    def pre_solve(self) -> None:
        """SGDSolver::PreSolve: zeroed history blobs shaped like the learnable parameters."""
        p = self.param
        if p.lars and self.type not in LARS_SOLVERS:
            raise CaffeError(f"solver: lars works with the {' and '.join(LARS_SOLVERS)} solvers (momentum "
                             f"SGD), not type \"{self.type}\"")
        if p.lars and not p.lars_eta > 0:
            raise CaffeError(f"solver: lars_eta should be > 0 (got {p.lars_eta:g})")
        self.history = []
        for _ in range(self.history_sets):
            for b in self.net.learnable_params:
                # the history lives where the net computes (the device in GPU mode)
                xp = backend.cupy if self.net.on_device else np
                self.history.append(xp.zeros(b.shape, np.float32))

    # -- SGDSolver::ApplyUpdate ---------------------------------------------------------------
    def get_learning_rate(self) -> float:
        """SGDSolver::GetLearningRate (updates ``current_step``)."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step, verbose=self.is_root)
        return rate

    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate, on the side the net computes on (no transfer in GPU mode)."""
        on_device = self.net.on_device
        if self.history and backend.is_device_array(self.history[0]) != on_device:
            # the net follows a set_mode_gpu()/set_mode_cpu() made after it was built: so does the history
            xp = backend.cupy if on_device else np
            self.history[:] = [xp.asarray(backend.to_numpy(h)) for h in self.history]
        with backend.device_side(on_device):
            self._apply_update()

    def _apply_update(self) -> None:
        rate = self.get_learning_rate()
        p = self.param
        if self.is_root and p.display and self.iter % p.display == 0:
            info(f"Iteration {self.iter}, lr = {fmt(rate)}", "sgd_solver.cpp:112")
        self.clip_gradients()
        # LARS measures the loss gradient, so before Regularize adds the weight decay to it
        factors = self.lars_factors() if p.lars else None
        for i in range(len(self.net.learnable_params)):
            self.normalize(i)
            local = rate if factors is None else f32(rate) * factors[i]
            self.regularize(i)
            self.compute_update_value(i, local)
        for b in self.net.learnable_params:
            b.update()

    def clip_gradients(self) -> None:
        """SGDSolver::ClipGradients: scale every diff so that their global L2 norm <= clip_gradients."""
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        # summed in float32 on the array's side, read back once (one host sync in GPU mode)
        sumsq = None
        for b in params:
            d = b.diff
            s = (d * d).sum(dtype=np.float32)
            sumsq = s if sumsq is None else sumsq + s
        sumsq = f32(0) if sumsq is None else f32(float(sumsq))
        l2 = f32(math.sqrt(float(sumsq)))
        if l2 > clip:
            scale = f32(clip / l2)
            if self.is_root:
                info(f"Gradient clipping: scaling down gradients (L2 norm {fmt(l2)} > {fmt(clip)}) by scale "
                     f"factor {fmt(scale)}", "sgd_solver.cpp:99")
            for b in params:
                b.diff[...] *= scale

    def normalize(self, i: int) -> None:
        """SGDSolver::Normalize: undo the summing of iter_size gradients."""
        if self.param.iter_size == 1:
            return
        b = self.net.learnable_params[i]
        b.diff[...] *= f32(1) / f32(self.param.iter_size)

    def regularize(self, i: int) -> None:
        """SGDSolver::Regularize: L2 or L1 weight decay, weight_decay * decay_mult."""
        local_decay = f32(self.param.weight_decay) * f32(self.net.params_weight_decay[i])
        if not local_decay:
            return
        b = self.net.learnable_params[i]
        kind = self.param.regularization_type
        if kind == "L2":
            b.diff[...] += local_decay * b.data
        elif kind == "L1":
            xp = backend.get_array_module(b.data)
            b.diff[...] += local_decay * xp.sign(b.data)
        else:
            raise CaffeError(f"Unknown regularization type: {kind} (L1 or L2)")

    def lars_factors(self) -> list[np.float32]:
        """fc-caffe extension ``lars`` (You, Gitman & Ginsburg 2017, "Large Batch Training of
        Convolutional Networks"): per learnable blob, the factor ``lars_eta * ||w|| / (||g|| + beta *
        ||w||)`` by which LARS multiplies the global rate, with ``w`` the blob's weights, ``g`` its loss
        gradient (after clip_gradients and Normalize's 1/iter_size, before weight decay) and ``beta =
        weight_decay * decay_mult`` the decay applied to it; 1 where ``||w||`` or ``||g||`` is 0 (a
        zero-initialised bias, an unused blob), as Intel's and NVIDIA's Caffe do. Squares summed in
        float32 on the arrays' side and read back once (one host sync per iteration in GPU mode)."""
        params = self.net.learnable_params
        if not params:
            return []
        xp = backend.get_array_module(params[0].data)
        sums = xp.stack([s for b in params for s in ((b.data * b.data).sum(dtype=np.float32),
                                                     (b.diff * b.diff).sum(dtype=np.float32))])
        host = np.asarray(backend.to_numpy(sums), dtype=np.float32)
        eta = f32(self.param.lars_eta)
        decay = f32(self.param.weight_decay)
        normalize = f32(1) / f32(self.param.iter_size)
        factors = []
        for i in range(len(params)):
            w = f32(math.sqrt(float(host[2 * i])))
            g = f32(math.sqrt(float(host[2 * i + 1]))) * normalize
            if not (w > 0 and g > 0):
                factors.append(f32(1))
                continue
            beta = decay * f32(self.net.params_weight_decay[i])
            factors.append(eta * w / (g + beta * w))
        return factors

    def local_rate(self, i: int, rate: float) -> np.float32:
        return f32(rate) * f32(self.net.params_lr[i])

    def compute_update_value(self, i: int, rate: float) -> None:
        b = self.net.learnable_params[i]
        h = self.history[i]
        h *= f32(self.param.momentum)
        h += self.local_rate(i, rate) * b.diff
        b.diff[...] = h

    # -- solver state (SGDSolver::SnapshotSolverState* / RestoreSolverState*) -------------------
    def snapshot_solver_state(self, model_filename: str) -> str:
        p = self.param
        if p.snapshot_format == snap.HDF5:
            path = snap.snapshot_filename(p.snapshot_prefix, self.iter, ".solverstate.h5")
            info(f"Snapshotting solver state to HDF5 file {path}", "sgd_solver.cpp:300")
        else:
            path = snap.snapshot_filename(p.snapshot_prefix, self.iter, ".solverstate")
            info(f"Snapshotting solver state to binary proto file {path}", "sgd_solver.cpp:284")
        record = snap.SolverStateRecord(self.iter, model_filename, self.current_step,
                                        [backend.to_numpy(h) for h in self.history], **self.stream_states())
        snap.write_state(path, p.snapshot_format, record)
        return path

    def restore_solver_state(self, record: snap.SolverStateRecord, path: str) -> None:
        if len(record.history) != len(self.history):
            raise CaffeError(f"{path}: incorrect length of history blobs ({len(record.history)} in the file, "
                             f"{len(self.history)} expected by the {self.type} solver)")
        for i, (src, h) in enumerate(zip(record.history, self.history)):
            if src.size != h.size:
                raise CaffeError(f"{path}: history blob {i} has {src.size} values, the parameter has {h.size}")
        self.iter = int(record.iter)
        if record.learned_net:
            self.net.copy_from(snap.resolve_learned_net(record.learned_net, path))
        self.current_step = int(record.current_step)
        self._log(f"{type(self).__name__}: restoring history", "sgd_solver.cpp:316")
        for src, h in zip(record.history, self.history):
            xp = backend.get_array_module(h)
            h[...] = xp.asarray(src.reshape(h.shape), dtype=np.float32)


class NesterovSolver(SGDSolver):
    """NesterovSolver: h' = momentum*h + local_rate*diff; step = (1+momentum)*h' - momentum*h."""

    type = "Nesterov"

    def compute_update_value(self, i: int, rate: float) -> None:
        b = self.net.learnable_params[i]
        h = self.history[i]
        m = f32(self.param.momentum)
        previous = h.copy()
        h *= m
        h += self.local_rate(i, rate) * b.diff
        b.diff[...] = (f32(1) + m) * h - m * previous


class AdaGradSolver(SGDSolver):
    """AdaGradSolver: h += diff^2; step = local_rate * diff / (sqrt(h) + delta)."""

    type = "AdaGrad"

    def pre_solve(self) -> None:
        if self.param.momentum != 0:
            raise CaffeError("Momentum cannot be used with AdaGrad.")
        super().pre_solve()

    def compute_update_value(self, i: int, rate: float) -> None:
        b = self.net.learnable_params[i]
        h = self.history[i]
        xp = backend.get_array_module(h)
        g = b.diff
        h += g * g
        update = g / (xp.sqrt(h) + f32(self.param.delta))
        b.diff[...] = self.local_rate(i, rate) * update


class RMSPropSolver(SGDSolver):
    """RMSPropSolver: h = rms_decay*h + (1-rms_decay)*diff^2; step = local_rate*diff/(sqrt(h)+delta)."""

    type = "RMSProp"

    def pre_solve(self) -> None:
        p = self.param
        if p.momentum != 0:
            raise CaffeError("Momentum cannot be used with RMSProp.")
        if not 0 <= p.rms_decay < 1:
            raise CaffeError(f"rms_decay should lie in [0, 1) (got {p.rms_decay})")
        super().pre_solve()

    def compute_update_value(self, i: int, rate: float) -> None:
        b = self.net.learnable_params[i]
        h = self.history[i]
        xp = backend.get_array_module(h)
        decay = f32(self.param.rms_decay)
        g = b.diff
        h *= decay
        h += (f32(1) - decay) * (g * g)
        update = g / (xp.sqrt(h) + f32(self.param.delta))
        b.diff[...] = self.local_rate(i, rate) * update


class AdaDeltaSolver(SGDSolver):
    """AdaDeltaSolver (Zeiler 2012): gradient and update histories decayed by ``momentum``;
    step = local_rate * diff * sqrt((hu + delta) / (hg + delta))."""

    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, i: int, rate: float) -> None:
        n = len(self.net.learnable_params)
        b = self.net.learnable_params[i]
        hg, hu = self.history[i], self.history[n + i]
        xp = backend.get_array_module(hg)
        m = f32(self.param.momentum)
        delta = f32(self.param.delta)
        g = b.diff
        hg *= m
        hg += (f32(1) - m) * (g * g)
        update = xp.sqrt((hu + delta) / (hg + delta))
        g *= update
        hu *= m
        hu += (f32(1) - m) * (g * g)
        g *= self.local_rate(i, rate)


class AdamSolver(SGDSolver):
    """AdamSolver (Kingma & Ba 2015): m and v decayed by momentum and momentum2;
    step = local_rate * sqrt(1-beta2^t)/(1-beta1^t) * m / (sqrt(v) + delta), t = iter + 1."""

    type = "Adam"
    history_sets = 2

    def compute_update_value(self, i: int, rate: float) -> None:
        n = len(self.net.learnable_params)
        b = self.net.learnable_params[i]
        m, v = self.history[i], self.history[n + i]
        xp = backend.get_array_module(m)
        beta1 = f32(self.param.momentum)
        beta2 = f32(self.param.momentum2)
        t = self.iter + 1
        # std::sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1.) - pow(beta1, t)): pow in double
        correction = f32(math.sqrt(1.0 - math.pow(float(beta2), t)) / (1.0 - math.pow(float(beta1), t)))
        g = b.diff
        m *= beta1
        m += (f32(1) - beta1) * g
        v *= beta2
        v += (f32(1) - beta2) * (g * g)
        update = m / (xp.sqrt(v) + f32(self.param.delta))
        b.diff[...] = (self.local_rate(i, rate) * correction) * update


SOLVER_REGISTRY: dict[str, type[SGDSolver]] = {
    cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)
}
