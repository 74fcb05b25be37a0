"""Softmax, the loss layers and Accuracy.

Every loss top holds the *unweighted* loss (Caffe's convention); backward scales the gradient by
``top[0].diff``, where the framework stored the loss_weight. Normalisation follows
LossLayer::GetNormalizer; SoftmaxWithLoss and InfogainLoss default to VALID, while
SigmoidCrossEntropyLoss defaults to BATCH_SIZE, as in BVLC Caffe.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..blob import Blob
from ..errors import CaffeError
from .activation import sigmoid_into
from .base import Layer, LossLayer, get_normalizer, register

F32 = np.float32
FLT_MIN = F32(np.finfo(np.float32).tiny)
LOG_THRESHOLD = F32(1e-20)  # Caffe's kLOG_THRESHOLD
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def _normalization(layer_param, default: int) -> int:
    """The loss normalisation: ``normalization`` if set, else the legacy ``normalize`` flag
    (true = VALID, false = BATCH_SIZE), else the layer's default."""
    p = layer_param.loss_param
    if p.HasField("normalization"):
        return p.normalization
    if p.HasField("normalize"):
        return VALID if p.normalize else BATCH_SIZE
    return default


def _ignore(layer_param) -> int | None:
    p = layer_param.loss_param
    return int(p.ignore_label) if p.HasField("ignore_label") else None


def softmax_into(xp, x3, out3) -> None:
    """Softmax over axis 1 of an (outer, channels, inner) array, max-subtracted; out may be x."""
    m = x3.max(axis=1, keepdims=True)
    xp.subtract(x3, m, out=out3)
    xp.exp(out3, out=out3)
    out3 /= out3.sum(axis=1, keepdims=True)


def softmax_backward_into(xp, y3, dy3, out3) -> None:
    """dx = (dy - sum_c dy * y) * y; out may alias dy (in place)."""
    dot = (dy3 * y3).sum(axis=1, keepdims=True)
    xp.subtract(dy3, dot, out=out3)
    out3 *= y3


def _split_axis(blob: Blob, axis: int) -> tuple[int, int, int]:
    return blob.count_range(0, axis), blob.shape[axis], blob.count_range(axis + 1)


class _Labels:
    """Integer labels of an (outer, inner) grid and their flat indices into (outer, C, inner)."""

    def __init__(self, layer: Layer, xp, label_blob: Blob, outer: int, channels: int, inner: int,
                 ignore: int | None, check: bool = True) -> None:
        lab = label_blob.data.reshape(outer, inner).astype(np.int64)  # static_cast<int>
        self.valid = None if ignore is None else lab != ignore
        if check:
            bad = (lab < 0) | (lab >= channels)
            if self.valid is not None:
                bad &= self.valid
            if bool(bad.any()):
                v = int(lab[bad].reshape(-1)[0])
                raise CaffeError(f"layer '{layer.name}': label {v} out of range [0, {channels})")
        if self.valid is not None:
            lab = xp.where(self.valid, lab, 0)
        self.lab = lab
        self.flat = ((xp.arange(outer)[:, None] * channels + lab) * inner + xp.arange(inner)[None, :])
        self.count = outer * inner if self.valid is None else int(self.valid.sum())


