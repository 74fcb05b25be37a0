"""LSTMUnit, LSTM and RNN (pycaffe_fc/layers/recurrent.py), and LRCN-style nets built from them.

The LSTM and RNN layers compute directly what Caffe's lstm_layer.cpp / rnn_layer.cpp unroll into
an internal net; ``_unrolled_*`` below write that internal net out layer by layer (as
FillUnrolledNet does) with fc-caffe's primitive layers, and the tests compare the two.
"""
from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_fc as caffe
from gradcheck import check_gradient, setup_layer
from pycaffe_fc.backend import to_numpy
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.solvers import get_solver

FILL = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
        'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _cont(T, N, resets=()):
    """Sequence markers: 0 at t = 0 (every stream starts there) and at the (t, n) in resets."""
    c = np.ones((T, N), np.float32)
    c[0] = 0
    for t, n in resets:
        c[t, n] = 0
    return c


def _rec(kind, H, extra=""):
    return f'name: "r" type: "{kind}" recurrent_param {{ num_output: {H} {FILL} {extra} }}'


# -- LSTMUnit ----------------------------------------------------------------------------------------
def _sig(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_lstm_unit_forward_formula_and_gradient():
    N, H = 3, 4
    c_prev, gates = _r(1, N, H), _r(1, N, 4 * H, seed=1)
    cont = np.array([[1, 0, 1]], np.float32)
    layer, bottom, top = setup_layer('type: "LSTMUnit"', [c_prev, gates, cont], n_top=2)
    layer.Forward(bottom, top)
    g = gates[0]
    i, f, o, gg = _sig(g[:, :H]), _sig(g[:, H:2 * H]), _sig(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
    f = f * cont[0][:, None]
    c = f * c_prev[0] + i * gg
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], o * np.tanh(c), rtol=1e-5, atol=1e-6)
    # a reset stream (cont 0) forgets its previous cell entirely
    np.testing.assert_allclose(top[0].data[0, 1], (i * gg)[1], rtol=1e-5)
    check_gradient('type: "LSTMUnit"', [c_prev, gates, cont], n_top=2, check_bottom=[0, 1])


def test_lstm_unit_fractional_cont_backward_is_caffes():
    # Caffe scales the forget gate by cont and differentiates it as f * (1 - f) with f the scaled
    # gate, which is the true derivative only for cont in {0, 1}; that formula is kept
    N, H = 2, 3
    c_prev, gates = _r(1, N, H), _r(1, N, 4 * H, seed=1)
    cont = np.array([[0.5, 1]], np.float32)
    layer, bottom, top = setup_layer('type: "LSTMUnit"', [c_prev, gates, cont], n_top=2)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    top[1].diff[...] = 0
    layer.Backward(top, [True, True, False], bottom)
    f = _sig(gates[0, :, H:2 * H]) * cont[0][:, None]
    np.testing.assert_allclose(bottom[1].diff[0, :, H:2 * H], c_prev[0] * f * (1 - f), rtol=1e-5)
    np.testing.assert_allclose(bottom[0].diff[0], f, rtol=1e-5)


def test_lstm_unit_shapes_and_no_gradient_to_cont():
    with pytest.raises(CaffeError, match="4 \\* 3 gate inputs"):
        setup_layer('name: "u" type: "LSTMUnit"', [_r(1, 2, 3), _r(1, 2, 8), np.ones((1, 2), np.float32)], 2)
    with pytest.raises(CaffeError, match="bottom 2"):
        setup_layer('name: "u" type: "LSTMUnit"', [_r(1, 2, 3), _r(1, 2, 12), np.ones((2,), np.float32)], 2)
    layer, bottom, top = setup_layer('name: "u" type: "LSTMUnit"',
                                     [_r(1, 2, 3), _r(1, 2, 12), np.ones((1, 2), np.float32)], 2)
    assert not layer.allow_force_backward(2)
    layer.Forward(bottom, top)
    with pytest.raises(CaffeError, match="sequence indicators"):
        layer.Backward(top, [True, True, True], bottom)


