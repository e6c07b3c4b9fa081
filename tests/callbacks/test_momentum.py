"""MomentumScheduler: momentum changes land in the moving statistics as the EMA formula says."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.callbacks import MomentumScheduler, MovingStatsTracker
from keras_bn_tools.layers import MomentumBatchNormalization

BATCH, STEPS_PER_EPOCH = 16, 4


class BatchStats(keras.callbacks.Callback):
    """The layer's own record of the last training batch's statistics, after every step."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.means, self.variances = layer, [], []

    def on_train_batch_end(self, batch, logs=None):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        self.means.append(keras.ops.convert_to_numpy(self.layer.batch_mean))
        self.variances.append(keras.ops.convert_to_numpy(self.layer.batch_variance))


def _bn_first_model(momentum=0.5):
    """Input -> MomentumBatchNormalization -> Dense: the BN input is the data itself."""
    bn = MomentumBatchNormalization(momentum=momentum, name="mbn")
    model = keras.Sequential([keras.Input((3,)), bn, keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model, bn


def _data():
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(BATCH * STEPS_PER_EPOCH, 3)) * [1.0, 3.0, 0.5] + [2.0, -1.0, 0.0]).astype(
        "float32"
    )
    return x, x.sum(axis=1, keepdims=True)


@pytest.mark.backend_agnostic
def test_momentum_zero_then_099_follows_the_ema_formula():
    model, bn = _bn_first_model()
    x, y = _data()
    schedule = MomentumScheduler(lambda epoch: 0.0 if epoch < 2 else 0.99)
    tracker = MovingStatsTracker(every=1, stats=("moving_mean", "moving_variance"))
    batch_stats = BatchStats(bn)
    model.fit(
        x,
        y,
        epochs=4,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[schedule, tracker, batch_stats],
    )
    assert schedule.history == {0: 0.0, 1: 0.0, 2: 0.99, 3: 0.99}
    mean = tracker.history["mbn"]["moving_mean"]  # (1 + 16 steps, 3 features)
    var = tracker.history["mbn"]["moving_variance"]
    batch_mean, batch_var = np.stack(batch_stats.means), np.stack(batch_stats.variances)

    # The layer's batch statistics are those of the (unshuffled) data rows, epoch after epoch.
    rows = np.tile(x.reshape(STEPS_PER_EPOCH, BATCH, 3), (4, 1, 1))
    np.testing.assert_allclose(batch_mean, rows.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch_var, rows.var(axis=1), rtol=1e-5, atol=1e-6)

    # Momentum 0 (epochs 1-2, steps 1-8): the moving statistics are the last batch's, exactly.
    np.testing.assert_array_equal(mean[1:9], batch_mean[:8])
    np.testing.assert_array_equal(var[1:9], batch_var[:8])
    # Momentum 0.99 (steps 9-16): moving = 0.99 * moving + 0.01 * batch, step by step.
    expected_mean, expected_var = mean[8].astype(np.float64), var[8].astype(np.float64)
    for step in range(9, 17):
        expected_mean = 0.99 * expected_mean + 0.01 * batch_mean[step - 1]
        expected_var = 0.99 * expected_var + 0.01 * batch_var[step - 1]
        np.testing.assert_allclose(mean[step], expected_mean, rtol=1e-5)
        np.testing.assert_allclose(var[step], expected_var, rtol=1e-5)
    # Visibly: under 0.99 the statistics barely move; under 0 they jump to each batch.
    slow = np.abs(np.diff(mean[8:], axis=0)).max()
    fast = np.abs(np.diff(mean[1:9], axis=0)).max()
    assert slow < 0.05 * fast


@pytest.mark.backend_agnostic
def test_none_gives_the_cumulative_average_of_every_batch():
    model, bn = _bn_first_model(momentum=0.9)
    x, y = _data()
    bn.reset_moving_statistics()
    stats = BatchStats(bn)
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[MomentumScheduler(lambda epoch: None), stats],
    )
    assert bn.momentum is None
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), np.mean(stats.means, axis=0), rtol=1e-5
    )


@pytest.mark.backend_agnostic
def test_only_momentum_layers_are_scheduled_in_nested_models():
    inner = keras.Sequential(
        [keras.Input((4,)), MomentumBatchNormalization(momentum=0.9, name="inner_mbn")],
        name="inner",
    )
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization(momentum=0.9, name="plain_bn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(inner(h)))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        np.ones((8, 4)),
        np.ones(8),
        epochs=2,
        verbose=0,
        callbacks=[MomentumScheduler(lambda epoch: 0.5 + 0.1 * epoch)],
    )
    assert inner.layers[0].momentum == pytest.approx(0.6)
    assert model.get_layer("plain_bn").momentum == 0.9


@pytest.mark.backend_agnostic
def test_schedule_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        MomentumScheduler(0.9)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (1.5, ValueError, r"`schedule\(0\)` must be a float in \[0, 1\] or None.*got 1.5"),
        (-0.1, ValueError, "got -0.1"),
        (float("nan"), ValueError, "got nan"),
        ("0.9", TypeError, "'0.9'"),
        (True, TypeError, "True"),
    ],
)
def test_schedule_values_are_checked(value, error, match):
    model, _ = _bn_first_model()
    with pytest.raises(error, match=match):
        model.fit(
            np.ones((4, 3)),
            np.ones(4),
            verbose=0,
            callbacks=[MomentumScheduler(lambda epoch: value)],
        )


@pytest.mark.backend_agnostic
def test_models_without_momentum_layers_are_refused_with_what_was_found():
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(
        ValueError,
        match=r"found BatchNormalization \(keras\) x2.*needs "
        r"keras_bn_tools\.layers\.MomentumBatchNormalization",
    ):
        model.fit(
            np.ones((4, 2)), np.ones(4), verbose=0, callbacks=[MomentumScheduler(lambda epoch: 0.9)]
        )
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="found no batch normalization layer"):
        plain.fit(
            np.ones((4, 2)), np.ones(4), verbose=0, callbacks=[MomentumScheduler(lambda epoch: 0.9)]
        )
