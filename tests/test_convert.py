"""convert_batchnorm: every BN layer of a model to another BN class and back (issue 15)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_helpers import all_layers

import keras_bn_tools
from keras_bn_tools import MomentumBatchNormalization, batchnorm_layers, convert_batchnorm
from keras_bn_tools.callbacks import MomentumScheduler

backend_agnostic = pytest.mark.backend_agnostic
KerasBN = keras.layers.BatchNormalization


def to_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def randomize_bn(model, seed=0):
    """Moving statistics, gamma and beta away from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in batchnorm_layers(model):
        shape = layer.moving_mean.shape
        layer.moving_mean.assign(rng.normal(size=shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=shape))
        if layer.scale:
            layer.gamma.assign(rng.normal(size=shape))
        if layer.center:
            layer.beta.assign(rng.normal(size=shape))


def sequential() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, activation="relu"),
            KerasBN(momentum=0.9, epsilon=1e-2),
            keras.layers.Dense(4),
            KerasBN(center=False),
            keras.layers.Dense(2),
        ],
        name="mlp",
    )


def functional() -> keras.Model:
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    a = KerasBN(name="bn_a")(x)
    b = KerasBN(axis=1, scale=False, name="bn_b")(x)
    x = keras.layers.Add()([a, b])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="functional")


def nested() -> keras.Model:
    block = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), KerasBN(name="inner_bn")], name="block"
    )
    inputs = keras.Input((4,))
    x = block(inputs)
    x = keras.layers.TimeDistributed(KerasBN(name="wrapped_bn"), name="wrapper")(
        keras.layers.Reshape((2, 2))(x)
    )
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, KerasBN(name="outer_bn")(x), name="nested")


MODELS = {"sequential": (sequential, (3,)), "functional": (functional, (6, 6, 2))}
MODELS["nested"] = (nested, (4,))


def _inputs(shape, seed=1):
    return np.random.default_rng(seed).normal(size=(8, *shape)).astype("float32")


@backend_agnostic
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_conversion_is_bit_identical_and_leaves_the_input_untouched(kind):
    make, shape = MODELS[kind]
    model = make()
    randomize_bn(model)
    x = _inputs(shape)
    before = [to_numpy(w) for w in model.weights]
    converted = convert_batchnorm(model)

    originals, news = batchnorm_layers(model), batchnorm_layers(converted)
    assert len(news) == len(originals) > 0
    assert all(type(layer) is MomentumBatchNormalization for layer in news)
    assert [layer.name for layer in news] == [layer.name for layer in originals]
    assert [layer.name for layer in converted.layers] == [layer.name for layer in model.layers]
    assert type(converted) is type(model) and converted.name == model.name
    for old, new in zip(originals, news, strict=True):
        for key in ("axis", "momentum", "epsilon", "center", "scale"):
            assert new.get_config()[key] == old.get_config()[key], key
    # The input model's layers and weights are its own and unchanged.
    assert all(isinstance(layer, KerasBN) for layer in batchnorm_layers(model))
    assert not any(type(layer) is MomentumBatchNormalization for layer in all_layers(model))
    for old, now in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, to_numpy(now))
    assert not {id(v) for v in converted.weights} & {id(v) for v in model.weights}

    np.testing.assert_array_equal(to_numpy(converted(x)), to_numpy(model(x)))
    np.testing.assert_array_equal(
        to_numpy(converted(x, training=True)), to_numpy(model(x, training=True))
    )
    for old, new in zip(originals, news, strict=True):  # the same update of the statistics
        np.testing.assert_array_equal(to_numpy(new.moving_mean), to_numpy(old.moving_mean))
        np.testing.assert_array_equal(to_numpy(new.moving_variance), to_numpy(old.moving_variance))


@backend_agnostic
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_converting_back_gives_exactly_keras_batchnorm_weights(kind):
    make, shape = MODELS[kind]
    model = make()
    randomize_bn(model, seed=3)
    ours = convert_batchnorm(model, momentum=None, debias=True)
    with pytest.warns(UserWarning, match=r"dropped options .*debias=True"):  # issue 26
        back = convert_batchnorm(ours, to=KerasBN, lossy=True, momentum=0.99)
    assert all(type(layer) is KerasBN for layer in batchnorm_layers(back))
    got, want = back.get_weights(), model.get_weights()
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    x = _inputs(shape)
    np.testing.assert_array_equal(to_numpy(back(x)), to_numpy(model(x)))


@backend_agnostic
def test_overrides_set_the_new_layers_arguments():
    converted = convert_batchnorm(sequential(), momentum=None, debias=True, virtual_batch_size=2)
    for layer in batchnorm_layers(converted):
        assert layer.momentum is None and layer.debias and layer.virtual_batch_size == 2
    assert batchnorm_layers(converted)[0].epsilon == pytest.approx(1e-2)  # kept


@backend_agnostic
def test_cumulative_momentum_cannot_become_keras_batchnorm_silently():
    ours = convert_batchnorm(sequential(), momentum=None)
    with pytest.raises(ValueError, match="momentum"):
        convert_batchnorm(ours, to=KerasBN)