# -- gradient checks -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_cont_resets(kind):
    T, N, H = 4, 3, 3
    x = _r(T, N, 2, 3)  # axes after the second are flattened into the input size
    cont = _cont(T, N, resets=[(2, 1), (3, 0)])
    layer = check_gradient(_rec(kind, H), [x, cont], check_bottom=[0], threshold=2e-2)
    assert layer.input_dim == 6


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_static_input(kind):
    T, N, H = 3, 2, 3
    x, xs = _r(T, N, 4), _r(N, 5, seed=2)
    check_gradient(_rec(kind, H), [x, _cont(T, N, [(2, 1)]), xs], check_bottom=[0, 2], threshold=2e-2)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_exposed_hidden(kind):
    T, N, H = 3, 2, 3
    nstate = 2 if kind == "LSTM" else 1
    x, xs = _r(T, N, 4), _r(N, 5, seed=2)
    cont = np.ones((T, N), np.float32)  # continue from the given h_0 (and c_0)
    cont[2, 0] = 0
    states = [_r(1, N, H, seed=10 + j) for j in range(nstate)]
    bottoms = [x, cont, xs] + states
    text = _rec(kind, H, "expose_hidden: true")
    # Caffe ignores the exposed final state's diffs, so only the sequence output carries a loss
    weights = [_r(T, N, H, seed=5)] + [np.zeros((1, N, H), np.float32)] * nstate
    check_gradient(text, bottoms, n_top=1 + nstate, check_bottom=[0, 2], top_weights=weights,
                   threshold=2e-2)
    # the given state is used: other h_0 values give other outputs
    layer, bottom, top = setup_layer(text, bottoms, n_top=1 + nstate)
    layer.Forward(bottom, top)
    y0 = top[0].data.copy()
    bottom[3].data[...] += 1
    layer.Forward(bottom, top)
    assert np.abs(top[0].data[0] - y0[0]).max() > 1e-3
    # the exposed final state is the last step's (h_T is the last output row for LSTM)
    if kind == "LSTM":
        np.testing.assert_array_equal(top[1].data[0], top[0].data[-1])
    # as Caffe (data-only sharing): no gradient to h_0/c_0, and h_T/c_T diffs are ignored
    top[0].diff[...] = _r(T, N, H, seed=6)
    for t in top[1:]:
        t.diff[...] = 0
    for b in bottom:
        b.diff[...] = 7
    layer.Backward(top, [True, False, True] + [True] * nstate, bottom)
    dx = bottom[0].diff.copy()
    for b in bottom[3:]:
        np.testing.assert_array_equal(b.diff, 0)
    for t in top[1:]:
        t.diff[...] = 100
    layer.Backward(top, [True, False, True] + [True] * nstate, bottom)
    np.testing.assert_array_equal(bottom[0].diff, dx)


# -- parity with Caffe's unrolled net ----------------------------------------------------------------
def _ip(n, bias, axis):
    return (f'type: "InnerProduct" inner_product_param {{ num_output: {n} '
            f'bias_term: {str(bias).lower()} axis: {axis} }}')


def _unrolled_inputs(T, N, I, H, S, states, g, w, b):
    """The start both FillUnrolledNets share: the inputs (x, cont, the ``states``, x_static when
    S), cont sliced per step, and W_x x + b (``w``, ``b``; ``g`` outputs) sliced per step, plus
    the static term W_static x_static."""
    state_tops = " ".join(f'top: "{s}"' for s in states)
    state_shapes = " ".join(f"shape {{ dim: 1 dim: {N} dim: {H} }}" for _ in states)
    L = [f'layer {{ name: "in" type: "Input" top: "x" top: "cont" {state_tops} '
         f'input_param {{ shape {{ dim: {T} dim: {N} dim: {I} }} shape {{ dim: {T} dim: {N} }} {state_shapes} }} }}']
    if S:
        L.append(f'layer {{ name: "in_s" type: "Input" top: "x_static" '
                 f'input_param {{ shape {{ dim: {N} dim: {S} }} }} }}')
    tops = " ".join(f'top: "cont_{t}"' for t in range(1, T + 1))
    L.append(f'layer {{ name: "cont_slice" type: "Slice" bottom: "cont" {tops} slice_param {{ axis: 0 }} }}')
    L.append(f'layer {{ name: "x_transform" {_ip(g, True, 2)} param {{ name: "{w}" }} param {{ name: "{b}" }} '
             f'bottom: "x" top: "{w}_x" }}')
    if S:
        L.append(f'layer {{ name: "{w}_x_static" {_ip(g, False, 1)} param {{ name: "{w}_static" }} '
                 f'bottom: "x_static" top: "{w}_x_static_preshape" }}')
        L.append(f'layer {{ name: "{w}_x_static_reshape" type: "Reshape" bottom: "{w}_x_static_preshape" '
                 f'top: "{w}_x_static" reshape_param {{ shape {{ dim: 1 dim: -1 dim: {g} }} }} }}')
    tops = " ".join(f'top: "{w}_x_{t}"' for t in range(1, T + 1))
    L.append(f'layer {{ name: "{w}_x_slice" type: "Slice" bottom: "{w}_x" {tops} slice_param {{ axis: 0 }} }}')
    return L


