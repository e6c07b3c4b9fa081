"""MomentumBatchNormalization and Keras BN weights: from_batchnorm, set_weights, .weights.h5."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools import convert_batchnorm
from keras_bn_tools.layers import MomentumBatchNormalization

pytestmark = pytest.mark.backend_agnostic
KerasBN = keras.layers.BatchNormalization


def to_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def trained_keras_bn(**kwargs) -> tuple[KerasBN, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(16, 4)).astype("float32")
    layer = KerasBN(**kwargs)
    layer.build(x.shape)
    for _ in range(3):
        layer(x, training=True)
    if layer.scale:
        layer.gamma.assign(rng.uniform(0.5, 2.0, size=4))
    if layer.center:
        layer.beta.assign(rng.normal(size=4))
    return layer, x


@pytest.mark.parametrize(
    "kwargs", [{}, {"center": False}, {"scale": False, "momentum": 0.9}, {"renorm": True}]
)
def test_from_batchnorm_copies_config_name_and_weights(kwargs):
    keras_bn, x = trained_keras_bn(**kwargs)
    layer = MomentumBatchNormalization.from_batchnorm(keras_bn)
    assert type(layer) is MomentumBatchNormalization and layer.name == keras_bn.name
    for key, value in keras_bn.get_config().items():
        if key != "dtype":
            assert layer.get_config()[key] == value, key
    keras_weights = keras_bn.get_weights()
    for a, b in zip(layer.get_weights()[: len(keras_weights)], keras_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(to_numpy(layer.num_batches_tracked)) == 0  # extra state starts fresh
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(keras_bn(x)))
    np.testing.assert_array_equal(
        to_numpy(layer(x, training=True)), to_numpy(keras_bn(x, training=True))
    )
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), to_numpy(keras_bn.moving_mean))


def test_from_batchnorm_overrides_and_an_unbuilt_layer():
    layer = MomentumBatchNormalization.from_batchnorm(
        KerasBN(epsilon=0.01, name="bn"), momentum=None, debias=True
    )
    assert not layer.built and layer.name == "bn" and layer.epsilon == pytest.approx(0.01)
    assert layer.momentum is None and layer.debias


def test_from_batchnorm_refuses_other_layers_and_unknown_overrides():
    with pytest.raises(TypeError, match="`layer`"):
        MomentumBatchNormalization.from_batchnorm(keras.layers.Dense(2))
    with pytest.raises(TypeError, match="debiass"):
        MomentumBatchNormalization.from_batchnorm(KerasBN(), debiass=True)


@pytest.mark.parametrize("debias", [False, True])
def test_set_weights_accepts_keras_batchnorm_arrays_with_fresh_extra_state(debias):
    keras_bn, x = trained_keras_bn()
    layer = MomentumBatchNormalization(momentum=0.5, debias=debias)
    layer.build(x.shape)
    layer(x * 3.0, training=True)  # extra state away from fresh
    layer.set_weights(keras_bn.get_weights())
    assert int(to_numpy(layer.num_batches_tracked)) == 0
    np.testing.assert_array_equal(to_numpy(layer.batch_mean), np.zeros(4))
    np.testing.assert_array_equal(to_numpy(layer.batch_variance), np.ones(4))
    assert layer.momentum == 0.5
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(keras_bn(x)))
    # Training continues from the loaded statistics as from a full average.
    mean = to_numpy(keras_bn.moving_mean)
    layer(x, training=True)
    np.testing.assert_allclose(
        to_numpy(layer.moving_mean), 0.5 * mean + 0.5 * x.mean(0), rtol=1e-5, atol=1e-6
    )


def test_set_weights_still_takes_all_weights_and_names_both_lengths_otherwise():
    keras_bn, x = trained_keras_bn()
    source = MomentumBatchNormalization.from_batchnorm(keras_bn)
    source(x, training=True)
    layer = MomentumBatchNormalization()
    layer.build(x.shape)
    layer.set_weights(source.get_weights())
    for a, b in zip(layer.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"all its \d+ weights .* or the 4 of keras"):
        layer.set_weights(source.get_weights()[:3])
    with pytest.raises(ValueError, match="shape"):
        layer.set_weights([np.zeros(5, "float32")] * 4)


def _keras_bn_model() -> keras.Sequential:
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), KerasBN(), keras.layers.Dense(2), KerasBN()]
    )


def test_weights_h5_path_load_into_keras_bn_architecture_then_convert(tmp_path):
    source = _keras_bn_model()
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    source(x, training=True)
    path = str(tmp_path / "keras_bn.weights.h5")
    source.save_weights(path)

    # The path that works: Keras-BN architecture, load, convert.
    model = _keras_bn_model()
    model.load_weights(path)
    converted = convert_batchnorm(model)
    np.testing.assert_array_equal(to_numpy(converted(x)), to_numpy(source(x)))

    # The direct attempt fails with a message that gives that path.
    direct = convert_batchnorm(_keras_bn_model())
    with pytest.raises(ValueError, match="Load them into the Keras-BN architecture, then convert"):
        direct.load_weights(path)

    # Converted back, the weights load into a plain Keras-BN model.
    back_path = str(tmp_path / "back.weights.h5")
    convert_batchnorm(converted, to=KerasBN).save_weights(back_path)
    plain = _keras_bn_model()
    plain.load_weights(back_path)
    np.testing.assert_array_equal(to_numpy(plain(x)), to_numpy(source(x)))


def test_own_weights_h5_and_keras_files_round_trip(tmp_path):
    model = convert_batchnorm(_keras_bn_model(), momentum=None, debias=True)
    x = np.random.default_rng(2).normal(size=(8, 4)).astype("float32")
    model(x, training=True)
    model.save_weights(str(tmp_path / "own.weights.h5"))
    twin = convert_batchnorm(_keras_bn_model(), momentum=None, debias=True)
    twin.load_weights(str(tmp_path / "own.weights.h5"))
    for a, b in zip(twin.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