@backend_agnostic
def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="`to`"):
        convert_batchnorm(sequential(), to=keras.layers.Dense)
    with pytest.raises(TypeError, match="momentom"):
        convert_batchnorm(sequential(), momentom=0.5)
    with pytest.raises(TypeError, match="name"):
        convert_batchnorm(sequential(), name="same")
    with pytest.raises(ValueError, match="momentum"):
        convert_batchnorm(sequential(), momentum=1.5)
    with pytest.raises(TypeError, match="`model`"):
        convert_batchnorm(keras.layers.Dense(2))


@backend_agnostic
def test_a_model_without_batchnorm_warns_and_is_copied():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        copy = convert_batchnorm(model)
    x = _inputs((2,))
    np.testing.assert_array_equal(to_numpy(copy(x)), to_numpy(model(x)))


@backend_agnostic
def test_a_compiled_model_stays_compiled_and_trains():
    model = sequential()
    model.compile("sgd", "mse")
    converted = convert_batchnorm(model)
    assert converted.compiled
    x = _inputs((3,))
    converted.fit(x, np.zeros((8, 2)), epochs=1, verbose=0)
    assert all(int(to_numpy(b.num_batches_tracked)) == 1 for b in batchnorm_layers(converted))


@backend_agnostic
@given(
    momentum=st.floats(0.0, 1.0) | st.none(),
    debias=st.booleans(),
    center=st.booleans(),
    scale=st.booleans(),
)
def test_inference_is_bit_identical_for_any_overrides(momentum, debias, center, scale):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), KerasBN(center=center, scale=scale)]
    )
    randomize_bn(model, seed=5)
    converted = convert_batchnorm(model, momentum=momentum, debias=debias)
    x = _inputs((3,))
    np.testing.assert_array_equal(to_numpy(converted(x)), to_numpy(model(x)))


# ------------------------------------------------------------ keras.applications


# ResNet50 also runs under JAX and PyTorch; the others only under TensorFlow, for time.
APPLICATIONS = [pytest.param("ResNet50", marks=backend_agnostic), "MobileNetV2", "EfficientNetB0"]


@pytest.fixture(scope="module")
def applications():
    """`get(name)`: the application (weights=None, 32x32 input) and its conversion, built
    once per module on first use."""
    built = {}

    def get(name):
        if name not in built:
            keras.utils.set_random_seed(0)
            model = getattr(keras.applications, name)(
                input_shape=(32, 32, 3), weights=None, classes=3
            )
            randomize_bn(model, seed=11)
            built[name] = (model, convert_batchnorm(model))
        return built[name]

    return get


@pytest.mark.parametrize("name", APPLICATIONS)
def test_applications_convert_bit_identically(applications, name):
    model, converted = applications(name)
    originals, news = batchnorm_layers(model), batchnorm_layers(converted)
    assert len(news) == len(originals) > 40
    assert all(type(layer) is MomentumBatchNormalization for layer in news)
    assert [layer.name for layer in news] == [layer.name for layer in originals]
    x = _inputs((32, 32, 3))[:2]
    np.testing.assert_array_equal(to_numpy(converted(x)), to_numpy(model(x)))
    if name != "EfficientNetB0":  # whose dropout layers draw different masks in training
        np.testing.assert_array_equal(
            to_numpy(converted(x, training=True)), to_numpy(model(x, training=True))
        )
    back = convert_batchnorm(converted, to=KerasBN)
    for a, b in zip(back.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@backend_agnostic
def test_scheduler_and_momentum_assignment_drive_every_converted_resnet50_layer(applications):
    _, converted = applications("ResNet50")
    model = keras.models.clone_model(converted)  # a fresh copy this test may train
    model.set_weights(converted.get_weights())
    layers = batchnorm_layers(model)
    assert len(layers) == 53
    model.compile(keras.optimizers.SGD(0.0), "categorical_crossentropy")  # weights stay put
    x = _inputs((32, 32, 3))[:4]
    y = keras.utils.to_categorical([0, 1, 2, 0], 3)
    counts = [int(to_numpy(layer.num_batches_tracked)) for layer in layers]
    scheduler = MomentumScheduler(lambda epoch: 0.0)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[scheduler])
    # Momentum 0: every layer's moving statistics are its last batch's.
    for layer in layers:
        assert layer.momentum == 0.0
        np.testing.assert_array_equal(to_numpy(layer.moving_mean), to_numpy(layer.batch_mean))

    frozen = {layer.name: to_numpy(layer.moving_mean) for layer in layers}
    for layer in layers:
        layer.momentum = 1.0  # keep the moving statistics as they are
    model.fit(x[::-1], y[::-1], batch_size=4, epochs=1, verbose=0)
    for layer, count in zip(layers, counts, strict=True):
        np.testing.assert_array_equal(to_numpy(layer.moving_mean), frozen[layer.name])
        assert int(to_numpy(layer.num_batches_tracked)) == count + 2


@backend_agnostic
def test_top_level_export():
    assert keras_bn_tools.convert_batchnorm is convert_batchnorm
    assert "convert_batchnorm" in keras_bn_tools.__all__