def _unrolled_lstm(T, N, I, H, S):
    """The net LSTMLayer::FillUnrolledNet builds (x: T x N x I, static S or 0)."""
    L = _unrolled_inputs(T, N, I, H, S, ("c_0", "h_0"), 4 * H, "W_xc", "b_c")
    for t in range(1, T + 1):
        p = t - 1
        L.append(f'layer {{ name: "h_conted_{p}" type: "Scale" bottom: "h_{p}" bottom: "cont_{t}" '
                 f'top: "h_conted_{p}" scale_param {{ axis: 0 }} }}')
        L.append(f'layer {{ name: "transform_{t}" {_ip(4 * H, False, 2)} param {{ name: "W_hc" }} '
                 f'bottom: "h_conted_{p}" top: "W_hc_h_{p}" }}')
        st = 'bottom: "W_xc_x_static"' if S else ""
        L.append(f'layer {{ name: "gate_input_{t}" type: "Eltwise" bottom: "W_hc_h_{p}" bottom: "W_xc_x_{t}" {st} '
                 f'top: "gate_input_{t}" }}')
        L.append(f'layer {{ name: "unit_{t}" type: "LSTMUnit" bottom: "c_{p}" bottom: "gate_input_{t}" '
                 f'bottom: "cont_{t}" top: "c_{t}" top: "h_{t}" }}')
    L.append(f'layer {{ name: "c_T" type: "Split" bottom: "c_{T}" top: "c_T" }}')
    bots = " ".join(f'bottom: "h_{t}"' for t in range(1, T + 1))
    L.append(f'layer {{ name: "h_concat" type: "Concat" {bots} top: "h" concat_param {{ axis: 0 }} }}')
    return "force_backward: true\n" + "\n".join(L)


def _unrolled_rnn(T, N, I, H, S):
    """The net RNNLayer::FillUnrolledNet builds."""
    L = _unrolled_inputs(T, N, I, H, S, ("h_0",), H, "W_xh", "b_h")
    for t in range(1, T + 1):
        p = t - 1
        L.append(f'layer {{ name: "h_conted_{p}" type: "Scale" bottom: "h_{p}" bottom: "cont_{t}" '
                 f'top: "h_conted_{p}" scale_param {{ axis: 0 }} }}')
        L.append(f'layer {{ name: "W_hh_h_{p}" {_ip(H, False, 2)} param {{ name: "W_hh" }} '
                 f'bottom: "h_conted_{p}" top: "W_hh_h_{p}" }}')
        st = 'bottom: "W_xh_x_static"' if S else ""
        L.append(f'layer {{ name: "h_input_sum_{t}" type: "Eltwise" bottom: "W_hh_h_{p}" bottom: "W_xh_x_{t}" {st} '
                 f'top: "h_neuron_input_{t}" }}')
        L.append(f'layer {{ name: "h_neuron_{t}" type: "TanH" bottom: "h_neuron_input_{t}" top: "h_{t}" }}')
        L.append(f'layer {{ name: "W_ho_h_{t}" {_ip(H, True, 2)} param {{ name: "W_ho" }} param {{ name: "b_o" }} '
                 f'bottom: "h_{t}" top: "W_ho_h_{t}" }}')
        L.append(f'layer {{ name: "o_neuron_{t}" type: "TanH" bottom: "W_ho_h_{t}" top: "o_{t}" }}')
    bots = " ".join(f'bottom: "o_{t}"' for t in range(1, T + 1))
    L.append(f'layer {{ name: "o_concat" type: "Concat" {bots} top: "o" concat_param {{ axis: 0 }} }}')
    return "force_backward: true\n" + "\n".join(L)


