"""Tests of recurrent batch normalization: BatchNormLSTMCell and BatchNormLSTM.

The reference is a plain NumPy loop of Cooijmans et al.'s equations with per-time-step
statistics (`reference_forward`), plus Keras's own LSTM for the identity-statistics case.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_bn_tools.layers import BatchNormLSTM, BatchNormLSTMCell
from keras_bn_tools.layers._lstm_config import LSTMCellConfig

backend_agnostic = pytest.mark.backend_agnostic
# Eager JAX compiles every operation for every new shape, so under JAX a core subset runs
# (marked backend_agnostic), its property tests with two examples each: they check that the
# backend-agnostic code path works there; TensorFlow covers the breadth.
few_under_jax = settings(max_examples=2) if keras.backend.backend() == "jax" else (lambda f: f)
TERMS = ("input", "recurrent", "cell")


# --------------------------------------------------------------------------- helpers


@st.composite
def lstm_problems(draw, *, max_batch=5, max_time=5):
    """Tiny problem sizes and a seed: (batch, timesteps, features, units, seed)."""
    return (
        draw(st.integers(2, max_batch)),
        draw(st.integers(1, max_time)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 4)),
        draw(st.integers(0, 2**31 - 1)),
    )


def _inputs(batch, steps, features, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, steps, features)).astype("float32")


def _params(layer):
    """The cell's weights as float64 NumPy arrays, by name."""
    return {v.name: to_numpy(v, dtype="float64") for v in layer.cell.weights}


def _set_identity_statistics(layer):
    """Unit scales, zero shifts, moving mean 0 and moving variance 1 - epsilon."""
    cell = layer.cell
    for gamma in (cell.input_gamma, cell.recurrent_gamma, cell.cell_gamma):
        gamma.assign(np.ones(gamma.shape))
    cell.cell_beta.assign(np.zeros(cell.cell_beta.shape))
    for term in TERMS:
        mean = getattr(cell, f"{term}_moving_mean")
        mean.assign(np.zeros(mean.shape))
        variance = getattr(cell, f"{term}_moving_variance")
        variance.assign(np.full(variance.shape, 1.0 - cell.epsilon))


def _randomize_bn(layer, seed):
    """Random scales, shifts and moving statistics, so that no parameter hides behind 0 or 1."""
    rng = np.random.default_rng(seed)
    cell = layer.cell
    for gamma in (cell.input_gamma, cell.recurrent_gamma, cell.cell_gamma):
        gamma.assign(rng.uniform(0.3, 1.5, gamma.shape))
    cell.cell_beta.assign(rng.normal(0, 0.5, cell.cell_beta.shape))
    for term in TERMS:
        mean = getattr(cell, f"{term}_moving_mean")
        mean.assign(rng.normal(0, 0.5, mean.shape))
        variance = getattr(cell, f"{term}_moving_variance")
        variance.assign(rng.uniform(0.2, 2.0, variance.shape))


def to_numpy(value, dtype=None):
    """`value` (a tensor, variable or array) as NumPy, on every backend."""
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=dtype)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_forward(x, p, *, training, momentum=0.99, epsilon=1e-3, mask=None, slots=None):
    """NumPy recurrent BN-LSTM (float64). Returns (outputs, last_output, h, c, new_moving).

    Per-time-step statistics: step t uses slot min(t, slots - 1); in training the batch
    statistics (over the samples the mask keeps) and, for the update, each slot's average of
    its steps' statistics. Masked steps keep the state and repeat the previous output.
    """
    batch, steps, _ = x.shape
    units = p["recurrent_kernel"].shape[0]
    slots = slots or p["input_moving_mean"].shape[0]
    weights = np.ones((batch, steps)) if mask is None else mask.astype("float64")
    h = np.zeros((batch, units))
    c = np.zeros((batch, units))
    previous = np.zeros((batch, units))
    outputs = []
    seen = {term: [[] for _ in range(slots)] for term in TERMS}
    for t in range(steps):
        slot = min(t, slots - 1)
        w = weights[:, t][:, None]

        def bn(term, v, gamma, beta=0.0, w=w, slot=slot):
            if training:
                n = w.sum()
                if n > 0:
                    mean = (v * w).sum(0) / n
                    var = (w * (v - mean) ** 2).sum(0) / n
                    seen[term][slot].append((mean, var))
                else:
                    mean, var = 0.0, 1.0
            else:
                mean = p[f"{term}_moving_mean"][slot]
                var = p[f"{term}_moving_variance"][slot]
            return gamma * (v - mean) / np.sqrt(var + epsilon) + beta

        z = (
            bn("input", x[:, t] @ p["kernel"], p["input_gamma"])
            + bn("recurrent", h @ p["recurrent_kernel"], p["recurrent_gamma"])
            + p["bias"]
        )
        z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
        c_new = _sigmoid(z_f) * c + _sigmoid(z_i) * np.tanh(z_c)
        h_new = _sigmoid(z_o) * np.tanh(bn("cell", c_new, p["cell_gamma"], p["cell_beta"]))
        keep = w > 0
        h, c = np.where(keep, h_new, h), np.where(keep, c_new, c)
        previous = np.where(keep, h_new, previous)
        outputs.append(previous)
    new_moving = {}
    for term in TERMS:
        for k, stat in enumerate(("mean", "variance")):
            moving = p[f"{term}_moving_{stat}"].copy()
            for slot, values in enumerate(seen[term]):
                if values:
                    average = np.mean([v[k] for v in values], axis=0)
                    moving[slot] = momentum * moving[slot] + (1 - momentum) * average
            new_moving[f"{term}_moving_{stat}"] = moving
    return np.stack(outputs, axis=1), previous, h, c, new_moving


