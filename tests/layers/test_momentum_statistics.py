"""MomentumBatchNormalization: moving statistics, counters and momentum schedules."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_bn_tools.layers import MomentumBatchNormalization

EPS = 1e-3

# On JAX, eager ops are compiled one by one for every new input shape, so the JAX
# run (a backend check) explores fewer examples than the profile asks for.
fewer_on_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)


def read(variable):
    return keras.ops.convert_to_numpy(variable)


# PyTorch runs `fit` eagerly (no traced train step), so "no retrace" is only
# checked where the backend compiles the step.
COMPILES_TRAIN_STEP = keras.backend.backend() != "torch"


def variance_atol(means, floor=1e-5):
    """Absolute tolerance of a float32 batch variance.

    Keras's `ops.moments` on PyTorch (and so Keras's own BN layer there)
    computes `E[x**2] - E[x]**2`, whose float32 round-off grows with the
    squared mean rather than with the variance.
    """
    largest = max(float(np.max(np.square(m))) for m in means)
    return floor + 16 * float(np.finfo(np.float32).eps) * largest


@st.composite
def batch_sequences(draw, max_steps=5):
    """A list of float32 batches (same features, sizes may differ) and an axis."""
    rank = draw(st.sampled_from([2, 4]))
    axis = draw(st.integers(-1, rank - 1).filter(lambda a: a != 0))
    # Few distinct sizes: on JAX every new shape compiles every op again.
    inner = [draw(st.sampled_from([1, 3])) for _ in range(rank - 1)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = draw(st.integers(1, max_steps))
    batches = []
    for _ in range(steps):
        rows = draw(st.sampled_from([2, 5, 8]))
        loc, scale = rng.normal(0, 5), rng.uniform(0.2, 5)
        batches.append((loc + scale * rng.standard_normal((rows, *inner))).astype("float32"))
    return batches, axis


def batch_stats(batches, axis):
    rank = batches[0].ndim
    axes = tuple(i for i in range(rank) if i != axis % rank)
    means = [b.astype("float64").mean(axis=axes) for b in batches]
    variances = [b.astype("float64").var(axis=axes) for b in batches]
    return means, variances


def train(layer, batches):
    for x in batches:
        layer(x, training=True)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=batch_sequences(), momentum=st.floats(0.0, 1.0))
def test_moving_statistics_are_the_closed_form_ema(data, momentum):
    batches, axis = data
    layer = MomentumBatchNormalization(axis=axis, momentum=momentum)
    train(layer, batches)
    means, variances = batch_stats(batches, axis)
    k = len(batches)
    # moving_k = m**k * initial + sum_i (1 - m) * m**(k - i) * stat_i
    weights = [(1 - momentum) * momentum ** (k - i) for i in range(1, k + 1)]
    expected_mean = sum(w * m for w, m in zip(weights, means, strict=True))
    expected_var = momentum**k + sum(w * v for w, v in zip(weights, variances, strict=True))
    np.testing.assert_allclose(read(layer.moving_mean), expected_mean, rtol=1e-5, atol=1e-5)
    atol = variance_atol(means)
    np.testing.assert_allclose(read(layer.moving_variance), expected_var, rtol=1e-5, atol=atol)
    assert int(read(layer.num_batches_tracked)) == k
    np.testing.assert_allclose(read(layer.batch_mean), means[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read(layer.batch_variance), variances[-1], rtol=1e-5, atol=atol)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=batch_sequences())
def test_momentum_zero_keeps_the_last_batch_and_one_never_moves(data):
    batches, axis = data
    zero = MomentumBatchNormalization(axis=axis, momentum=0.0)
    one = MomentumBatchNormalization(axis=axis, momentum=1.0)
    train(zero, batches)
    train(one, batches)
    means, variances = batch_stats(batches, axis)
    np.testing.assert_allclose(read(zero.moving_mean), means[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        read(zero.moving_variance), variances[-1], rtol=1e-5, atol=variance_atol(means, 1e-6)
    )
    np.testing.assert_array_equal(read(one.moving_mean), 0.0)
    np.testing.assert_array_equal(read(one.moving_variance), 1.0)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=batch_sequences(max_steps=6))
def test_momentum_none_is_the_arithmetic_mean_of_the_batch_statistics(data):
    batches, axis = data
    layer = MomentumBatchNormalization(axis=axis, momentum=None)
    train(layer, batches)
    means, variances = batch_stats(batches, axis)
    np.testing.assert_allclose(read(layer.moving_mean), np.mean(means, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        read(layer.moving_variance), np.mean(variances, 0), rtol=1e-5, atol=variance_atol(means)
    )
    # After a reset the average restarts from the next batch.
    layer.reset_moving_statistics()
    np.testing.assert_array_equal(read(layer.moving_mean), 0.0)
    np.testing.assert_array_equal(read(layer.moving_variance), 1.0)
    assert int(read(layer.num_batches_tracked)) == 0
    train(layer, batches[-1:])
    np.testing.assert_allclose(read(layer.moving_mean), means[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=batch_sequences(), momentum=st.floats(0.0, 0.999))
def test_debias_divides_the_zero_started_ema_by_one_minus_momentum_power(data, momentum):
    batches, axis = data
    layer = MomentumBatchNormalization(axis=axis, momentum=momentum, debias=True)
    layer(batches[0], training=True)
    means, variances = batch_stats(batches, axis)
    # After the first step the moving statistics are that batch's statistics.
    np.testing.assert_allclose(read(layer.moving_mean), means[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        read(layer.moving_variance), variances[0], rtol=1e-5, atol=variance_atol(means)
    )
    train(layer, batches[1:])
    t = len(batches)
    ema_mean = sum((1 - momentum) * momentum ** (t - i) * means[i - 1] for i in range(1, t + 1))
    ema_var = sum((1 - momentum) * momentum ** (t - i) * variances[i - 1] for i in range(1, t + 1))
    correction = 1 - momentum**t
    np.testing.assert_allclose(read(layer.moving_mean), ema_mean / correction, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        read(layer.moving_variance), ema_var / correction, rtol=1e-4, atol=variance_atol(means)
    )
    # Inference uses the debiased statistics.
    x = batches[-1]
    shape = [1] * x.ndim
    shape[axis] = -1
    expected = (x - (ema_mean / correction).reshape(shape)) / np.sqrt(
        (ema_var / correction).reshape(shape) + EPS
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x, training=False)), expected, rtol=1e-3, atol=1e-3
    )


@pytest.mark.backend_agnostic
def test_debias_with_a_changing_momentum_uses_the_product_of_momenta():
    rng = np.random.default_rng(0)
    batches = [rng.normal(i, 1.0 + i, size=(8, 3)).astype("float32") for i in range(4)]
    momenta = [1.0, 0.5, 0.9, 0.0]
    layer = MomentumBatchNormalization(debias=True)
    ema, product = np.zeros(3), 1.0
    for x, momentum in zip(batches, momenta, strict=True):
        layer.momentum = momentum
        layer(x, training=True)
        ema = momentum * ema + (1 - momentum) * x.astype("float64").mean(0)
        product *= momentum
        if product == 1.0:  # nothing averaged yet: the initial values stay
            np.testing.assert_array_equal(read(layer.moving_mean), 0.0)
        else:
            np.testing.assert_allclose(read(layer.moving_mean), ema / (1 - product), rtol=1e-5)
    layer.reset_moving_statistics()
    layer.momentum = 0.9
    layer(batches[0], training=True)
    np.testing.assert_allclose(read(layer.moving_mean), batches[0].mean(0), rtol=1e-5)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("options", [{}, {"debias": True}, {"renorm": True, "momentum": None}])
def test_a_nonfinite_batch_leaves_every_moving_statistic_untouched(options):
    rng = np.random.default_rng(1)
    layer = MomentumBatchNormalization(**{"momentum": 0.9, **options})
    for _ in range(3):
        layer(rng.normal(size=(8, 4)).astype("float32"), training=True)
    before = {v.path: read(v).copy() for v in layer.non_trainable_variables}
    for bad in (np.nan, np.inf, -np.inf):
        x = rng.normal(size=(8, 4)).astype("float32")
        x[3, 1] = bad
        out = keras.ops.convert_to_numpy(layer(x, training=True))
        assert np.isfinite(out[:, [0, 2, 3]]).all()  # other features still normalized
        for v in layer.non_trainable_variables:
            if v.name in ("batch_mean", "batch_variance"):
                continue
            np.testing.assert_array_equal(read(v), before[v.path], err_msg=v.path)
        assert np.isnan(read(layer.batch_mean)[1]) or np.isinf(read(layer.batch_mean)[1])
    assert int(read(layer.num_batches_tracked)) == 3
    # Training goes on normally afterwards.
    layer(rng.normal(size=(8, 4)).astype("float32"), training=True)
    assert int(read(layer.num_batches_tracked)) == 4
    assert np.isfinite(read(layer.moving_mean)).all()


@pytest.mark.backend_agnostic
def test_without_skip_nonfinite_a_nan_batch_poisons_the_statistics_as_in_keras():
    x = np.random.default_rng(2).normal(size=(8, 2)).astype("float32")
    x[0, 0] = np.nan
    layer = MomentumBatchNormalization(skip_nonfinite=False)
    keras_layer = keras.layers.BatchNormalization()
    layer(x, training=True)
    keras_layer(x, training=True)
    np.testing.assert_array_equal(read(layer.moving_mean), read(keras_layer.moving_mean))
    assert np.isnan(read(layer.moving_mean)[0])
    assert int(read(layer.num_batches_tracked)) == 1


@pytest.mark.backend_agnostic
def test_trainable_false_and_inference_do_not_update_anything():
    x = np.random.default_rng(3).normal(size=(8, 2)).astype("float32")
    layer = MomentumBatchNormalization(debias=True, renorm=True)
    layer.build(x.shape)
    before = [read(v).copy() for v in layer.weights]
    layer(x, training=False)
    layer.trainable = False
    layer(x, training=True)
    for v, value in zip(layer.weights, before, strict=True):
        np.testing.assert_array_equal(read(v), value, err_msg=v.path)


# ------------------------------------------------------------ momentum schedules


class CountingMomentumBN(MomentumBatchNormalization):
    """Counts Python executions of `call`: after tracing, a compiled step has none."""

    traces = 0

    def call(self, inputs, training=None, mask=None):
        if training:
            CountingMomentumBN.traces += 1
        return super().call(inputs, training=training, mask=mask)


def stats_model(features=3, momentum=0.9):
    CountingMomentumBN.traces = 0
    layer = CountingMomentumBN(momentum=momentum)
    model = keras.Sequential([keras.Input((features,)), layer])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model, layer


@pytest.mark.backend_agnostic
def test_changing_momentum_between_fit_calls_needs_no_retrace():
    rng = np.random.default_rng(4)
    x1, x2, x3 = (rng.normal(i, 1 + i, size=(16, 3)).astype("float32") for i in range(3))
    model, layer = stats_model(momentum=0.9)
    model.fit(x1, x1, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(read(layer.moving_mean), 0.1 * x1.mean(0), rtol=1e-5)
    traces = CountingMomentumBN.traces
    assert traces >= 1

    layer.momentum = 0.0
    model.fit(x2, x2, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(read(layer.moving_mean), x2.mean(0), rtol=1e-5)

    layer.reset_moving_statistics()
    layer.momentum = None
    x23 = np.concatenate([x2, x3])
    model.fit(x23, x23, batch_size=16, epochs=1, shuffle=False, verbose=0)
    expected = (x2.mean(0) + x3.mean(0)) / 2
    np.testing.assert_allclose(read(layer.moving_mean), expected, rtol=1e-5, atol=1e-6)

    layer.momentum = 1.0
    model.fit(x1, x1, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(read(layer.moving_mean), expected, rtol=1e-5, atol=1e-6)
    if COMPILES_TRAIN_STEP:
        assert CountingMomentumBN.traces == traces, "changing momentum retraced the train step"


class SetMomentumAfterBatch(keras.callbacks.Callback):
    """Sets the momentum after one batch and records the moving mean after each."""

    def __init__(self, layer, batch, momentum):
        super().__init__()
        self.layer, self.batch, self.momentum = layer, batch, momentum
        self.moving_means = []

    def on_train_batch_end(self, batch, logs=None):
        # On JAX, fit() keeps the state outside the variables during an epoch.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        self.moving_means.append(read(self.layer.moving_mean).copy())
        if batch == self.batch:
            self.layer.momentum = self.momentum


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("new_momentum", [0.0, None])
def test_changing_momentum_in_a_callback_mid_epoch_acts_on_the_next_step(new_momentum):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(i, 1.0, size=(8, 3)) for i in range(5)]).astype("float32")
    model, layer = stats_model(momentum=0.5)
    callback = SetMomentumAfterBatch(layer, batch=2, momentum=new_momentum)
    model.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    means = [x[i * 8 : (i + 1) * 8].mean(0) for i in range(5)]
    ema = np.zeros(3)
    for step in range(3):  # momentum 0.5 up to the switch
        ema = 0.5 * ema + 0.5 * means[step]
        np.testing.assert_allclose(callback.moving_means[step], ema, rtol=1e-5, atol=1e-6)
    if new_momentum == 0.0:  # the very next step keeps only its own batch
        np.testing.assert_allclose(callback.moving_means[3], means[3], rtol=1e-5)
        np.testing.assert_allclose(callback.moving_means[4], means[4], rtol=1e-5)
    else:  # cumulative: the 4th and 5th batches enter with weights 1/4 and 1/5
        after_4 = ema + (means[3] - ema) / 4
        np.testing.assert_allclose(callback.moving_means[3], after_4, rtol=1e-5, atol=1e-6)
        after_5 = after_4 + (means[4] - after_4) / 5
        np.testing.assert_allclose(callback.moving_means[4], after_5, rtol=1e-5, atol=1e-6)
    assert layer.momentum == new_momentum
    traces = CountingMomentumBN.traces
    model.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    if COMPILES_TRAIN_STEP:
        assert CountingMomentumBN.traces == traces


def test_changing_momentum_does_not_retrace_a_tf_function():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("counts tf.function traces")
    layer = MomentumBatchNormalization(momentum=0.9)
    layer.build((None, 2))
    step = tf.function(lambda x: layer(x, training=True))
    x = np.random.default_rng(6).normal(size=(4, 2)).astype("float32")
    step(x)
    for momentum in (0.0, None, 0.5, 1.0):
        layer.momentum = momentum
        step(x)
    assert step.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(layer.moving_mean.numpy(), x.mean(0), rtol=1e-5)


def test_changing_momentum_while_jax_fit_holds_the_state_raises_a_clear_error():
    if keras.backend.backend() != "jax":
        pytest.skip("JAX only: its trainer detaches the variables during an epoch")

    class Unsynced(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            layer.momentum = 0.0

    model, layer = stats_model()
    x = np.zeros((16, 3), "float32")
    with pytest.raises(RuntimeError, match="jax_state_sync"):
        model.fit(x, x, batch_size=8, verbose=0, callbacks=[Unsynced()])


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("options", [{}, {"debias": True}, {"debias": True, "renorm": True}])
def test_set_moving_statistics_keeps_the_hidden_state_consistent(options):
    rng = np.random.default_rng(7)
    batches = [rng.normal(i, 2.0, size=(8, 3)).astype("float32") for i in range(3)]
    layer = MomentumBatchNormalization(momentum=0.9, **options)
    train(layer, batches[:2])
    mean, variance = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 4.0])
    layer.set_moving_statistics(mean, variance)
    np.testing.assert_array_equal(read(layer.moving_mean), mean.astype("float32"))
    np.testing.assert_array_equal(read(layer.moving_variance), variance.astype("float32"))
    if layer.renorm:
        np.testing.assert_allclose(read(layer.moving_stddev), np.sqrt(variance + EPS), rtol=1e-6)
    # One more step continues from the new statistics: with debias, the raw average
    # weight so far is 1 - 0.9**2, so the new batch enters with 0.1 / (1 - 0.9**3).
    train(layer, batches[2:])
    batch_mean = batches[2].mean(axis=0)
    take = 0.1 / (1 - 0.9**3) if layer.debias else 0.1
    expected = mean + take * (batch_mean - mean)
    np.testing.assert_allclose(read(layer.moving_mean), expected, rtol=1e-5)


@pytest.mark.backend_agnostic
def test_set_moving_statistics_before_any_step_counts_as_a_full_average():
    layer = MomentumBatchNormalization(momentum=0.5, debias=True)
    layer.build((None, 2))
    layer.set_moving_statistics([4.0, 4.0], [1.0, 1.0])
    x = np.array([[0.0, 1.0], [2.0, 3.0]], "float32")
    layer(x, training=True)
    np.testing.assert_allclose(read(layer.moving_mean), [2.5, 3.0], rtol=1e-6)


@pytest.mark.backend_agnostic
def test_a_cumulative_average_keeps_set_statistics_as_history():
    # Issue 26: with momentum=None, statistics written before any training batch
    # (num_batches_tracked 0) were replaced wholesale by the first batch.
    layer = MomentumBatchNormalization(momentum=None)
    layer.build((None, 2))
    layer.set_moving_statistics([4.0, 4.0], [1.0, 1.0])
    assert int(read(layer.num_batches_tracked)) == 1
    x = np.array([[0.0, 1.0], [2.0, 3.0]], "float32")
    layer(x, training=True)
    np.testing.assert_allclose(read(layer.moving_mean), [2.5, 3.0], rtol=1e-6)
    # An explicit count: the statistics stand for that many batches.
    layer.set_moving_statistics([4.0, 4.0], [1.0, 1.0], count=3)
    layer(x, training=True)
    np.testing.assert_allclose(read(layer.moving_mean), [3.25, 3.5], rtol=1e-6)
    # count=0: a documented reset of the history, the next batch replaces them.
    layer.set_moving_statistics([4.0, 4.0], [1.0, 1.0], count=0)
    layer(x, training=True)
    np.testing.assert_allclose(read(layer.moving_mean), [1.0, 2.0], rtol=1e-6)
    # With a float momentum the counter is left alone.
    ema = MomentumBatchNormalization(momentum=0.5)
    ema.build((None, 2))
    ema.set_moving_statistics([4.0, 4.0], [1.0, 1.0])
    assert int(read(ema.num_batches_tracked)) == 0


def test_a_recalibrated_cumulative_layer_continues_from_the_recalibration():
    from keras_bn_tools.recalibration import recalibrate_batchnorm

    layer = MomentumBatchNormalization(momentum=None)
    model = keras.Sequential([keras.Input((2,)), layer])
    data = np.random.default_rng(0).normal(5.0, 2.0, size=(64, 2)).astype("float32")
    recalibrate_batchnorm(model, data)
    population = data.mean(axis=0)
    np.testing.assert_allclose(read(layer.moving_mean), population, rtol=1e-5)
    batch = np.zeros((4, 2), "float32")
    layer(batch, training=True)
    # Averaged with the recalibrated statistics (worth at least one batch), not
    # replaced by this batch's zeros.
    assert np.all(read(layer.moving_mean) >= 0.5 * population * (1 - 1e-6))


@pytest.mark.backend_agnostic
def test_set_moving_statistics_refuses_what_would_break_inference():
    # Issue 16, items 7 and 10: a negative variance gave NaN at inference, a wrong
    # shape a raw reshape error, an unbuilt layer an AttributeError.
    unbuilt = MomentumBatchNormalization()
    with pytest.raises(ValueError, match="not built yet"):
        unbuilt.set_moving_statistics([0.0], [1.0])
    layer = MomentumBatchNormalization()
    layer.build((None, 2))
    cases = [
        ([0.0, 0.0], -1.0, r"`variance` must be >= 0"),
        ([0.0, 0.0], [1.0, -1e-9], r"`variance` must be >= 0"),
        ([0.0, np.nan], [1.0, 1.0], "`mean` must be finite"),
        ([0.0, 0.0], [np.inf, 1.0], "`variance` must be finite"),
        ([0.0, 0.0], [1e39, 1.0], "`variance` must be finite in float32"),  # overflows
        ([0.0, 0.0, 0.0], [1.0, 1.0], r"`mean` must have shape \(2,\).*shape \(3,\)"),
        ([0.0, 0.0], [[1.0, 1.0]], r"`variance` must have shape \(2,\)"),
    ]
    for mean, variance, match in cases:
        with pytest.raises(ValueError, match=match):
            layer.set_moving_statistics(mean, variance)
    np.testing.assert_array_equal(read(layer.moving_mean), 0.0)
    np.testing.assert_array_equal(read(layer.moving_variance), 1.0)
    with pytest.raises(TypeError, match="`mean`"):
        layer.set_moving_statistics("zero", [1.0, 1.0])
    layer.set_moving_statistics(3.0, 2.0)  # a scalar is broadcast
    np.testing.assert_array_equal(read(layer.moving_mean), [3.0, 3.0])
    np.testing.assert_array_equal(read(layer.moving_variance), [2.0, 2.0])