# which unrolled-net layer first holds each of the layer's blobs, in Caffe's blob order
_OWNERS = {
    ("LSTM", False): [("x_transform", 0), ("x_transform", 1), ("transform_1", 0)],
    ("LSTM", True): [("x_transform", 0), ("x_transform", 1), ("W_xc_x_static", 0), ("transform_1", 0)],
    ("RNN", False): [("x_transform", 0), ("x_transform", 1), ("W_hh_h_0", 0), ("W_ho_h_1", 0), ("W_ho_h_1", 1)],
    ("RNN", True): [("x_transform", 0), ("x_transform", 1), ("W_xh_x_static", 0), ("W_hh_h_0", 0),
                    ("W_ho_h_1", 0), ("W_ho_h_1", 1)],
}


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_matches_caffes_unrolled_net(kind, static):
    T, N, I, H, S = 4, 3, 5, 4, (3 if static else 0)
    x, xs = _r(T, N, I), _r(N, 3, seed=3)
    cont = _cont(T, N, resets=[(2, 1)])
    cont[0, 2] = 1  # stream 2 continues from the carried state
    bottoms = [x, cont] + ([xs] if static else [])
    layer, bottom, top = setup_layer(_rec(kind, H), bottoms)
    text = (_unrolled_lstm if kind == "LSTM" else _unrolled_rnn)(T, N, I, H, S)
    ref = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TRAIN)
    owners = _OWNERS[(kind, static)]
    assert [ref.params[n][j].shape for n, j in owners] == [b.shape for b in layer.blobs]
    for (n, j), b in zip(owners, layer.blobs):
        ref.params[n][j].data[...] = b.data
    # a carried state from an earlier forward enters stream 2 at t = 0
    h0, c0 = _r(1, N, H, seed=8), _r(1, N, H, seed=9)
    layer._state = [layer.xp.asarray(h0)] + ([layer.xp.asarray(c0)] if kind == "LSTM" else [])
    ref.blobs["h_0"].data[...] = h0
    if kind == "LSTM":
        ref.blobs["c_0"].data[...] = c0
    ref.blobs["x"].data[...] = x
    ref.blobs["cont"].data[...] = cont
    if static:
        ref.blobs["x_static"].data[...] = xs
    out = "h" if kind == "LSTM" else "o"
    ref.forward()
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, ref.blobs[out].data, rtol=1e-5, atol=1e-6)
    if kind == "LSTM":
        np.testing.assert_allclose(to_numpy(layer._state[1]), ref.blobs["c_T"].data, rtol=1e-5, atol=1e-6)
    dy = _r(T, N, H, seed=4)
    top[0].diff[...] = dy
    for b in layer.blobs:
        b.diff[...] = 0
    layer.Backward(top, [True, False, static], bottom)
    ref.clear_param_diffs()
    ref.blobs[out].diff[...] = dy
    ref.backward()
    np.testing.assert_allclose(bottom[0].diff, ref.blobs["x"].diff, rtol=1e-4, atol=1e-5)
    if static:
        np.testing.assert_allclose(bottom[2].diff, ref.blobs["x_static"].diff, rtol=1e-4, atol=1e-5)
    for (n, j), b in zip(owners, layer.blobs):
        np.testing.assert_allclose(b.diff, ref.params[n][j].diff, rtol=1e-4, atol=1e-5)


# -- state between forwards ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_across_batches_and_cont_resets_it(kind):
    T, N, H = 6, 2, 3
    x = _r(T, N, 4)
    cont = _cont(T, N)
    whole, bw, tw = setup_layer(_rec(kind, H), [x, cont])
    whole.Forward(bw, tw)
    half, bh, th = setup_layer(_rec(kind, H), [x[:3], cont[:3]])
    for a, b in zip(half.blobs, whole.blobs):
        a.data[...] = b.data
    half.Forward(bh, th)
    np.testing.assert_allclose(th[0].data, tw[0].data[:3], rtol=1e-6)
    # the second half continues (cont 1) from the state the first half left
    bh[0].data[...] = x[3:]
    bh[1].data[...] = cont[3:]
    half.Forward(bh, th)
    np.testing.assert_allclose(th[0].data, tw[0].data[3:], rtol=1e-5, atol=1e-6)
    # cont 0 at the start forgets it: the same as the first half again
    bh[0].data[...] = x[:3]
    bh[1].data[...] = cont[:3]
    half.Forward(bh, th)
    np.testing.assert_allclose(th[0].data, tw[0].data[:3], rtol=1e-6)