def _layer(units, x, **kwargs):
    layer = BatchNormLSTM(units, **kwargs)
    layer.build(x.shape)
    return layer


# --------------------------------------------------------------------------- identity


@given(
    lstm_problems(),
    st.booleans(),
    st.booleans(),
)
def test_identity_statistics_match_keras_lstm(problem, return_sequences, go_backwards):
    batch, steps, features, units, seed = problem
    x = _inputs(batch, steps, features, seed)
    lstm = keras.layers.LSTM(
        units, return_sequences=return_sequences, return_state=True, go_backwards=go_backwards
    )
    expected = lstm(x)
    layer = BatchNormLSTM.from_lstm(lstm)
    _set_identity_statistics(layer)
    got = layer(x, training=False)
    assert len(got) == 3
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=1e-5, atol=1e-6)


@given(lstm_problems(max_time=6), st.booleans())
def test_identity_statistics_match_keras_lstm_with_mask(problem, return_sequences):
    batch, steps, features, units, seed = problem
    x = _inputs(batch, steps, features, seed)
    mask = np.random.default_rng(seed + 1).random((batch, steps)) > 0.4
    lstm = keras.layers.LSTM(units, return_sequences=return_sequences, return_state=True)
    expected = lstm(x, mask=mask)
    layer = BatchNormLSTM.from_lstm(lstm)
    _set_identity_statistics(layer)
    got = layer(x, mask=mask, training=False)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the maths


@backend_agnostic
@few_under_jax
@given(lstm_problems(), st.booleans())
def test_forward_matches_numpy_reference(problem, training):
    batch, steps, features, units, seed = problem
    x = _inputs(batch, steps, features, seed)
    layer = _layer(units, x, return_sequences=True)
    _randomize_bn(layer, seed)
    p = _params(layer)
    expected, *_ = reference_forward(x.astype("float64"), p, training=training)
    got = layer(x, training=training)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-4, atol=1e-5)


@given(lstm_problems(max_batch=6))
def test_training_normalizes_every_term_at_every_step(problem):
    """Per step and feature: mean beta (0 for the input/recurrent terms), std gamma."""
    batch, steps, features, units, seed = problem
    x = _inputs(batch, steps, features, seed)
    layer = _layer(units, x)
    _randomize_bn(layer, seed)
    cell, eps = layer.cell, layer.epsilon
    trace = {k: to_numpy(v, dtype="float64") for k, v in layer.normalization_trace(x).items()}
    outputs = trace["output"]
    # The raw terms are what they claim to be.
    np.testing.assert_allclose(trace["input_raw"], x @ to_numpy(cell.kernel), atol=1e-5)
    h_prev = np.concatenate([np.zeros_like(outputs[:, :1]), outputs[:, :-1]], axis=1)
    np.testing.assert_allclose(
        trace["recurrent_raw"], h_prev @ to_numpy(cell.recurrent_kernel), atol=1e-5
    )
    for term, gamma, beta in (
        ("input", cell.input_gamma, 0.0),
        ("recurrent", cell.recurrent_gamma, 0.0),
        ("cell", cell.cell_gamma, cell.cell_beta),
    ):
        normalized, raw = trace[term], trace[f"{term}_raw"]
        variance = raw.var(axis=0)  # (steps, width), per step and feature
        gamma, beta = to_numpy(gamma), to_numpy(beta)
        np.testing.assert_allclose(
            normalized.mean(axis=0), np.broadcast_to(beta, variance.shape), atol=1e-5
        )
        np.testing.assert_allclose(
            normalized.std(axis=0), gamma * np.sqrt(variance / (variance + eps)), atol=1e-4
        )


