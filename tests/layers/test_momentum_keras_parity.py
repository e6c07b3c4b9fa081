"""With its defaults, MomentumBatchNormalization computes what Keras's BN computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_bn_tools.layers import MomentumBatchNormalization

# On JAX, eager ops are compiled one by one for every new input shape, so the JAX
# run (a backend check) explores fewer examples than the profile asks for.
fewer_on_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)

KERAS_STATE = ("gamma", "beta", "moving_mean", "moving_variance")


def read(value):
    return keras.ops.convert_to_numpy(value)


@st.composite
def parity_cases(draw):
    rank = draw(st.sampled_from([2, 3, 4]))
    axis = draw(st.integers(-rank, rank - 1))
    shape = (
        draw(st.sampled_from([2, 5, 8])),
        *(draw(st.sampled_from([1, 3])) for _ in range(rank - 1)),
    )
    kwargs = {
        "axis": axis,
        "momentum": draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]) | st.floats(0.0, 1.0)),
        "epsilon": draw(st.sampled_from([1e-3, 1e-5, 0.1])),
        "center": draw(st.booleans()),
        "scale": draw(st.booleans()),
    }
    seed = draw(st.integers(0, 2**32 - 1))
    # Keras's masked moments expand the mask on the last axis: only rank >= 3 with axis -1,
    # and more than one feature (Keras squeezes a single feature's statistics to a scalar).
    use_mask = rank >= 3 and axis % rank == rank - 1 and shape[-1] > 1 and draw(st.booleans())
    return shape, kwargs, seed, use_mask


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(case=parity_cases())
def test_defaults_match_keras_bit_for_bit_over_several_steps(case):
    shape, kwargs, seed, use_mask = case
    rng = np.random.default_rng(seed)
    ours = MomentumBatchNormalization(**kwargs)
    theirs = keras.layers.BatchNormalization(**kwargs)
    for layer in (ours, theirs):
        layer.build(shape)
    if kwargs["scale"]:
        gamma = rng.uniform(0.5, 2.0, ours.gamma.shape).astype("float32")
        ours.gamma.assign(gamma)
        theirs.gamma.assign(gamma)
    for _ in range(3):
        x = (rng.normal(size=shape) * rng.uniform(0.5, 3) + rng.normal()).astype("float32")
        mask = (rng.uniform(size=shape[:-1]) > 0.3) if use_mask else None
        np.testing.assert_array_equal(
            read(ours(x, training=True, mask=mask)), read(theirs(x, training=True, mask=mask))
        )
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_array_equal(read(getattr(ours, name)), read(getattr(theirs, name)))
    np.testing.assert_array_equal(read(ours(x, training=False)), read(theirs(x, training=False)))


def twin_models(build):
    """The same model twice (same initial weights): with Keras's BN and with ours."""
    models = []
    for layer_class in (keras.layers.BatchNormalization, MomentumBatchNormalization):
        keras.utils.set_random_seed(7)
        models.append(build(layer_class))
    return models


def assert_same_state(keras_model, our_model, *, rtol=1e-6, atol=1e-7):
    for theirs, ours in zip(keras_model.layers, our_model.layers, strict=True):
        if isinstance(ours, MomentumBatchNormalization):
            pairs = [(getattr(theirs, n), getattr(ours, n)) for n in KERAS_STATE]
            pairs = [p for p in pairs if p[0] is not None]
        else:
            pairs = list(zip(theirs.weights, ours.weights, strict=True))
        for a, b in pairs:
            np.testing.assert_allclose(read(b), read(a), rtol=rtol, atol=atol, err_msg=b.path)