def test_setup_errors():
    x, cont = _r(3, 2, 4), _cont(3, 2)
    with pytest.raises(CaffeError, match="num_output must be positive"):
        setup_layer('name: "r" type: "LSTM"', [x, cont])
    with pytest.raises(CaffeError, match="cont"):
        setup_layer(_rec("LSTM", 3), [x, np.ones((3, 3), np.float32)])
    with pytest.raises(CaffeError, match="at least 4 bottom"):
        setup_layer(_rec("LSTM", 3, "expose_hidden: true"), [x, cont], n_top=3)
    with pytest.raises(CaffeError, match="exactly 2 top"):
        setup_layer(_rec("RNN", 3, "expose_hidden: true"), [x, cont, _r(1, 2, 3)], n_top=1)
    with pytest.raises(CaffeError, match="hidden state input shape"):
        setup_layer(_rec("RNN", 3, "expose_hidden: true"), [x, cont, _r(1, 2, 4)], n_top=2)
    layer, bottom, top = setup_layer(_rec("RNN", 3), [x, cont])
    bottom[0].reshape(4, 2, 4)
    bottom[1].reshape(4, 2)
    with pytest.raises(CaffeError, match="timesteps changed"):
        layer.Forward(bottom, top)


def test_registered_and_debug_info():
    from pycaffe_fc.layers import base
    assert {"LSTM", "RNN", "LSTMUnit"} <= set(caffe.layer_type_list())
    # with the recurrent family, HDF5Output and WindowData every BVLC layer type is registered
    assert set(getattr(base, "BVLC_LAYER_TYPES", ())) <= set(caffe.layer_type_list())
    x, cont = _r(3, 2, 4), _cont(3, 2)
    layer, bottom, top = setup_layer(_rec("LSTM", 3, "debug_info: true"), [x, cont])
    # a handler on the layers' own logger (the solver's log may stop propagation to the root)
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("pycaffe_fc.layers")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        layer.Forward(bottom, top)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = "\n".join(records)
    assert "[r] h_T data" in text and "[r] c_T data" in text and "[r] output data" in text


# -- LRCN-style nets -----------------------------------------------------------------------------------
# Small versions of the published LRCN nets (Donahue et al.): the captioning nets as Caffe's
# examples/coco_caption/lrcn.py generates them (Embed -> LSTM -> LSTM -> InnerProduct over axis 2
# -> SoftmaxWithLoss over axis 2 ignoring -1; sentences from HDF5Data with one row per time step;
# image features enter as the static input of the first LSTM ("unfactored", LRCN-1f), of the
# second ("factored", LRCN-2f), or not at all (the language model)), and the activity-recognition
# net (per-frame CaffeNet-style features -> Reshape to T x N -> LSTM -> fc8 over axis 2).
V, T, N, E, H, F = 12, 5, 4, 8, 10, 6
VARIANTS = ("language_model", "unfactored", "factored")


def _caption_net(src: str, img_src: str, variant: str, deploy_steps: int = 0) -> str:
    uni = 'weight_filler { type: "uniform" min: -0.08 max: 0.08 }'
    lstm_fill = f'{uni} bias_filler {{ type: "constant" value: 0 }}'
    image = variant != "language_model"
    if deploy_steps:
        # the deploy net takes deploy_steps words; the LSTMs carry their state between calls
        head = (f'input: "cont_sentence" input_shape {{ dim: {deploy_steps} dim: {N} }}\n'
                f'input: "input_sentence" input_shape {{ dim: {deploy_steps} dim: {N} }}\n'
                + (f'input: "image_features" input_shape {{ dim: {N} dim: {F} }}\n' if image else ""))
    else:
        head = (f'layer {{ name: "data" type: "HDF5Data" top: "cont_sentence" top: "input_sentence" '
                f'top: "target_sentence" hdf5_data_param {{ source: "{src}" batch_size: {T} }} }}\n')
        if image:
            head += (f'layer {{ name: "img" type: "HDF5Data" top: "image_features" '
                     f'hdf5_data_param {{ source: "{img_src}" batch_size: {N} }} }}\n')
    static1 = 'bottom: "image_features"' if variant == "unfactored" else ""
    static2 = 'bottom: "image_features"' if variant == "factored" else ""
    net = head + f"""
layer {{ name: "embedding" type: "Embed" bottom: "input_sentence" top: "embedded_input_sentence"
  param {{ lr_mult: 1 }} embed_param {{ bias_term: false input_dim: {V} num_output: {E} {uni} }} }}
layer {{ name: "lstm1" type: "LSTM" bottom: "embedded_input_sentence" bottom: "cont_sentence" {static1}
  top: "lstm1" recurrent_param {{ num_output: {H} {lstm_fill} }} }}
layer {{ name: "lstm2" type: "LSTM" bottom: "lstm1" bottom: "cont_sentence" {static2} top: "lstm2"
  recurrent_param {{ num_output: {H} {lstm_fill} }} }}
layer {{ name: "predict" type: "InnerProduct" bottom: "lstm2" top: "predict"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {V} {uni} bias_filler {{ type: "constant" value: 0 }} axis: 2 }} }}
"""
    if deploy_steps:
        net += 'layer { name: "probs" type: "Softmax" bottom: "predict" top: "probs" softmax_param { axis: 2 } }\n'
    else:
        net += """
layer { name: "cross_entropy_loss" type: "SoftmaxWithLoss" bottom: "predict" bottom: "target_sentence"
  top: "cross_entropy_loss" loss_weight: 20 loss_param { ignore_label: -1 } softmax_param { axis: 2 } }
layer { name: "accuracy" type: "Accuracy" bottom: "predict" bottom: "target_sentence" top: "accuracy"
  accuracy_param { axis: 2 ignore_label: -1 } }
"""
    return net