@backend_agnostic
@few_under_jax
@given(lstm_problems(), st.integers(1, 6))
def test_training_updates_moving_statistics_per_step(problem, max_timesteps):
    batch, steps, features, units, seed = problem
    x = _inputs(batch, steps, features, seed)
    layer = _layer(units, x, momentum=0.7, max_timesteps=max_timesteps)
    _randomize_bn(layer, seed)
    p = _params(layer)
    *_, expected = reference_forward(x.astype("float64"), p, training=True, momentum=0.7)
    layer(x, training=True)
    for name, value in expected.items():
        np.testing.assert_allclose(
            to_numpy(getattr(layer.cell, name)), value, rtol=1e-4, atol=1e-5, err_msg=name
        )
    # Slots the sequence does not reach keep their statistics.
    for slot in range(steps, max_timesteps):
        np.testing.assert_array_equal(
            to_numpy(layer.cell.input_moving_mean)[slot], p["input_moving_mean"][slot]
        )


def test_inference_uses_moving_statistics_and_leaves_them_alone():
    x = _inputs(4, 5, 3, 0)
    layer = _layer(3, x, return_sequences=True)
    _randomize_bn(layer, 1)
    p = _params(layer)
    expected, *_ = reference_forward(x.astype("float64"), p, training=False)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-5)
    for name, value in p.items():
        np.testing.assert_array_equal(to_numpy(getattr(layer.cell, name)), value)
    # Longer sequences than the slots reuse the last slot.
    longer = _inputs(4, 8, 3, 1)
    expected, *_ = reference_forward(longer.astype("float64"), p, training=False)
    np.testing.assert_allclose(to_numpy(layer(longer)), expected, rtol=1e-4, atol=1e-5)


def test_max_timesteps_defaults_to_the_input_length():
    assert _layer(2, np.zeros((1, 7, 3))).max_timesteps == 7
    shared = BatchNormLSTM(2)
    shared.build((None, None, 3))
    assert shared.max_timesteps == 1
    assert shared.cell.input_moving_mean.shape == (1, 8)
    assert _layer(2, np.zeros((1, 7, 3)), max_timesteps=3).cell.cell_moving_mean.shape == (3, 2)


def test_frozen_layer_runs_in_inference_mode():
    x = _inputs(4, 3, 2, 0)
    layer = _layer(3, x)
    before = _params(layer)
    layer.trainable = False
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), to_numpy(layer(x, training=False)), atol=1e-7
    )
    for name, value in before.items():
        np.testing.assert_array_equal(to_numpy(getattr(layer.cell, name)), value)


def test_without_cell_normalization():
    x = _inputs(3, 4, 2, 0)
    layer = _layer(2, x, normalize_cell=False)
    assert layer.cell.cell_gamma is None
    assert not hasattr(layer.cell, "cell_moving_mean")
    assert len(layer.cell.weights) == 3 + 2 + 4
    layer(x, training=True)
    assert "cell" not in layer.normalization_trace(x)


# --------------------------------------------------------------------------- masks, shapes


