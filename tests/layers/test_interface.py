"""The BN interface: the Keras BN adapter and MomentumBatchNormalization alike."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.layers.interface import (
    BatchNormInterface,
    KerasBatchNorm,
    as_batchnorm,
    is_batchnorm,
)
from keras_bn_tools.ops import to_numpy

pytestmark = pytest.mark.backend_agnostic
fewer_on_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)

CLASSES = [keras.layers.BatchNormalization, MomentumBatchNormalization]


def built(cls, features=3, rank=2, **kwargs):
    layer = cls(**kwargs)
    layer.build((None,) * (rank - 1) + (features,))
    return layer


@pytest.mark.parametrize("cls", CLASSES)
def test_as_batchnorm_gives_the_adapter_or_the_layer_itself(cls):
    layer = built(cls)
    bn = as_batchnorm(layer)
    assert isinstance(bn, BatchNormInterface)
    assert is_batchnorm(layer)
    if cls is MomentumBatchNormalization:
        assert bn is layer
    else:
        assert isinstance(bn, KerasBatchNorm)


@pytest.mark.parametrize("thing", [keras.layers.Dense(3), "bn", None])
def test_as_batchnorm_refuses_what_is_not_bn(thing):
    assert not is_batchnorm(thing)
    with pytest.raises(TypeError, match="`layer` must be a batch normalization layer"):
        as_batchnorm(thing)


def test_a_wrapped_bn_is_not_itself_a_bn():
    assert not is_batchnorm(keras.layers.TimeDistributed(keras.layers.BatchNormalization()))


@pytest.mark.parametrize("cls", CLASSES)
def test_exact_example(cls):
    layer = built(cls, features=2, epsilon=1.0)
    bn = as_batchnorm(layer)
    assert bn.channel_axis == -1 and bn.epsilon == 1.0
    bn.set_moving_statistics(np.array([1.0, -2.0]), np.array([3.0, 0.0]))
    mean, variance = bn.moving_statistics()
    np.testing.assert_array_equal(mean, [1.0, -2.0])
    np.testing.assert_array_equal(variance, [3.0, 0.0])
    layer.gamma.assign(np.array([2.0, 1.0], "float32"))
    layer.beta.assign(np.array([0.5, 0.0], "float32"))
    gamma, beta = bn.affine_parameters()
    np.testing.assert_array_equal(gamma, [2.0, 1.0])
    np.testing.assert_array_equal(beta, [0.5, 0.0])
    scale, shift = bn.inference_affine()
    assert scale.dtype == np.float64
    np.testing.assert_array_equal(scale, [1.0, 1.0])
    np.testing.assert_array_equal(shift, [-0.5, 2.0])
    np.testing.assert_array_equal(
        to_numpy(layer(np.array([[0.0, 0.0]], "float32"), training=False)), [[-0.5, 2.0]]
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_affine_parameters_are_none_without_center_or_scale(cls):
    bn = as_batchnorm(built(cls, center=False, scale=False))
    assert bn.affine_parameters() == (None, None)
    scale, shift = bn.inference_affine()
    np.testing.assert_allclose(scale, 1 / np.sqrt(1 + 1e-3))
    np.testing.assert_array_equal(shift, np.zeros(3))


@fewer_on_jax
@given(
    cls=st.sampled_from(CLASSES),
    seed=st.integers(0, 2**16),
    axis=st.sampled_from([1, -1]),
    epsilon=st.floats(1e-5, 1.0),
)
def test_inference_affine_is_the_layers_inference_output(cls, seed, axis, epsilon):
    rng = np.random.default_rng(seed)
    layer = cls(axis=axis, epsilon=epsilon)
    shape = (5, 3, 4)
    layer.build((None, *shape[1:]))
    features = shape[axis]
    bn = as_batchnorm(layer)
    bn.set_moving_statistics(rng.normal(size=features), rng.uniform(0, 5, size=features))
    layer.gamma.assign(rng.normal(size=features).astype("float32"))
    layer.beta.assign(rng.normal(size=features).astype("float32"))
    x = rng.normal(size=shape).astype("float32")
    scale, shift = bn.inference_affine()
    view = [1, 1, 1]
    view[axis] = -1
    expected = x * scale.reshape(view) + shift.reshape(view)
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_set_moving_statistics_with_renorm_keeps_the_stddev_consistent(cls):
    layer = built(cls, renorm=True, epsilon=0.5)
    as_batchnorm(layer).set_moving_statistics(np.zeros(3), np.full(3, 3.5))
    np.testing.assert_allclose(to_numpy(layer.moving_stddev), np.full(3, 2.0))


@pytest.mark.parametrize("cls", CLASSES)
def test_set_moving_statistics_refuses_bad_values_and_unbuilt_layers(cls):
    bn = as_batchnorm(built(cls))
    with pytest.raises(ValueError, match="`variance`"):
        bn.set_moving_statistics(np.zeros(3), np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="`mean`"):
        bn.set_moving_statistics(np.array([np.nan, 0, 0]), np.ones(3))
    with pytest.raises(ValueError, match="not built"):
        as_batchnorm(cls()).set_moving_statistics(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("cls", CLASSES)
def test_training_is_plain_only_for_plain_trainable_bn(cls):
    assert as_batchnorm(built(cls)).training_is_plain
    assert not as_batchnorm(built(cls, renorm=True)).training_is_plain
    frozen = built(cls)
    frozen.trainable = False
    assert not as_batchnorm(frozen).training_is_plain
    if cls is MomentumBatchNormalization:
        assert not built(cls, virtual_batch_size=2).training_is_plain


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("options", [{}, {"renorm": True}, {"center": False}, {"scale": False}])
def test_keras_variables_are_keras_bns_in_its_weights_order(cls, options):
    reference = built(keras.layers.BatchNormalization, **options)
    bn = as_batchnorm(built(cls, **options))
    names = list(bn.keras_variables())
    assert names == [v.path.split("/")[-1] for v in reference.weights]
    assert set(names) <= set(bn.statistic_variables())


@pytest.mark.parametrize("cls", CLASSES)
def test_set_keras_variables_assigns_and_derives_missing_renorm_state(cls):
    layer = built(cls, renorm=True)
    bn = as_batchnorm(layer)
    values = {
        "gamma": np.full(3, 2.0),
        "beta": np.full(3, 0.5),
        "moving_mean": np.full(3, 1.0),
        "moving_variance": np.full(3, 4.0),
    }
    bn.set_keras_variables(values)
    np.testing.assert_array_equal(to_numpy(layer.gamma), np.full(3, 2.0))
    np.testing.assert_array_equal(to_numpy(layer.moving_stddev), np.full(3, 2.0))
    np.testing.assert_array_equal(to_numpy(layer.renorm_mean), np.full(3, 1.0))
    with pytest.raises(ValueError, match="'gamma'"):
        bn.set_keras_variables({"moving_mean": np.zeros(3), "moving_variance": np.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        bn.set_keras_variables({**values, "gamma": np.ones(4)})


def test_the_adapter_keeps_no_batch_statistics_and_drops_nothing():
    bn = as_batchnorm(built(keras.layers.BatchNormalization))
    assert bn.last_batch_statistics() is None
    assert bn.dropped_options(MomentumBatchNormalization) == {}
    assert bn.dropped_options(keras.layers.BatchNormalization) == {}


@pytest.mark.parametrize(
    ("options", "dropped"),
    [
        ({}, {}),
        ({"debias": True}, {"debias": True}),
        ({"virtual_batch_size": 4}, {"virtual_batch_size": 4}),
        ({"momentum": None}, {"momentum": None}),
        ({"renorm": True}, {}),  # Keras BN has renorm
        ({"skip_nonfinite": False}, {}),
    ],
)
def test_momentum_bn_names_the_options_keras_bn_would_drop(options, dropped):
    layer = built(MomentumBatchNormalization, **options)
    assert layer.dropped_options(keras.layers.BatchNormalization) == dropped
    assert layer.dropped_options(MomentumBatchNormalization) == {}


def test_momentum_bn_last_batch_statistics_are_copies_of_the_last_training_batch():
    layer = built(MomentumBatchNormalization, features=2)
    x = np.array([[0.0, 1.0], [2.0, 5.0]], "float32")
    layer(x, training=True)
    mean, variance = layer.last_batch_statistics()
    layer(x * 3, training=True)
    np.testing.assert_array_equal(to_numpy(mean), [1.0, 3.0])
    np.testing.assert_array_equal(to_numpy(variance), [1.0, 4.0])


def test_set_moving_statistics_count_sets_the_cumulative_history():
    layer = built(MomentumBatchNormalization, features=1, momentum=None)
    layer.set_moving_statistics(np.array([0.0]), np.array([1.0]), count=3)
    assert int(to_numpy(layer.num_batches_tracked)) == 3
    layer(np.array([[4.0], [4.0]], "float32"), training=True)
    # (3 * 0 + 4) / 4: the written statistics count as three batches.
    np.testing.assert_allclose(to_numpy(layer.moving_mean), [1.0])
    with pytest.raises(ValueError, match="`count`"):
        layer.set_moving_statistics(np.array([0.0]), np.array([1.0]), count=-1)
    with pytest.raises(TypeError, match="`count`"):
        layer.set_moving_statistics(np.array([0.0]), np.array([1.0]), count=1.5)


def test_every_bn_layer_of_the_package_implements_the_interface():
    # The Protocol lists only what consumers use: a member added to it must be
    # implemented by every BN layer, or graph walking stops recognizing that layer.
    from keras_bn_tools.layers import FrozenBatchNormalization

    for layer in (MomentumBatchNormalization(), FrozenBatchNormalization()):
        assert is_batchnorm(layer)
        assert isinstance(as_batchnorm(layer), BatchNormInterface)
        assert as_batchnorm(layer) is layer
