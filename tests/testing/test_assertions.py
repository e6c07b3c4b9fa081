"""The assertions pass correct layers and explain their failures."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _helpers import layer_settings, same_width_batches
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.testing import (
    assert_moving_statistics,
    assert_normalizes,
    batches,
    bn_configs,
    default_tolerances,
)

pytestmark = pytest.mark.backend_agnostic


@layer_settings()
@given(
    bn_configs(layer="keras"),
    st.integers(2, 4).flatmap(lambda ndim: batches(ndim=ndim, max_rows=8, max_side=3)),
)
def test_keras_batchnorm_passes_in_training_and_inference(config, x):
    layer = keras.layers.BatchNormalization(**config)
    y = assert_normalizes(layer, x)
    assert y.shape == x.shape
    assert_normalizes(layer, x, training=False)  # with the statistics just updated


@layer_settings()
@given(bn_configs(layer="keras"), st.data())
def test_keras_batchnorm_moving_statistics_pass(config, data):
    data = data.draw(same_width_batches(3))
    assert_moving_statistics(keras.layers.BatchNormalization(**config), data)


def test_channels_first_axis_is_read_from_the_layer():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(8, 3, 4, 4)).astype("float32")
    assert_normalizes(keras.layers.BatchNormalization(axis=1), x)


def test_frozen_layer_is_held_to_inference_behaviour():
    x = np.random.default_rng(2).normal(5.0, 2.0, size=(16, 3)).astype("float32")
    layer = keras.layers.BatchNormalization()
    layer.build(x.shape)
    layer.trainable = False
    assert_normalizes(layer, x, training=True)
    assert_moving_statistics(layer, [x, x])


def test_mixed_precision_uses_half_precision_tolerances():
    keras.config.set_dtype_policy("mixed_float16")
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(32, 4)).astype("float32")
    layer = keras.layers.BatchNormalization()
    assert keras.backend.standardize_dtype(layer(x).dtype) == "float16"
    assert_normalizes(layer, x)
    assert default_tolerances("float16") > default_tolerances("float32")


class _Scaled(keras.layers.Layer):
    """Normalizes correctly, then doubles the result: mean still beta, std twice."""

    def call(self, x, training=False):
        mean = keras.ops.mean(x, axis=0, keepdims=True)
        var = keras.ops.var(x, axis=0, keepdims=True)
        return 2.0 * (x - mean) / keras.ops.sqrt(var + 1e-3)


def test_failure_message_names_the_worst_feature_with_expected_and_actual():
    x = np.array([[0.0, 0.0, 10.0], [1.0, 2.0, 20.0], [2.0, 4.0, 60.0]], dtype="float32")
    with pytest.raises(AssertionError) as info:
        assert_normalizes(_Scaled(name="doubler"), x)
    message = str(info.value)
    assert "_Scaled 'doubler' does not batch-normalize" in message
    assert "3 of 3 feature(s) off" in message
    assert "Worst feature 2" in message  # the largest variance, std nearest 2 * 1
    assert (
        "output std:  expected 0.999999 (|gamma| * sqrt(var / (var + epsilon))), got 2 " in message
    )
    assert "output mean: expected 0 (beta)" in message


def test_shape_and_nonfinite_outputs_fail_clearly():
    x = np.ones((4, 2), dtype="float32") * np.arange(4, dtype="float32")[:, None]
    with pytest.raises(AssertionError, match="changed the shape"):
        assert_normalizes(keras.layers.Lambda(lambda t: t[:, :1]), x)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_normalizes(keras.layers.Lambda(lambda t: t / 0.0), x)
    with pytest.raises(ValueError, match="two rows"):
        assert_normalizes(keras.layers.BatchNormalization(), x[:1])


class _Ghost(keras.layers.Layer):
    """Normalizes consecutive groups of `virtual_batch_size` rows separately, times `factor`."""

    def __init__(self, virtual_batch_size, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.virtual_batch_size = virtual_batch_size
        self.factor = factor

    def call(self, x, training=False):
        groups = keras.ops.reshape(x, (-1, self.virtual_batch_size, x.shape[-1]))
        mean = keras.ops.mean(groups, axis=1, keepdims=True)
        var = keras.ops.var(groups, axis=1, keepdims=True)
        normalized = (groups - mean) / keras.ops.sqrt(var + 1e-3)
        return keras.ops.reshape(self.factor * normalized, x.shape)


def test_ghost_batches_get_the_grouping_independent_checks():
    x = np.random.default_rng(4).normal(size=(8, 3)).astype("float32")
    x[4:] += 5.0  # the two ghost batches differ: full-batch normalization would not match
    assert_normalizes(_Ghost(4), x)
    with pytest.raises(AssertionError, match=r"expected at most 1 \(ghost batches\)"):
        assert_normalizes(_Ghost(4, factor=2.0), x)
    layer = MomentumBatchNormalization(virtual_batch_size=2)
    with pytest.raises(ValueError, match="ghost"):
        assert_moving_statistics(layer, [x])


def test_momentum_batchnorm_passes_with_its_defaults_and_drawn_configs():
    module = pytest.importorskip(
        "keras_bn_tools.layers.momentum_batch_normalization",
        reason="MomentumBatchNormalization is not in this checkout",
    )

    @layer_settings()
    @given(bn_configs(), same_width_batches(3))
    def check(config, data):
        layer = module.MomentumBatchNormalization(**config)
        assert_normalizes(layer, data[0])
        if not config["debias"]:
            assert_moving_statistics(layer, data)
        assert_normalizes(layer, data[0], training=False)

    check()