@backend_agnostic
@few_under_jax
@given(lstm_problems(max_time=6), st.booleans())
def test_padding_stays_out_of_outputs_and_statistics(problem, training):
    """Changing masked entries changes nothing: not the kept outputs, not the statistics."""
    batch, steps, features, units, seed = problem
    rng = np.random.default_rng(seed)
    x = _inputs(batch, steps, features, seed)
    mask = rng.random((batch, steps)) > 0.4
    mask[0] = True  # one full sequence, so every slot is reached
    noisy = np.where(mask[..., None], x, rng.normal(0, 10, x.shape)).astype("float32")
    layer = _layer(units, x, return_sequences=True, momentum=0.5)
    _randomize_bn(layer, seed)
    p = _params(layer)
    expected, *_, expected_moving = reference_forward(
        x.astype("float64"), p, training=training, momentum=0.5, mask=mask
    )
    outputs = {}
    for name, data in (("clean", x), ("noisy", noisy)):
        for v in layer.cell.weights:
            v.assign(p[v.name])
        outputs[name] = to_numpy(layer(data, mask=mask, training=training))
        moving = {k: to_numpy(getattr(layer.cell, k)) for k in expected_moving}
        for k, value in expected_moving.items():
            np.testing.assert_allclose(moving[k], value, rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(outputs["clean"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["noisy"], outputs["clean"], rtol=1e-5, atol=1e-6)


def test_masked_steps_keep_the_state():
    x = _inputs(2, 5, 3, 0)
    mask = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=bool)
    layer = _layer(4, x, return_sequences=True, return_state=True)
    outputs, h, c = (to_numpy(t) for t in layer(x, mask=mask))
    np.testing.assert_array_equal(outputs[0, 2:], np.repeat(outputs[0, 1:2], 3, axis=0))
    np.testing.assert_array_equal(outputs[1, 1], outputs[1, 0])
    np.testing.assert_array_equal(outputs[1, 3], outputs[1, 2])
    np.testing.assert_array_equal(h, outputs[:, -1])
    # The state after a masked tail is the state after the last kept step.
    _, h_short, c_short = (to_numpy(t) for t in layer(x[:1, :2], training=False))
    np.testing.assert_allclose(h[:1], h_short, atol=1e-6)
    np.testing.assert_allclose(c[:1], c_short, atol=1e-6)


def test_mask_from_a_masking_layer():
    x = _inputs(3, 4, 2, 0)
    x[1, 2:] = 0.0
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.Masking(), BatchNormLSTM(3)])
    plain = keras.Sequential([keras.Input((2, 2)), BatchNormLSTM(3, max_timesteps=4)])
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(
        to_numpy(model(x))[1], to_numpy(plain(x[1:2, :2]))[0], rtol=1e-5, atol=1e-6
    )


@given(lstm_problems())
def test_return_sequences_and_state(problem):
    batch, steps, features, units, seed = problem
    x = _inputs(batch, steps, features, seed)
    layer = _layer(units, x, return_sequences=True, return_state=True)
    sequence, h, c = layer(x, training=False)
    assert sequence.shape == (batch, steps, units)
    assert h.shape == c.shape == (batch, units)
    last = BatchNormLSTM.from_config(
        {**layer.get_config(), "return_sequences": False, "return_state": False}
    )
    last.build(x.shape)
    last.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(last(x)), to_numpy(sequence)[:, -1], atol=1e-6)
    np.testing.assert_allclose(to_numpy(h), to_numpy(sequence)[:, -1], atol=1e-6)


