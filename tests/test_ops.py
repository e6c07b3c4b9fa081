"""keras_bn_tools.ops: the one moments function, ghost moments, the BN affine map."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_bn_tools.ops import (
    affine_from_statistics,
    count_values,
    ghost_moments,
    moments,
    to_numpy,
    ungroup,
)

pytestmark = pytest.mark.backend_agnostic
# On JAX every new shape compiles each op again: fewer examples there.
fewer_on_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)


def arrays(draw, rank):
    shape = tuple(draw(st.sampled_from([1, 2, 3, 5])) for _ in range(rank))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    loc, scale = draw(st.floats(-100, 100)), draw(st.floats(0.01, 10))
    return (loc + scale * rng.standard_normal(shape)).astype("float32")


@st.composite
def array_and_axis(draw):
    rank = draw(st.integers(2, 4))
    return arrays(draw, rank), draw(st.integers(-rank, rank - 1))


def test_exact_moments_of_a_small_array():
    x = np.arange(12, dtype="float32").reshape(4, 3)
    mean, variance = moments(x, [0])
    np.testing.assert_array_equal(to_numpy(mean), [4.5, 5.5, 6.5])
    np.testing.assert_array_equal(to_numpy(variance), [11.25, 11.25, 11.25])
    mean, variance = moments(x, [0], keepdims=True)
    assert tuple(mean.shape) == (1, 3) and tuple(variance.shape) == (1, 3)


@fewer_on_jax
@given(data=array_and_axis())
def test_moments_match_numpy_in_float64(data):
    x, axis = data
    axes = [i for i in range(x.ndim) if i != axis % x.ndim]
    mean, variance = moments(x, axes)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(to_numpy(mean), x64.mean(axis=tuple(axes)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(to_numpy(variance), x64.var(axis=tuple(axes)), rtol=1e-3, atol=1e-3)


@fewer_on_jax
@given(data=array_and_axis(), seed=st.integers(0, 2**16))
def test_masked_moments_are_those_of_the_unmasked_values(data, seed):
    x, axis = data
    axis = axis % x.ndim
    mask = np.random.default_rng(seed).uniform(size=x.shape[:-1]) > 0.4
    axes = [i for i in range(x.ndim) if i != axis]
    mean, variance = moments(x, axes, mask=mask)
    full = np.broadcast_to(mask[..., None], x.shape)
    moved = np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, x.shape[axis])
    kept = np.moveaxis(full, axis, -1).reshape(-1, x.shape[axis])
    count = kept.sum(axis=0)
    expected_mean = np.where(kept, moved, 0).sum(axis=0) / (count + 1e-7)
    deviation = np.where(kept, moved - expected_mean, 0)
    expected_variance = (deviation**2).sum(axis=0) / (count + 1e-7)
    np.testing.assert_allclose(to_numpy(mean), expected_mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(to_numpy(variance), expected_variance, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(to_numpy(count_values(x, axes, mask=mask)), count)


def test_an_all_masked_feature_gives_zeros_not_nan():
    x = np.ones((3, 2, 4), "float32")
    mean, variance = moments(x, [0, 1], mask=np.zeros((3, 2), bool))
    np.testing.assert_array_equal(to_numpy(mean), np.zeros(4))
    np.testing.assert_array_equal(to_numpy(variance), np.zeros(4))


def test_moments_are_float32_for_half_precision_and_float64_kept():
    x = np.full((4, 2), 300.0, "float16")  # 300**2 overflows float16
    mean, variance = moments(keras.ops.convert_to_tensor(x), [0])
    assert keras.backend.standardize_dtype(mean.dtype) == "float32"
    np.testing.assert_array_equal(to_numpy(variance), [0.0, 0.0])
    if keras.backend.backend() != "jax":  # JAX without x64 has no float64
        x64 = keras.ops.convert_to_tensor(np.ones((2, 2)), dtype="float64")
        mean, _ = moments(x64, [0])
        # Keras's own promotion rule (BN's), which keeps float64 on TensorFlow.
        expected = keras.backend.result_type("float64", "float32")
        assert keras.backend.standardize_dtype(mean.dtype) == expected
        if keras.backend.backend() == "tensorflow":
            assert expected == "float64"


def test_a_mask_of_the_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="one dimension less"):
        moments(np.ones((3, 4), "float32"), [0], mask=np.ones((3, 4)))


def test_count_values_of_an_unmasked_static_shape_is_a_float():
    assert count_values(np.ones((3, 5, 2)), [0, 1]) == 15.0


@fewer_on_jax
@given(
    batch=st.integers(1, 11),
    size=st.integers(1, 6),
    features=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_ghost_moments_are_each_groups_moments_and_their_weighted_average(
    batch, size, features, seed
):
    x = np.random.default_rng(seed).normal(size=(batch, features)).astype("float32")
    result = ghost_moments(x, size, axis=-1)
    size = min(size, batch)
    groups = [x[i : i + size].astype(np.float64) for i in range(0, batch, size)]
    group_means = to_numpy(result.group_mean).reshape(-1, features)
    group_variances = to_numpy(result.group_variance).reshape(-1, features)
    assert group_means.shape[0] == len(groups)
    for group, mean, variance in zip(groups, group_means, group_variances, strict=True):
        np.testing.assert_allclose(mean, group.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(variance, group.var(axis=0), rtol=1e-4, atol=1e-5)
    counts = np.array([len(g) for g in groups], np.float64)[:, None]
    np.testing.assert_allclose(to_numpy(result.mean), x.mean(axis=0), atol=1e-5)
    pooled = (counts * np.stack([g.var(axis=0) for g in groups])).sum(axis=0) / batch
    np.testing.assert_allclose(to_numpy(result.variance), pooled, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(to_numpy(ungroup(result.grouped, batch)), x)


def test_ghost_moments_example():
    x = np.array([[0.0], [2.0], [10.0], [14.0], [7.0]], "float32")
    result = ghost_moments(x, 2)
    # Keras's masked arithmetic divides by count + 1e-7: one float32 ulp at most.
    np.testing.assert_allclose(to_numpy(result.group_mean).reshape(-1), [1.0, 12.0, 7.0], rtol=2e-7)
    np.testing.assert_allclose(
        to_numpy(result.group_variance).reshape(-1), [1.0, 4.0, 0.0], rtol=2e-7, atol=1e-11
    )
    np.testing.assert_allclose(to_numpy(result.mean), [6.6], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(result.variance), [(2 * 1 + 2 * 4 + 0) / 5], rtol=1e-6)


def test_affine_from_statistics_is_float64_and_exact():
    scale, shift = affine_from_statistics([1.0, -2.0], [3.0, 0.0], 1.0, [2.0, 1.0], [0.5, 0.0])
    assert scale.dtype == np.float64 and shift.dtype == np.float64
    np.testing.assert_array_equal(scale, [1.0, 1.0])
    np.testing.assert_array_equal(shift, [-0.5, 2.0])
    scale, shift = affine_from_statistics([1.0], [3.0], 1.0)
    np.testing.assert_array_equal(scale, [0.5])
    np.testing.assert_array_equal(shift, [-0.5])


def test_to_numpy_copies_a_variable_without_a_deprecation_warning():
    variable = keras.Variable(np.arange(3, dtype="float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = to_numpy(variable)
    value[0] = 9.0
    np.testing.assert_array_equal(to_numpy(variable), [0.0, 1.0, 2.0])
