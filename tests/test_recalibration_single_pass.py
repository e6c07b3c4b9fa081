"""recalibrate_batchnorm(method="single_pass"): fvcore's precise BN (its population-variance
estimator), checked against NumPy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import randomize_bn, two_bn_stack

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.recalibration import recalibrate_batchnorm

EPS = 1e-3


def _np(variable) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def pooled(parts):
    """fvcore's `_PopulationVarianceEstimator` in NumPy: `[(mean, biased var, n)]` pooled
    as one population, each batch weighted by its size, the spread of the means included."""
    total = sum(n for _, _, n in parts)
    mean = sum(n * m for m, _, n in parts) / total
    variance = sum(n * (v + (m - mean) ** 2) for m, v, n in parts) / total
    return mean, variance


def fvcore_reference(model, batches):
    """fvcore's update_bn_stats in NumPy (float64): training-mode forward pass per batch,
    then each BN layer's batch means and (biased, as Keras's BN uses) batch variances
    pooled by batch size."""
    d1, bn1, d2 = (model.get_layer(n) for n in ("d1", "bn1", "d2"))
    w1, b1 = (_np(w) for w in d1.weights)
    w2, b2 = (_np(w) for w in d2.weights)
    stats = {"bn1": [], "bn2": []}
    for x in batches:
        h1 = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
        m1, v1 = h1.mean(0), h1.var(0)
        out1 = (h1 - m1) / np.sqrt(v1 + EPS) * _np(bn1.gamma) + _np(bn1.beta)
        h2 = out1 @ w2 + b2
        stats["bn1"].append((m1, v1, len(x)))
        stats["bn2"].append((h2.mean(0), h2.var(0), len(x)))
    return {key: pooled(parts) for key, parts in stats.items()}


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("bn", [keras.layers.BatchNormalization, MomentumBatchNormalization])
def test_single_pass_is_fvcore_population_estimate_of_batch_statistics(bn):
    rng = np.random.default_rng(0)
    model = two_bn_stack(bn)
    randomize_bn(model, rng)
    x = (rng.normal(size=(23, 3)) * 2 + 1).astype("float32")
    trainable = [_np(w).copy() for w in model.trainable_weights]
    counters = [_np(v).copy() for v in model.non_trainable_weights if "num_batches" in v.path]

    report = recalibrate_batchnorm(model, x, batch_size=8, method="single_pass")

    # Batches of 8, 8 and 7 rows, each weighted by its size, as in fvcore today.
    expected = fvcore_reference(model, [x[:8], x[8:16], x[16:]])
    for key, (mean, variance) in expected.items():
        layer = model.get_layer(key)
        np.testing.assert_allclose(_np(layer.moving_mean), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(_np(layer.moving_variance), variance, rtol=1e-4, atol=1e-5)
    for old, new in zip(trainable, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(old, _np(new))
    # MomentumBatchNormalization's training counters are not advanced by the pass: they
    # count the recalibration's 3 batches (its history, issue 26), not 3 more steps.
    now = [_np(v) for v in model.non_trainable_weights if "num_batches" in v.path]
    assert len(now) == len(counters)
    for new in now:
        np.testing.assert_array_equal(new, 3)
    assert report.method == "single_pass"
    assert list(report) == ["bn1", "bn2"]
    assert (report.num_batches, report.num_samples, report.num_skipped_batches) == (3, 23, 0)
    assert report["bn1"]["num_values"] == 23
    assert "single_pass" in str(report)


def bn_first_population(x, batch_size):
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((x.shape[1],)), bn])
    report = recalibrate_batchnorm(model, x, batch_size=batch_size, method="single_pass")
    return bn, report


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(("rows", "batch_size"), [(100, 32), (9, 2), (7, 2), (64, 32)])
def test_single_pass_is_the_population_statistics_of_the_inputs(rows, batch_size):
    # BN first: every batch is raw input, so the pooled estimate is the NumPy population
    # mean and variance, however small the last batch (100 = 3 x 32 + 4; 9 = 4 x 2 + 1).
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 3)).astype("float32") * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
    x[: rows // 2] += 3.0  # batch means far apart: their spread is part of the variance
    bn, report = bn_first_population(x, batch_size)
    np.testing.assert_allclose(_np(bn.moving_mean), x.astype(np.float64).mean(0), atol=1e-5)
    np.testing.assert_allclose(
        _np(bn.moving_variance), x.astype(np.float64).var(0), rtol=1e-5, atol=1e-6
    )
    assert report["batch_normalization"]["num_values"] == rows
    assert report.num_batches == -(-rows // batch_size)


@pytest.mark.backend_agnostic
@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_single_pass_population_statistics_for_any_batch_sizes(sizes, seed):
    rng = np.random.default_rng(seed)
    batches = [
        (rng.normal(size=(n, 2)) * rng.uniform(0.5, 3.0) + rng.normal(0, 3)).astype("float32")
        for n in sizes
    ]
    everything = np.concatenate(batches).astype(np.float64)
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), bn])
    recalibrate_batchnorm(model, batches, method="single_pass")  # a list of batches
    np.testing.assert_allclose(_np(bn.moving_mean), everything.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(bn.moving_variance), everything.var(0), rtol=1e-4, atol=1e-5)


@pytest.mark.backend_agnostic
def test_single_pass_ghost_batches_average_what_the_layer_itself_tracks():
    # A ghost-batch layer's training statistic is the pooled within-group variance.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 2)).astype("float32")
    x[4:8] += 5.0
    bn = MomentumBatchNormalization(virtual_batch_size=4, momentum=0.9, debias=True)
    model = keras.Sequential([keras.Input((2,)), bn])
    recalibrate_batchnorm(model, x, batch_size=8, method="single_pass")
    groups = x.astype(np.float64).reshape(4, 4, 2)
    # Each batch's statistic is its pooled within-group variance; the two batches pool
    # with the spread of their means.
    within = groups.var(1).reshape(2, 2, 2).mean(1)
    parts = [(x[i : i + 8].astype(np.float64).mean(0), within[i // 8], 8) for i in (0, 8)]
    mean, variance = pooled(parts)
    np.testing.assert_allclose(_np(bn.moving_mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(bn.moving_variance), variance, rtol=1e-5)
    # The pass's own updates were rolled back; the counter holds the 2 batches used.
    assert int(_np(bn.num_batches_tracked)) == 2


class _BreaksOnSecondBatch:
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        yield self.x[:10]
        raise OSError("disk gone")


@pytest.mark.backend_agnostic
def test_single_pass_failure_restores_every_variable():
    model = two_bn_stack(lambda name: keras.layers.BatchNormalization(renorm=True, name=name))
    randomize_bn(model, np.random.default_rng(3))
    before = [_np(w).copy() for w in model.weights]
    with pytest.raises(OSError, match="disk gone"):
        recalibrate_batchnorm(
            model, _BreaksOnSecondBatch(np.ones((20, 3), "float32")), method="single_pass"
        )
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, _np(new))


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("method", ["exact", "single_pass"])
def test_bn_inside_time_distributed_is_recalibrated(method):
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, size=(8, 3, 4)).astype("float32")
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Sequential([keras.Input((3, 4)), keras.layers.TimeDistributed(bn)])
    report = recalibrate_batchnorm(model, x, batch_size=4, method=method)
    assert report["bn"]["num_values"] == 8 * 3
    # Every sample at every time step; the single pass sees each call (one time step
    # of one batch) as a batch and pools them by size, which gives the same.
    expected_mean, expected_var = x.reshape(-1, 4).mean(0), x.reshape(-1, 4).var(0)
    np.testing.assert_allclose(_np(bn.moving_mean), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(bn.moving_variance), expected_var, rtol=1e-5)


def test_a_bn_layer_called_inside_a_traced_function_is_refused_clearly():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("traces with tf.vectorized_map")

    class Traced(keras.layers.Wrapper):
        """Calls its layer inside a tf.function, as a vectorized map would."""

        def build(self, input_shape):
            self.layer.build(input_shape)
            self.built = True

        def call(self, inputs):
            return tf.function(lambda t: self.layer(t))(inputs)

        def compute_output_shape(self, input_shape):
            return input_shape

    model = keras.Sequential([keras.Input((4,)), Traced(keras.layers.BatchNormalization())])
    before = [_np(w).copy() for w in model.weights]
    for method in ("exact", "single_pass"):
        with pytest.raises(ValueError, match="traced function"):
            recalibrate_batchnorm(model, np.ones((4, 4), "float32"), method=method)
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, _np(new))