def test_initial_state_and_go_backwards():
    x = _inputs(3, 4, 2, 0)
    layer = _layer(2, x, return_sequences=True)
    _randomize_bn(layer, 0)
    h0 = np.full((3, 2), 0.5, "float32")
    c0 = np.full((3, 2), -0.5, "float32")
    with_state = to_numpy(layer(x, initial_state=[h0, c0], training=True))
    assert not np.allclose(with_state, to_numpy(layer(x, training=True)))
    backwards = BatchNormLSTM.from_config({**layer.get_config(), "go_backwards": True})
    backwards.build(x.shape)
    backwards.set_weights(layer.get_weights())
    reversed_x = np.ascontiguousarray(x[:, ::-1])
    np.testing.assert_allclose(
        to_numpy(backwards(x)), to_numpy(layer(reversed_x)), rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------------- the cell


@backend_agnostic
def test_cell_steps_match_the_layer_in_inference():
    x = _inputs(3, 4, 2, 0)
    layer = _layer(3, x, return_sequences=True)
    _randomize_bn(layer, 2)
    cell = layer.cell
    states = cell.get_initial_state(3)
    steps = []
    for t in range(4):
        h, states = cell(x[:, t], states, timestep=t)
        steps.append(to_numpy(h))
    np.testing.assert_allclose(np.stack(steps, 1), to_numpy(layer(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="timestep"):
        cell(x[:, 0], states)
    with pytest.raises(ValueError, match="BatchNormLSTM"):
        cell(x[:, 0], states, training=True, timestep=0)


def test_cell_in_a_plain_rnn_with_shared_statistics():
    x = _inputs(3, 4, 2, 0)
    layer = _layer(3, x, max_timesteps=1)
    _randomize_bn(layer, 3)
    rnn = keras.layers.RNN(BatchNormLSTMCell(3, max_timesteps=1))
    rnn.build(x.shape)
    rnn.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(rnn(x)), to_numpy(layer(x)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- initial values


@backend_agnostic
def test_gamma_initialization():
    x = np.zeros((1, 2, 3))
    cell = _layer(4, x).cell
    np.testing.assert_allclose(to_numpy(cell.input_gamma), 0.1)
    np.testing.assert_allclose(to_numpy(cell.recurrent_gamma), 0.1)
    np.testing.assert_allclose(to_numpy(cell.cell_gamma), 1.0)
    np.testing.assert_allclose(to_numpy(cell.cell_beta), 0.0)
    np.testing.assert_allclose(to_numpy(cell.bias)[4:8], 1.0)  # unit forget bias
    for term in TERMS:
        np.testing.assert_allclose(to_numpy(getattr(cell, f"{term}_moving_mean")), 0.0)
        np.testing.assert_allclose(to_numpy(getattr(cell, f"{term}_moving_variance")), 1.0)
    cell = _layer(4, x, gamma_initializer=0.25, cell_gamma_initializer=0.5).cell
    np.testing.assert_allclose(to_numpy(cell.recurrent_gamma), 0.25)
    np.testing.assert_allclose(to_numpy(cell.cell_gamma), 0.5)
    cell = _layer(4, x, gamma_initializer=keras.initializers.Constant(0.3)).cell
    np.testing.assert_allclose(to_numpy(cell.input_gamma), 0.3)


# --------------------------------------------------------------------------- from_lstm


def test_from_lstm_copies_configuration_and_weights():
    x = _inputs(2, 3, 4, 0)
    lstm = keras.layers.LSTM(
        5,
        return_sequences=True,
        go_backwards=True,
        use_bias=False,
        recurrent_activation="hard_sigmoid",
        dropout=0.2,
        name="my_lstm",
    )
    lstm(x)
    layer = BatchNormLSTM.from_lstm(lstm, momentum=0.5, gamma_initializer=1.0)
    assert layer.built and layer.name == "my_lstm"
    assert (layer.units, layer.return_sequences, layer.go_backwards, layer.use_bias) == (
        5,
        True,
        True,
        False,
    )
    assert layer.dropout == 0.2 and layer.momentum == 0.5 and layer.max_timesteps == 3
    assert keras.activations.serialize(layer.recurrent_activation) == "hard_sigmoid"
    np.testing.assert_array_equal(to_numpy(layer.cell.kernel), to_numpy(lstm.cell.kernel))
    np.testing.assert_array_equal(
        to_numpy(layer.cell.recurrent_kernel), to_numpy(lstm.cell.recurrent_kernel)
    )
    np.testing.assert_allclose(to_numpy(layer.cell.input_gamma), 1.0)

    unbuilt = BatchNormLSTM.from_lstm(keras.layers.LSTM(3), name="fresh")
    assert not unbuilt.built and unbuilt.name == "fresh"
    with pytest.raises(TypeError, match="LSTM"):
        BatchNormLSTM.from_lstm(keras.layers.GRU(3))


# --------------------------------------------------------------------------- training, saving


@backend_agnostic
def test_fit_trains_and_moves_the_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 2)).astype("float32")
    y = (x[..., 0].sum(axis=1) > 0).astype("float32")
    model = keras.Sequential(
        [keras.Input((6, 2)), BatchNormLSTM(4, dropout=0.1), keras.layers.Dense(1)]
    )
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
    cell = model.layers[0].cell
    before = {v.name: to_numpy(v) for v in cell.weights}
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for v in cell.weights:  # every weight, trainable or not, moved
        assert not np.allclose(to_numpy(v), before[v.name]), v.name

    expected = to_numpy(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True
    assert isinstance(loaded.layers[0], BatchNormLSTM)
    np.testing.assert_allclose(to_numpy(loaded(x, training=False)), expected, atol=1e-6)
    for v, w in zip(loaded.layers[0].cell.weights, cell.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(v), to_numpy(w))


@backend_agnostic
def test_config_round_trip():
    layer = BatchNormLSTM(
        3,
        gamma_initializer=0.2,
        momentum=0.9,
        epsilon=1e-4,
        max_timesteps=5,
        normalize_cell=False,
        return_sequences=True,
        recurrent_dropout=0.1,
        kernel_regularizer="l2",
        name="rbn",
    )
    config = layer.get_config()
    clone = BatchNormLSTM.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config
    built = _layer(3, np.zeros((1, 4, 2)))
    assert BatchNormLSTM.from_config(built.get_config()).get_config() == built.get_config()
    assert built.get_config()["max_timesteps"] == 4
    cell = BatchNormLSTMCell(2, momentum=0.5, cell_gamma_initializer=2.0)
    assert BatchNormLSTMCell.from_config(cell.get_config()).get_config() == cell.get_config()


# --------------------------------------------------------------------------- errors


@backend_agnostic
@pytest.mark.parametrize("units", [0, -3])
def test_bad_units(units):
    with pytest.raises(ValueError, match="`units`"):
        BatchNormLSTM(units)
    with pytest.raises(ValueError, match="`units`"):
        BatchNormLSTMCell(units)


@backend_agnostic
def test_bad_arguments():
    with pytest.raises(TypeError, match="`units`"):
        BatchNormLSTM(2.5)
    for momentum in (-0.1, 1.5):
        with pytest.raises(ValueError, match="`momentum`"):
            BatchNormLSTM(2, momentum=momentum)
    with pytest.raises(TypeError, match="`momentum`"):
        BatchNormLSTM(2, momentum="high")
    for epsilon in (0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="`epsilon`"):
            BatchNormLSTM(2, epsilon=epsilon)
    with pytest.raises(TypeError, match="`epsilon`"):  # the same rule as the BN layer's
        BatchNormLSTM(2, epsilon="small")
    for flag in ("use_bias", "unit_forget_bias", "normalize_cell"):
        with pytest.raises(TypeError, match=f"`{flag}`"):
            BatchNormLSTM(2, **{flag: "no"})
    with pytest.raises(ValueError, match="`max_timesteps`"):
        BatchNormLSTM(2, max_timesteps=0)
    with pytest.raises(ValueError, match="`dropout`"):
        BatchNormLSTM(2, dropout=1.5)


@backend_agnostic
def test_two_dimensional_input_is_refused():
    layer = BatchNormLSTM(2)
    with pytest.raises(ValueError, match=r"3-D input \(batch, timesteps, features\)"):
        layer(np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match="3-D"):
        keras.Sequential([keras.Input((3,)), BatchNormLSTM(2)])


# --------------------------------------------------------------------------- builders, rewrite


def test_build_lstm_before_uses_batch_norm_lstm():
    from keras_bn_tools import batchnorm_layers, build_lstm

    model = build_lstm((6, 2), (4, 3), bn="BEFORE")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["BatchNormLSTM", "BatchNormLSTM", "Dense"]
    first, second = model.layers[:2]
    assert first.return_sequences and not second.return_sequences
    assert (first.units, second.units) == (4, 3)
    assert first.max_timesteps == second.max_timesteps == 6
    assert batchnorm_layers(model) == []  # the normalization is inside the cells
    x = _inputs(5, 6, 2, 0)
    assert model(x, training=True).shape == (5, 1)


def _lstm_identity_check(original, rewritten, x):
    """Identity statistics make every BatchNormLSTM of `rewritten` compute its LSTM."""
    for layer in rewritten.layers:
        if isinstance(layer, BatchNormLSTM):
            _set_identity_statistics(layer)
    expected = original(x, training=False)
    got = rewritten(x, training=False)
    for g, e in zip(keras.tree.flatten(got), keras.tree.flatten(expected), strict=True):
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=1e-5, atol=1e-6)


def test_insert_batchnorm_before_replaces_lstm_in_a_sequential_model():
    from keras_bn_tools import insert_batchnorm

    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras.layers.LSTM(4, return_sequences=True, name="encoder"),
            keras.layers.LSTM(2, name="decoder"),
            keras.layers.Dense(1),
        ]
    )
    before = [to_numpy(w) for w in model.get_weights()]
    rewritten = insert_batchnorm(model, placement="before")
    kinds = [type(layer).__name__ for layer in rewritten.layers]
    assert kinds == ["BatchNormLSTM", "BatchNormLSTM", "Dense"]
    encoder = rewritten.get_layer("encoder")
    assert encoder.return_sequences and encoder.max_timesteps == 5
    np.testing.assert_array_equal(
        to_numpy(encoder.cell.kernel), to_numpy(model.get_layer("encoder").cell.kernel)
    )
    for w, b in zip(model.get_weights(), before, strict=True):  # the input model is untouched
        np.testing.assert_array_equal(to_numpy(w), b)
    _lstm_identity_check(model, rewritten, _inputs(4, 5, 3, 0))
    rewritten(_inputs(4, 5, 3, 1), training=True)


