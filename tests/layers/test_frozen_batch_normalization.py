"""FrozenBatchNormalization: Keras BN's inference map in every mode, statistics never updated."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_bn_tools.layers import FrozenBatchNormalization, MomentumBatchNormalization
from keras_bn_tools.layers.interface import as_batchnorm, is_batchnorm
from keras_bn_tools.ops import to_numpy

backend_agnostic = pytest.mark.backend_agnostic
few_under_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)


def _random_bn(shape, axis, seed, *, center=True, scale=True, cls=keras.layers.BatchNormalization):
    """A built BN layer with random gamma, beta and moving statistics."""
    layer = cls(axis=axis, center=center, scale=scale, epsilon=1e-3)
    layer.build(shape)
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    values = {
        "gamma": rng.uniform(0.5, 2.0, channels),
        "beta": rng.normal(0, 1, channels),
        "moving_mean": rng.normal(0, 2, channels),
        "moving_variance": rng.uniform(0.1, 3.0, channels),
    }
    as_batchnorm(layer).set_keras_variables(values)
    return layer


def _reference(x, layer):
    """NumPy float64 inference BN of `layer` (gamma/beta from the layer)."""
    gamma, beta = (
        np.asarray(v, np.float64) if v is not None else None for v in layer.affine_parameters()
    )
    mean, variance = (np.asarray(v, np.float64) for v in layer.moving_statistics())
    shape = [1] * x.ndim
    shape[layer.axis] = -1
    y = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + layer.epsilon)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@backend_agnostic
@few_under_jax
@given(
    st.sampled_from([((6, 4), -1), ((3, 5, 4), -1), ((2, 4, 3, 3), 1), ((2, 3, 3, 4), 3)]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_outputs_are_bit_identical_to_keras_bn_inference_in_every_mode(case, center, scale, seed):
    shape, axis = case
    bn = _random_bn(shape, axis, seed, center=center, scale=scale)
    frozen = FrozenBatchNormalization.from_batchnorm(bn)
    x = np.random.default_rng(seed + 1).normal(0, 3, shape).astype("float32")
    expected = to_numpy(bn(x, training=False))
    for training in (False, True, None):
        np.testing.assert_array_equal(to_numpy(frozen(x, training=training)), expected)
    np.testing.assert_allclose(expected, _reference(x.astype("float64"), frozen), atol=1e-5)
    scale_, shift = frozen.inference_affine()
    broadcast = [1] * len(shape)
    broadcast[axis] = -1
    np.testing.assert_allclose(
        expected, x * scale_.reshape(broadcast) + shift.reshape(broadcast), atol=1e-5
    )


@backend_agnostic
def test_from_momentum_batchnorm_and_mixed_precision_are_bit_identical():
    bn = _random_bn((4, 3), -1, 0, cls=MomentumBatchNormalization)
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    frozen = FrozenBatchNormalization.from_batchnorm(bn)
    np.testing.assert_array_equal(to_numpy(frozen(x, training=True)), to_numpy(bn(x)))

    half = keras.layers.BatchNormalization(dtype="mixed_float16")
    half.build((None, 3))
    as_batchnorm(half).set_keras_variables(as_batchnorm(bn).keras_variables())
    frozen_half = FrozenBatchNormalization.from_batchnorm(half)
    assert frozen_half.dtype_policy.name == "mixed_float16"
    x16 = x.astype("float16")
    out = frozen_half(x16, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_array_equal(to_numpy(out), to_numpy(half(x16, training=False)))


@backend_agnostic
def test_statistics_never_change_and_affine_trains_only_when_asked():
    rng = np.random.default_rng(0)
    x = rng.normal(2, 3, (32, 4)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    for train_affine in (False, True):
        bn = _random_bn((None, 4), -1, 1)
        frozen = FrozenBatchNormalization.from_batchnorm(bn, train_affine=train_affine)
        model = keras.Sequential([keras.Input((4,)), frozen, keras.layers.Dense(1)])
        model.trainable = True  # a common fine-tuning step must not unfreeze anything
        expected_trainable = ["gamma", "beta"] if train_affine else []
        assert [w.name for w in frozen.trainable_weights] == expected_trainable
        assert len(frozen.non_trainable_weights) == 4 - len(expected_trainable)
        before = {w.name: to_numpy(w) for w in frozen.weights}
        model.compile(keras.optimizers.SGD(0.5), "mse")
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        after = {w.name: to_numpy(w) for w in frozen.weights}
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        for name in ("gamma", "beta"):
            changed = not np.array_equal(after[name], before[name])
            assert changed == train_affine, (name, train_affine)


@backend_agnostic
def test_bn_interface_and_weights_interchangeable_with_keras_bn():
    bn = _random_bn((None, 3), -1, 2)
    frozen = FrozenBatchNormalization.from_batchnorm(bn)
    assert is_batchnorm(frozen) and as_batchnorm(frozen) is frozen
    assert frozen.training_is_plain is False and frozen.channel_axis == -1
    assert frozen.name == bn.name
    for got, want in zip(frozen.get_weights(), bn.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    fresh = FrozenBatchNormalization()
    fresh.build((None, 3))
    fresh.set_weights(bn.get_weights())
    np.testing.assert_array_equal(
        fresh.moving_statistics()[0], as_batchnorm(bn).moving_statistics()[0]
    )
    fresh.set_moving_statistics(np.zeros(3), np.ones(3))
    np.testing.assert_array_equal(to_numpy(fresh.moving_variance), np.ones(3, "float32"))
    with pytest.raises(ValueError, match="variance"):
        fresh.set_moving_statistics(np.zeros(3), -np.ones(3))
    assert frozen.dropped_options(keras.layers.BatchNormalization) == {"frozen": True}
    assert frozen.dropped_options(FrozenBatchNormalization) == {}
    assert frozen.last_batch_statistics() is None


@backend_agnostic
@pytest.mark.parametrize("to", [keras.layers.BatchNormalization, MomentumBatchNormalization])
def test_to_batchnorm_restores_a_trainable_bn(to):
    bn = _random_bn((None, 5), -1, 3, center=False)
    frozen = FrozenBatchNormalization.from_batchnorm(bn)
    restored = frozen.to_batchnorm(to)
    assert type(restored) is to and restored.trainable and not restored.center
    for name, variable in as_batchnorm(bn).keras_variables().items():
        np.testing.assert_array_equal(
            to_numpy(as_batchnorm(restored).keras_variables()[name]), to_numpy(variable)
        )
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    np.testing.assert_array_equal(to_numpy(restored(x)), to_numpy(bn(x)))
    restored(x, training=True)  # trains again: the statistics move
    assert not np.array_equal(to_numpy(restored.moving_mean), to_numpy(bn.moving_mean))
    with pytest.raises(TypeError, match="`to`"):
        frozen.to_batchnorm(keras.layers.LayerNormalization)


@backend_agnostic
def test_unbuilt_layers_convert_unbuilt():
    frozen = FrozenBatchNormalization.from_batchnorm(keras.layers.BatchNormalization(axis=1))
    assert not frozen.built and frozen.axis == 1
    assert not frozen.to_batchnorm().built


@backend_agnostic
def test_bad_arguments():
    with pytest.raises(TypeError, match="`axis`"):
        FrozenBatchNormalization(axis="channels")
    with pytest.raises(ValueError, match="`epsilon`"):
        FrozenBatchNormalization(epsilon=0.0)
    for flag in ("center", "scale", "train_affine"):
        with pytest.raises(TypeError, match=f"`{flag}`"):
            FrozenBatchNormalization(**{flag: "yes"})
    with pytest.raises(TypeError, match="`train_affine`"):
        FrozenBatchNormalization.from_batchnorm(keras.layers.BatchNormalization(), train_affine=1)
    with pytest.raises(TypeError, match="`layer`"):
        FrozenBatchNormalization.from_batchnorm(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="`axis`"):
        FrozenBatchNormalization(axis=3).build((None, 4))


@backend_agnostic
def test_keras_file_round_trip_in_a_fresh_process(tmp_path):
    bn = _random_bn((None, 6), -1, 4)
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(2)(
        FrozenBatchNormalization.from_batchnorm(bn, train_affine=True)(inputs)
    )
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(5).normal(size=(7, 6)).astype("float32")
    model.save(tmp_path / "frozen.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", to_numpy(model(x)))
    script = textwrap.dedent(
        f"""
        import numpy as np
        import keras
        import keras_bn_tools.layers

        folder = {str(tmp_path)!r}
        model = keras.saving.load_model(folder + "/frozen.keras", safe_mode=True)
        layer = model.layers[1]
        assert type(layer).__name__ == "FrozenBatchNormalization", type(layer)
        assert layer.train_affine and [w.name for w in layer.trainable_weights] == ["gamma", "beta"]
        x = np.load(folder + "/x.npy")
        got = keras.ops.convert_to_numpy(model(x, training=True))
        np.testing.assert_array_equal(got, np.load(folder + "/expected.npy"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
