"""The digits protocol: its fixed data split, its CNN configs and one training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools import batchnorm_layers
from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.studies import digits
from keras_bn_tools.studies.digits import CONFIGS, PROTOCOL, load_digits_split
from keras_bn_tools.studies.protocol import Protocol

pytestmark = pytest.mark.backend_agnostic

BN_CONFIGS = [name for name, config in CONFIGS.items() if config.bn != "none"]


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


# --------------------------------------------------------------------------- data


def test_split_is_every_fifth_image_scaled_to_unit_range(data):
    from sklearn.datasets import load_digits

    (train_x, train_y), (test_x, test_y) = data
    assert train_x.shape == (1438, 8, 8, 1) and test_x.shape == (359, 8, 8, 1)
    assert train_y.shape == (1438,) and test_y.shape == (359,)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int32
    for x in (train_x, test_x):
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (train_y, test_y):
        assert set(np.unique(y)) == set(range(10))
    raw = load_digits()
    np.testing.assert_array_equal(test_x[..., 0] * 16, raw.images[4::5])
    np.testing.assert_array_equal(test_y, raw.target[4::5])
    train_rows = np.setdiff1d(np.arange(len(raw.target)), np.arange(4, len(raw.target), 5))
    np.testing.assert_array_equal(train_x[..., 0] * 16, raw.images[train_rows])


def test_split_is_the_same_on_every_call(data):
    again = load_digits_split()
    for first, second in zip(data, again, strict=True):
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])


# --------------------------------------------------------------------------- protocol


def test_protocol_describes_the_study():
    assert isinstance(PROTOCOL, Protocol) and PROTOCOL.name == "digits"
    assert list(PROTOCOL.configs) == list(CONFIGS)
    assert {"baseline", "bn-after", "bn-before"} <= set(PROTOCOL.default_configs)
    assert set(PROTOCOL.default_configs) <= set(CONFIGS)
    assert PROTOCOL.load_data is load_digits_split
    assert PROTOCOL.loss == "sparse_categorical_crossentropy"
    assert 0.0 < PROTOCOL.target < 1.0 and PROTOCOL.epochs > 0 and PROTOCOL.batch_size > 0
    first, second = PROTOCOL.optimizer(), PROTOCOL.optimizer()
    assert isinstance(first, keras.optimizers.SGD) and first is not second


def test_unknown_config_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'bn-sideways'.*baseline, bn-after, bn-before"):
        PROTOCOL.build("bn-sideways")


# --------------------------------------------------------------------------- models


@given(name=st.sampled_from(list(CONFIGS)))
def test_every_config_builds_an_uncompiled_cnn_with_bn_where_it_says(name):
    config = CONFIGS[name]
    model = PROTOCOL.build(name)
    assert model.built and not model.compiled and model.name == name.replace(".", "_")
    assert tuple(model.input_shape) == (None, 8, 8, 1)
    assert tuple(model.output_shape) == (None, 10)
    assert model.layers[-1].activation is keras.activations.softmax
    bn = batchnorm_layers(model)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == list(digits.FILTERS)
    assert len(bn) == (0 if config.bn == "none" else len(convs))
    momentum_layer = config.bn_layer is not digits.CONFIGS["baseline"].bn_layer
    for layer in bn:
        assert isinstance(layer, MomentumBatchNormalization) == momentum_layer
        if config.bn_kwargs.get("momentum") is not None:
            assert layer.momentum == config.bn_kwargs["momentum"]
        following = model.layers[model.layers.index(layer) + 1]
        preceding = model.layers[model.layers.index(layer) - 1]
        assert isinstance(preceding, keras.layers.Conv2D)
        if config.bn == "before":  # Conv2D(linear) -> BN -> ReLU
            assert preceding.activation is keras.activations.linear
            assert isinstance(following, keras.layers.Activation)
        else:  # Conv2D(relu) -> BN -> MaxPool
            assert preceding.activation is keras.activations.relu
            assert isinstance(following, keras.layers.MaxPooling2D)


@pytest.mark.parametrize("name", BN_CONFIGS)
def test_bn_layer_names_are_the_same_in_every_build(name):
    keras.layers.BatchNormalization()  # a layer made earlier must not shift the names
    base = CONFIGS[name].layer_name
    for _ in range(2):
        model = PROTOCOL.build(name)
        assert [layer.name for layer in batchnorm_layers(model)] == [base, f"{base}_1"]


@pytest.mark.parametrize("name", ["bn-before", "bn-before-momentum0.9"])
def test_a_training_step_lowers_the_loss_and_moves_the_statistics(name, data):
    (train_x, train_y), _ = data
    x, y = train_x[:64], train_y[:64]
    model = PROTOCOL.build(name)
    model.compile(optimizer=PROTOCOL.optimizer(), loss=PROTOCOL.loss)
    first_bn = batchnorm_layers(model)[0]
    before = keras.ops.convert_to_numpy(first_bn.moving_mean).copy()
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(keras.ops.convert_to_numpy(first_bn.moving_mean), before)
    predictions = keras.ops.convert_to_numpy(model(x[:8], training=False))
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_a_momentum_variant_uses_momentum_batch_normalization():
    variants = [name for name, config in CONFIGS.items() if "momentum" in config.layer_name]
    assert variants
    for name in variants:
        layers = batchnorm_layers(PROTOCOL.build(name))
        assert layers and all(isinstance(layer, MomentumBatchNormalization) for layer in layers)
        assert all(layer.momentum == CONFIGS[name].bn_kwargs["momentum"] for layer in layers)


@pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason=f"no compiled engine on {keras.backend.backend()}; the fit engine runs it there",
)
def test_the_engines_agree_run_for_run():
    from keras_bn_tools.studies import run_study

    runs = [
        run_study(PROTOCOL, ["bn-before-momentum0.9"], seeds=[3], epochs=2, engine=engine).runs[0]
        for engine in ("fit", "compiled")
    ]
    assert [run.engine for run in runs] == ["fit", "compiled"]
    fit, compiled = runs
    for metric in ("loss", "val_loss"):
        np.testing.assert_allclose(fit.history[metric], compiled.history[metric], rtol=1e-3)
    for metric in ("accuracy", "val_accuracy"):  # a row or two may flip at round-off
        np.testing.assert_allclose(fit.history[metric], compiled.history[metric], atol=2 / 359)
    assert (
        set(fit.moving_stats)
        == set(compiled.moving_stats)
        == {
            "momentum_batch_normalization",
            "momentum_batch_normalization_1",
        }
    )
    for layer, stats in fit.moving_stats.items():
        for stat, values in stats.items():
            np.testing.assert_allclose(
                values, compiled.moving_stats[layer][stat], rtol=1e-3, atol=1e-4
            )