@register("Softmax")
class SoftmaxLayer(Layer):
    """SoftmaxLayer over ``softmax_param.axis``; backward from top data and diff (in place ok)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top) -> None:
        axis = bottom[0].canonical_axis_index(self.layer_param.softmax_param.axis)
        self.dims = _split_axis(bottom[0], axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top) -> None:
        softmax_into(self.xp, bottom[0].data.reshape(self.dims), top[0].data.reshape(self.dims))

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[0]:
            softmax_backward_into(self.xp, top[0].data.reshape(self.dims), top[0].diff.reshape(self.dims),
                                  bottom[0].diff.reshape(self.dims))


class _SoftmaxLossBase(LossLayer):
    """Shared by SoftmaxWithLoss and InfogainLoss: an internal softmax into ``prob`` and an
    optional second top sharing it."""

    exact_num_top = -1
    min_top = 1
    max_top = 2

    def setup(self, bottom, top) -> None:
        self.ignore_label = _ignore(self.layer_param)
        self.normalization = _normalization(self.layer_param, VALID)
        self.prob = Blob()

    def _reshape_softmax(self, bottom, top, axis_param: int) -> None:
        LossLayer.reshape(self, bottom, top)
        axis = bottom[0].canonical_axis_index(axis_param)
        self.dims = outer, _, inner = _split_axis(bottom[0], axis)
        if outer * inner != bottom[1].count:
            raise CaffeError(f"layer '{self.name}': number of labels must match number of predictions; "
                             f"e.g. if the softmax axis is 1 and the prediction shape is (N, C, H, W), the "
                             f"label count must be N*H*W (predictions {list(bottom[0].shape)}, labels "
                             f"{list(bottom[1].shape)})")
        self.prob.reshape(bottom[0].shape)
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)
            top[1].share_data(self.prob)

    def _normalizer(self, count: int) -> float:
        outer, _, inner = self.dims
        return get_normalizer(self.normalization, outer, inner, count)

    def _check_label_backward(self, propagate_down) -> None:
        if propagate_down[1]:
            raise CaffeError(f"layer '{self.name}': {self.type} layer cannot backpropagate to label inputs")


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_SoftmaxLossBase):
    """SoftmaxWithLossLayer: softmax over ``softmax_param.axis`` then the multinomial logistic loss
    -log(max(p[label], FLT_MIN)), skipping ``ignore_label``, divided by the normaliser
    (default VALID; legacy ``normalize: false`` = BATCH_SIZE)."""

    def reshape(self, bottom, top) -> None:
        self._reshape_softmax(bottom, top, self.layer_param.softmax_param.axis)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        outer, channels, inner = self.dims
        prob = self.prob.data
        softmax_into(xp, bottom[0].data.reshape(self.dims), prob.reshape(self.dims))
        self.labels = lab = _Labels(self, xp, bottom[1], outer, channels, inner, self.ignore_label)
        logp = xp.log(xp.maximum(prob.reshape(-1)[lab.flat], FLT_MIN))
        if lab.valid is not None:
            logp *= lab.valid
        top[0].data[...] = -logp.sum() / F32(self._normalizer(lab.count))

    def backward(self, top, propagate_down, bottom) -> None:
        self._check_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        lab = self.labels
        dx = bottom[0].diff
        dx[...] = self.prob.data
        flat = dx.reshape(-1)
        flat[lab.flat] -= F32(1)
        if lab.valid is not None:
            dx.reshape(self.dims)[...] *= lab.valid[:, None, :]
        dx *= top[0].diff / F32(self._normalizer(lab.count))


@register("InfogainLoss")
class InfogainLossLayer(_SoftmaxLossBase):
    """InfogainLossLayer (BVLC master: softmax inside): loss = -sum_l H[label, l] log p_l with
    p clipped at 1e-20; H is the third bottom or the BlobProto file ``infogain_loss_param.source``."""

    min_bottom = 2
    max_bottom = 3
    exact_num_bottom = -1

    def setup(self, bottom, top) -> None:
        super().setup(bottom, top)
        self._H = None
        if len(bottom) < 3:
            p = self.layer_param.infogain_loss_param
            if not p.source:
                raise CaffeError(f"layer '{self.name}': infogain matrix source must be specified")
            from ..proto import io as proto_io
            h = proto_io.blobproto_to_array(proto_io.read_blobproto(p.source), what=f"infogain matrix {p.source}")
            self._H = backend.asarray(np.asarray(h, F32))

    def _infogain(self, bottom):
        h = bottom[2].data if len(bottom) > 2 else self._H
        c = self.dims[1]
        if h.size != c * c:
            raise CaffeError(f"layer '{self.name}': infogain matrix must be {c}x{c}, has {h.size} values")
        return h.reshape(c, c)

    def reshape(self, bottom, top) -> None:
        self._reshape_softmax(bottom, top, self.layer_param.infogain_loss_param.axis)
        self._infogain(bottom)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom, top) -> None:
        xp = self.xp
        outer, channels, inner = self.dims
        prob3 = self.prob.data.reshape(self.dims)
        softmax_into(xp, bottom[0].data.reshape(self.dims), prob3)
        self.labels = lab = _Labels(self, xp, bottom[1], outer, channels, inner, self.ignore_label)
        h_rows = self._infogain(bottom)[lab.lab]  # (outer, inner, C)
        if lab.valid is not None:
            h_rows = h_rows * lab.valid[:, :, None]
        logp = xp.log(xp.maximum(prob3, LOG_THRESHOLD))
        loss = (h_rows.transpose(0, 2, 1) * logp).sum()
        top[0].data[...] = -loss / F32(self._normalizer(lab.count))

    def backward(self, top, propagate_down, bottom) -> None:
        self._check_label_backward(propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise CaffeError(f"layer '{self.name}': InfogainLoss cannot backpropagate into the infogain matrix")
        if not propagate_down[0]:
            return
        lab = self.labels
        h = self._infogain(bottom)
        sum_rows = h.sum(axis=1)
        prob3 = self.prob.data.reshape(self.dims)
        dx3 = bottom[0].diff.reshape(self.dims)
        # dx[i, l, j] = p[i, l, j] * sum_rows_H[label] - H[label, l]
        self.xp.multiply(prob3, sum_rows[lab.lab][:, None, :], out=dx3)
        dx3 -= h[lab.lab].transpose(0, 2, 1)
        if lab.valid is not None:
            dx3 *= lab.valid[:, None, :]
        dx3 *= top[0].diff / F32(self._normalizer(lab.count))


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """MultinomialLogisticLossLayer: bottom[0] holds probabilities (N, C); loss is
    -sum_n log(max(p[n, label_n], 1e-20)) / N."""

    def reshape(self, bottom, top) -> None:
        super().reshape(bottom, top)
        if bottom[1].count != bottom[0].shape[0]:
            raise CaffeError(f"layer '{self.name}': one label per sample expected, labels "
                             f"{list(bottom[1].shape)} for predictions {list(bottom[0].shape)}")
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)

    def forward(self, bottom, top) -> None:
        self.labels = lab = _Labels(self, self.xp, bottom[1], self.num, self.dim, 1, None)
        p = self.xp.maximum(bottom[0].data.reshape(-1)[lab.flat], LOG_THRESHOLD)
        top[0].data[...] = -self.xp.log(p).sum() / F32(self.num)

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[1]:
            raise CaffeError(f"layer '{self.name}': MultinomialLogisticLoss cannot backpropagate to labels")
        if not propagate_down[0]:
            return
        flat = self.labels.flat
        dx = bottom[0].diff
        dx[...] = F32(0)
        p = self.xp.maximum(bottom[0].data.reshape(-1)[flat], LOG_THRESHOLD)
        dx.reshape(-1)[flat] = -(top[0].diff / F32(self.num)) / p


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """EuclideanLossLayer: sum((a - b)^2) / (2 N); both bottoms get gradients (+ and -)."""

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def reshape(self, bottom, top) -> None:
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise CaffeError(f"layer '{self.name}': inputs must have the same dimension "
                             f"({list(bottom[0].shape)} vs {list(bottom[1].shape)})")
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1

    def forward(self, bottom, top) -> None:
        d = self._diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        flat = d.reshape(-1)
        top[0].data[...] = self.xp.dot(flat, flat) / F32(self.num) / F32(2)

    def backward(self, top, propagate_down, bottom) -> None:
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = top[0].diff * F32(sign) / F32(self.num)
                self.xp.multiply(self._diff.reshape(bottom[i].shape), alpha, out=bottom[i].diff)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """SigmoidCrossEntropyLossLayer: cross-entropy of sigmoid(x) against targets t in [0, 1], in
    Caffe's stable form x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])); skips ``ignore_label``;
    normalisation defaults to BATCH_SIZE."""

    def setup(self, bottom, top) -> None:
        self.ignore_label = _ignore(self.layer_param)
        self.normalization = _normalization(self.layer_param, BATCH_SIZE)

    def reshape(self, bottom, top) -> None:
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise CaffeError(f"layer '{self.name}': SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the "
                             f"same count ({list(bottom[0].shape)} vs {list(bottom[1].shape)})")
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count_range(1)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        self._sigmoid = s = xp.empty_like(x)
        sigmoid_into(xp, x, s)
        # log(1 + exp(-|x|)) - x (t - [x >= 0]), the negated per-element term
        term = xp.abs(x)
        xp.negative(term, out=term)
        xp.exp(term, out=term)
        xp.log1p(term, out=term)
        term -= x * (t - (x >= 0))
        if self.ignore_label is not None:
            self._valid = t.astype(np.int64) != self.ignore_label
            term *= self._valid
            count = int(self._valid.sum())
        else:
            self._valid = None
            count = x.size
        self._normalizer_value = get_normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = term.sum() / F32(self._normalizer_value)

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[1]:
            raise CaffeError(f"layer '{self.name}': SigmoidCrossEntropyLoss cannot backpropagate to label inputs")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        self.xp.subtract(self._sigmoid, bottom[1].data.reshape(dx.shape), out=dx)
        if self._valid is not None:
            dx *= self._valid
        dx *= top[0].diff / F32(self._normalizer_value)


L1, L2 = 1, 2


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """HingeLossLayer (one-vs-all): with d_nk = max(0, 1 - delta(k = label_n) x_nk) where delta
    is +1 for the true class and -1 otherwise, loss = sum d / N (L1) or sum d^2 / N (L2)."""

    def reshape(self, bottom, top) -> None:
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // max(self.num, 1)

    def forward(self, bottom, top) -> None:
        xp = self.xp
        num, dim = self.num, self.dim
        self.labels = lab = _Labels(self, xp, bottom[1], num, dim, 1, None)
        d = bottom[0].data.reshape(num, dim).copy()
        flat = d.reshape(-1)
        flat[lab.flat] *= F32(-1)
        d += F32(1)
        xp.maximum(d, F32(0), out=d)
        self._margin = d
        norm = self.layer_param.hinge_loss_param.norm
        total = d.sum() if norm == L1 else xp.dot(flat, flat)
        top[0].data[...] = total / F32(num)

    def backward(self, top, propagate_down, bottom) -> None:
        if propagate_down[1]:
            raise CaffeError(f"layer '{self.name}': HingeLoss cannot backpropagate to label inputs")
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottom[0].diff.reshape(self.num, self.dim)
        dx[...] = self._margin
        dx.reshape(-1)[self.labels.flat] *= F32(-1)
        if self.layer_param.hinge_loss_param.norm == L1:
            xp.sign(dx, out=dx)
            dx *= top[0].diff / F32(self.num)
        else:
            dx *= top[0].diff * F32(2) / F32(self.num)


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """ContrastiveLossLayer (Hadsell et al. 2006): for pairs (a, b) with similarity y,
    y d^2 + (1 - y) max(margin - d, 0)^2 (legacy: max(margin - d^2, 0)), summed over / 2N."""

    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom, top) -> None:
        a, b, y = bottom
        if a.shape[:1] != b.shape[:1] or a.count != b.count:
            raise CaffeError(f"layer '{self.name}': the two feature bottoms must have the same shape "
                             f"({list(a.shape)} vs {list(b.shape)})")
        if y.count != (a.shape[0] if a.num_axes else 1):
            raise CaffeError(f"layer '{self.name}': one similarity label per pair expected, got {list(y.shape)}")
        top[0].reshape(())
        self.num = a.shape[0] if a.num_axes else 1

    def forward(self, bottom, top) -> None:
        xp = self.xp
        p = self.layer_param.contrastive_loss_param
        margin = F32(p.margin)
        d = self._diff = (bottom[0].data - bottom[1].data.reshape(bottom[0].shape)).reshape(self.num, -1)
        self._dist_sq = dsq = (d * d).sum(axis=1)
        self._similar = sim = bottom[2].data.reshape(-1).astype(np.int64) != 0
        if p.legacy_version:
            dissim = xp.maximum(margin - dsq, F32(0))
        else:
            dissim = xp.maximum(margin - xp.sqrt(dsq), F32(0))
            dissim = dissim * dissim
        loss = xp.where(sim, dsq, dissim).sum()
        top[0].data[...] = loss / F32(self.num) / F32(2)

    def backward(self, top, propagate_down, bottom) -> None:
        xp = self.xp
        p = self.layer_param.contrastive_loss_param
        margin = F32(p.margin)
        for i, sign in ((0, 1), (1, -1)):
            if not propagate_down[i]:
                continue
            alpha = top[0].diff * F32(sign) / F32(self.num)
            if p.legacy_version:
                mdist = margin - self._dist_sq
                beta = -alpha * xp.ones_like(mdist)
            else:
                dist = xp.sqrt(self._dist_sq)
                mdist = margin - dist
                beta = -alpha * mdist / (dist + F32(1e-4))
            coef = xp.where(self._similar, alpha, xp.where(mdist > 0, beta, F32(0))).astype(F32)
            xp.multiply(self._diff, coef[:, None], out=bottom[i].diff.reshape(self.num, -1))


@register("Accuracy")
class AccuracyLayer(Layer):
    """AccuracyLayer: fraction of (non-ignored) samples whose true-class score is among the
    ``top_k`` largest along ``axis`` (ties count against: a sample is right when at most top_k
    scores are >= its own). An optional second top gives the per-class accuracy."""

    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def setup(self, bottom, top) -> None:
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottom, top) -> None:
        if self.top_k > bottom[0].count // max(bottom[1].count, 1):
            raise CaffeError(f"layer '{self.name}': top_k must be less than or equal to the number of classes")
        axis = bottom[0].canonical_axis_index(self.layer_param.accuracy_param.axis)
        self.dims = outer, channels, inner = _split_axis(bottom[0], axis)
        if outer * inner != bottom[1].count:
            raise CaffeError(f"layer '{self.name}': number of labels must match number of predictions "
                             f"({list(bottom[0].shape)} vs {list(bottom[1].shape)})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((channels,))

    def forward(self, bottom, top) -> None:
        xp = self.xp
        outer, channels, inner = self.dims
        scores = bottom[0].data.reshape(self.dims)
        lab = _Labels(self, xp, bottom[1], outer, channels, inner, self.ignore_label)
        true_score = scores.reshape(-1)[lab.flat]
        n_ge = (scores >= true_score[:, None, :]).sum(axis=1)
        correct = n_ge <= self.top_k
        if lab.valid is not None:
            correct &= lab.valid
        n_correct = correct.sum()
        top[0].data[...] = (n_correct / F32(lab.count)) if lab.count else F32(0)
        if len(top) > 1:
            labels = lab.lab if lab.valid is None else lab.lab[lab.valid]
            seen = xp.bincount(labels.reshape(-1), minlength=channels)
            hit = xp.bincount(lab.lab[correct].reshape(-1), minlength=channels)
            per = xp.where(seen > 0, hit / xp.maximum(seen, 1), 0)
            top[1].data[...] = per.astype(F32)

    def backward(self, top, propagate_down, bottom) -> None:
        # Caffe has no backward; accuracy contributes no gradient.
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = F32(0)
