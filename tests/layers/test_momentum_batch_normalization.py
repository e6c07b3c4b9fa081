"""MomentumBatchNormalization: what it computes, ghost batches, renorm, errors, saving.

Moving-statistics updates and momentum scheduling are in
test_momentum_statistics.py; parity with keras.layers.BatchNormalization is in
test_momentum_keras_parity.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keras_bn_tools.layers import MomentumBatchNormalization

EPS = 1e-3

# On JAX, eager ops are compiled one by one for every new input shape, so the JAX
# run (a backend check) explores fewer examples than the profile asks for.
fewer_on_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)


@st.composite
def inputs_and_axis(draw, ranks=(2, 4), min_batch=2, nonbatch_axis=False):
    """A float32 array of rank 2 or 4 and a valid feature axis (maybe negative).

    With `min_batch >= 2` every feature is reduced over at least two values.
    """
    rank = draw(st.sampled_from(ranks))
    axis = draw(st.integers(1 if nonbatch_axis else 0, rank - 1))
    if draw(st.booleans()):
        axis -= rank
    # Few distinct sizes: on JAX every new shape compiles every op again.
    batch = draw(st.sampled_from([b for b in (1, 2, 5, 8, 13) if b >= min_batch]))
    shape = (batch, *(draw(st.sampled_from([1, 3, 4])) for _ in range(rank - 1)))
    assume(int(np.prod(shape)) // shape[axis] >= min(min_batch, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    loc = draw(st.floats(-10, 10))
    scale = draw(st.floats(0.1, 10))
    return (loc + scale * rng.standard_normal(shape)).astype("float32"), axis


def reduction_axes(rank, axis):
    return tuple(i for i in range(rank) if i != axis % rank)


def feature_view(values, rank, axis):
    """Reshape per-feature values to broadcast against an input of `rank`."""
    shape = [1] * rank
    shape[axis % rank] = -1
    return np.reshape(values, shape)


def set_affine(layer, rng):
    features = layer.gamma.shape[0]
    gamma = rng.uniform(0.5, 2.0, features).astype("float32")
    beta = rng.normal(size=features).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return gamma, beta


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=inputs_and_axis(), seed=st.integers(0, 2**16))
def test_training_output_has_mean_beta_and_std_gamma(data, seed):
    x, axis = data
    rank = x.ndim
    layer = MomentumBatchNormalization(axis=axis)
    layer.build(x.shape)
    gamma, beta = set_affine(layer, np.random.default_rng(seed))
    y = keras.ops.convert_to_numpy(layer(x, training=True)).astype("float64")

    axes = reduction_axes(rank, axis)
    var = x.astype("float64").var(axis=axes)
    np.testing.assert_allclose(y.mean(axis=axes), beta, atol=2e-4 * (1 + np.abs(beta).max()))
    expected_std = gamma * np.sqrt(var / (var + EPS))
    np.testing.assert_allclose(y.std(axis=axes), expected_std, rtol=2e-3, atol=1e-5)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=inputs_and_axis(), seed=st.integers(0, 2**16))
def test_inference_uses_the_moving_statistics(data, seed):
    x, axis = data
    rank = x.ndim
    rng = np.random.default_rng(seed)
    # virtual_batch_size must not matter at inference (it needs a non-zero axis).
    ghost = None if axis % rank == 0 else int(rng.integers(1, 5))
    layer = MomentumBatchNormalization(axis=axis, virtual_batch_size=ghost)
    layer.build(x.shape)
    gamma, beta = set_affine(layer, rng)
    features = gamma.shape[0]
    moving_mean = rng.normal(size=features).astype("float32")
    moving_variance = rng.uniform(0.1, 3.0, features).astype("float32")
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_variance)

    y = keras.ops.convert_to_numpy(layer(x, training=False))
    view = lambda v: feature_view(v, rank, axis).astype("float64")  # noqa: E731
    expected = view(gamma) * (x - view(moving_mean)) / np.sqrt(view(moving_variance) + EPS)
    expected += view(beta)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # Inference never updates anything.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), moving_mean)
    assert int(keras.ops.convert_to_numpy(layer.num_batches_tracked)) == 0


# ----------------------------------------------------------------- ghost batches


def ghost_reference(x, axis, size, gamma, beta, mask=None):
    """Per-group normalization in NumPy; returns (outputs, mean, variance)."""
    rank = x.ndim
    axes = reduction_axes(rank, axis)
    weights = np.ones(x.shape) if mask is None else np.broadcast_to(mask[..., None], x.shape)
    out = np.empty(x.shape)
    sums, squares, counts = 0.0, 0.0, 0.0
    for start in range(0, x.shape[0], size):
        g = x[start : start + size].astype("float64")
        w = weights[start : start + size]
        count = w.sum(axis=axes, keepdims=True)
        mean = (g * w).sum(axis=axes, keepdims=True) / np.maximum(count, 1)
        var = (w * (g - mean) ** 2).sum(axis=axes, keepdims=True) / np.maximum(count, 1)
        out[start : start + size] = feature_view(gamma, rank, axis) * (g - mean) / np.sqrt(
            var + EPS
        ) + feature_view(beta, rank, axis)
        sums = sums + mean * count
        squares = squares + var * count
        counts = counts + count
    return out, (sums / counts).reshape(-1), (squares / counts).reshape(-1)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(
    data=inputs_and_axis(min_batch=1, nonbatch_axis=True),
    size=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_ghost_batches_normalize_each_group_with_its_own_statistics(data, size, seed):
    x, axis = data
    layer = MomentumBatchNormalization(axis=axis, virtual_batch_size=size, momentum=0.0)
    layer.build(x.shape)
    gamma, beta = set_affine(layer, np.random.default_rng(seed))
    y = keras.ops.convert_to_numpy(layer(x, training=True))

    expected, mean, variance = ghost_reference(x, axis, size, gamma, beta)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=2e-4)
    # momentum=0: the moving statistics are the sample-weighted group averages.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.moving_variance), variance, rtol=1e-4, atol=1e-5
    )
    # The aggregated mean is the full-batch mean.
    np.testing.assert_allclose(mean, x.mean(axis=reduction_axes(x.ndim, axis)), atol=1e-4)


@pytest.mark.backend_agnostic
def test_ghost_batches_with_a_mask():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 5, 3)).astype("float32")
    mask = rng.uniform(size=(7, 5)) > 0.3
    mask[:, 0] = True
    layer = MomentumBatchNormalization(virtual_batch_size=3, momentum=0.0)
    layer.build(x.shape)
    gamma, beta = set_affine(layer, rng)
    y = keras.ops.convert_to_numpy(layer(x, training=True, mask=mask))
    expected, mean, variance = ghost_reference(x, -1, 3, gamma, beta, mask=mask)
    np.testing.assert_allclose(y[mask], expected[mask], rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.moving_variance), variance, rtol=1e-4, atol=1e-5
    )


@pytest.mark.backend_agnostic
def test_ghost_batches_in_fit_with_a_remainder_batch_and_inference_ignores_them():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(45, 4)).astype("float32")
    ghost = MomentumBatchNormalization(virtual_batch_size=8)
    model = keras.Sequential([keras.Input((4,)), ghost])
    model.compile("sgd", "mse")
    # 45 = 2 * 16 + 13: batches of 16 and 13 (13 = 8 + 5, a remainder group).
    model.fit(x, x, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(ghost.num_batches_tracked)) == 6

    plain = MomentumBatchNormalization()
    plain.build(x.shape)
    plain.set_weights(ghost.get_weights())
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ghost(x, training=False)),
        keras.ops.convert_to_numpy(plain(x, training=False)),
    )


def test_ghost_batches_with_a_dynamic_batch_dimension_in_tf_function():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function needs the TensorFlow backend")
    layer = MomentumBatchNormalization(virtual_batch_size=4, momentum=0.0)
    layer.build((None, 3))
    step = tf.function(
        lambda x: layer(x, training=True), input_signature=[tf.TensorSpec([None, 3])]
    )
    rng = np.random.default_rng(1)
    for batch in (4, 11, 1):
        x = rng.normal(size=(batch, 3)).astype("float32")
        expected, mean, _ = ghost_reference(x, -1, 4, np.ones(3), np.zeros(3))
        np.testing.assert_allclose(step(x).numpy(), expected, rtol=1e-4, atol=2e-4)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, atol=1e-5)
    assert step.experimental_get_tracing_count() == 1


# ------------------------------------------------------------------------- renorm


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(data=inputs_and_axis(), seed=st.integers(0, 2**16))
def test_renorm_with_r_1_and_d_0_is_plain_batch_norm(data, seed):
    x, axis = data
    clipping = {"rmin": 1.0, "rmax": 1.0, "dmax": 0.0}
    renorm = MomentumBatchNormalization(axis=axis, renorm=True, renorm_clipping=clipping)
    plain = MomentumBatchNormalization(axis=axis)
    for layer in (renorm, plain):
        layer.build(x.shape)
        set_affine(layer, np.random.default_rng(seed))
    for _ in range(2):  # the second step has non-trivial renorm statistics
        y_renorm = keras.ops.convert_to_numpy(renorm(x, training=True))
        y_plain = keras.ops.convert_to_numpy(plain(x, training=True))
        np.testing.assert_allclose(y_renorm, y_plain, rtol=1e-5, atol=1e-5)


@pytest.mark.backend_agnostic
def test_renorm_corrects_towards_the_renorm_statistics_and_updates_them():
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, size=(16, 4)).astype("float32")
    layer = MomentumBatchNormalization(renorm=True, momentum=0.9, renorm_momentum=0.8)
    # First step: renorm mean 0 and stddev 1, so (x_hat * r + d) is x itself.
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)

    mean, var = x.mean(axis=0), x.var(axis=0)
    std = np.sqrt(var + EPS)
    read = lambda v: keras.ops.convert_to_numpy(v)  # noqa: E731
    np.testing.assert_allclose(read(layer.renorm_mean), 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(read(layer.renorm_stddev), 0.8 + 0.2 * std, rtol=1e-5)
    moving_std = 0.9 + 0.1 * std
    np.testing.assert_allclose(read(layer.moving_mean), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(read(layer.moving_stddev), moving_std, rtol=1e-5)
    np.testing.assert_allclose(read(layer.moving_variance), moving_std**2 - EPS, rtol=1e-5)

    # Clipping bounds r and d on the next step.
    clipped = MomentumBatchNormalization(renorm=True, renorm_clipping={"rmax": 1.5, "dmax": 0.5})
    y = keras.ops.convert_to_numpy(clipped(x, training=True))
    x_hat = (x - mean) / std
    r = np.minimum(std, 1.5)
    d = np.clip(mean, -0.5, 0.5)
    np.testing.assert_allclose(y, x_hat * r + d, rtol=1e-4, atol=1e-4)


def test_renorm_gradients_do_not_flow_through_r_and_d():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.GradientTape")
    x = tf.constant(np.random.default_rng(2).normal(1.0, 2.0, size=(8, 3)).astype("float32"))
    renorm = MomentumBatchNormalization(renorm=True)
    plain = MomentumBatchNormalization()
    weights = tf.constant(np.random.default_rng(3).normal(size=(8, 3)).astype("float32"))
    grads = []
    for layer in (renorm, plain):
        layer.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * weights)
        grads.append(tape.gradient(loss, [x, layer.gamma]))
    # First step: r = std and d = mean are constants, so dL/dx scales by r per feature.
    std = np.sqrt(np.var(x.numpy(), axis=0) + EPS)
    np.testing.assert_allclose(grads[0][0].numpy(), grads[1][0].numpy() * std, rtol=1e-4)


# ------------------------------------------------------------------------- errors


BAD_ARGUMENTS = [
    ({"momentum": 1.5}, ValueError, r"`momentum` must be a float in \[0, 1\] or None.*got 1.5"),
    ({"momentum": -0.1}, ValueError, "`momentum`"),
    ({"momentum": "0.9"}, TypeError, "`momentum` must be a float in"),
    ({"momentum": True}, TypeError, "`momentum`"),
    ({"epsilon": 0.0}, ValueError, "`epsilon` must be a positive"),
    ({"epsilon": -1e-3}, ValueError, "`epsilon`"),
    ({"epsilon": float("nan")}, ValueError, "`epsilon`"),
    ({"epsilon": "small"}, TypeError, "`epsilon`"),
    ({"virtual_batch_size": 0}, ValueError, "`virtual_batch_size` must be a positive"),
    ({"virtual_batch_size": -4}, ValueError, "`virtual_batch_size`"),
    ({"virtual_batch_size": 2.5}, TypeError, "`virtual_batch_size` must be a positive"),
    ({"virtual_batch_size": True}, TypeError, "`virtual_batch_size`"),
    ({"renorm": True, "renorm_clipping": {"rmaxx": 2}}, ValueError, r"\['rmaxx'\]"),
    ({"renorm_clipping": {"dmin": 1}}, ValueError, "Allowed keys"),
    ({"renorm": True, "renorm_clipping": {"rmax": 1, "rmin": 2}}, ValueError, r"\['rmin'\]"),
    ({"renorm": True, "renorm_clipping": {"dmax": -1}}, ValueError, r"\['dmax'\]` must be >= 0"),
    ({"renorm_clipping": [("rmax", 2)]}, TypeError, "`renorm_clipping`"),
    # Issue 16, item 6: each of these was accepted and trained wrong.
    ({"renorm": True, "renorm_clipping": {"rmax": -1.0}}, ValueError, r"\['rmax'\]` must be >= 1"),
    ({"renorm": True, "renorm_clipping": {"rmax": 0.5}}, ValueError, r"\['rmax'\]` must be >= 1"),
    ({"renorm": True, "renorm_clipping": {"rmax": float("nan")}}, ValueError, "must be finite"),
    ({"renorm": True, "renorm_clipping": {"dmax": float("nan")}}, ValueError, "must be finite"),
    ({"renorm": True, "renorm_clipping": {"rmin": float("inf")}}, ValueError, "must be finite"),
    ({"renorm_clipping": {"rmax": 3.0}}, ValueError, "no effect without `renorm=True`"),
    ({"renorm_momentum": 2.0}, ValueError, "`renorm_momentum`"),
    ({"axis": 1.0}, TypeError, "`axis` must be an integer"),
]


@pytest.mark.backend_agnostic
def test_bad_arguments_raise_at_construction():
    # One test over a table: the per-test Keras reset costs more than the checks.
    for kwargs, error, match in BAD_ARGUMENTS:
        with pytest.raises(error, match=match):
            MomentumBatchNormalization(**kwargs)


@pytest.mark.backend_agnostic
def test_bad_momentum_assignment_raises_and_keeps_the_old_value():
    layer = MomentumBatchNormalization(momentum=0.9)
    layer.build((None, 3))
    with pytest.raises(ValueError, match="`momentum`"):
        layer.momentum = 1.01
    assert layer.momentum == 0.9
    (variable,) = [w for w in layer.variables if w.path.endswith("/momentum")]
    assert float(keras.ops.convert_to_numpy(variable)) == pytest.approx(0.9)


BAD_AXES = [
    ({"axis": 2}, (None, 3), r"`axis`=2 .* must be in \[-2, 1\]"),
    ({"axis": -3}, (None, 3), r"`axis`=-3"),
    ({"axis": 4}, (None, 2, 2, 3), r"must be in \[-4, 3\]"),
    ({"axis": 1}, (None, None, 3), "must have a known size"),
    ({"axis": 0, "virtual_batch_size": 2}, (4, 3), "`virtual_batch_size`=2 needs a batch"),
]


@pytest.mark.backend_agnostic
def test_bad_axis_raises_at_build():
    for kwargs, shape, match in BAD_AXES:
        layer = MomentumBatchNormalization(**kwargs)
        with pytest.raises(ValueError, match=match):
            layer.build(shape)
    # In a model too, with the layer's own message.
    with pytest.raises(ValueError, match=r"must be in \[-3, 2\]"):
        keras.Sequential([keras.Input((4, 5)), MomentumBatchNormalization(axis=3)])


# ------------------------------------------------------------------ serialization


@st.composite
def layer_configs(draw):
    renorm = draw(st.booleans())
    clipping = None
    if renorm and draw(st.booleans()):  # clipping needs renorm=True
        clipping = {
            "rmin": draw(st.floats(0.0, 1.0)),
            "rmax": draw(st.floats(1.0, 5.0)),
            "dmax": draw(st.none() | st.floats(0.0, 5.0)),
        }
    return {
        "axis": draw(st.integers(-2, 1)),
        "momentum": draw(st.none() | st.floats(0.0, 1.0)),
        "epsilon": draw(st.floats(1e-6, 1.0)),
        "center": draw(st.booleans()),
        "scale": draw(st.booleans()),
        "gamma_initializer": draw(st.sampled_from(["ones", "zeros", "random_normal"])),
        "beta_regularizer": draw(st.sampled_from([None, "l2"])),
        "gamma_constraint": draw(st.sampled_from([None, "non_neg"])),
        "renorm": renorm,
        "renorm_clipping": clipping,
        "renorm_momentum": draw(st.floats(0.0, 1.0)),
        "debias": draw(st.booleans()),
        "virtual_batch_size": draw(st.none() | st.integers(1, 64)),
        "skip_nonfinite": draw(st.booleans()),
        "trainable": draw(st.booleans()),
    }


@pytest.mark.backend_agnostic
@given(kwargs=layer_configs())
def test_get_config_from_config_round_trip(kwargs):
    layer = MomentumBatchNormalization(**kwargs)
    config = layer.get_config()
    for key in ("momentum", "renorm", "renorm_momentum", "debias", "virtual_batch_size"):
        assert config[key] == kwargs[key]
    clone = MomentumBatchNormalization.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is MomentumBatchNormalization
    assert restored.get_config() == config


@pytest.mark.backend_agnostic
def test_keras_file_round_trip_restores_every_variable(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(64, 6)).astype("float32")
    inputs = keras.Input((6,))
    h = MomentumBatchNormalization(momentum=0.8, debias=True, name="debiased")(inputs)
    h = keras.layers.Dense(5)(h)
    h = MomentumBatchNormalization(momentum=None, renorm=True, name="cumulative")(h)
    h = MomentumBatchNormalization(virtual_batch_size=4, name="ghost")(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("adam", "mse")
    model.fit(x, x[:, :1], batch_size=16, epochs=2, verbose=0)
    model.get_layer("debiased").momentum = 0.5  # changed after training: must be saved
    model.get_layer("cumulative").momentum = 0.7
    model.get_layer("ghost").momentum = None

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)

    for layer in model.layers[1:]:
        twin = loaded.get_layer(layer.name)
        assert type(twin) is type(layer)
        assert [v.path for v in twin.weights] == [v.path for v in layer.weights]
        for theirs, ours in zip(twin.weights, layer.weights, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(theirs), keras.ops.convert_to_numpy(ours)
            )
        if isinstance(layer, MomentumBatchNormalization):
            assert twin.momentum == layer.momentum
    assert int(keras.ops.convert_to_numpy(loaded.get_layer("ghost").num_batches_tracked)) == 8
    np.testing.assert_array_equal(model.predict_on_batch(x), loaded.predict_on_batch(x))
    # Both continue training identically (momentum schedule state included).
    loaded.compile("sgd", "mse")
    model.compile("sgd", "mse")
    model.train_on_batch(x, x[:, :1])
    loaded.train_on_batch(x, x[:, :1])
    np.testing.assert_allclose(model.predict_on_batch(x), loaded.predict_on_batch(x), rtol=1e-6)


@pytest.mark.backend_agnostic
def test_non_trainable_state_is_averaged_across_replicas():
    # Under tf.distribute without synchronized=True, replica updates are averaged (as
    # in tf.keras 2) so that the copies stay equal; tests/distribute runs it for real.
    layer = MomentumBatchNormalization(debias=True, renorm=True)
    layer.build((None, 3))
    assert {v.aggregation for v in layer.trainable_variables} == {"none"}
    for variable in layer.non_trainable_variables:
        expected = "only_first_replica" if variable.name == "num_batches_tracked" else "mean"
        assert variable.aggregation == expected, variable.path


@pytest.mark.backend_agnostic
def test_a_virtual_batch_larger_than_the_batch_is_the_whole_batch():
    # Found by the fuzz test: a huge virtual_batch_size padded the batch to that size.
    x = np.random.default_rng(11).normal(2.0, 3.0, size=(6, 3)).astype("float32")
    plain = MomentumBatchNormalization()
    expected = keras.ops.convert_to_numpy(plain(x, training=True))
    for size in (6, 7, 2**40):
        ghost = MomentumBatchNormalization(virtual_batch_size=size)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ghost(x, training=True)), expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", ["center", "scale", "renorm", "debias", "skip_nonfinite"])
def test_flags_must_be_booleans(name):
    # Found by the fuzz test: center=float("nan") or debias="no" meant True.
    for value in ("no", float("nan"), None, 1):
        with pytest.raises(TypeError, match=f"`{name}` must be True or False"):
            MomentumBatchNormalization(**{name: value})
    MomentumBatchNormalization(**{name: np.bool_(False)})


@pytest.mark.backend_agnostic
def test_synchronized_outside_tensorflow_is_refused_naming_the_backend():
    if keras.backend.backend() == "tensorflow":
        assert MomentumBatchNormalization(synchronized=True).synchronized
        return
    with pytest.raises(ValueError, match=r"synchronized=True.*TensorFlow"):
        MomentumBatchNormalization(synchronized=True)