@pytest.mark.backend_agnostic
def test_fit_matches_keras_bn_model():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(96, 6)).astype("float32")
    y = (x[:, :1] > 1).astype("float32")

    def build(bn):
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation="relu"),
                bn(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(keras.optimizers.Adam(0.01), "mse")
        return model

    keras_model, our_model = twin_models(build)
    for model in (keras_model, our_model):
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert_same_state(keras_model, our_model)
    np.testing.assert_allclose(
        our_model.predict_on_batch(x), keras_model.predict_on_batch(x), rtol=1e-6, atol=1e-6
    )
    assert int(read(our_model.layers[1].num_batches_tracked)) == 18


@pytest.mark.backend_agnostic
def test_fit_with_a_mask_matches_keras_bn_model():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 9, size=(64, 7))
    tokens[:, 5:] = 0  # padding, masked by the embedding
    y = rng.normal(size=(64, 1)).astype("float32")

    def build(bn):
        model = keras.Sequential(
            [
                keras.Input((7,), dtype="int32"),
                keras.layers.Embedding(9, 4, mask_zero=True),
                bn(),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(keras.optimizers.SGD(0.05), "mse")
        return model

    keras_model, our_model = twin_models(build)
    for model in (keras_model, our_model):
        model.fit(tokens, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_same_state(keras_model, our_model)
    # The padding positions did not enter the statistics.
    assert not np.allclose(read(our_model.layers[1].moving_mean), 0.0)
    np.testing.assert_allclose(
        our_model.predict_on_batch(tokens), keras_model.predict_on_batch(tokens), rtol=1e-6
    )


@pytest.mark.backend_agnostic
def test_frozen_layer_matches_keras_bn_model():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(64, 5)).astype("float32")

    def build(bn):
        layer = bn(trainable=False)
        model = keras.Sequential([keras.Input((5,)), layer, keras.layers.Dense(1)])
        layer.moving_mean.assign(np.full(5, 3.0, "float32"))
        layer.moving_variance.assign(np.full(5, 4.0, "float32"))
        model.compile(keras.optimizers.SGD(0.05), "mse")
        return model

    keras_model, our_model = twin_models(build)
    for model in (keras_model, our_model):
        model.fit(x, x[:, :1], batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert_same_state(keras_model, our_model)
    layer = our_model.layers[0]
    np.testing.assert_array_equal(read(layer.moving_mean), 3.0)
    assert int(read(layer.num_batches_tracked)) == 0
    # Frozen: training=True behaves as inference.
    np.testing.assert_array_equal(read(layer(x, training=True)), read(layer(x, training=False)))


@pytest.mark.backend_agnostic
def test_mixed_float16_matches_keras_bn():
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(48, 3, 3, 4)).astype("float32")
    y = rng.normal(size=(48, 1)).astype("float32")

    def build(bn):
        model = keras.Sequential(
            [
                keras.Input((3, 3, 4)),
                keras.layers.Conv2D(6, 2),
                bn(),
                keras.layers.Flatten(),
                keras.layers.Dense(1, dtype="float32"),
            ]
        )
        model.compile(keras.optimizers.SGD(0.01), "mse")
        return model

    keras_model, our_model = twin_models(build)
    for model in (keras_model, our_model):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    ours = our_model.layers[1]
    assert ours.compute_dtype == "float16"
    assert {v.dtype for v in ours.weights} <= {"float32", "int64", "int32"}
    assert all(v.dtype == "float32" for v in ours.weights if v.name != "num_batches_tracked")
    assert_same_state(keras_model, our_model, rtol=1e-3, atol=1e-4)
    h = our_model.layers[0](x[:8])
    out = ours(h, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_array_equal(read(out), read(keras_model.layers[1](h, training=True)))


@pytest.mark.skipif(
    "renorm" not in keras.layers.BatchNormalization.__init__.__code__.co_varnames,
    reason="this Keras release has no batch renormalization",
)
@pytest.mark.backend_agnostic
def test_renorm_matches_keras_renorm():
    rng = np.random.default_rng(4)
    kwargs = {"renorm": True, "renorm_clipping": {"rmax": 2.0, "dmax": 1.0}, "momentum": 0.8}
    ours = MomentumBatchNormalization(**kwargs)
    theirs = keras.layers.BatchNormalization(**kwargs)
    for _ in range(4):
        x = rng.normal(rng.normal(), 2.0, size=(16, 3)).astype("float32")
        np.testing.assert_array_equal(read(ours(x, training=True)), read(theirs(x, training=True)))
    for name in ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"):
        np.testing.assert_array_equal(read(getattr(ours, name)), read(getattr(theirs, name)))


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_other_dtype_policies_match_keras_bn(dtype):
    rng = np.random.default_rng(5)
    ours = MomentumBatchNormalization(dtype=dtype)
    theirs = keras.layers.BatchNormalization(dtype=dtype)
    for _ in range(3):
        x = rng.normal(2.0, 3.0, size=(16, 3)).astype(dtype if dtype == "float64" else "float32")
        np.testing.assert_array_equal(read(ours(x, training=True)), read(theirs(x, training=True)))
    for name in ("moving_mean", "moving_variance"):
        assert getattr(ours, name).dtype == getattr(theirs, name).dtype
        np.testing.assert_array_equal(read(getattr(ours, name)), read(getattr(theirs, name)))


def test_synchronized_outside_a_strategy_matches_keras_bn():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("synchronized=True is TensorFlow-only in Keras")
    x = np.random.default_rng(6).normal(1.0, 2.0, size=(16, 3)).astype("float32")
    ours = MomentumBatchNormalization(synchronized=True)
    theirs = keras.layers.BatchNormalization(synchronized=True)
    for _ in range(2):
        np.testing.assert_array_equal(read(ours(x, training=True)), read(theirs(x, training=True)))
    np.testing.assert_array_equal(read(ours.moving_variance), read(theirs.moving_variance))
