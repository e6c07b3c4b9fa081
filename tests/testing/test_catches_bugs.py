"""The kit catches the classic batch normalization bugs, and passes the correct layer.

`ToyBatchNorm` is a plain, correct BN written with `keras.ops`; each subclass
below breaks one thing the way real implementations have. Each test says:
whenever the bug changes what the layer computes, the kit's assertion fails.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _helpers import layer_settings, same_width_batches
from hypothesis import assume, given
from hypothesis import strategies as st
from keras import ops

from keras_bn_tools.testing import (
    assert_moving_statistics,
    assert_normalizes,
    batches,
    reference_batchnorm,
    reference_moments,
    reference_moving_statistics,
)

pytestmark = pytest.mark.backend_agnostic


class ToyBatchNorm(keras.layers.Layer):
    """Correct batch normalization over every axis but the last."""

    def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        shape = (input_shape[-1],)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="moving_variance"
        )

    def reduction_axes(self, x):
        return tuple(range(len(x.shape) - 1))

    def moments(self, x):
        axes = self.reduction_axes(x)
        return ops.mean(x, axis=axes), ops.var(x, axis=axes)

    def normalize(self, x, mean, variance):
        return (x - mean) / ops.sqrt(variance + self.epsilon) * self.gamma + self.beta

    def update(self, mean, variance):
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * variance)

    def call(self, x, training=False):
        if training:
            mean, variance = self.moments(x)
            self.update(mean, variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return self.normalize(x, mean, variance)


class EpsilonOutsideSqrt(ToyBatchNorm):
    """(x - m) / (sqrt(v) + eps) instead of (x - m) / sqrt(v + eps)."""

    def normalize(self, x, mean, variance):
        return (x - mean) / (ops.sqrt(variance) + self.epsilon) * self.gamma + self.beta


class UnbiasedVariance(ToyBatchNorm):
    """Batch variance with Bessel's correction (ddof=1) where BN uses the biased one."""

    def moments(self, x):
        mean, variance = super().moments(x)
        n = int(np.prod(x.shape[:-1]))
        return mean, variance * n / (n - 1)


class StatisticsPerSample(ToyBatchNorm):
    """Statistics over the feature axis (layer normalization) instead of the batch."""

    def moments(self, x):
        return ops.mean(x, axis=-1, keepdims=True), ops.var(x, axis=-1, keepdims=True)

    def update(self, mean, variance):
        pass


class StatisticsOverBatchAxisOnly(ToyBatchNorm):
    """Reduces over the batch axis only, forgetting the spatial axes of images."""

    def reduction_axes(self, x):
        return (0,)

    def update(self, mean, variance):
        pass


class MomentumTheWrongWayRound(ToyBatchNorm):
    """moving = m * batch + (1 - m) * moving, where Keras uses m * moving + (1 - m) * batch."""

    def update(self, mean, variance):
        m = self.momentum
        self.moving_mean.assign(m * mean + (1.0 - m) * self.moving_mean)
        self.moving_variance.assign(m * variance + (1.0 - m) * self.moving_variance)


class BatchStatisticsInInference(ToyBatchNorm):
    """Ignores `training`: normalizes with the batch statistics in inference too."""

    def call(self, x, training=False):
        return super().call(x, training=True)


momenta = st.sampled_from([0.0, 0.1, 0.9, 0.99])


@layer_settings()
@given(st.integers(2, 4).flatmap(lambda ndim: batches(ndim=ndim, max_side=3)))
def test_the_correct_toy_passes(x):
    layer = ToyBatchNorm(momentum=0.9)
    assert_normalizes(layer, x)
    assert_normalizes(layer, x, training=False)


@layer_settings()
@given(same_width_batches(), momenta)
def test_the_correct_toy_moving_statistics_pass(data, momentum):
    assert_moving_statistics(ToyBatchNorm(momentum=momentum), data)


@layer_settings()
@given(batches())
def test_catches_epsilon_outside_the_square_root(x):
    # Noticeable whenever epsilon is not negligible against the variance; with
    # epsilon=0.1 and |x| <= 10 the output std is off by at least 0.9%.
    with pytest.raises(AssertionError, match="output std"):
        assert_normalizes(EpsilonOutsideSqrt(epsilon=0.1), x)


@layer_settings()
@given(batches())
def test_catches_unbiased_variance(x):
    # At most 16 rows: the std is off by a factor sqrt((n-1)/n) <= 0.97.
    with pytest.raises(AssertionError, match="output std"):
        assert_normalizes(UnbiasedVariance(epsilon=1e-5), x)


@layer_settings()
@given(batches())
def test_catches_statistics_over_the_wrong_axis(x):
    bug = reference_batchnorm(x, axis=0)  # each row normalized over its features
    assume(not np.allclose(bug, reference_batchnorm(x), atol=1e-2))
    with pytest.raises(AssertionError):
        assert_normalizes(StatisticsPerSample(), x)


@layer_settings()
@given(batches(ndim=4, min_side=2, max_side=3, max_rows=6))
def test_catches_images_normalized_per_position(x):
    per_position = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-3)
    assume(not np.allclose(per_position, reference_batchnorm(x), atol=1e-2))
    with pytest.raises(AssertionError):
        assert_normalizes(StatisticsOverBatchAxisOnly(), x)


@layer_settings()
@given(same_width_batches(), momenta)
def test_catches_momentum_the_wrong_way_round(data, momentum):
    right = reference_moving_statistics(data, momentum)
    wrong = reference_moving_statistics(data, 1.0 - momentum)
    assume(not np.allclose(np.asarray(right), np.asarray(wrong), rtol=1e-2, atol=1e-2))
    with pytest.raises(AssertionError, match="momentum the wrong way round"):
        assert_moving_statistics(MomentumTheWrongWayRound(momentum=momentum), data)


@layer_settings()
@given(batches(), st.floats(-5.0, 5.0))
def test_catches_batch_statistics_in_inference(x, shift):
    # After one training step on x, inference on x + shift must use the moving statistics.
    layer = BatchStatisticsInInference(momentum=0.5)
    layer(x, training=True)
    mean, var = reference_moments(x)
    assume(np.max(np.abs(mean)) + np.max(np.abs(var - 1.0)) + abs(shift) > 0.1)
    with pytest.raises(AssertionError, match="moving statistics"):
        assert_normalizes(layer, x + np.float32(shift), training=False)


def test_the_momentum_bug_message_reads_like_a_bug_report():
    data = [np.array([[0.0], [2.0]], dtype="float32")]  # batch mean 1, variance 1
    with pytest.raises(AssertionError) as info:
        assert_moving_statistics(MomentumTheWrongWayRound(momentum=0.9, name="bn"), data)
    message = str(info.value)
    assert "MomentumTheWrongWayRound 'bn': `moving_mean` is wrong after batch 1 of 1" in message
    assert "expected 0.1 (0.9 * previous + (1 - 0.9) * batch), got 0.9" in message
