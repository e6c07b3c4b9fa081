"""The shared model utilities: finding and keying BN layers, names, normalization factories."""

from __future__ import annotations

import keras
import pytest

from keras_bn_tools._model_utils import (
    NormalizationFactory,
    batchnorm_layers,
    is_linear,
    layer_keys,
    statistic_variables,
    unique_name,
)
from keras_bn_tools.layers import MomentumBatchNormalization

pytestmark = pytest.mark.backend_agnostic


def test_batchnorm_layers_finds_bn_inside_wrappers_nested_models_in_call_order():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="inner")],
        name="block",
    )
    inputs = keras.Input((2, 4))
    x = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="wrapped"), name="td_bn")(
        inputs
    )
    x = keras.layers.TimeDistributed(inner)(x)
    x = keras.layers.Flatten()(x)
    outputs = MomentumBatchNormalization(name="outer")(x)
    model = keras.Model(inputs, outputs)
    assert [layer.name for layer in batchnorm_layers(model)] == ["wrapped", "inner", "outer"]


@pytest.mark.parametrize("value", [None, keras.layers.Dense(2), "model", 3])
def test_batchnorm_layers_refuses_what_is_not_a_model_by_name(value):
    with pytest.raises(TypeError, match=r"`model` must be a keras\.Model"):
        batchnorm_layers(value)


def test_layer_keys_number_repeated_names():
    layers = [keras.layers.Dense(1, name="bn"), keras.layers.Dense(1, name="x")]
    layers.append(keras.layers.Dense(1, name="bn"))
    assert layer_keys(layers) == ["bn", "x", "bn#2"]


def test_statistic_variables_leave_out_missing_gamma_and_beta():
    layer = keras.layers.BatchNormalization(center=False)
    layer.build((None, 3))
    found = statistic_variables([("k", layer)])
    assert [stat for _, stat, _ in found] == ["moving_mean", "moving_variance", "gamma"]


def test_unique_name_and_is_linear():
    taken = {"dense_bn"}
    assert unique_name("dense_bn", taken) == "dense_bn_1"
    assert unique_name("dense_bn", taken) == "dense_bn_2"
    assert taken == {"dense_bn", "dense_bn_1", "dense_bn_2"}
    assert is_linear(None) and is_linear("linear") and is_linear(keras.activations.linear)
    assert not is_linear("relu")


def test_normalization_factory_checks_what_bn_layer_returns():
    assert isinstance(NormalizationFactory(None)(), keras.layers.BatchNormalization)
    assert NormalizationFactory(None)(channels_first=True).axis == 1
    with pytest.raises(TypeError, match="`bn_layer`"):
        NormalizationFactory(keras.layers.BatchNormalization())
    with pytest.raises(TypeError, match="`bn_layer` must return a Keras layer"):
        NormalizationFactory(lambda: "bn")()
    shared = keras.layers.BatchNormalization()
    factory = NormalizationFactory(lambda: shared)
    factory()
    with pytest.raises(ValueError, match="new, unbuilt layer"):
        factory()
