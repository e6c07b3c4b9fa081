"""The model-building helpers: names, linear activations, normalization factories."""

from __future__ import annotations

import keras
import pytest

from keras_bn_tools._model_utils import NormalizationFactory, is_linear, unique_name

pytestmark = pytest.mark.backend_agnostic


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
