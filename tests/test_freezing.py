"""freeze_batchnorm / unfreeze_batchnorm: every BN replaced, outputs bit-identical, statistics
fixed through fine-tuning, and the way back."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from keras_bn_tools import batchnorm_layers, freeze_batchnorm, unfreeze_batchnorm
from keras_bn_tools.layers import FrozenBatchNormalization, MomentumBatchNormalization
from keras_bn_tools.layers.interface import as_batchnorm
from keras_bn_tools.ops import to_numpy

backend_agnostic = pytest.mark.backend_agnostic


def _randomize_statistics(model, seed=0):
    """Random gamma, beta and moving statistics in every BN, so that none hides behind 0/1."""
    rng = np.random.default_rng(seed)
    for layer in batchnorm_layers(model):
        bn = as_batchnorm(layer)
        values = {}
        for name, variable in bn.keras_variables().items():
            shape = tuple(variable.shape)
            if name in ("moving_variance", "gamma"):
                values[name] = rng.uniform(0.5, 2.0, shape)
            else:
                values[name] = rng.normal(0, 0.5, shape)
        bn.set_keras_variables(values)


def _state(model):
    """Per BN layer (by path order): its Keras BN variables as NumPy arrays."""
    return [
        {name: to_numpy(v) for name, v in as_batchnorm(layer).keras_variables().items()}
        for layer in batchnorm_layers(model)
    ]


def _mixed_model():
    """Keras BN, MomentumBatchNormalization, a nested model and TimeDistributed(BN)."""
    inner = keras.Sequential(
        [keras.Input((4, 6)), keras.layers.Dense(6), keras.layers.BatchNormalization()],
        name="inner",
    )
    inputs = keras.Input((4, 3))
    x = keras.layers.Dense(6)(inputs)
    x = MomentumBatchNormalization(name="momentum_bn")(x)
    x = inner(x)
    x = keras.layers.TimeDistributed(keras.layers.BatchNormalization(axis=-1), name="td")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs, name="mixed")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    _randomize_statistics(model)
    return model


@backend_agnostic
def test_every_bn_frozen_and_outputs_bit_identical():
    model = _mixed_model()
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype("float32")
    expected = to_numpy(model(x, training=False))
    frozen = freeze_batchnorm(model)
    found = batchnorm_layers(frozen)
    assert len(found) == 3 and all(isinstance(layer, FrozenBatchNormalization) for layer in found)
    assert isinstance(frozen.get_layer("td"), keras.layers.TimeDistributed)
    assert frozen.get_layer("momentum_bn").name == "momentum_bn"
    assert frozen.compiled and frozen.name == "mixed"
    for training in (False, True):
        np.testing.assert_array_equal(to_numpy(frozen(x, training=training)), expected)
    for got, want in zip(_state(frozen), _state(model), strict=True):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # The source model is untouched, and still a trainable BN model.
    assert not any(isinstance(layer, FrozenBatchNormalization) for layer in batchnorm_layers(model))


@backend_agnostic
@pytest.mark.parametrize("train_affine", [False, True])
def test_fit_leaves_statistics_and_trains_affine_only_when_asked(train_affine):
    model = _mixed_model()
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, size=(16, 4, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    frozen = freeze_batchnorm(model, train_affine=train_affine)
    frozen.trainable = True  # the usual fine-tuning switch does not unfreeze statistics
    before = _state(frozen)
    frozen.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after = _state(frozen)
    for old, new in zip(before, after, strict=True):
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)
        for name in ("gamma", "beta"):
            assert (not np.array_equal(new[name], old[name])) == train_affine, name


@backend_agnostic
@pytest.mark.parametrize("to", [keras.layers.BatchNormalization, MomentumBatchNormalization])
def test_unfreeze_restores_trainable_bn_with_the_same_state(to):
    model = _mixed_model()
    x = np.random.default_rng(2).normal(size=(5, 4, 3)).astype("float32")
    frozen = freeze_batchnorm(model, train_affine=True)
    restored = unfreeze_batchnorm(frozen, to=to)
    layers = batchnorm_layers(restored)
    assert len(layers) == 3 and all(type(layer) is to for layer in layers)
    assert isinstance(restored.get_layer("td"), keras.layers.TimeDistributed)
    for got, want in zip(_state(restored), _state(frozen), strict=True):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(
        to_numpy(restored(x, training=False)), to_numpy(model(x, training=False))
    )
    restored(x, training=True)  # trains again: the statistics move
    assert not np.array_equal(_state(restored)[0]["moving_mean"], _state(frozen)[0]["moving_mean"])


@backend_agnostic
def test_frozen_models_save_and_fold():
    from keras_bn_tools import fold_batchnorm

    model = keras.Sequential(
        [keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    _randomize_statistics(model)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 2)).astype("float32")
    frozen = freeze_batchnorm(model)
    folded = fold_batchnorm(frozen)
    assert not batchnorm_layers(folded)  # folding treats a frozen BN like a BN
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


@backend_agnostic
def test_bad_input_names_the_argument():
    model = _mixed_model()
    with pytest.raises(TypeError, match="`model`"):
        freeze_batchnorm(keras.layers.BatchNormalization())
    with pytest.raises(TypeError, match="`model`"):
        unfreeze_batchnorm("model.keras")
    with pytest.raises(TypeError, match="`train_affine`"):
        freeze_batchnorm(model, train_affine="yes")
    with pytest.raises(TypeError, match="`train_affine`"):
        freeze_batchnorm(model, train_affine=1)
    with pytest.raises(TypeError, match="`to`"):
        unfreeze_batchnorm(model, to=keras.layers.LayerNormalization)
    with pytest.raises(TypeError, match="`to`"):
        unfreeze_batchnorm(model, to=keras.layers.BatchNormalization())
    with pytest.raises(TypeError, match="`to`"):
        unfreeze_batchnorm(model, to=FrozenBatchNormalization)


@backend_agnostic
def test_a_model_without_bn_gives_a_warning_and_an_equivalent_copy():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.ones((2, 3), "float32")
    with pytest.warns(UserWarning, match="no BatchNormalization layer; freeze_batchnorm"):
        copy = freeze_batchnorm(model)
    assert copy is not model
    np.testing.assert_array_equal(to_numpy(copy(x)), to_numpy(model(x)))
    with pytest.warns(UserWarning, match="no FrozenBatchNormalization layer"):
        unfreeze_batchnorm(_mixed_model())
    frozen = freeze_batchnorm(_mixed_model())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # frozen layers found: no warning
        unfreeze_batchnorm(frozen)


APPLICATIONS = {
    "ResNet50": keras.applications.ResNet50,
    "MobileNetV2": keras.applications.MobileNetV2,
    "EfficientNetB0": keras.applications.EfficientNetB0,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications(name):
    """weights=None, 32x32, 3 classes: bit-identical inference; a fine-tuning step keeps the
    statistics; with train_affine=True gamma and beta train and the statistics do not.

    Every gamma and beta is then a trainable weight, updated by the optimizer; a few do not
    move in one step because their gradient is exactly 0 (units dead at initialization: with
    MobileNetV2 about 40 of 52 gammas), so the test asserts that they are trained and that
    some moved, not that all did."""
    keras.utils.set_random_seed(0)
    model = APPLICATIONS[name](input_shape=(32, 32, 3), weights=None, classes=3)
    _randomize_statistics(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 1])
    expected = to_numpy(model(x, training=False))
    for train_affine in (False, True):
        frozen = freeze_batchnorm(model, train_affine=train_affine)
        layers = batchnorm_layers(frozen)
        assert len(layers) == len(batchnorm_layers(model))
        assert all(isinstance(layer, FrozenBatchNormalization) for layer in layers)
        # (training=True would differ here only by the architectures' dropout layers.)
        np.testing.assert_array_equal(to_numpy(frozen(x, training=False)), expected)
        trainable = {id(v) for v in frozen.trainable_weights}
        affine = [v for layer in layers for v in (layer.gamma, layer.beta)]
        assert all((id(v) in trainable) == train_affine for v in affine)
        frozen.compile(
            keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", run_eagerly=True
        )
        before = _state(frozen)
        frozen.train_on_batch(x, y)
        after = _state(frozen)
        moved = {"gamma": 0, "beta": 0}
        for old, new in zip(before, after, strict=True):
            for stat in ("moving_mean", "moving_variance"):
                np.testing.assert_array_equal(new[stat], old[stat])
            for key in moved:
                moved[key] += not np.array_equal(new[key], old[key])
        if train_affine:
            assert moved["gamma"] > 0 and moved["beta"] > 0, moved
        else:
            assert moved == {"gamma": 0, "beta": 0}
    restored = unfreeze_batchnorm(frozen)
    for got, want in zip(_state(restored), _state(frozen), strict=True):
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value)
