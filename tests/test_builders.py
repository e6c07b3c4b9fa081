"""build_mlp, build_cnn and build_lstm: layer sequences, training, saving and argument checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools import Placement, batchnorm_layers, build_cnn, build_lstm, build_mlp

pytestmark = pytest.mark.backend_agnostic

BN = "BatchNormalization"
placements = st.sampled_from(["none", "after", "before", Placement.AFTER, "BEFORE"])
# Few distinct sizes: under JAX every new weight shape costs an XLA compile.
unit_lists = st.lists(st.integers(1, 4), min_size=1, max_size=3)


def summary(model: keras.Model) -> list[tuple]:
    """(class, activation name or None, units/filters or None) of each layer."""
    rows = []
    for layer in model.layers:
        activation = getattr(layer, "activation", None)
        size = getattr(layer, "units", None) or getattr(layer, "filters", None)
        rows.append((type(layer).__name__, getattr(activation, "__name__", None), size))
    return rows


def block(kind: str, size: int, activation: str, bn) -> list[tuple]:
    """The expected rows of one hidden layer and its BN (an independent oracle)."""
    bn = Placement(str(bn).lower())
    if bn is Placement.NONE:
        return [(kind, activation, size)]
    if bn is Placement.AFTER or activation == "linear":
        return [(kind, activation, size), (BN, None, None)]
    return [(kind, "linear", size), (BN, None, None), ("Activation", activation, None)]


def test_build_mlp_gives_the_circles_study_models_exactly():
    expected = {
        "none": [("Dense", "relu", 50), ("Dense", "sigmoid", 1)],
        "after": [("Dense", "relu", 50), (BN, None, None), ("Dense", "sigmoid", 1)],
        "before": [
            ("Dense", "linear", 50),
            (BN, None, None),
            ("Activation", "relu", None),
            ("Dense", "sigmoid", 1),
        ],
    }
    for bn, rows in expected.items():
        model = build_mlp(2, (50,), bn=bn)
        assert isinstance(model, keras.Sequential)
        assert not model.compiled
        assert tuple(model.inputs[0].shape) == (None, 2)
        assert summary(model) == rows, bn
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert isinstance(dense[0].kernel_initializer, keras.initializers.HeUniform)
        assert isinstance(dense[-1].kernel_initializer, keras.initializers.GlorotUniform)
        assert all(layer.use_bias for layer in dense)
        assert [w.shape for w in model.weights[:2]] == [(2, 50), (50,)]
    # The default is the study's BN-after-ReLU model.
    assert summary(build_mlp(2)) == expected["after"]


@given(
    hidden=unit_lists,
    bn=placements,
    input_bn=st.booleans(),
    activation=st.sampled_from(["relu", "tanh", "linear"]),
    output_units=st.integers(1, 3),
)
def test_build_mlp_places_bn_per_hidden_layer(hidden, bn, input_bn, activation, output_units):
    model = build_mlp(
        3, hidden, bn=bn, input_bn=input_bn, activation=activation, output_units=output_units
    )
    expected = [(BN, None, None)] if input_bn else []
    for units in hidden:
        expected += block("Dense", units, activation, bn)
    expected.append(("Dense", "sigmoid", output_units))
    assert summary(model) == expected
    assert batchnorm_layers(model) == [
        layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert tuple(model.outputs[0].shape) == (None, output_units)


@given(
    filters=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    pool_every=st.sampled_from([None, 1, 2, 3]),
    dense_units=st.lists(st.integers(1, 4), max_size=2),
    bn=placements,
)
def test_build_cnn_places_bn_at_every_conv_before_its_pooling(filters, pool_every, dense_units, bn):
    model = build_cnn((8, 8, 2), filters, pool_every=pool_every, dense_units=dense_units, bn=bn)
    expected = []
    for i, n in enumerate(filters):
        expected += block("Conv2D", n, "relu", bn)
        if pool_every and (i + 1) % pool_every == 0:
            expected.append(("MaxPooling2D", None, None))
    expected.append(("Flatten", None, None))
    for units in dense_units:
        expected += block("Dense", units, "relu", bn)
    expected.append(("Dense", "sigmoid", 1))
    assert summary(model) == expected
    assert all(layer.padding == "same" for layer in model.layers if hasattr(layer, "filters"))


@given(
    units=unit_lists,
    dense_units=st.lists(st.integers(1, 4), max_size=2),
    bn=st.sampled_from(["none", "after", Placement.AFTER]),
    timesteps=st.sampled_from([None, 4]),
)
def test_build_lstm_stacks_and_places_bn_after_each_lstm(units, dense_units, bn, timesteps):
    model = build_lstm((timesteps, 3), units, bn=bn, dense_units=dense_units)
    after = Placement(str(bn).lower()) is Placement.AFTER
    expected = []
    for n in units:
        expected += [("LSTM", "tanh", n)] + ([(BN, None, None)] if after else [])
    for n in dense_units:
        expected += block("Dense", n, "relu", bn)
    expected.append(("Dense", "sigmoid", 1))
    assert summary(model) == expected
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    assert [layer.return_sequences for layer in lstms] == [True] * (len(units) - 1) + [False]
    assert tuple(model.inputs[0].shape) == (None, timesteps, 3)


@given(
    builder=st.sampled_from(["mlp", "cnn"]),
    sizes=unit_lists,
    activation=st.sampled_from(["relu", "tanh", "sigmoid"]),
)
def test_before_normalizes_the_pre_activation(builder, sizes, activation):
    if builder == "mlp":
        model = build_mlp(2, sizes, bn="before", activation=activation)
    else:
        model = build_cnn((4, 4, 1), sizes, bn="before", activation=activation, pool_every=None)
    layers = model.layers
    bn_positions = [
        i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(bn_positions) == len(sizes)
    for i in bn_positions:
        assert layers[i - 1].activation is keras.activations.linear
        assert layers[i].input is layers[i - 1].output  # BN sees the linear pre-activation
        assert isinstance(layers[i + 1], keras.layers.Activation)
        assert layers[i + 1].activation is keras.activations.get(activation)
    assert not isinstance(layers[-1], keras.layers.BatchNormalization)


BUILT_MODELS = [
    *[("mlp", bn) for bn in ("none", "after", "before")],
    *[("cnn", bn) for bn in ("none", "after", "before")],
    *[("lstm", bn) for bn in ("none", "after")],
]


@pytest.mark.parametrize(("kind", "bn"), BUILT_MODELS)
def test_built_models_compile_fit_save_and_load(kind, bn, tmp_path):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model, x = build_mlp(2, (4, 3), bn=bn, input_bn=True), rng.normal(size=(16, 2))
    elif kind == "cnn":
        model = build_cnn((6, 6, 1), (2, 3), bn=bn, dense_units=(3,))
        x = rng.normal(size=(16, 6, 6, 1))
    else:
        model, x = build_lstm((4, 2), (3, 2), bn=bn, dense_units=(2,)), rng.normal(size=(16, 4, 2))
    x = x.astype("float32")
    y = (rng.random((16, 1)) > 0.5).astype("float32")
    # The MLPs train compiled, as in the circles study; tracing the conv and LSTM
    # models' train step takes seconds on a 2-core CI machine, so they train eagerly.
    model.compile(
        optimizer="sgd",
        loss="binary_crossentropy",
        metrics=["accuracy"],
        run_eagerly=kind != "mlp",
    )
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    before = keras.ops.convert_to_numpy(model(x, training=False))

    path = tmp_path / f"{kind}-{bn}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert summary(loaded) == summary(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)), before, rtol=1e-6, atol=1e-6
    )


def test_bn_layer_makes_every_normalization_layer():
    made = []

    def factory():
        made.append(keras.layers.BatchNormalization(momentum=0.0, center=False))
        return made[-1]

    models = [
        build_mlp(2, (3, 3), bn="before", input_bn=True, bn_layer=factory),
        build_cnn((4, 4, 1), (2,), dense_units=(2,), bn_layer=factory),
        build_lstm((3, 2), (2, 2), dense_units=(2,), bn_layer=factory),
    ]
    found = [bn for model in models for bn in batchnorm_layers(model)]
    assert [id(bn) for bn in found] == [id(bn) for bn in made]
    assert len(found) == 3 + 2 + 3
    assert all(bn.momentum == 0.0 and not bn.center for bn in found)
    # Any normalization layer will do, and names stay unique even if the factory fixes them.
    model = build_mlp(2, (3, 3), bn_layer=lambda: keras.layers.LayerNormalization(name="norm"))
    norms = [layer.name for layer in model.layers if "Normalization" in type(layer).__name__]
    assert norms == ["norm", "norm_1"]


def test_build_cnn_normalizes_the_channel_axis():
    assert [bn.axis for bn in batchnorm_layers(build_cnn((4, 4, 1), (2,)))] == [-1]
    keras.config.set_image_data_format("channels_first")
    try:
        model = build_cnn((1, 4, 4), (2, 2), dense_units=(2,))
    finally:
        keras.config.set_image_data_format("channels_last")
    assert [bn.axis for bn in batchnorm_layers(model)] == [1, 1, -1]  # the dense head: -1
    assert tuple(model.outputs[0].shape) == (None, 1)


def test_name_and_output_arguments():
    model = build_mlp(
        4, 8, name="net", output_units=3, output_activation="softmax", kernel_initializer="zeros"
    )
    assert model.name == "net"
    assert summary(model)[-1] == ("Dense", "softmax", 3)
    assert isinstance(model.layers[0].kernel_initializer, keras.initializers.Zeros)
    assert build_cnn((4, 4, 1), 2, name="cnn", pool_every=1).name == "cnn"
    assert build_lstm((3, 1), 2, name="rnn", output_activation=None).layers[-1].activation is (
        keras.activations.linear
    )


def test_bad_sizes_name_the_argument_and_value():
    bad_sizes = [((), ValueError), ((0,), ValueError), ((4, -1), ValueError), ("50", TypeError)]
    bad_sizes += [(2.5, TypeError), ((True,), ValueError)]
    for value, error in bad_sizes:
        with pytest.raises(error, match=r"`hidden_units`"):
            build_mlp(2, value)
        with pytest.raises(error, match=r"`filters`"):
            build_cnn((4, 4, 1), value)
        with pytest.raises(error, match=r"`units`"):
            build_lstm((4, 1), value)
    with pytest.raises(ValueError, match=r"`dense_units`.*bad entry: 0"):
        build_cnn((4, 4, 1), dense_units=(2, 0))
    with pytest.raises(ValueError, match=r"`output_units`.*0"):
        build_lstm((4, 1), output_units=0)
    with pytest.raises(ValueError, match=r"`pool_every`.*-1"):
        build_cnn((4, 4, 1), pool_every=-1)


def test_bad_input_shapes_name_the_argument_and_value():
    for value, error in [(0, ValueError), (-3, ValueError), ((2,), TypeError), (2.0, TypeError)]:
        with pytest.raises(error, match=r"`input_dim`"):
            build_mlp(value)
    for shape in [(8, 8), (8, 8, 1, 1), (0, 8, 1), (None, 8, 1), 8, "abc"]:
        with pytest.raises(ValueError, match=r"Invalid `input_shape`: .*3-D|dimension"):
            build_cnn(shape)
    for shape in [(5,), (5, 3, 1), (5, 0), (5, None), 5]:
        with pytest.raises(ValueError, match=r"Invalid `input_shape`: .*2-D|dimension"):
            build_lstm(shape)
    with pytest.raises(ValueError, match=r"too small for the 3 MaxPooling2D"):
        build_cnn((4, 4, 1), (2, 2, 2), pool_every=1)


def test_bad_activations_and_bn_layers():
    with pytest.raises(ValueError, match=r"Invalid `activation`: 'nope'"):
        build_mlp(2, activation="nope")
    with pytest.raises(ValueError, match=r"Invalid `output_activation`: 'nope'"):
        build_cnn((4, 4, 1), output_activation="nope")
    shared = keras.layers.BatchNormalization()
    bad_factories = [
        (keras.layers.BatchNormalization(), TypeError, "zero-argument callable"),
        ("batchnorm", TypeError, "zero-argument callable"),
        (lambda: 5, TypeError, "must return a Keras layer"),
        (lambda: shared, ValueError, "new, unbuilt layer"),
    ]
    for factory, error, message in bad_factories:
        for build in (
            lambda f: build_mlp(2, (2, 2), bn_layer=f),
            lambda f: build_cnn((4, 4, 1), (2, 2), bn_layer=f),
            lambda f: build_lstm((3, 1), (2, 2), bn_layer=f),
        ):
            with pytest.raises(error, match=rf"`bn_layer`.*{message}"):
                build(factory)
    # bn="none" never calls the factory.
    assert summary(build_mlp(2, (2,), bn="none", bn_layer=lambda: 5))[0] == ("Dense", "relu", 2)


# ------------------------------------------------------- sizes that cannot fit (issue 16)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: build_mlp(2, 10**12), "hidden_units"),
        (lambda: build_mlp(2, (50, 2**63)), "hidden_units"),
        (lambda: build_mlp(10**12, (50,)), "input_dim"),
        (lambda: build_mlp(2, (50,), output_units=10**12), "output_units"),
        (lambda: build_cnn((8, 8, 3), (10**6, 10**6)), "filters"),
        (lambda: build_cnn((8, 8, 3), (4,), dense_units=(10**10,)), "dense_units"),
        (lambda: build_lstm((5, 3), (10**6,)), "units"),
        (lambda: build_lstm((5, 10**12), (4,)), "input_shape"),
    ],
)
def test_absurd_sizes_are_refused_at_construction(build, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        build()


def test_large_but_possible_sizes_are_accepted():
    model = build_mlp(2, (4096,), output_units=1000)
    assert model.count_params() > 4_000_000


@pytest.mark.parametrize("value", ["no", 1, None])
def test_input_bn_must_be_a_bool(value):
    with pytest.raises(TypeError, match="`input_bn`"):
        build_mlp(2, input_bn=value)
