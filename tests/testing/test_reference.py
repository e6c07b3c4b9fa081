"""The NumPy reference agrees with the definition, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from keras_bn_tools.testing import (
    batches,
    reference_batchnorm,
    reference_moments,
    reference_moving_statistics,
)

pytestmark = pytest.mark.backend_agnostic


def test_training_uses_biased_batch_statistics():
    x = np.array([[1.0, 10.0], [3.0, 30.0]])
    # feature 0: mean 2, biased var 1; feature 1: mean 20, biased var 100
    y = reference_batchnorm(x, gamma=[2.0, 1.0], beta=[0.5, -1.0], epsilon=0.0)
    np.testing.assert_allclose(y, [[-1.5, -2.0], [2.5, 0.0]])
    y_eps = reference_batchnorm(x, epsilon=3.0)
    np.testing.assert_allclose(y_eps[:, 0], [-0.5, 0.5])  # 1 / sqrt(1 + 3)


def test_inference_uses_the_moving_statistics():
    x = np.array([[1.0], [3.0]])
    y = reference_batchnorm(
        x, training=False, moving_mean=[1.0], moving_variance=[4.0], epsilon=0.0, beta=1.0
    )
    np.testing.assert_allclose(y, [[1.0], [2.0]])
    with pytest.raises(ValueError, match="moving_mean"):
        reference_batchnorm(x, training=False)


def test_axis_picks_the_feature_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 5))
    channels_first = reference_batchnorm(x, axis=1, epsilon=0.0)
    channels_last = reference_batchnorm(np.moveaxis(x, 1, -1), epsilon=0.0)
    np.testing.assert_allclose(np.moveaxis(channels_first, 1, -1), channels_last)
    mean, var = reference_moments(x, axis=1)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)))
    np.testing.assert_allclose(var, x.var(axis=(0, 2)))
    with pytest.raises(ValueError, match="out of bounds"):
        reference_batchnorm(x, axis=3)
    with pytest.raises(ValueError, match="features"):
        reference_batchnorm(x, gamma=[1.0, 2.0])


@given(batches(ndim=3))
def test_training_output_has_beta_mean_and_shrunk_gamma_std(x):
    gamma = np.linspace(-2.0, 2.0, x.shape[-1])
    beta = np.linspace(1.0, 3.0, x.shape[-1])
    y = reference_batchnorm(x, gamma=gamma, beta=beta, epsilon=1e-3)
    _, var = reference_moments(x)
    flat = y.reshape(-1, x.shape[-1])
    np.testing.assert_allclose(flat.mean(axis=0), beta, atol=1e-9)
    np.testing.assert_allclose(flat.std(axis=0), np.abs(gamma) * np.sqrt(var / (var + 1e-3)))


def test_moving_statistics_follow_keras_rule_and_the_cumulative_average():
    b1 = np.array([[0.0], [2.0]])  # mean 1, var 1
    b2 = np.array([[2.0], [8.0]])  # mean 5, var 9
    (m1, v1), (m2, v2) = reference_moving_statistics([b1, b2], 0.9)
    np.testing.assert_allclose([m1[0], v1[0]], [0.1, 1.0])
    np.testing.assert_allclose([m2[0], v2[0]], [0.59, 1.8])
    (_, _), (m2, v2) = reference_moving_statistics([b1, b2], None)
    np.testing.assert_allclose([m2[0], v2[0]], [3.0, 5.0])
    [(m, v)] = reference_moving_statistics([b2], None, moving_mean=1.0, num_batches_tracked=1)
    np.testing.assert_allclose([m[0], v[0]], [3.0, 5.0])
