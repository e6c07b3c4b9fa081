"""convert_batchnorm is never silently lossy (issue 26 item 4): options the target class
cannot represent raise ValueError naming them, unless lossy=True (then a warning lists
them); a lossless conversion stays silent."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from keras_bn_tools import batchnorm_layers, convert_batchnorm
from keras_bn_tools.convert import convert_layer
from keras_bn_tools.layers import MomentumBatchNormalization

pytestmark = pytest.mark.backend_agnostic
KerasBN = keras.layers.BatchNormalization


def model_with(**options):
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            MomentumBatchNormalization(name="bn_a", **options),
            keras.layers.Dense(4),
            MomentumBatchNormalization(name="bn_b", **options),
        ]
    )


LOSSY = {
    "virtual_batch_size": ({"virtual_batch_size": 2}, "virtual_batch_size=2"),
    "debias": ({"debias": True}, "debias=True"),
    "cumulative momentum": ({"momentum": None}, "momentum=None"),
    "several": (
        {"debias": True, "virtual_batch_size": 2},
        "debias=True (layers 'bn_a', 'bn_b'); virtual_batch_size=2",
    ),
}


@pytest.mark.parametrize("case", sorted(LOSSY))
def test_a_lossy_conversion_is_refused_naming_the_options(case):
    options, named = LOSSY[case]
    model = model_with(**options)
    with pytest.raises(ValueError, match=r"lossy=True") as error:
        convert_batchnorm(model, to=KerasBN)
    assert named in str(error.value) and "'bn_a', 'bn_b'" in str(error.value)


@pytest.mark.parametrize("case", sorted(LOSSY))
def test_lossy_true_drops_the_options_with_a_warning_that_lists_them(case):
    options, named = LOSSY[case]
    model = model_with(**options)
    with pytest.warns(UserWarning, match="dropped options") as record:
        converted = convert_batchnorm(model, to=KerasBN, lossy=True)
    assert named in str(record[0].message)
    found = batchnorm_layers(converted)
    assert [type(layer) for layer in found] == [KerasBN, KerasBN]
    if case == "cumulative momentum":  # the target's default takes its place
        assert [layer.momentum for layer in found] == [0.99, 0.99]
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    np.testing.assert_allclose(  # inference is unchanged; only training differs
        keras.ops.convert_to_numpy(converted(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


def test_ghost_batches_dropped_change_the_training_output_which_is_why_it_is_refused():
    model = model_with(virtual_batch_size=2)
    with pytest.warns(UserWarning):
        converted = convert_batchnorm(model, to=KerasBN, lossy=True)
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    x[:2] += 5.0
    gap = np.abs(
        keras.ops.convert_to_numpy(converted(x, training=True))
        - keras.ops.convert_to_numpy(model(x, training=True))
    ).max()
    assert gap > 0.1


def test_an_override_for_the_option_is_not_a_loss():
    model = model_with(momentum=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = convert_batchnorm(model, to=KerasBN, momentum=0.9)
    assert [layer.momentum for layer in batchnorm_layers(converted)] == [0.9, 0.9]


def test_lossless_conversions_are_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = convert_batchnorm(model_with(), to=KerasBN)  # default options
        convert_batchnorm(plain)  # Keras BN -> MomentumBatchNormalization
        convert_batchnorm(model_with(debias=True), to=MomentumBatchNormalization)


@pytest.mark.parametrize("value", [1, "yes", None, np.float32(1.0)])
def test_lossy_must_be_a_bool(value):
    with pytest.raises(TypeError, match="`lossy`"):
        convert_batchnorm(model_with(), to=KerasBN, lossy=value)
    layer = KerasBN()
    with pytest.raises(TypeError, match="`lossy`"):
        convert_layer(layer, lossy=value)


def test_convert_layer_refuses_and_allows_the_same_way():
    layer = MomentumBatchNormalization(debias=True)
    layer.build((None, 3))
    with pytest.raises(ValueError, match="debias=True"):
        convert_layer(layer, KerasBN)
    with pytest.warns(UserWarning, match="debias=True"):
        new = convert_layer(layer, KerasBN, lossy=True)
    assert type(new) is KerasBN and new.built
