"""Small Sequential models with batch normalization before, after or without activations.

Every builder returns an uncompiled `keras.Sequential` that starts with
`keras.Input`. The `bn` argument says where BN goes relative to each hidden
layer's activation (see `keras_bn_tools.Placement`):

- `"after"`: `Layer(activation=act) -> BN`
- `"before"`: `Layer(activation=None) -> BN -> Activation(act)`
- `"none"`: `Layer(activation=act)`

The output layer is never followed by BN.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras

from keras_bn_tools._model_utils import BNFactory, NormalizationFactory, is_linear, unique_name
from keras_bn_tools._validation import (
    check_bool,
    check_int_sequence,
    check_layer_weights,
    check_positive_int,
)
from keras_bn_tools.layers import BatchNormLSTM
from keras_bn_tools.placement import Placement, parse_placement

__all__ = ["build_cnn", "build_lstm", "build_mlp"]


def _check_activation(name: str, value: Any) -> Any:
    try:
        keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Invalid `{name}`: {value!r}. Expected None, the name of a Keras activation "
            f"(e.g. 'relu', 'tanh') or a callable."
        ) from error
    return value


def _with_bn(
    make_layer: Callable[[Any], keras.layers.Layer],
    activation: Any,
    placement: Placement,
    make_bn: Callable[[], keras.layers.Layer],
) -> list[keras.layers.Layer]:
    """One hidden layer and its BN: `make_layer(activation)` builds the layer itself.

    `before` with a linear activation has nothing to split: the layer is followed by BN.
    """
    if placement is Placement.NONE:
        return [make_layer(activation)]
    if placement is Placement.AFTER or is_linear(activation):
        return [make_layer(activation), make_bn()]
    return [make_layer(None), make_bn(), keras.layers.Activation(activation)]


def _dense_head(
    dense_units: tuple[int, ...],
    activation: Any,
    placement: Placement,
    make_bn: NormalizationFactory,
    output_units: int,
    output_activation: Any,
    kernel_initializer: Any = "glorot_uniform",
) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for units in dense_units:
        layers += _with_bn(
            lambda act, units=units: keras.layers.Dense(
                units, activation=act, kernel_initializer=kernel_initializer
            ),
            activation,
            placement,
            make_bn,
        )
    layers.append(keras.layers.Dense(output_units, activation=output_activation))
    return layers


def _sequential(
    input_shape: tuple[int | None, ...], layers: list[keras.layers.Layer], name: str | None
) -> keras.Sequential:
    # A user's `bn_layer` may name its layers; keep the names unique within the model.
    taken: set[str] = set()
    for layer in layers:
        layer.name = unique_name(layer.name, taken)
    return keras.Sequential([keras.Input(shape=input_shape), *layers], name=name)


def _check_widths(
    fan_in: int,
    groups: list[tuple[str, Sequence[int]]],
    fan_in_factor: int = 1,
    fed_by: str = "",
) -> None:
    """Refuse layers too big to build: `groups` are (argument, widths) in layer order.

    Each layer's fan-in is the previous layer's width (times `fan_in_factor`, e.g.
    a convolution's kernel area), starting from `fan_in`.
    """
    for name, widths in groups:
        for width in widths:
            check_layer_weights(name, tuple(widths), fan_in * fan_in_factor, width, fed_by)
            fan_in, fed_by = width, ""


def _kernel_area(kernel_size: Any) -> int:
    """The number of positions of a 2-D kernel (1 where `kernel_size` is left to Keras)."""
    sizes = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) else kernel_size
    try:
        area = 1
        for size in sizes:
            area *= int(size)
    except (TypeError, ValueError):
        return 1  # Keras's own check names the bad `kernel_size`
    return max(area, 1)


def _check_shape(name: str, value: Any, rank: int, meaning: str, *, allow_none_first: bool):
    shape = tuple(value) if isinstance(value, Iterable) and not isinstance(value, str) else None
    if shape is None or len(shape) != rank:
        raise ValueError(
            f"Invalid `{name}`: {value!r}. Expected a {rank}-D shape {meaning} without the "
            f"batch dimension."
        )
    for i, dim in enumerate(shape):
        if dim is None and i == 0 and allow_none_first:
            continue
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            allowed = " (the first may be None)" if allow_none_first else ""
            raise ValueError(
                f"Invalid `{name}`: {value!r}. Every dimension of {meaning} must be a "
                f"positive integer{allowed}; bad entry: {dim!r}."
            )
    return tuple(None if dim is None else int(dim) for dim in shape)


def build_mlp(
    input_dim: int,
    hidden_units: Sequence[int] | int = (50,),
    *,
    activation: Any = "relu",
    bn: Placement | str = "after",
    input_bn: bool = False,
    output_units: int = 1,
    output_activation: Any = "sigmoid",
    kernel_initializer: Any = "he_uniform",
    bn_layer: BNFactory | None = None,
    name: str | None = None,
) -> keras.Sequential:
    """A multilayer perceptron with BN placed by `bn` at every hidden layer.

    `build_mlp(2, (50,), bn=...)` gives the circles study's three models:

    - `"none"`: `Dense(50, relu, he_uniform) -> Dense(1, sigmoid)`
    - `"after"`: `Dense(50, relu, he_uniform) -> BatchNormalization -> Dense(1, sigmoid)`
    - `"before"`: `Dense(50, he_uniform) -> BatchNormalization -> Activation(relu)
      -> Dense(1, sigmoid)`

    Args:
        input_dim: number of input features (a positive integer).
        hidden_units: units of each hidden `Dense` layer; an int is one layer.
        activation: activation of the hidden layers.
        bn: a `Placement` or its string: `"after"`, `"before"` or `"none"`.
            With a linear `activation`, `"before"` puts BN right after the layer.
        input_bn: put a BN layer right after the input (independent of `bn`).
        output_units: units of the output `Dense` layer.
        output_activation: activation of the output layer (never followed by BN).
        kernel_initializer: initializer of the hidden layers; the output layer
            keeps Keras's default (`"glorot_uniform"`), as in the circles study.
        bn_layer: zero-argument callable returning a new normalization layer;
            default `keras.layers.BatchNormalization`.
        name: name of the model.

    Returns:
        An uncompiled `keras.Sequential` that starts with `keras.Input((input_dim,))`.

    Raises:
        ValueError: on an unknown `bn`, empty or non-positive `hidden_units`,
            a non-positive `input_dim` or `output_units`, a bad activation.
        TypeError: on a non-integer `input_dim`, a non-callable `bn_layer` or
            one that returns something other than a Keras layer.
    """
    input_dim = check_positive_int("input_dim", input_dim)
    hidden_units = check_int_sequence("hidden_units", hidden_units)
    placement = parse_placement(bn, "bn")
    output_units = check_positive_int("output_units", output_units)
    input_bn = check_bool("input_bn", input_bn)
    _check_widths(
        input_dim,
        [("hidden_units", hidden_units), ("output_units", (output_units,))],
        fed_by=f"`input_dim`={input_dim}",
    )
    _check_activation("activation", activation)
    _check_activation("output_activation", output_activation)
    make_bn = NormalizationFactory(bn_layer)

    layers: list[keras.layers.Layer] = [make_bn()] if input_bn else []
    layers += _dense_head(
        hidden_units,
        activation,
        placement,
        make_bn,
        output_units,
        output_activation,
        kernel_initializer,
    )
    return _sequential((input_dim,), layers, name)


def _check_pooling_fits(input_shape: tuple, filters: tuple, pool_every: Any, channels_first: bool):
    """Raise if `build_cnn`'s MaxPooling2D(2) layers would shrink the input below 1x1."""
    spatial = input_shape[1:] if channels_first else input_shape[:2]
    num_pools = 0 if pool_every is None else len(filters) // pool_every
    if min(spatial) < 2**num_pools:
        raise ValueError(
            f"Invalid `input_shape`: {input_shape!r} is too small for the {num_pools} "
            f"MaxPooling2D(2) layers of filters={filters!r} with pool_every={pool_every!r}; "
            f"height and width must be at least {2**num_pools}. Use a larger input, "
            f"fewer filters or a larger (or None) `pool_every`."
        )


def build_cnn(
    input_shape: Sequence[int],
    filters: Sequence[int] | int = (32, 32),
    *,
    kernel_size: int | tuple[int, int] = 3,
    activation: Any = "relu",
    bn: Placement | str = "after",
    pool_every: int | None = 2,
    dense_units: Sequence[int] | int = (),
    output_units: int = 1,
    output_activation: Any = "sigmoid",
    bn_layer: BNFactory | None = None,
    name: str | None = None,
) -> keras.Sequential:
    """A 2-D convolutional network with BN placed by `bn` at every `Conv2D`.

    Layout: for each entry of `filters`, `Conv2D(f, kernel_size, padding="same")`
    with its BN per `bn`; after every `pool_every`-th convolution a
    `MaxPooling2D(2)`, which comes after that convolution's BN (and activation).
    Then `Flatten`, the hidden `Dense` layers of `dense_units` (with BN per
    `bn`) and the output `Dense` layer, which is never followed by BN.

    `Flatten` (rather than global average pooling) keeps the spatial layout
    for the dense head, as in the classic Keras examples; it needs a fixed
    `input_shape`.

    Args:
        input_shape: `(height, width, channels)`, or `(channels, height, width)`
            when `keras.config.image_data_format()` is `"channels_first"`
            (the default BN then normalizes axis 1).
        filters: filters of each `Conv2D` layer; an int is one layer.
        kernel_size: kernel size of every `Conv2D` layer.
        activation: activation of the convolutions and hidden dense layers.
        bn: a `Placement` or its string: `"after"`, `"before"` or `"none"`.
        pool_every: a `MaxPooling2D(2)` after every `pool_every` convolutions;
            `None` for no pooling.
        dense_units: units of the hidden `Dense` layers after `Flatten`.
        output_units: units of the output `Dense` layer.
        output_activation: activation of the output layer.
        bn_layer: zero-argument callable returning a new normalization layer;
            default `keras.layers.BatchNormalization`.
        name: name of the model.

    Returns:
        An uncompiled `keras.Sequential` that starts with `keras.Input(input_shape)`.

    Raises:
        ValueError: on an unknown `bn`, an `input_shape` that is not 3-D with
            positive dimensions or too small for the pooling layers, empty or
            non-positive `filters`, non-positive `dense_units`.
        TypeError: on a non-callable `bn_layer` or one that returns something
            other than a Keras layer.
    """
    input_shape = _check_shape(
        "input_shape", input_shape, 3, "(height, width, channels)", allow_none_first=False
    )
    filters = check_int_sequence("filters", filters)
    placement = parse_placement(bn, "bn")
    pool_every = check_positive_int("pool_every", pool_every, allow_none=True)
    dense_units = check_int_sequence("dense_units", dense_units, allow_empty=True)
    output_units = check_positive_int("output_units", output_units)
    kernel_area = _kernel_area(kernel_size)
    channels_first = keras.config.image_data_format() == "channels_first"
    channels = input_shape[0] if channels_first else input_shape[-1]
    _check_widths(
        channels,
        [("filters", filters)],
        fan_in_factor=kernel_area,
        fed_by=f"`input_shape`={input_shape}",
    )
    _check_widths(1, [("dense_units", dense_units), ("output_units", (output_units,))])
    _check_activation("activation", activation)
    _check_activation("output_activation", output_activation)
    make_bn = NormalizationFactory(bn_layer)

    _check_pooling_fits(input_shape, filters, pool_every, channels_first)

    layers: list[keras.layers.Layer] = []
    for i, n_filters in enumerate(filters):
        layers += _with_bn(
            lambda act, n_filters=n_filters: keras.layers.Conv2D(
                n_filters, kernel_size, padding="same", activation=act
            ),
            activation,
            placement,
            lambda: make_bn(channels_first=channels_first),
        )
        if pool_every is not None and (i + 1) % pool_every == 0:
            layers.append(keras.layers.MaxPooling2D(2))
    layers.append(keras.layers.Flatten())
    layers += _dense_head(
        dense_units, activation, placement, make_bn, output_units, output_activation
    )
    return _sequential(input_shape, layers, name)


def build_lstm(
    input_shape: Sequence[int | None],
    units: Sequence[int] | int = (32,),
    *,
    bn: Placement | str = "after",
    dense_units: Sequence[int] | int = (),
    output_units: int = 1,
    output_activation: Any = "sigmoid",
    bn_layer: BNFactory | None = None,
    name: str | None = None,
) -> keras.Sequential:
    """A stack of LSTM layers and a dense head, with BN placed by `bn`.

    - `"after"`: `LSTM -> BN` for every LSTM layer.
    - `"before"`: every LSTM layer is a `keras_bn_tools.layers.BatchNormLSTM`,
      which normalizes inside the recurrent cell (recurrent batch
      normalization, Cooijmans et al. 2016); `bn_layer` applies only to the
      dense head.
    - `"none"`: plain `LSTM` layers.

    Stacked LSTM layers return sequences except the last. The hidden `Dense`
    layers of `dense_units` use ReLU and get BN per `bn`; the output `Dense`
    layer is never followed by BN.

    Args:
        input_shape: `(timesteps, features)`; `timesteps` may be None.
        units: units of each LSTM layer; an int is one layer.
        bn: a `Placement` or its string: `"after"`, `"before"` or `"none"`.
        dense_units: units of the hidden `Dense` layers after the last LSTM.
        output_units: units of the output `Dense` layer.
        output_activation: activation of the output layer.
        bn_layer: zero-argument callable returning a new normalization layer;
            default `keras.layers.BatchNormalization`.
        name: name of the model.

    Returns:
        An uncompiled `keras.Sequential` that starts with `keras.Input(input_shape)`.

    Raises:
        ValueError: on an unknown `bn`, an `input_shape` that is not 2-D,
            empty or non-positive `units`, non-positive `dense_units`.
        TypeError: on a non-callable `bn_layer` or one that returns something
            other than a Keras layer.
    """
    input_shape = _check_shape(
        "input_shape", input_shape, 2, "(timesteps, features)", allow_none_first=True
    )
    units = check_int_sequence("units", units)
    placement = parse_placement(bn, "bn")
    dense_units = check_int_sequence("dense_units", dense_units, allow_empty=True)
    output_units = check_positive_int("output_units", output_units)
    # An LSTM layer holds 4 * units * (inputs + units) weights.
    features = input_shape[-1]
    fed_by = f"`input_shape`={input_shape}"
    for n_units in units:
        check_layer_weights("units", units, 4 * (features + n_units), n_units, fed_by)
        features, fed_by = n_units, ""
    _check_widths(features, [("dense_units", dense_units), ("output_units", (output_units,))])
    _check_activation("output_activation", output_activation)
    make_bn = NormalizationFactory(bn_layer)

    layers: list[keras.layers.Layer] = []
    for i, n_units in enumerate(units):
        return_sequences = i < len(units) - 1
        if placement is Placement.BEFORE:
            layers.append(BatchNormLSTM(n_units, return_sequences=return_sequences))
        else:
            layers.append(keras.layers.LSTM(n_units, return_sequences=return_sequences))
            if placement is Placement.AFTER:
                layers.append(make_bn())
    layers += _dense_head(dense_units, "relu", placement, make_bn, output_units, output_activation)
    return _sequential(input_shape, layers, name)
