"""The graph module: finding BN layers (wrapped or not) and cloning with policies."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools import graph
from keras_bn_tools.graph import batchnorm_layers, find_layers, layer_keys, statistic_variables
from keras_bn_tools.layers import MomentumBatchNormalization

pytestmark = pytest.mark.backend_agnostic


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def test_batchnorm_layers_finds_bn_inside_wrappers_nested_models_in_call_order():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="inner")],
        name="block",
    )
    inputs = keras.Input((2, 4))
    x = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="wrapped"), name="td_bn")(
        inputs
    )
    x = keras.layers.TimeDistributed(inner)(x)
    x = keras.layers.Flatten()(x)
    outputs = MomentumBatchNormalization(name="outer")(x)
    model = keras.Model(inputs, outputs)
    assert [layer.name for layer in batchnorm_layers(model)] == ["wrapped", "inner", "outer"]


def test_find_layers_lists_a_shared_layer_once_and_unwraps_only_when_asked():
    shared = keras.layers.Dense(4, activation="relu", name="shared")
    block = keras.Sequential([keras.Input((4,)), shared], name="block")
    inputs = keras.Input((2, 4))
    x = keras.layers.TimeDistributed(keras.layers.Dense(4, activation="relu", name="td"))(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4, name="linear")(x)
    outputs = block(shared(x))
    model = keras.Model(inputs, outputs)

    def is_relu_dense(layer):
        return isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.relu

    assert [layer.name for layer in find_layers(model, is_relu_dense)] == ["shared"]
    unwrapped = find_layers(model, is_relu_dense, unwrap=True)
    assert [layer.name for layer in unwrapped] == ["td", "shared"]


@pytest.mark.parametrize("value", [None, keras.layers.Dense(2), "model", 3])
def test_batchnorm_layers_refuses_what_is_not_a_model_by_name(value):
    with pytest.raises(TypeError, match=r"`model` must be a keras\.Model"):
        batchnorm_layers(value)


def test_layer_keys_number_repeated_names():
    layers = [keras.layers.Dense(1, name="bn"), keras.layers.Dense(1, name="x")]
    layers.append(keras.layers.Dense(1, name="bn"))
    assert layer_keys(layers) == ["bn", "x", "bn#2"]


def test_statistic_variables_leave_out_missing_gamma_and_beta():
    layer = keras.layers.BatchNormalization(center=False)
    layer.build((None, 3))
    found = statistic_variables([("k", layer)])
    assert [stat for _, stat, _ in found] == ["moving_mean", "moving_variance", "gamma"]


def sample_models():
    """A Sequential and a functional model, each with a wrapped BN and a nested model."""
    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(5), keras.layers.BatchNormalization(name="ibn")],
        name="inner",
    )
    sequential = keras.Sequential(
        [
            keras.Input((2, 5)),
            keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="tbn"), name="td"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="d"),
            inner,
            keras.layers.BatchNormalization(name="obn"),
        ],
        name="seq",
    )
    inputs = keras.Input((2, 5), name="x")
    x = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="tbn2"), name="td2")(
        inputs
    )
    x = keras.layers.Flatten()(x)
    y = keras.layers.Dense(5, name="d2")(x)
    y = keras.layers.BatchNormalization(name="fbn")(y)
    functional = keras.Model(inputs, keras.layers.Add()([y, keras.layers.Dense(5)(x)]))
    rng = np.random.default_rng(0)
    for model in (sequential, functional):
        for layer in batchnorm_layers(model):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_mean.shape))
    return sequential, functional


@pytest.mark.parametrize("which", [0, 1])
def test_default_clone_is_an_equivalent_independent_compiled_copy(which):
    model = sample_models()[which]
    model.compile(optimizer="sgd", loss="mse")
    model.trainable = False
    new = graph.clone_model(model)
    assert type(new) is type(model) and new.name == model.name
    assert new.compiled and not new.trainable
    assert [w.name for w in new.weights] == [w.name for w in model.weights]
    assert not {id(w) for w in new.weights} & {id(w) for w in model.weights}
    x = np.random.default_rng(1).normal(size=(3, 2, 5)).astype("float32")
    np.testing.assert_array_equal(numpy(new(x)), numpy(model(x)))


@pytest.mark.parametrize("which", [0, 1])
def test_batchnorm_policy_sees_every_bn_and_rewraps_wrapped_ones(which):
    model = sample_models()[which]
    seen = []

    def to_momentum(bn):
        seen.append(bn.name)
        config = {**bn.get_config(), "momentum": 0.5}
        new = MomentumBatchNormalization.from_config(config)
        new.build_from_config(bn.get_build_config())
        new.set_weights(bn.get_weights())
        return new

    new = graph.clone_model(model, graph.BatchNormPolicy(to_momentum))
    assert sorted(seen) == sorted(layer.name for layer in batchnorm_layers(model))
    found = batchnorm_layers(new)
    assert [layer.name for layer in found] == [layer.name for layer in batchnorm_layers(model)]
    assert all(isinstance(layer, MomentumBatchNormalization) for layer in found)
    assert all(layer.momentum == 0.5 for layer in found)
    wrapper = new.layers[0] if which == 0 else new.get_layer("td2")
    assert isinstance(wrapper, keras.layers.TimeDistributed)
    x = np.random.default_rng(1).normal(size=(3, 2, 5)).astype("float32")
    np.testing.assert_allclose(numpy(new(x)), numpy(model(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1])
def test_drop_passes_the_input_through_and_insert_after_adds_layers(which):
    model = sample_models()[which]

    class Policy(graph.Policy):
        def replace(self, layer):
            return graph.DROP if layer.name in ("obn", "fbn") else None

        def insert_after(self, original):
            if original.name in ("d", "d2"):
                return [keras.layers.Activation("relu", name=f"{original.name}_relu")]
            return []

    new = graph.clone_model(model, Policy())
    names = [layer.name for layer in new.layers]
    assert "obn" not in names and "fbn" not in names
    dense = "d" if which == 0 else "d2"
    assert f"{dense}_relu" in names
    x = np.random.default_rng(2).normal(size=(3, 2, 5)).astype("float32")
    # Rebuild the expectation by hand from the original's layers.
    if which == 0:
        h = model.layers[0](x, training=False)
        h = keras.ops.relu(model.get_layer("d")(model.layers[1](h)))
        expected = model.get_layer("inner")(h, training=False)
    else:
        h = model.layers[2](model.get_layer("td2")(x, training=False))
        expected = keras.ops.relu(model.get_layer("d2")(h)) + model.layers[-2](h)
    np.testing.assert_allclose(numpy(new(x)), numpy(expected), rtol=1e-5, atol=1e-5)


def test_replacement_weights_are_cast_and_assigned_once_built():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])

    class Policy(graph.Policy):
        def replace(self, layer):
            kernel = np.full((3, 2), 0.5, dtype="float64")
            bias = np.array([1.0, -1.0], dtype="float64")
            return graph.Replacement(keras.layers.Dense(2, name="new"), [kernel, bias])

    new = graph.clone_model(model, Policy())
    assert new.layers[0].kernel.dtype == "float32"
    np.testing.assert_array_equal(numpy(new(np.ones((1, 3), "float32"))), [[2.5, 0.5]])
    with pytest.raises(ValueError, match="weight arrays"):

        class Bad(graph.Policy):
            def replace(self, layer):
                return graph.Replacement(keras.layers.Dense(2), [np.ones((3, 2))])

        graph.clone_model(model, Bad())


def test_nested_policy_is_asked_for_each_nested_model():
    model = sample_models()[0]
    visited = []

    class Policy(graph.Policy):
        def nested(self, inner):
            visited.append(inner.name)
            return self

    graph.clone_model(model, Policy())
    assert visited == ["inner"]


@pytest.mark.parametrize("value", [keras.layers.Dense(2), "model", None])
def test_clone_model_refuses_what_has_no_graph(value):
    with pytest.raises(TypeError, match=r"`model` must be a keras\.Sequential"):
        graph.clone_model(value)


def test_batchnorm_of_decides_wrapped_or_not():
    bn = keras.layers.BatchNormalization()
    assert graph.batchnorm_of(bn) is bn
    assert graph.batchnorm_of(keras.layers.TimeDistributed(bn)) is bn
    assert graph.batchnorm_of(keras.layers.TimeDistributed(keras.layers.Dense(2))) is None
    assert graph.batchnorm_of(keras.layers.Dense(2)) is None


def test_every_bn_class_of_the_package_is_found_as_a_bn():
    # A layer that misses one member of BatchNormInterface silently stops being a BN
    # for the graph module (and so for folding, freezing, recalibration): caught here.
    from keras_bn_tools.layers import FrozenBatchNormalization

    kinds = [keras.layers.BatchNormalization, MomentumBatchNormalization, FrozenBatchNormalization]
    model = keras.Sequential([keras.Input((3,)), *(kind(name=kind.__name__) for kind in kinds)])
    assert [layer.name for layer in batchnorm_layers(model)] == [k.__name__ for k in kinds]
    for layer in model.layers:
        assert graph.batchnorm_of(keras.layers.TimeDistributed(layer)) is layer