def _caption_data(tmp_path, steps: int):
    """Streams of short 'sentences' (a word then its successor mod V, as a learnable pattern),
    written as LRCN's HDF5 files are: (time, stream) rows; cont 0 at each sentence start, target
    -1 on padding."""
    g = np.random.default_rng(0)
    rows = T * steps
    cont = np.zeros((rows, N), np.float32)
    inp = np.zeros((rows, N), np.float32)
    tgt = np.full((rows, N), -1, np.float32)
    for n in range(N):
        t = 0
        while t < rows:
            length = int(g.integers(2, T + 1))
            w = int(g.integers(1, V))
            for k in range(min(length, rows - t)):
                cont[t + k, n] = 0 if k == 0 else 1
                inp[t + k, n] = 0 if k == 0 else w  # 0 is the start symbol
                w = (w + 1) % V if k else w
                tgt[t + k, n] = w
            t += length
    f = tmp_path / "sent.h5"
    with h5py.File(f, "w") as h:
        h["cont_sentence"], h["input_sentence"], h["target_sentence"] = cont, inp, tgt
    (tmp_path / "sent.txt").write_text(f"{f}\n")
    fi = tmp_path / "img.h5"
    with h5py.File(fi, "w") as h:
        h["image_features"] = g.standard_normal((N * steps, F)).astype(np.float32)
    (tmp_path / "img.txt").write_text(f"{fi}\n")
    return str(tmp_path / "sent.txt"), str(tmp_path / "img.txt")


@pytest.mark.parametrize("variant", VARIANTS)
def test_lrcn_captioning_trains_and_deploy_runs(tmp_path, variant):
    src, img = _caption_data(tmp_path, steps=4)
    net_file = tmp_path / "train.prototxt"
    net_file.write_text(_caption_net(src, img, variant))
    solver = get_solver(text_format.Parse(
        f'net: "{net_file}" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0 '
        f'clip_gradients: 10 max_iter: 100 display: 0 random_seed: 3 snapshot_after_train: false',
        caffe_pb2.SolverParameter()))
    net = solver.net
    static = [(4 * H, F)]
    assert [b.shape for b in net.params["lstm1"]] == (
        [(4 * H, E), (4 * H,)] + (static if variant == "unfactored" else []) + [(4 * H, H)])
    assert [b.shape for b in net.params["lstm2"]] == (
        [(4 * H, H), (4 * H,)] + (static if variant == "factored" else []) + [(4 * H, H)])
    losses = []
    for _ in range(200):  # LRCN's solver settings: lr 0.1, clip 10, loss weight 20
        solver.step(1)
        losses.append(float(net.blobs["cross_entropy_loss"].data))
    assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:20]), losses
    # the weights saved by training load into the deploy nets, in Caffe's blob layout
    weights = str(tmp_path / "lrcn.caffemodel")
    net.save(weights)
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(weights, "rb").read())
    blobs = {lp.name: [tuple(b.shape.dim) for b in lp.blobs] for lp in saved.layer}
    assert blobs["lstm2"] == [b.shape for b in net.params["lstm2"]]
    nets = {}
    for steps in (1, 4):
        f = tmp_path / f"deploy{steps}.prototxt"
        f.write_text(_caption_net(src, img, variant, deploy_steps=steps))
        nets[steps] = caffe.Net(str(f), weights, caffe.TEST)
    feats = _r(N, F)
    words = np.random.default_rng(1).integers(1, V, (4, N)).astype(np.float32)
    words[0] = 0
    cont = np.ones((4, N), np.float32)
    cont[0] = 0
    # word by word (the state carried between forwards, as caption generation runs) gives what
    # the whole sentence in one forward gives
    whole = nets[4].forward(**({"image_features": feats} if variant != "language_model" else {}),
                            cont_sentence=cont, input_sentence=words)["probs"].copy()
    for t in range(4):
        inputs = {"cont_sentence": cont[t:t + 1], "input_sentence": words[t:t + 1]}
        if variant != "language_model":
            inputs["image_features"] = feats
        probs = nets[1].forward(**inputs)["probs"]
        assert probs.shape == (1, N, V)
        np.testing.assert_allclose(probs[0], whole[t], rtol=1e-4, atol=1e-6)


