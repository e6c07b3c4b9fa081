"""insert_batchnorm and batchnorm_layers on Sequential, functional, branching and nested models."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_helpers import all_layers

from keras_bn_tools import Placement, batchnorm_layers, insert_batchnorm
from keras_bn_tools._keras_compat import node_count
from keras_bn_tools.rewrite import replace_layers

pytestmark = pytest.mark.backend_agnostic

BN = "BatchNormalization"
ACTIVATIONS = ["relu", "tanh", "sigmoid", "linear"]


# ---------------------------------------------------------------- helpers


def predict(model: keras.Model, x: np.ndarray):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x, training=False))


def make_identity(bns) -> None:
    """Make each BN layer compute the identity in inference mode."""
    for bn in bns:
        bn.gamma.assign(np.ones(bn.gamma.shape))
        bn.beta.assign(np.zeros(bn.beta.shape))
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape))
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 1.0 - bn.epsilon))


def snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def rows(model: keras.Model) -> list[tuple]:
    """(class, activation name or None) of each non-input layer."""
    return [
        (type(layer).__name__, getattr(getattr(layer, "activation", None), "__name__", None))
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def assert_rewrite_contract(original: keras.Model, new: keras.Model, x: np.ndarray) -> None:
    """Original untouched, nothing shared, same kind, kept weights, identity-BN equivalence."""
    assert type(new) is type(original)
    new_ids = {id(layer) for layer in all_layers(new)}
    assert not new_ids & {id(layer) for layer in all_layers(original)}
    by_name = {layer.name: layer for layer in all_layers(new)}
    for layer in all_layers(original):
        if layer.weights and not isinstance(layer, keras.Model):
            kept = [np.array(w) for w in by_name[layer.name].get_weights()]
            assert all(map(np.array_equal, kept, layer.get_weights())), layer.name
    expected = predict(original, x)
    make_identity(set(batchnorm_layers(new)) - set(batchnorm_layers(original)))
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        predict(new, x),
        expected,
    )


def expected_block(kind: str, activation: str, placement: Placement) -> list[tuple]:
    if placement is Placement.NONE:
        return [(kind, activation)]
    if placement is Placement.AFTER or activation == "linear":
        return [(kind, activation), (BN, None)]
    return [(kind, "linear"), (BN, None), ("Activation", activation)]


# ---------------------------------------------------------------- property tests

hidden_layers = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from(ACTIVATIONS), st.booleans()),
    min_size=1,
    max_size=3,
)


@given(
    kind=st.sampled_from(["dense", "conv1d"]),
    hidden=hidden_layers,
    output=st.tuples(st.integers(1, 3), st.sampled_from(ACTIVATIONS)),
    tail=st.sampled_from([None, "softmax", "dropout"]),
    placement=st.sampled_from(list(Placement)),
    functional=st.booleans(),
    skip_output=st.booleans(),
)
def test_rewrite_places_bn_and_preserves_the_function(
    kind, hidden, output, tail, placement, functional, skip_output
):
    """Random stacks: BN count and positions, pre-activation input, weights, equivalence."""
    layers, expected = [], []
    matched = keras.layers.Dense if kind == "dense" else keras.layers.Conv1D
    for size, activation, dropout in hidden:
        layer = (
            keras.layers.Dense(size, activation=activation)
            if kind == "dense"
            else keras.layers.Conv1D(size, 3, padding="same", activation=activation)
        )
        layers.append(layer)
        expected += expected_block(type(layer).__name__, activation, placement)
        if dropout:
            layers.append(keras.layers.Dropout(0.5))
            expected.append(("Dropout", None))
    if kind == "conv1d":
        layers.append(keras.layers.Flatten())
        expected.append(("Flatten", None))
    units = max(output[0], 2) if tail == "softmax" else output[0]  # softmax over 1 unit warns
    layers.append(keras.layers.Dense(units, activation=output[1]))
    expected += (
        [("Dense", output[1])] if skip_output else expected_block("Dense", output[1], placement)
    )
    if tail == "softmax":
        layers.append(keras.layers.Softmax())
        expected.append(("Softmax", None))
    elif tail == "dropout":
        layers.append(keras.layers.Dropout(0.5))
        expected.append(("Dropout", None))

    shape = (3,) if kind == "dense" else (5, 2)
    if functional:
        inputs = x = keras.Input(shape)
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    else:
        model = keras.Sequential([keras.Input(shape), *layers])
    before = snapshot(model)
    count = len(model.layers)

    new = insert_batchnorm(model, placement, skip_output=skip_output)

    assert rows(new) == expected
    new_layers = new.layers
    for i, layer in enumerate(new_layers):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        host = new_layers[i - 1]
        assert isinstance(host, matched) or (
            not skip_output and host.name == layers[-1 - bool(tail)].name
        )
        assert layer.input is host.output
        if placement is Placement.BEFORE:
            assert host.activation is keras.activations.linear  # BN sees the pre-activation
            if i + 1 < len(new_layers) and isinstance(new_layers[i + 1], keras.layers.Activation):
                assert new_layers[i + 1].input is layer.output
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype("float32")
    assert_rewrite_contract(model, new, x)
    assert len(model.layers) == count
    assert all(map(np.array_equal, snapshot(model), before))


# ---------------------------------------------------------------- graph shapes


def branching_model() -> keras.Model:
    inputs = keras.Input((4,), name="features")
    left = keras.layers.Dense(3, activation="relu", name="left")(inputs)
    right = keras.layers.Dense(2, activation="tanh", name="right")(inputs)
    merged = keras.layers.Concatenate()([left, right])
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(merged))


@pytest.mark.parametrize("placement", ["after", "before"])
def test_branching_functional_model(placement):
    model = branching_model()
    new = insert_batchnorm(model, placement)
    names = [layer.name for layer in new.layers]
    assert [bn.name for bn in batchnorm_layers(new)] == ["left_bn", "right_bn"]
    if placement == "before":
        assert {"left_activation", "right_activation"} <= set(names)
        assert new.get_layer("left_activation").input is new.get_layer("left_bn").output
    assert (
        new.get_layer("concatenate").input[0]
        is new.get_layer("left_activation" if placement == "before" else "left_bn").output
    )
    assert names[0] == "features"  # the input keeps its name
    assert_rewrite_contract(model, new, np.random.default_rng(1).normal(size=(5, 4)))


def test_multiple_outputs_and_skip_output():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    first = keras.layers.Dense(2, name="first")(hidden)
    second = keras.layers.Softmax(name="probs")(keras.layers.Dense(3, name="second")(hidden))
    model = keras.Model(inputs, {"first": first, "second": second})
    x = np.random.default_rng(2).normal(size=(4, 3))

    new = insert_batchnorm(model)
    assert [bn.name for bn in batchnorm_layers(new)] == ["hidden_bn"]
    assert set(new.output) == {"first", "second"}
    assert_rewrite_contract(model, new, x)

    everywhere = insert_batchnorm(model, skip_output=False)
    assert sorted(bn.name for bn in batchnorm_layers(everywhere)) == [
        "first_bn",
        "hidden_bn",
        "second_bn",
    ]
    assert everywhere.get_layer("probs").input is everywhere.get_layer("second_bn").output
    assert_rewrite_contract(model, everywhere, x)


def test_shared_layer_gets_one_shared_bn():
    inputs = keras.Input((3,))
    shared = keras.layers.Dense(3, activation="relu", name="shared")
    other = keras.layers.Dense(3, name="other")(inputs)
    merged = keras.layers.Add()([shared(inputs), shared(other)])
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(merged))
    new = insert_batchnorm(model, "before")
    assert sorted(bn.name for bn in batchnorm_layers(new)) == ["other_bn", "shared_bn"]
    assert node_count(new.get_layer("shared_bn")) == 2
    assert_rewrite_contract(model, new, np.random.default_rng(3).normal(size=(4, 3)))


def test_nested_models_are_rewritten():
    block = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu", name="inner_a"),
            keras.layers.Dense(3, activation="relu", name="inner_b"),
        ],
        name="block",
    )
    head_in = keras.Input((3,))
    head = keras.Model(
        head_in, keras.layers.Dense(2, activation="softmax", name="head_out")(head_in), name="head"
    )
    inputs = keras.Input((2,))
    x = keras.layers.Dense(4, activation="tanh", name="stem")(inputs)
    model = keras.Model(inputs, head(block(x)))
    outer_seq = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, name="first"), block])
    data = np.random.default_rng(4).normal(size=(5, 2))

    for placement in ("after", "before"):
        new = insert_batchnorm(model, placement)
        new_block, new_head = new.get_layer("block"), new.get_layer("head")
        assert isinstance(new_block, keras.Sequential) and new_block is not block
        assert [bn.name for bn in batchnorm_layers(new)] == [
            "stem_bn",
            "inner_a_bn",
            "inner_b_bn",  # inner_b is not the outer model's output
        ]
        assert not batchnorm_layers(new_head)  # the nested output layer keeps no BN
        assert_rewrite_contract(model, new, data)

    # A nested model at the end of a Sequential: its last layer is the output.
    new = insert_batchnorm(outer_seq)
    assert [bn.name for bn in batchnorm_layers(new)] == ["first_bn", "inner_a_bn"]
    assert_rewrite_contract(outer_seq, new, data)
    assert len(block.layers) == 2 and not batchnorm_layers(block)


def test_recurrent_layers():
    inputs = keras.Input((4, 2))
    x = keras.layers.LSTM(3, return_sequences=True, name="lstm")(inputs)
    x = keras.layers.GRU(3, return_sequences=True, name="gru")(x)
    x = keras.layers.SimpleRNN(2, name="rnn")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(x))
    new = insert_batchnorm(model, "after")
    assert [bn.name for bn in batchnorm_layers(new)] == ["lstm_bn", "gru_bn", "rnn_bn"]
    assert_rewrite_contract(model, new, np.random.default_rng(5).normal(size=(3, 4, 2)))

    for name, kind in [("gru", "GRU"), ("rnn", "SimpleRNN")]:
        with pytest.raises(ValueError, match=rf"`placement`.*{name!r} \({kind}\).*allowed"):
            insert_batchnorm(model, "before", layer_types=type(model.get_layer(name)))


def test_before_on_a_layer_without_activation_is_an_error():
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(5, 2, name="embed"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    with pytest.raises(ValueError, match=r"Invalid `placement`.*'embed' \(Embedding\).*allowed"):
        insert_batchnorm(model, "before", layer_types=keras.layers.Embedding)
    new = insert_batchnorm(model, "after", layer_types=keras.layers.Embedding)
    assert rows(new)[:2] == [("Embedding", None), (BN, None)]


def test_layer_types_select_the_layers():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    new = insert_batchnorm(model, "before", layer_types=(keras.layers.Conv2D,))
    assert [type(layer).__name__ for layer in new.layers] == [
        "Conv2D",
        BN,
        "Activation",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert [bn.name for bn in batchnorm_layers(insert_batchnorm(model))] == ["conv_bn", "hidden_bn"]
    for bad, error in [
        ("Dense", TypeError),
        (keras.layers.Dense(2), TypeError),
        ((keras.layers.Dense, int), TypeError),
        (3, TypeError),
        ((), ValueError),
    ]:
        with pytest.raises(error, match=r"`layer_types`"):
            insert_batchnorm(model, layer_types=bad)


def test_channels_first_convolutions_normalize_axis_1():
    model = keras.Sequential(
        [
            keras.Input((2, 5, 5)),
            keras.layers.Conv2D(3, 3, data_format="channels_first"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    assert [bn.axis for bn in batchnorm_layers(insert_batchnorm(model))] == [1]


# ---------------------------------------------------------------- copies and settings


def test_none_is_an_equivalent_independent_copy():
    model = branching_model()
    copy = insert_batchnorm(model, Placement.NONE)
    assert rows(copy) == rows(model)
    assert not batchnorm_layers(copy)
    x = np.random.default_rng(6).normal(size=(3, 4))
    np.testing.assert_array_equal(predict(copy, x), predict(model, x))
    assert_rewrite_contract(model, copy, x)
    copy.get_layer("left").kernel.assign(np.zeros((4, 3)))
    assert np.any(model.get_layer("left").get_weights()[0])


def test_bn_layer_factory_and_its_checks():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, name="a"),
            keras.layers.Dense(2, name="b"),
            keras.layers.Dense(1),
        ]
    )
    new = insert_batchnorm(
        model, bn_layer=lambda: keras.layers.BatchNormalization(momentum=0.5, name="fixed")
    )
    assert [(bn.name, bn.momentum) for bn in batchnorm_layers(new)] == [
        ("a_bn", 0.5),
        ("b_bn", 0.5),
    ]
    shared = keras.layers.BatchNormalization()
    for factory, error, message in [
        (5, TypeError, "zero-argument callable"),
        (shared, TypeError, "zero-argument callable"),
        (lambda: "bn", TypeError, "must return a Keras layer"),
        (lambda: shared, ValueError, "new, unbuilt layer"),
    ]:
        with pytest.raises(error, match=rf"`bn_layer`.*{message}"):
            insert_batchnorm(model, bn_layer=factory)


def test_model_must_be_sequential_or_functional():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    for bad in (Subclassed(), "model", keras.layers.Dense(2)):
        with pytest.raises(TypeError, match=r"`model` must be a keras.Sequential"):
            insert_batchnorm(bad)


def test_unbuilt_sequential_stays_unbuilt():
    model = keras.Sequential([keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    new = insert_batchnorm(model, "before")
    assert not new.built
    assert rows(new) == [
        ("Dense", "linear"),
        (BN, None),
        ("Activation", "relu"),
        ("Dense", "linear"),
    ]
    assert predict(new, np.ones((2, 5), "float32")).shape == (2, 1)


def test_compile_state_and_trainable_flags_are_kept():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, name="frozen", trainable=False),
            keras.layers.Dense(1),
        ]
    )
    assert not insert_batchnorm(model).compiled
    model.compile(optimizer="adam", loss="mse")
    for rewritten in (insert_batchnorm(model), insert_batchnorm(branching_model_compiled())):
        assert rewritten.compiled
    new = insert_batchnorm(model)
    assert not new.get_layer("frozen").trainable
    assert new.get_layer("frozen_bn").trainable
    model.trainable = False
    assert not any(layer.trainable for layer in insert_batchnorm(model).layers)


def branching_model_compiled() -> keras.Model:
    model = branching_model()
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return model


@pytest.mark.parametrize("functional", [False, True])
def test_rewritten_models_train_save_and_load(functional, tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = (rng.random((16, 1)) > 0.5).astype("float32")
    if functional:
        model = branching_model()
    else:
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)]
        )
    new = insert_batchnorm(model, "before")
    new.compile(optimizer="sgd", loss="binary_crossentropy", run_eagerly=True)
    new.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "rewritten.keras"
    new.save(path)
    loaded = keras.saving.load_model(path)
    assert rows(loaded) == rows(new)
    np.testing.assert_allclose(predict(loaded, x), predict(new, x), rtol=1e-6, atol=1e-6)


def test_batchnorm_layers_in_call_order_with_nested_models():
    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(name="inner_bn"), keras.layers.Dense(3)]
    )
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.BatchNormalization(name="first"),
            inner,
            keras.layers.BatchNormalization(name="last"),
        ]
    )
    assert [bn.name for bn in batchnorm_layers(model)] == ["first", "inner_bn", "last"]
    assert batchnorm_layers(keras.Sequential([keras.layers.Dense(1)])) == []


# ------------------------------------------------------------ argument checks (issue 16)


@pytest.mark.parametrize("value", ["no", 0, None, 1.0])
def test_skip_output_must_be_a_bool(value):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="`skip_output`"):
        insert_batchnorm(model, skip_output=value)


def test_lambda_layers_are_copied_with_their_function():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4),
            keras.layers.Lambda(lambda x: x * 2.0 + 1.0, output_shape=(4,), name="affine"),
            keras.layers.Dense(1),
        ]
    )
    new = insert_batchnorm(model)
    assert [layer.name for layer in new.layers] == ["dense", "dense_bn", "affine", "dense_1"]
    assert new.get_layer("affine") is not model.get_layer("affine")
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    plain = insert_batchnorm(model, "none")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


class _IncompleteConfig(keras.layers.Layer):
    """A custom layer whose get_config leaves out its constructor argument."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return super().get_config()


def test_a_layer_that_cannot_be_copied_is_named_with_what_to_do():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), _IncompleteConfig(2.0, name="scaler")]
    )
    with pytest.raises(ValueError, match=r"(?s)'scaler' \(_IncompleteConfig\).*get_config"):
        insert_batchnorm(model)


def test_replace_layers_swaps_the_layers_it_is_given_and_copies_the_rest():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])

    def replace(layer):
        if layer.name == "dense_1":
            new = keras.layers.Dense(1, use_bias=False, name="replaced")
            new.build((None, 4))
            return new
        return None

    new = replace_layers(model, replace)
    assert [layer.name for layer in new.layers] == ["dense", "replaced"]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(new.layers[0].kernel),
        keras.ops.convert_to_numpy(model.layers[0].kernel),
    )
    with pytest.raises(TypeError, match="`replace`"):
        replace_layers(model, "not callable")
