"""plan_folding: every reason it gives for keeping a BN as a ChannelAffine is the true one
(issue 26 item 3), and transposed convolutions absorb the BN that follows them exactly."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from keras_bn_tools import batchnorm_layers, fold_batchnorm
from keras_bn_tools.folding import plan_folding

pytestmark = pytest.mark.backend_agnostic


def _model(inputs, outputs):
    return keras.Model(inputs, outputs)


def bn(name="bn", **kwargs):
    return layers.BatchNormalization(name=name, **kwargs)


def input_to_output():
    x = keras.Input((3,))
    return _model(x, bn()(x))


def after_nonlinear_dense():
    x = keras.Input((3,))
    return _model(x, bn()(layers.Dense(4, activation="relu", name="d")(x)))


def after_relu_layer():
    x = keras.Input((3,))
    return _model(x, bn()(layers.ReLU(name="r")(x)))


def after_shared_dense():
    a, b = keras.Input((3,)), keras.Input((3,))
    dense = layers.Dense(4, name="d")
    return _model([a, b], [bn()(dense(a)), dense(b)])


def after_dense_that_is_an_output():
    x = keras.Input((3,))
    h = layers.Dense(4, name="d")(x)
    return _model(x, [h, bn()(h)])


def after_dense_that_feeds_others():
    x = keras.Input((3,))
    h = layers.Dense(4, name="d")(x)
    return _model(x, layers.Add(name="add")([bn()(h), layers.ReLU(name="r")(h)]))


def after_conv_on_another_axis():
    x = keras.Input((6, 6, 3))
    return _model(x, bn(axis=1)(layers.Conv2D(2, 1, name="c")(x)))


def before_shared_dense():
    a = keras.Input((3,))
    dense = layers.Dense(3, name="d")
    return _model(a, dense(dense(bn()(a))))


def before_depthwise():
    x = keras.Input((6, 6, 3))
    return _model(x, layers.DepthwiseConv2D(3, name="dw")(bn()(x)))


def before_transposed():
    x = keras.Input((6, 6, 3))
    return _model(x, layers.Conv2DTranspose(2, 3, name="t")(bn()(x)))


def before_dense_on_another_axis():
    x = keras.Input((4, 5))
    return _model(x, layers.Dense(2, name="d")(bn(axis=1)(x)))


def before_conv_on_another_axis():
    x = keras.Input((6, 6, 3))
    return _model(x, layers.Conv2D(2, 3, name="c")(bn(axis=1)(x)))


def before_grouped_conv():
    x = keras.Input((6, 6, 4))
    return _model(x, layers.Conv2D(4, 3, groups=2, name="c")(bn()(x)))


def before_padded_conv():
    x = keras.Input((6, 6, 3))
    return _model(x, layers.Conv2D(2, 3, padding="same", name="c")(bn()(x)))


def before_pooling_on_the_bn_axis():
    x = keras.Input((6, 6, 3))
    return _model(x, layers.MaxPooling2D(name="p")(bn(axis=1)(x)))


def before_max_pooling_with_negative_scale():
    x = keras.Input((6, 6, 3))
    model = _model(x, layers.Conv2D(2, 1, name="c")(layers.MaxPooling2D(name="p")(bn()(x))))
    model.get_layer("bn").gamma.assign([1.0, -1.0, 1.0])
    return model


def before_flatten_of_unknown_shape():
    x = keras.Input((None, 3))
    return _model(x, layers.Flatten(name="f")(bn()(x)))


def before_relu_layer():
    x = keras.Input((3,))
    return _model(x, layers.ReLU(name="r")(bn()(x)))


def shared_bn():
    a, b = keras.Input((3,)), keras.Input((3,))
    norm = bn()
    return _model([a, b], [layers.Dense(1)(norm(a)), layers.Dense(1)(norm(b))])


MODEL_INPUT = "its input is a model input"
MODEL_OUTPUT = "its output is a model output"
CASES = {
    input_to_output: f"before: {MODEL_INPUT}; after: {MODEL_OUTPUT}",
    after_nonlinear_dense: (
        "before: 'd' (Dense), which feeds it, has a nonlinear activation ('relu'); "
        f"after: {MODEL_OUTPUT}"
    ),
    after_relu_layer: (
        f"before: 'r' (ReLU), which feeds it, is not a Dense or convolution layer; "
        f"after: {MODEL_OUTPUT}"
    ),
    after_shared_dense: (
        f"before: 'd' (Dense), which feeds it, is called more than once; after: {MODEL_OUTPUT}"
    ),
    after_dense_that_is_an_output: (
        "before: the output of 'd' (Dense), which feeds it, is also a model output; "
        f"after: {MODEL_OUTPUT}"
    ),
    after_dense_that_feeds_others: (
        "before: the output of 'd' (Dense), which feeds it, also feeds other layers; "
        "after: it feeds 'add' (Add), which the BN map cannot be moved through"
    ),
    after_conv_on_another_axis: (
        "before: 'c' (Conv2D), which feeds it, has its channels on another axis than the BN; "
        f"after: {MODEL_OUTPUT}"
    ),
    before_shared_dense: f"before: {MODEL_INPUT}; after: 'd' (Dense) is called more than once",
    before_depthwise: (
        f"before: {MODEL_INPUT}; after: 'dw' (DepthwiseConv2D) absorbs a BN only on its output side"
    ),
    before_transposed: (
        f"before: {MODEL_INPUT}; after: 't' (Conv2DTranspose) absorbs a BN only on its output side"
    ),
    before_dense_on_another_axis: (
        f"before: {MODEL_INPUT}; after: 'd' (Dense) contracts the last axis, not the BN axis 1"
    ),
    before_conv_on_another_axis: (
        f"before: {MODEL_INPUT}; after: 'c' (Conv2D) has its channels on another axis than "
        "the BN axis 1"
    ),
    before_grouped_conv: f"before: {MODEL_INPUT}; after: 'c' (Conv2D) is a grouped convolution",
    before_padded_conv: (
        f"before: {MODEL_INPUT}; after: 'c' (Conv2D) pads its input (padding='same')"
    ),
    before_pooling_on_the_bn_axis: (
        f"before: {MODEL_INPUT}; after: 'p' (MaxPooling2D) pools along the BN axis 1"
    ),
    before_max_pooling_with_negative_scale: (
        f"before: {MODEL_INPUT}; after: 'p' (MaxPooling2D) is a max pooling and the BN has "
        "a negative scale"
    ),
    before_flatten_of_unknown_shape: (
        f"before: {MODEL_INPUT}; after: 'f' (Flatten) flattens a tensor of unknown shape "
        "(None, None, 3)"
    ),
    before_relu_layer: (
        f"before: {MODEL_INPUT}; after: it feeds 'r' (ReLU), which the BN map cannot be "
        "moved through"
    ),
    shared_bn: "the BN layer is called more than once",
}


@pytest.mark.parametrize("build", list(CASES), ids=lambda build: build.__name__)
def test_each_reason_is_the_true_one_and_the_folded_model_is_exact(build):
    model = build()
    decision = plan_folding(model)[0]
    assert decision.layer == "bn"
    assert (decision.action, decision.into, decision.reason) == ("affine", (), CASES[build])
    # Kept as a ChannelAffine: the folded model computes the same function.
    inputs = [
        np.random.default_rng(0).normal(size=(2, *(d or 4 for d in t.shape[1:])))
        for t in model.inputs
    ]
    inputs = inputs[0] if len(inputs) == 1 else inputs
    folded = fold_batchnorm(model)
    assert not batchnorm_layers(folded)
    expected = keras.tree.flatten(model(inputs, training=False))
    got = keras.tree.flatten(folded(inputs))
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(have), keras.ops.convert_to_numpy(want), atol=1e-5
        )


TRANSPOSED = [
    (layers.Conv1DTranspose, (7, 3)),
    (layers.Conv2DTranspose, (5, 5, 3)),
    (layers.Conv3DTranspose, (3, 4, 4, 3)),
]


@pytest.mark.parametrize(("kind", "shape"), TRANSPOSED, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_transposed_convolution_then_bn_folds_exactly(kind, shape, data_format, padding):
    if data_format == "channels_first":
        shape = (shape[-1], *shape[:-1])
    rng = np.random.default_rng(len(shape))
    x = keras.Input(shape)
    conv = kind(4, 3, strides=2, padding=padding, data_format=data_format, name="t")
    norm = bn(axis=1 if data_format == "channels_first" else -1)
    model = _model(x, layers.ReLU()(norm(conv(x))))
    norm.moving_mean.assign(rng.normal(size=4))
    norm.moving_variance.assign(rng.uniform(0.5, 2.0, size=4))
    norm.gamma.assign(rng.normal(size=4))  # negative scales included
    norm.beta.assign(rng.normal(size=4))
    conv.bias.assign(rng.normal(size=4))
    decision = plan_folding(model)[0]
    assert (decision.action, decision.into) == ("into_previous", ("t",))
    folded = fold_batchnorm(model)
    assert not batchnorm_layers(folded)
    data = rng.normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(folded(data)),
        keras.ops.convert_to_numpy(model(data, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_frozen_bn_folds_like_a_bn():
    from keras_bn_tools.layers import FrozenBatchNormalization

    rng = np.random.default_rng(5)
    x = keras.Input((6, 6, 3))
    h = layers.Conv2D(4, 3, name="c")(x)
    h = layers.ReLU()(FrozenBatchNormalization(name="f1")(h))
    h = FrozenBatchNormalization(name="f2")(layers.Flatten()(h))  # no linear layer behind
    model = _model(x, layers.Dense(2, name="d")(h))
    for name in ("f1", "f2"):
        layer = model.get_layer(name)
        size = layer.moving_mean.shape
        layer.moving_mean.assign(rng.normal(size=size))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=size))
        layer.gamma.assign(rng.normal(size=size))
    assert [layer.name for layer in batchnorm_layers(model)] == ["f1", "f2"]
    assert [(d.layer, d.action, d.into) for d in plan_folding(model)] == [
        ("f1", "into_previous", ("c",)),
        ("f2", "into_next", ("d",)),
    ]
    folded = fold_batchnorm(model)
    assert not batchnorm_layers(folded)
    data = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(folded(data)),
        keras.ops.convert_to_numpy(model(data, training=True)),  # frozen: training changes nothing
        rtol=1e-5,
        atol=1e-5,
    )
