"""The recurrent family: LSTMUnit, LSTM and RNN (lstm_unit_layer.cpp, recurrent_layer.cpp,
lstm_layer.cpp, rnn_layer.cpp).

Caffe's RecurrentLayer builds an internal Net that unrolls the recurrence over the T time steps
(x_transform, per-step Scale by ``cont``, W_hc/W_hh InnerProducts, Eltwise sums, LSTMUnit or TanH,
Concat). Here the same computation runs directly: the input transform is one matrix product over
all T*N inputs, then a loop over time steps (the recurrence is sequential), each step vectorised
over the N streams and the hidden units. The learnable blobs are the unrolled net's unshared
parameters in their order of appearance, with Caffe's shapes, so .caffemodel files load:

- LSTM: W_xc (4H, I), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H); gates ordered i, f, o, g.
- RNN:  W_xh (H, I), b_h (H), [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H), b_o (H).

Bottoms: x (T, N, ...), cont (T, N), optional x_static (N, ...), then with ``expose_hidden`` the
initial state (h_0[, c_0], each (1, N, H)). Tops: the output (T, N, H), then with ``expose_hidden``
the final state (h_T[, c_T]). ``cont[t, n] == 0`` starts a new sequence: the state entering step t
is multiplied by cont (and the LSTM forget gate is 0). Without ``expose_hidden`` the state entering
a forward is the one the previous forward left (zero at first), as Caffe copies h_T/c_T to h_0/c_0.

Caffe shares only the *data* of the exposed state blobs with the unrolled net, never their diffs:
no gradient reaches the h_0/c_0 bottoms (their diff is zero here) and the diffs of the h_T/c_T
tops are ignored. That is reproduced, so training matches Caffe's.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import CaffeError
from ..fillers import fill
from .base import TEST, Layer, register

log = logging.getLogger("pycaffe_fc.layers")


def _sigmoid(xp, x):
    # 1 / (1 + exp(-x)) written through tanh: the same function, without exp's overflow
    return xp.tanh(x * 0.5) * 0.5 + 0.5


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """LSTMUnitLayer: one LSTM step. Bottoms c_prev (1, N, H), x = gate pre-activations
    (1, N, 4H) ordered i, f, o, g, cont (1, N); tops c (1, N, H), h (1, N, H):
    i, f, o = sigmoid, g = tanh; f is cont * f (0 where cont == 0); c = f*c_prev + i*g;
    h = o * tanh(c). Backward as Caffe's, including its f*(1-f) forget-gate factor."""

    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2  # no gradient to the sequence continuation indicators

    def reshape(self, bottom, top):
        n = bottom[0].shape[1] if bottom[0].num_axes > 1 else -1
        for i, b in enumerate(bottom):
            want = 2 if i == 2 else 3
            if b.num_axes != want or b.shape[0] != 1 or b.shape[1] != n:
                raise CaffeError(f"layer '{self.name}': LSTMUnit bottom {i} must have shape "
                                 f"{'(1, N)' if i == 2 else '(1, N, D)'} with the N of bottom 0, "
                                 f"got {list(b.shape)}")
        self.hidden_dim = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * self.hidden_dim:
            raise CaffeError(f"layer '{self.name}': LSTMUnit bottom 1 must have 4 * {self.hidden_dim} "
                             f"gate inputs, got {bottom[1].shape[2]}")
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        c, h = lstm_unit_forward(self.xp, bottom[0].data[0], bottom[1].data[0], bottom[2].data[0])[:2]
        top[0].data[0] = c
        top[1].data[0] = h

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise CaffeError(f"layer '{self.name}': cannot backpropagate to sequence indicators")
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = self.xp
        c_prev, gates, cont = bottom[0].data[0], bottom[1].data[0], bottom[2].data[0]
        _, _, acts, tanh_c = lstm_unit_forward(xp, c_prev, gates, cont)
        dc_prev, dgates = lstm_unit_backward(xp, c_prev, acts, tanh_c, top[0].diff[0], top[1].diff[0])
        if propagate_down[0]:
            bottom[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[0] = dgates


def lstm_unit_forward(xp, c_prev, gates, cont) -> tuple:
    """One LSTM step over (N, H) state and (N, 4H) gate inputs; returns c, h, the activations
    (N, 4H: i, f (times cont), o, g) and tanh(c), which the backward reuses."""
    hdim = c_prev.shape[-1]
    acts = xp.empty_like(gates)
    acts[:, :3 * hdim] = _sigmoid(xp, gates[:, :3 * hdim])
    acts[:, 3 * hdim:] = xp.tanh(gates[:, 3 * hdim:])
    # Caffe: f = (cont == 0) ? 0 : cont * sigmoid(f')
    f = acts[:, hdim:2 * hdim]
    f *= cont[:, None]
    f[cont == 0] = 0
    i, o, g = acts[:, :hdim], acts[:, 2 * hdim:3 * hdim], acts[:, 3 * hdim:]
    c = f * c_prev + i * g
    tanh_c = xp.tanh(c)
    return c, o * tanh_c, acts, tanh_c


def lstm_unit_backward(xp, c_prev, acts, tanh_c, dc, dh) -> tuple:
    """LSTMUnitLayer::Backward: (dc_prev, d gate pre-activations) from dc and dh of one step."""
    hdim = c_prev.shape[-1]
    i, f, o, g = (acts[:, k * hdim:(k + 1) * hdim] for k in range(4))
    c_term = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = xp.empty_like(acts)
    dgates[:, :hdim] = c_term * g * i * (1 - i)
    # Caffe differentiates f = cont * sigmoid(f') as f * (1 - f): exact for cont in {0, 1}
    dgates[:, hdim:2 * hdim] = c_term * c_prev * f * (1 - f)
    dgates[:, 2 * hdim:3 * hdim] = dh * tanh_c * o * (1 - o)
    dgates[:, 3 * hdim:] = c_term * i * (1 - g * g)
    return c_term * f, dgates


class RecurrentLayer(Layer):
    """RecurrentLayer: the bottom/top layout, static input, state carried between forwards and
    the shared input transform of LSTM and RNN. Subclasses give the state names and the step."""

    #: names of the recurrent state blobs (h_0[, c_0]) as Caffe's RecurrentInputBlobNames.
    state_names: tuple[str, ...] = ()
    #: hidden size multiple of the input transform (4 gates for LSTM, 1 for RNN).
    gates = 1
    #: the input transform's blobs (W_x, b, W_static) as Caffe's unrolled net names them.
    input_param_names: tuple[str, str, str] = ("", "", "")

    def __init__(self, param, phase: int = TEST) -> None:
        super().__init__(param, phase)
        p = param.recurrent_param
        self.expose_hidden = bool(p.expose_hidden)
        nstate = len(self.state_names) if self.expose_hidden else 0
        # MinBottomBlobs / MaxBottomBlobs / ExactNumTopBlobs depend on expose_hidden in Caffe too
        self.min_bottom = 2 + nstate
        self.max_bottom = 3 + nstate
        self.exact_num_top = 1 + nstate

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    # -- LayerSetUp ----------------------------------------------------------------------------
    def setup(self, bottom, top):
        p = self.layer_param.recurrent_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise CaffeError(f"layer '{self.name}': num_output must be positive")
        self._check_sequence_bottoms(bottom)
        self.T = bottom[0].shape[0]
        nstate = len(self.state_names) if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + nstate
        if self.static_input and (bottom[2].num_axes < 1 or bottom[2].shape[0] != bottom[0].shape[1]):
            raise CaffeError(f"layer '{self.name}': static input (bottom 2) must be (N, ...) with "
                             f"N = {bottom[0].shape[1]}, got {list(bottom[2].shape)}")
        self.input_dim = bottom[0].count_range(2)
        self.static_dim = bottom[2].count_range(1) if self.static_input else 0
        shapes = self.param_shapes()
        if len(self.blobs):
            if len(self.blobs) != len(shapes):
                raise CaffeError(f"layer '{self.name}': incorrect number of weight blobs "
                                 f"({len(self.blobs)}, expected {len(shapes)})")
            for b, (name, shape, _) in zip(self.blobs, shapes):
                self.check_shape(name, shape, b.shape)
        else:
            for name, shape, is_bias in shapes:
                fill(p.bias_filler if is_bias else p.weight_filler, self.blobs.add_blob(*shape))
        self.init_param_propagate_down()
        self.debug_info = bool(p.debug_info)
        self._state = None  # the (1, N, H) state blobs' values left by the last forward

    def param_shapes(self) -> list[tuple[str, tuple[int, ...], bool]]:
        """(name, shape, is_bias) of the blobs in Caffe's order: the input transform's W_x, b
        [, W_static], then the subclass's recurrent ones."""
        g = self.gates * self.num_output
        w_x, b, w_static = self.input_param_names
        shapes = [(w_x, (g, self.input_dim), False), (b, (g,), True)]
        if self.static_input:
            shapes.append((w_static, (g, self.static_dim), False))
        return shapes + self.recurrent_param_shapes()

    def recurrent_param_shapes(self) -> list[tuple[str, tuple[int, ...], bool]]:
        raise NotImplementedError

    def _check_sequence_bottoms(self, bottom) -> None:
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise CaffeError(f"layer '{self.name}': bottom 0 must have at least 2 axes -- "
                             f"(#timesteps, #streams, ...), got {list(x.shape)}")
        if cont.num_axes != 2 or cont.shape != x.shape[:2]:
            raise CaffeError(f"layer '{self.name}': bottom 1 (cont) must have exactly 2 axes -- "
                             f"(#timesteps, #streams) = {list(x.shape[:2])}, got {list(cont.shape)}")

    def reshape(self, bottom, top):
        self._check_sequence_bottoms(bottom)
        if bottom[0].shape[0] != self.T:
            raise CaffeError(f"layer '{self.name}': input number of timesteps changed "
                             f"({bottom[0].shape[0]}, set up with {self.T})")
        if bottom[0].count_range(2) != self.input_dim:
            raise CaffeError(f"layer '{self.name}': input size changed ({bottom[0].count_range(2)} per "
                             f"step, the weights expect {self.input_dim})")
        self.N = n = bottom[0].shape[1]
        hshape = (1, n, self.num_output)
        if self.static_input:
            if bottom[2].shape[0] != n or bottom[2].count_range(1) != self.static_dim:
                raise CaffeError(f"layer '{self.name}': static input shape {list(bottom[2].shape)} does "
                                 f"not match (N={n}, {self.static_dim})")
        if self.expose_hidden:
            off = 2 + self.static_input
            for j, name in enumerate(self.state_names):
                if bottom[off + j].shape != hshape:
                    raise CaffeError(f"layer '{self.name}': bottom[{off + j}] ({name}) shape must match "
                                     f"hidden state input shape {list(hshape)}, got "
                                     f"{list(bottom[off + j].shape)}")
        if self._state is None or self._state[0].shape != hshape:
            self._state = [self.xp.zeros(hshape, np.float32) for _ in self.state_names]
        top[0].reshape((self.T, n, self.num_output))
        for t in top[1:]:
            t.reshape(hshape)

    # -- shared pieces of forward/backward -----------------------------------------------------
    def _input_transform(self, bottom):
        """W_x x_t + b for every step (T, N, G) plus the static term (N, G) or None."""
        xp = self.xp
        g = self.gates * self.num_output
        x = bottom[0].data.reshape(self.T * self.N, self.input_dim)
        wx = xp.matmul(x, self.blobs[0].data.T).reshape(self.T, self.N, g)
        wx += self.blobs[1].data
        ws = None
        if self.static_input:
            xs = bottom[2].data.reshape(self.N, self.static_dim)
            ws = xp.matmul(xs, self.blobs[2].data.T)
        return wx, ws

    def _begin_forward(self, bottom):
        """cont, W_x x_t + b for every step, the static term and the initial state; allocates the
        masked h_{t-1} (T, N, H) that the backward pass reads."""
        wx, ws = self._input_transform(bottom)
        self._h_conted = self.xp.empty((self.T, self.N, self.num_output), np.float32)
        return bottom[1].data, wx, ws, self._initial_state(bottom)

    def _step_input(self, t, h_prev, cont, w_rec, wx, ws):
        """W_rec (cont_t * h_{t-1}) + W_x x_t + b [+ W_static x_static]: step t's pre-activation."""
        hc = self._h_conted[t]
        self.xp.multiply(h_prev, cont[t][:, None], out=hc)
        pre = wx[t] + hc @ w_rec.T
        if ws is not None:
            pre += ws
        return pre

    def _input_transform_backward(self, dpre, bottom, propagate_down):
        """Gradients of W_x, b, W_static and of x, x_static from d(pre-activation) (T, N, G)."""
        xp = self.xp
        g = dpre.shape[-1]
        d2 = dpre.reshape(self.T * self.N, g)
        ppd = self.param_propagate_down
        if ppd[0]:
            x = bottom[0].data.reshape(self.T * self.N, self.input_dim)
            self.blobs[0].diff[...] += d2.T @ x
        if ppd[1]:
            self.blobs[1].diff[...] += d2.sum(axis=0)
        if propagate_down[0]:
            xp.matmul(d2, self.blobs[0].data, out=bottom[0].diff.reshape(self.T * self.N, self.input_dim))
        if self.static_input:
            ds = dpre.sum(axis=0)  # the static term feeds every step
            if ppd[2]:
                xs = bottom[2].data.reshape(self.N, self.static_dim)
                self.blobs[2].diff[...] += ds.T @ xs
            if propagate_down[2]:
                xp.matmul(ds, self.blobs[2].data, out=bottom[2].diff.reshape(self.N, self.static_dim))
        if self.expose_hidden:
            # Caffe shares only the data of h_0/c_0 with its unrolled net: they get no gradient
            off = 2 + self.static_input
            for j in range(len(self.state_names)):
                if propagate_down[off + j]:
                    bottom[off + j].diff[...] = 0

    def _initial_state(self, bottom):
        if self.expose_hidden:
            off = 2 + self.static_input
            return [bottom[off + j].data[0] for j in range(len(self.state_names))]
        return [s[0] for s in self._state]

    def _finish_forward(self, top, final):
        """Keep the final state for the next forward (RecurrentLayer::Forward's copy of h_T to
        h_0) and expose it when asked."""
        for s, v in zip(self._state, final):
            s[0] = v
        if self.expose_hidden:
            for t, v in zip(top[1:], final):
                t.data[0] = v
        if self.debug_info:
            xp = self.xp
            for name, v in zip(self.state_names, final):
                log.info("[%s] %s_T data: %g", self.name, name[0], float(xp.abs(v).mean()))
            log.info("[%s] output data: %g", self.name, float(xp.abs(top[0].data).mean()))

    def reset(self) -> None:
        """RecurrentLayer::Reset: zero the carried hidden state."""
        if self._state is not None:
            for s in self._state:
                s[...] = 0


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """LSTMLayer: gate_input_t = W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static],
    then an LSTMUnit step; the top is h (T, N, H)."""

    state_names = ("h_0", "c_0")
    gates = 4
    input_param_names = ("W_xc", "b_c", "W_xc_static")

    def recurrent_param_shapes(self):
        return [("W_hc", (4 * self.num_output, self.num_output), False)]

    def forward(self, bottom, top):
        xp = self.xp
        T, N, H = self.T, self.N, self.num_output
        cont, wx, ws, (h_prev, c_prev) = self._begin_forward(bottom)
        w_hc = self.blobs[-1].data
        self._c = cs = xp.empty((T + 1, N, H), np.float32)  # c_0 .. c_T
        self._acts = xp.empty((T, N, 4 * H), np.float32)
        self._tanh_c = xp.empty((T, N, H), np.float32)
        cs[0] = c_prev
        h = top[0].data
        for t in range(T):
            gate_in = self._step_input(t, h_prev, cont, w_hc, wx, ws)
            c, h[t], self._acts[t], self._tanh_c[t] = lstm_unit_forward(xp, cs[t], gate_in, cont[t])
            cs[t + 1] = c
            h_prev = h[t]
        self._finish_forward(top, [h[T - 1], cs[T]])

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        T, N, H = self.T, self.N, self.num_output
        cont = bottom[1].data
        w_hc = self.blobs[-1].data
        dh_top = top[0].diff
        dpre = xp.empty((T, N, 4 * H), np.float32)
        # the final state's diffs are never fed back (Caffe: h_T/c_T tops share data only)
        dh_next = xp.zeros((N, H), np.float32)
        dc_next = xp.zeros((N, H), np.float32)
        for t in range(T - 1, -1, -1):
            dh = dh_top[t] + dh_next
            dc_next, dpre[t] = lstm_unit_backward(xp, self._c[t], self._acts[t], self._tanh_c[t], dc_next, dh)
            dh_next = (dpre[t] @ w_hc) * cont[t][:, None]
        if self.param_propagate_down[-1]:
            self.blobs[-1].diff[...] += dpre.reshape(T * N, 4 * H).T @ self._h_conted.reshape(T * N, H)
        self._input_transform_backward(dpre, bottom, propagate_down)


@register("RNN")
class RNNLayer(RecurrentLayer):
    """RNNLayer: h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); the top is o (T, N, H)."""

    state_names = ("h_0",)
    gates = 1
    input_param_names = ("W_xh", "b_h", "W_xh_static")

    def recurrent_param_shapes(self):
        H = self.num_output
        return [("W_hh", (H, H), False), ("W_ho", (H, H), False), ("b_o", (H,), True)]

    def forward(self, bottom, top):
        xp = self.xp
        T, N, H = self.T, self.N, self.num_output
        cont, wx, ws, (h_prev,) = self._begin_forward(bottom)
        w_hh, w_ho, b_o = self.blobs[-3].data, self.blobs[-2].data, self.blobs[-1].data
        self._h = hs = xp.empty((T, N, H), np.float32)
        for t in range(T):
            xp.tanh(self._step_input(t, h_prev, cont, w_hh, wx, ws), out=hs[t])
            h_prev = hs[t]
        # the output transform has no recurrence: one product over all steps
        o = top[0].data.reshape(T * N, H)
        xp.matmul(hs.reshape(T * N, H), w_ho.T, out=o)
        o += b_o
        xp.tanh(o, out=o)
        self._finish_forward(top, [hs[T - 1]])

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        T, N, H = self.T, self.N, self.num_output
        cont = bottom[1].data
        w_hh, w_ho = self.blobs[-3].data, self.blobs[-2].data
        o = top[0].data.reshape(T * N, H)
        do_pre = top[0].diff.reshape(T * N, H) * (1 - o * o)
        hs2 = self._h.reshape(T * N, H)
        ppd = self.param_propagate_down
        if ppd[-2]:
            self.blobs[-2].diff[...] += do_pre.T @ hs2
        if ppd[-1]:
            self.blobs[-1].diff[...] += do_pre.sum(axis=0)
        dh_out = (do_pre @ w_ho).reshape(T, N, H)
        dpre = xp.empty((T, N, H), np.float32)
        dh_next = xp.zeros((N, H), np.float32)
        for t in range(T - 1, -1, -1):
            h = self._h[t]
            dpre[t] = (dh_out[t] + dh_next) * (1 - h * h)
            dh_next = (dpre[t] @ w_hh) * cont[t][:, None]
        if ppd[-3]:
            self.blobs[-3].diff[...] += dpre.reshape(T * N, H).T @ self._h_conted.reshape(T * N, H)
        self._input_transform_backward(dpre, bottom, propagate_down)