def _activity_net(T_, N_, classes):
    """A miniature of LRCN's activity-recognition net (train_test_lstm_RGB): per-frame conv
    features, fc6, reshaped to (T, N, 4096 -> here 16), LSTM 256 -> here 8, fc8 over axis 2."""
    return f"""
name: "lstm_joints"
input: "data" input_shape {{ dim: {T_ * N_} dim: 3 dim: 12 dim: 12 }}
input: "label" input_shape {{ dim: {T_ * N_} }}
input: "clip_markers" input_shape {{ dim: {T_ * N_} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "pool1" top: "fc6"
  inner_product_param {{ num_output: 16 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }}
layer {{ name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "reshape-data" type: "Reshape" bottom: "fc6" top: "fc6-reshape"
  reshape_param {{ shape {{ dim: {T_} dim: {N_} dim: 16 }} }} }}
layer {{ name: "reshape-label" type: "Reshape" bottom: "label" top: "reshape-label"
  reshape_param {{ shape {{ dim: {T_} dim: {N_} }} }} }}
layer {{ name: "reshape-cm" type: "Reshape" bottom: "clip_markers" top: "reshape-cm"
  reshape_param {{ shape {{ dim: {T_} dim: {N_} }} }} }}
layer {{ name: "lstm1" type: "LSTM" bottom: "fc6-reshape" bottom: "reshape-cm" top: "lstm1"
  recurrent_param {{ num_output: 8 weight_filler {{ type: "uniform" min: -0.01 max: 0.01 }}
    bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "lstm1-drop" type: "Dropout" bottom: "lstm1" top: "lstm1-drop" dropout_param {{ dropout_ratio: 0.5 }} }}
layer {{ name: "fc8-final" type: "InnerProduct" bottom: "lstm1-drop" top: "fc8-final"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "gaussian" std: 0.01 }} axis: 2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc8-final" bottom: "reshape-label" top: "loss"
  softmax_param {{ axis: 2 }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc8-final" bottom: "reshape-label" top: "accuracy"
  accuracy_param {{ axis: 2 }} }}
"""


def test_lrcn_activity_recognition_forward_backward(tmp_path):
    T_, N_, C = 4, 2, 3
    f = tmp_path / "lstm_rgb.prototxt"
    f.write_text(_activity_net(T_, N_, C))
    caffe.set_random_seed(1)
    net = caffe.Net(str(f), caffe.TRAIN)
    net.blobs["data"].data[...] = _r(T_ * N_, 3, 12, 12)
    net.blobs["label"].data[...] = np.arange(T_ * N_) % C
    # frames are time-major (T x N): the first frame of each clip starts a sequence
    markers = np.ones((T_, N_), np.float32)
    markers[0] = 0
    net.blobs["clip_markers"].data[...] = markers.reshape(-1)
    out = net.forward()
    assert np.isfinite(out["loss"]) and abs(float(out["loss"]) - np.log(C)) < 0.2
    assert net.blobs["lstm1"].data.shape == (T_, N_, 8)
    net.clear_param_diffs()
    net.backward()
    for name in ("lstm1", "fc6", "conv1"):
        assert np.abs(net.params[name][0].diff).sum() > 0, name
    assert net.params["lstm1"][0].shape == (32, 16)
