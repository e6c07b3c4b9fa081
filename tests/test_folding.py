"""fold_batchnorm: exact folding of BN into Dense/Conv layers, ChannelAffine for the rest."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import layers
from model_helpers import all_layers

from keras_bn_tools import batchnorm_layers, build_cnn, build_mlp, fold_batchnorm
from keras_bn_tools.folding import ChannelAffine, FoldDecision, plan_folding
from keras_bn_tools.testing import stack_specs

# ----------------------------------------------------------------------------- helpers


def randomize(model: keras.Model, seed: int, negative_gammas: bool = True) -> None:
    """Random BN statistics and affine parameters (some gammas negative), random biases."""
    rng = np.random.default_rng(seed)
    for layer in batchnorm_layers(model):
        channels = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0.0, 1.0, channels))
        layer.moving_variance.assign(rng.uniform(0.25, 4.0, channels))
        if layer.scale:
            sign = np.where(rng.random(channels) < 0.3, -1.0, 1.0) if negative_gammas else 1.0
            layer.gamma.assign(sign * rng.uniform(0.25, 2.0, channels))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.5, channels))
    for layer in all_layers(model):
        bias = getattr(layer, "bias", None)
        if isinstance(layer, (layers.Dense, layers.Conv1D, layers.Conv2D)) and bias is not None:
            layer.bias.assign(rng.normal(0.0, 0.3, bias.shape))


def predict(model: keras.Model, x: np.ndarray, **kwargs) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, **kwargs)), dtype=np.float64)


def assert_same_outputs(model: keras.Model, folded: keras.Model, x: np.ndarray) -> None:
    expected = predict(model, x, training=False)
    got = predict(folded, x)
    atol = 1e-6 * (1.0 + np.max(np.abs(expected)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=atol)


def kinds(model: keras.Model) -> list[type]:
    return [type(layer) for layer in all_layers(model)]


def inputs_for(model: keras.Model, seed: int, batch: int = 3) -> np.ndarray:
    shape = (batch, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype("float32")


def momentum_bn():
    from keras_bn_tools.layers import MomentumBatchNormalization

    return MomentumBatchNormalization()


# ---------------------------------------------------------------- property: builder stacks


# Under JAX every new shape compiles each op again, so that run draws half as many stacks.
_fewer_under_jax = (
    settings(max_examples=max(1, settings.default.max_examples // 2))
    if keras.backend.backend() == "jax"
    else (lambda test: test)
)


@pytest.mark.backend_agnostic
@given(
    spec=st.one_of(stack_specs("mlp", max_units=6), stack_specs("cnn", max_layers=2, max_side=8)),
    seed=st.integers(0, 2**32 - 1),
    layer=st.sampled_from(["keras", "momentum"]),
)
@_fewer_under_jax
def test_folded_builder_stacks_match_inference(spec, seed, layer):
    build = build_mlp if "input_dim" in spec else build_cnn
    model = build(**spec, bn_layer=momentum_bn if layer == "momentum" else None)
    randomize(model, seed)
    x = inputs_for(model, seed)
    if batchnorm_layers(model):
        folded = fold_batchnorm(model)
    else:  # bn="none" without input BN: an equivalent copy, with a warning
        with pytest.warns(UserWarning, match="no BatchNormalization"):
            folded = fold_batchnorm(model)

    assert isinstance(folded, keras.Sequential)
    assert_same_outputs(model, folded, x)
    assert not batchnorm_layers(folded)
    decisions = plan_folding(model)
    assert len(decisions) == len(batchnorm_layers(model))
    n_affine = sum(d.action == "affine" for d in decisions)
    assert kinds(folded).count(ChannelAffine) == n_affine
    # Exact wherever the BN sits next to a linear layer: every MLP, CNN with bn="before",
    # and any stack whose activation is linear.
    if build is build_mlp or spec["bn"] != "after" or spec["activation"] == "linear":
        assert n_affine == 0, decisions


@pytest.mark.backend_agnostic
def test_mlp_before_and_after_fold_completely():
    for bn in ("before", "after"):
        model = build_mlp(3, (5, 4), bn=bn, input_bn=True, output_activation="linear")
        randomize(model, seed=7)
        folded = fold_batchnorm(model)
        assert kinds(folded) == [layers.Dense] + (
            [layers.Activation, layers.Dense, layers.Activation, layers.Dense]
            if bn == "before"
            else [layers.Dense, layers.Dense]
        )
        assert_same_outputs(model, folded, inputs_for(model, 0, batch=8))
        assert folded.name == model.name


@pytest.mark.backend_agnostic
def test_cnn_before_folds_into_convolutions():
    model = build_cnn((6, 6, 2), (3, 4), bn="before", dense_units=(5,), output_activation="linear")
    randomize(model, seed=3)
    folded = fold_batchnorm(model)
    assert ChannelAffine not in kinds(folded)
    assert [d.action for d in plan_folding(model)] == ["into_previous"] * 3
    assert_same_outputs(model, folded, inputs_for(model, 1))


@pytest.mark.backend_agnostic
def test_cnn_after_keeps_unfoldable_bn_as_channel_affine():
    # Conv(relu) -> BN -> Conv(padding="same"): not foldable (padding) -> ChannelAffine.
    # Conv(relu) -> BN -> MaxPooling -> Flatten -> Dense: foldable only if every scale >= 0.
    model = build_cnn((4, 4, 2), (3, 2), bn="after", output_activation="linear")
    randomize(model, seed=5, negative_gammas=False)
    first, second = plan_folding(model)
    assert first.action == "affine" and "pads its input" in first.reason
    assert second.action == "into_next" and second.into == (model.layers[-1].name,)
    folded = fold_batchnorm(model)
    assert_same_outputs(model, folded, inputs_for(model, 2))

    bn = batchnorm_layers(model)[1]
    bn.gamma.assign(-np.abs(keras.ops.convert_to_numpy(keras.ops.copy(bn.gamma))))
    second = plan_folding(model)[1]
    assert second.action == "affine" and "negative scale" in second.reason
    folded = fold_batchnorm(model)
    assert kinds(folded).count(ChannelAffine) == 2
    assert_same_outputs(model, folded, inputs_for(model, 2))


# ------------------------------------------------------------------- hand-built cases


@pytest.mark.backend_agnostic
def test_weight_variants_and_moves():
    """use_bias=False, center/scale=False, Conv1D, dropout, average pooling, valid conv."""
    model = keras.Sequential(
        [
            keras.Input((9, 2)),
            layers.Conv1D(3, 2, use_bias=False),
            layers.BatchNormalization(center=False),
            layers.Activation("tanh"),
            layers.BatchNormalization(scale=False),
            layers.Dropout(0.5),
            layers.AveragePooling1D(2, padding="same"),
            layers.Conv1D(4, 3, activation="relu"),  # valid padding: exact
            layers.BatchNormalization(center=False, scale=False),
            layers.GlobalMaxPooling1D(),
            layers.Dense(2, use_bias=False),
        ]
    )
    randomize(model, seed=11, negative_gammas=False)
    assert [(d.action, d.into) for d in plan_folding(model)] == [
        ("into_previous", ("conv1d",)),
        ("into_next", ("conv1d_1",)),
        ("into_next", ("dense",)),
    ]
    folded = fold_batchnorm(model)
    assert kinds(folded) == [
        layers.Conv1D,
        layers.Activation,
        layers.Dropout,
        layers.AveragePooling1D,
        layers.Conv1D,
        layers.GlobalMaxPooling1D,
        layers.Dense,
    ]
    assert folded.layers[0].use_bias and folded.layers[-1].use_bias
    assert_same_outputs(model, folded, inputs_for(model, 4))


@pytest.mark.backend_agnostic
def test_depthwise_and_separable_convolutions_absorb_the_bn_after_them():
    model = keras.Sequential(
        [
            keras.Input((7, 7, 3)),
            layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(6.0),
            layers.SeparableConv2D(4, 3, padding="same", depth_multiplier=2),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.GlobalAveragePooling2D(),
            layers.BatchNormalization(),
            layers.Dense(2),
        ]
    )
    randomize(model, seed=41)
    assert [(d.action, d.into) for d in plan_folding(model)] == [
        ("into_previous", ("depthwise_conv2d",)),
        ("into_previous", ("separable_conv2d",)),
        ("into_next", ("dense",)),
    ]
    folded = fold_batchnorm(model)
    assert ChannelAffine not in kinds(folded)
    assert_same_outputs(model, folded, inputs_for(model, 12))


def test_mobilenet_v2_folds_completely():
    """A real functional network: residual Adds, ZeroPadding, ReLU6, depthwise convolutions."""
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3
    )
    randomize(model, seed=43)
    decisions = plan_folding(model)
    assert len(decisions) == 52 and {d.action for d in decisions} == {"into_previous"}
    folded = fold_batchnorm(model)
    assert not batchnorm_layers(folded) and ChannelAffine not in kinds(folded)
    assert_same_outputs(model, folded, inputs_for(model, 13, batch=2))


@pytest.mark.backend_agnostic
def test_flatten_permutation_is_tiled_exactly():
    for data_format in ("channels_last", "channels_first"):
        model = keras.Sequential(
            [
                keras.Input((3, 2, 4)),
                layers.BatchNormalization(axis=-1),
                layers.Flatten(data_format=data_format),
                layers.Dense(5),
            ]
        )
        randomize(model, seed=13)
        assert plan_folding(model)[0].action == "into_next"
        folded = fold_batchnorm(model)
        assert kinds(folded) == [layers.Flatten, layers.Dense]
        assert_same_outputs(model, folded, inputs_for(model, 5))


@pytest.mark.backend_agnostic
def test_functional_branches():
    inputs = keras.Input((5,), name="features")
    h = layers.Dense(4, name="shared_trunk")(inputs)
    h = layers.BatchNormalization(name="bn_trunk")(h)  # folds into shared_trunk
    a = layers.Dense(3, activation="relu", name="a")(h)
    a = layers.BatchNormalization(name="bn_two_heads")(a)  # feeds two Dense: folds into both
    b1, b2 = layers.Dense(2, name="b1")(a), layers.Dense(2, name="b2")(a)
    c = layers.BatchNormalization(name="bn_to_add")(layers.Dense(2, activation="relu")(h))
    out = layers.Add()([b1, b2, c])  # bn_to_add feeds an Add: kept as ChannelAffine
    model = keras.Model(inputs, out, name="branches")
    randomize(model, seed=17)

    decisions = {d.layer: d for d in plan_folding(model)}
    assert decisions["bn_trunk"] == FoldDecision("bn_trunk", "into_previous", ("shared_trunk",))
    assert decisions["bn_two_heads"].action == "into_next"
    assert sorted(decisions["bn_two_heads"].into) == ["b1", "b2"]
    assert decisions["bn_to_add"].action == "affine"

    folded = fold_batchnorm(model)
    assert not isinstance(folded, keras.Sequential) and folded.name == "branches"
    assert folded.inputs[0].name == "features"
    assert kinds(folded).count(ChannelAffine) == 1
    assert folded.get_layer("bn_to_add").__class__ is ChannelAffine
    assert_same_outputs(model, folded, inputs_for(model, 6))


@pytest.mark.backend_agnostic
def test_bn_feeding_the_output_or_a_shared_layer_stays_affine():
    inputs = keras.Input((3,))
    shared = layers.Dense(3)
    h = layers.BatchNormalization()(layers.Dense(3, activation="relu")(inputs))
    out = shared(layers.Activation("tanh")(shared(h)))  # shared Dense: called twice
    tail = layers.BatchNormalization()(out)  # the model output
    twice = layers.BatchNormalization(name="twice")  # one BN layer, two calls
    other = layers.Dense(2)(twice(layers.Dense(3, activation="relu")(tail)))
    model = keras.Model(inputs, [out, tail, other, twice(tail)])
    randomize(model, seed=19)
    assert [d.action for d in plan_folding(model)] == ["affine"] * 4
    folded = fold_batchnorm(model)
    assert len([layer for layer in folded.layers if isinstance(layer, ChannelAffine)]) == 3
    x = inputs_for(model, 7)
    for got, expected in zip(folded(x), model(x, training=False), strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), rtol=1e-5
        )


@pytest.mark.backend_agnostic
def test_nested_models_fold_recursively():
    inner = build_mlp(
        4, (3,), bn="before", output_units=2, output_activation="linear", name="inner"
    )
    inputs = keras.Input((4,))
    h = layers.BatchNormalization(name="outer_bn")(inner(inputs))
    out = layers.Dense(1, name="head")(h)
    model = keras.Model(inputs, out)
    randomize(model, seed=23)
    inner_bn = batchnorm_layers(inner)[0].name
    assert plan_folding(model) == [
        FoldDecision(f"inner/{inner_bn}", "into_previous", (f"inner/{inner.layers[0].name}",)),
        FoldDecision("outer_bn", "into_next", ("head",)),
    ]
    folded = fold_batchnorm(model)
    assert not batchnorm_layers(folded)
    assert isinstance(folded.get_layer("inner"), keras.Sequential)
    assert_same_outputs(model, folded, inputs_for(model, 8))


@pytest.mark.backend_agnostic
def test_input_model_is_untouched_and_copy_is_independent():
    model = build_mlp(3, (4,), bn="after", input_bn=True)
    randomize(model, seed=29)
    before = [w.copy() for w in model.get_weights()]
    names = [layer.name for layer in model.layers]
    folded = fold_batchnorm(model)
    assert [layer.name for layer in model.layers] == names
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not {id(w) for w in folded.weights} & {id(w) for w in model.weights}


@pytest.mark.backend_agnostic
def test_no_bn_gives_equivalent_copy_with_warning():
    model = build_mlp(3, (4, 2), bn="none")
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        folded = fold_batchnorm(model)
    assert [type(layer) for layer in folded.layers] == [type(layer) for layer in model.layers]
    assert all(a is not b for a, b in zip(folded.layers, model.layers, strict=True))
    x = inputs_for(model, 9)
    np.testing.assert_array_equal(predict(folded, x), predict(model, x))


@pytest.mark.backend_agnostic
def test_bad_models_raise():
    unbuilt = keras.Sequential([layers.Dense(2), layers.BatchNormalization()])
    with pytest.raises(ValueError, match="not built"):
        fold_batchnorm(unbuilt)
    with pytest.raises(TypeError, match=r"keras\.Model"):
        fold_batchnorm(layers.Dense(2))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        fold_batchnorm(subclassed)


@pytest.mark.backend_agnostic
def test_bn_with_other_inference_semantics_is_refused():
    class ShiftedBN(layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training, mask=mask) + 1.0

    model = keras.Sequential([keras.Input((3,)), layers.Dense(3), ShiftedBN(), layers.Dense(1)])
    with pytest.raises(ValueError, match="inference output"):
        fold_batchnorm(model)


# ------------------------------------------------- MomentumBatchNormalization, saving


@pytest.mark.backend_agnostic
def test_momentum_bn_folds_and_folded_model_round_trips(tmp_path):
    model = build_cnn((4, 4, 2), (2, 3), bn="after", dense_units=(3,), bn_layer=momentum_bn)
    assert all(
        type(layer).__name__ == "MomentumBatchNormalization" for layer in batchnorm_layers(model)
    )
    randomize(model, seed=31)
    folded = fold_batchnorm(model)
    assert ChannelAffine in kinds(folded)  # so that the saved file holds one
    x = inputs_for(model, 10)
    assert_same_outputs(model, folded, x)

    path = tmp_path / "folded.keras"
    folded.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in folded.layers]
    np.testing.assert_array_equal(predict(loaded, x), predict(folded, x))


@pytest.mark.backend_agnostic
def test_channel_affine_layer():
    layer = ChannelAffine(axis=1)
    x = np.arange(12, dtype="float32").reshape(2, 3, 2)
    layer.build(x.shape)
    layer.set_weights([np.array([1.0, -2.0, 0.5], "float32"), np.array([0.0, 1.0, 2.0], "float32")])
    expected = x * np.array([1.0, -2.0, 0.5])[:, None] + np.array([0.0, 1.0, 2.0])[:, None]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected)
    clone = ChannelAffine.from_config(layer.get_config())
    assert clone.axis == 1
    with pytest.raises(TypeError, match="axis"):
        ChannelAffine(axis="last")


# ----------------------------------------------------------------------------- TFLite


def test_folded_model_converts_to_tflite():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs the TensorFlow backend")
    tf = pytest.importorskip("tensorflow")
    if not hasattr(getattr(tf, "lite", None), "TFLiteConverter"):
        pytest.skip("this TensorFlow has no tf.lite.TFLiteConverter")

    model = build_cnn(
        (6, 6, 2), (3, 3), bn="after", dense_units=(4,), output_units=2, output_activation="linear"
    )
    randomize(model, seed=37)  # some negative gammas: one BN stays a ChannelAffine
    folded = fold_batchnorm(model)
    x = inputs_for(model, 11, batch=4)

    # TF 2.21 converts Keras 3 models directly (it exports a SavedModel internally).
    converted = tf.lite.TFLiteConverter.from_keras_model(folded).convert()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_content=converted)
    (source,), (sink,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(sink["index"])
    np.testing.assert_allclose(got, predict(folded, x), rtol=1e-5, atol=1e-5)
    assert_same_outputs(model, folded, x)


# ------------------------------------------------------------- BN inside wrappers (issue 16)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("axis", [-1, 1])
def test_batchnorm_inside_time_distributed_becomes_an_exact_channel_affine(axis):
    model = keras.Sequential(
        [
            keras.Input((5, 6, 3)),
            layers.TimeDistributed(layers.BatchNormalization(axis=axis), name="td"),
            layers.Flatten(),
            layers.Dense(2),
        ]
    )
    randomize(model, seed=41)
    (decision,) = plan_folding(model)
    assert decision.action == "affine" and "TimeDistributed" in decision.reason
    assert decision.layer.startswith("td/")
    folded = fold_batchnorm(model)
    assert not batchnorm_layers(folded)
    assert type(folded.layers[0]) is ChannelAffine
    x = np.random.default_rng(5).normal(size=(4, 5, 6, 3)).astype("float32")
    np.testing.assert_allclose(predict(folded, x), predict(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.backend_agnostic
def test_batchnorm_inside_another_wrapper_is_refused_by_name():
    class Passthrough(layers.Wrapper):
        def call(self, inputs, training=None):
            return self.layer(inputs, training=training)

        def compute_output_shape(self, input_shape):
            return input_shape

    model = keras.Sequential(
        [keras.Input((3,)), Passthrough(layers.BatchNormalization(), name="wrap")]
    )
    with pytest.raises(ValueError, match=r"'wrap/batch_normalization'.*Passthrough"):
        fold_batchnorm(model)
