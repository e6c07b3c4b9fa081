"""The sequence protocol: its fixed generated data, its LSTM configs and one training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools import batchnorm_layers
from keras_bn_tools.layers import BatchNormLSTM
from keras_bn_tools.studies import sequence
from keras_bn_tools.studies.protocol import Protocol
from keras_bn_tools.studies.sequence import (
    CONFIGS,
    FEATURES,
    PROTOCOL,
    TIMESTEPS,
    load_sequences,
    make_sequences,
)

pytestmark = pytest.mark.backend_agnostic


@pytest.fixture(scope="module")
def data():
    return load_sequences()


# --------------------------------------------------------------------------- data


def test_data_shapes_types_and_labels(data):
    (train_x, train_y), (test_x, test_y) = data
    assert train_x.shape == (sequence.N_TRAIN, TIMESTEPS, FEATURES)
    assert test_x.shape == (sequence.N_TEST, TIMESTEPS, FEATURES)
    assert train_y.shape == (sequence.N_TRAIN,) and test_y.shape == (sequence.N_TEST,)
    assert train_x.dtype == np.float32 and train_y.dtype == np.float32
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert set(np.unique(y)) == {0.0, 1.0}
        assert 0.4 < y.mean() < 0.6  # the sign of a symmetric sum: balanced classes
        # Feature 0 carries the label: the sign of its noisy sum agrees with it in
        # 1 - arccos(sqrt(20 / 21.8)) / pi = 90.8% of sequences (the best any model can
        # do); feature 1 is a distractor with twice the spread.
        agreement = np.mean((x[..., 0].sum(axis=1) > 0) == (y == 1.0))
        assert 0.88 < agreement < 0.93
        assert abs(np.mean((x[..., 1].sum(axis=1) > 0) == (y == 1.0)) - 0.5) < 0.1
        assert 1.6 < x[..., 1].std() < 2.4


def test_data_is_fixed_and_drawn_from_the_data_seed(data):
    again = load_sequences()
    rng = np.random.default_rng(sequence.DATA_SEED)
    expected = (make_sequences(sequence.N_TRAIN, rng), make_sequences(sequence.N_TEST, rng))
    for split, same, drawn in zip(data, again, expected, strict=True):
        for array, array_again, array_drawn in zip(split, same, drawn, strict=True):
            np.testing.assert_array_equal(array, array_again)
            np.testing.assert_array_equal(array, array_drawn)
    assert not np.array_equal(data[0][0][: sequence.N_TEST], data[1][0])


@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_make_sequences_shapes_and_determinism(n, seed):
    x, y = make_sequences(n, np.random.default_rng(seed))
    assert x.shape == (n, TIMESTEPS, FEATURES) and y.shape == (n,)
    assert x.dtype == np.float32 and np.all(np.isfinite(x))
    assert set(np.unique(y)) <= {0.0, 1.0}
    x_again, y_again = make_sequences(n, np.random.default_rng(seed))
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)


# --------------------------------------------------------------------------- protocol


def test_protocol_describes_the_study():
    assert isinstance(PROTOCOL, Protocol) and PROTOCOL.name == "sequence"
    assert list(PROTOCOL.configs) == ["baseline", "bn-after", "bn-before", "bn-before-momentum0.9"]
    assert tuple(PROTOCOL.default_configs) == ("baseline", "bn-after", "bn-before")
    assert PROTOCOL.load_data is load_sequences
    assert PROTOCOL.loss == "binary_crossentropy"
    assert 0.5 < PROTOCOL.target < 1.0 and PROTOCOL.epochs > 0 and PROTOCOL.batch_size > 0
    first, second = PROTOCOL.optimizer(), PROTOCOL.optimizer()
    assert isinstance(first, keras.optimizers.Adam) and first is not second


def test_unknown_config_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'bn-inside'.*baseline, bn-after, bn-before"):
        PROTOCOL.build("bn-inside")


# --------------------------------------------------------------------------- models


@given(name=st.sampled_from(list(CONFIGS)))
def test_every_config_builds_an_uncompiled_lstm_with_bn_where_it_says(name):
    model = PROTOCOL.build(name)
    assert model.built and not model.compiled and model.name == name.replace(".", "_")
    assert tuple(model.input_shape) == (None, TIMESTEPS, FEATURES)
    assert tuple(model.output_shape) == (None, 1)
    recurrent = model.layers[0]
    assert isinstance(recurrent, keras.layers.RNN) and recurrent.cell.units == sequence.UNITS
    assert isinstance(recurrent, BatchNormLSTM) == name.startswith("bn-before")
    if isinstance(recurrent, BatchNormLSTM):
        assert recurrent.cell.momentum == (0.9 if name.endswith("momentum0.9") else 0.99)
    bn_names = [layer.name for layer in batchnorm_layers(model)]
    assert bn_names == (["batch_normalization"] if name == "bn-after" else [])
    if name == "bn-after":  # LSTM -> BN -> Dense
        assert model.layers[1].name == "batch_normalization"
    assert isinstance(model.layers[-1], keras.layers.Dense)
    assert model.layers[-1].activation is keras.activations.sigmoid


def test_bn_layer_name_is_the_same_in_every_build():
    keras.layers.BatchNormalization()  # a layer made earlier must not shift the name
    for _ in range(2):
        model = PROTOCOL.build("bn-after")
        assert [layer.name for layer in batchnorm_layers(model)] == ["batch_normalization"]


@pytest.mark.parametrize("name", ["bn-after", "bn-before"])
def test_a_training_step_lowers_the_loss(name, data):
    (train_x, train_y), _ = data
    x, y = train_x[:64], train_y[:64]
    model = PROTOCOL.build(name)
    model.compile(optimizer=PROTOCOL.optimizer(), loss=PROTOCOL.loss)
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    predictions = keras.ops.convert_to_numpy(model(x[:8], training=False))
    assert predictions.shape == (8, 1) and np.all((predictions > 0) & (predictions < 1))


@pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason=f"no compiled engine on {keras.backend.backend()}; the fit engine runs it there",
)
@pytest.mark.parametrize("name", ["bn-after", "bn-before"])
def test_the_engines_agree_run_for_run(name):
    from keras_bn_tools.studies import run_study

    runs = [
        run_study(PROTOCOL, [name], seeds=[5], epochs=2, engine=engine).runs[0]
        for engine in ("fit", "compiled")
    ]
    assert [run.engine for run in runs] == ["fit", "compiled"]
    fit, compiled = runs
    for metric in ("loss", "val_loss"):
        np.testing.assert_allclose(fit.history[metric], compiled.history[metric], rtol=1e-3)
    for metric in ("accuracy", "val_accuracy"):  # a row or two may flip at round-off
        np.testing.assert_allclose(fit.history[metric], compiled.history[metric], atol=2 / 1000)
    assert set(fit.moving_stats) == set(compiled.moving_stats)
    for layer, stats in fit.moving_stats.items():
        for stat, values in stats.items():
            np.testing.assert_allclose(
                values, compiled.moving_stats[layer][stat], rtol=1e-3, atol=1e-4
            )
    np.testing.assert_allclose(fit.final_test_accuracy, compiled.final_test_accuracy, atol=2e-3)