def test_insert_batchnorm_before_replaces_lstm_in_a_functional_model():
    from keras_bn_tools import insert_batchnorm

    inputs = keras.Input((5, 3))
    sequence, h, c = keras.layers.LSTM(4, return_sequences=True, return_state=True)(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Concatenate()([sequence[:, -1], h, c]))
    model = keras.Model(inputs, outputs)
    rewritten = insert_batchnorm(model, placement="before")
    assert sum(isinstance(layer, BatchNormLSTM) for layer in rewritten.layers) == 1
    assert not any(isinstance(layer, keras.layers.LSTM) for layer in rewritten.layers)
    _lstm_identity_check(model, rewritten, _inputs(4, 5, 3, 2))


# --------------------------------------------------------------------------- compatibility

DATA = Path(__file__).parent / "data"


@backend_agnostic
def test_files_saved_by_version_0_1_load_with_the_same_predictions():
    """Saved by the pre-refactor layer (`max_timesteps`, `normalize_cell=False`, a plain RNN
    of the cell): the registered names and config keys still load, weights in place."""
    reference = np.load(DATA / "batch_norm_lstm_0.1.npz")
    model = keras.models.load_model(DATA / "batch_norm_lstm_0.1.keras")  # safe_mode=True
    assert [type(layer).__name__ for layer in model.layers[:2]] == ["BatchNormLSTM"] * 2
    assert model.get_layer("rbn_no_cell").max_timesteps == 2
    np.testing.assert_allclose(to_numpy(model(reference["x"])), reference["model"], atol=1e-6)
    cell_model = keras.models.load_model(DATA / "batch_norm_lstm_cell_0.1.keras")
    assert isinstance(cell_model.layers[0].cell, BatchNormLSTMCell)
    np.testing.assert_allclose(to_numpy(cell_model(reference["x"])), reference["cell"], atol=1e-6)


@backend_agnostic
def test_constructors_spell_out_the_config_and_document_it():
    """The cell's arguments are listed once in LSTMCellConfig; the constructors' signatures
    (spelled out for IDEs and the API reference) must match its names, order and defaults,
    and both docstrings document every argument."""
    fields = {field.name: field for field in dataclasses.fields(LSTMCellConfig)}
    names = LSTMCellConfig.names()
    cell_parameters = inspect.signature(BatchNormLSTMCell).parameters
    assert list(cell_parameters) == [*names, "kwargs"]
    layer_parameters = inspect.signature(BatchNormLSTM).parameters
    assert [name for name in layer_parameters if name in fields] == list(names)
    for parameters in (cell_parameters, layer_parameters):
        for name in names:
            default = fields[name].default
            expected = inspect.Parameter.empty if default is dataclasses.MISSING else default
            assert parameters[name].default == expected, name
    for name in layer_parameters:
        if name != "kwargs":
            assert f"        {name}: " in BatchNormLSTM.__doc__, name
    for name in names:
        assert f"        {name}: " in BatchNormLSTMCell.__doc__, name
    assert set(LSTMCellConfig.names(normalization=True)) == {
        "gamma_initializer",
        "cell_gamma_initializer",
        "cell_beta_initializer",
        "normalize_cell",
        "momentum",
        "epsilon",
        "max_timesteps",
    }


@backend_agnostic
def test_arguments_bind_positionally_as_keras_lstm():
    layer = BatchNormLSTM(3, "relu", "hard_sigmoid", False, return_sequences=True)
    assert keras.activations.serialize(layer.activation) == "relu"
    assert keras.activations.serialize(layer.recurrent_activation) == "hard_sigmoid"
    assert layer.use_bias is False and layer.return_sequences
    assert layer.cell.config.units == 3
    with pytest.raises(TypeError, match="units"):
        BatchNormLSTM(3, units=4)
    with pytest.raises(ValueError, match="no_such_argument"):  # as Keras layers do
        BatchNormLSTM(3, no_such_argument=1)
    built = _layer(2, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="max_timesteps"):
        built.cell.max_timesteps = 5
