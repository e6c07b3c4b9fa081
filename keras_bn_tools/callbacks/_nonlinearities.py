"""Find a model's nonlinearities and capture what goes into them.

A nonlinearity is an `Activation` layer with a non-linear function, a
dedicated activation layer (`ReLU`, `Softmax`, ...) or a Dense / convolution
layer with a fused non-linear `activation`. `ActivationTracker` finds them
with `nonlinearity_layers`, runs its probe inside `capturing_inputs` and
reduces each captured input with `unit_percentiles`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from keras_bn_tools.graph import find_layers, layer_keys

__all__ = ["capturing_inputs", "nonlinearity_layers", "unit_axis_of", "unit_percentiles"]

# Layers whose `activation` attribute is applied to their (linear) output. RNN layers also
# have an `activation`, but apply it inside the cell at every time step: left out.
_FUSED_ACTIVATION_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dense",
        "EinsumDense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "SeparableConv1D",
        "SeparableConv2D",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "Activation",
    )
    if hasattr(keras.layers, name)
)
# Dedicated nonlinearity layers, which apply a fixed function in `call`.
_ACTIVATION_LAYER_TYPES = tuple(
    getattr(keras.layers, name)
    for name in ("ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax")
    if hasattr(keras.layers, name)
)


def _is_linear(activation: Any) -> bool:
    return activation is None or keras.activations.get(activation) is keras.activations.linear


def _nonlinearity_kind(layer: keras.layers.Layer) -> str | None:
    """`"activation"` (patch the `activation` attribute), `"call"` (patch `call`) or None."""
    if isinstance(layer, _FUSED_ACTIVATION_TYPES):
        return None if _is_linear(layer.activation) else "activation"
    if isinstance(layer, _ACTIVATION_LAYER_TYPES):
        return "call"
    return None


def nonlinearity_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """`(key, layer)` for every nonlinearity of `model`, nested models included, in call order.

    A nonlinearity is an `Activation` layer with a non-linear function, a
    dedicated activation layer (`ReLU`, `LeakyReLU`, `ELU`, `PReLU`,
    `Softmax`), or a Dense / convolution layer with a fused non-linear
    `activation`. Keys are layer names; a name repeated in nested models gets
    `#2`, `#3`, ...
    """
    layers = find_layers(model, lambda layer: _nonlinearity_kind(layer) is not None)
    return list(zip(layer_keys(layers), layers, strict=True))


@contextmanager
def capturing_inputs(layers: Sequence[tuple[str, keras.layers.Layer]]) -> Iterator[dict]:
    """While active, a call of the model stores each layer's nonlinearity input by key.

    For a layer with a fused activation the input of `layer.activation` is its
    pre-activation (the linear part's output); an `Activation` layer's
    `activation` receives the layer's input; a dedicated activation layer's
    `call` receives it. The patches are instance attributes, removed on exit.
    """
    captured: dict[str, Any] = {}
    patched: list[tuple[keras.layers.Layer, str, bool, Any]] = []

    def patch(layer: keras.layers.Layer, attribute: str, replacement: Callable) -> None:
        had_own = attribute in layer.__dict__
        patched.append((layer, attribute, had_own, layer.__dict__.get(attribute)))
        object.__setattr__(layer, attribute, replacement)

    def capture(key: str, function: Callable) -> Callable:
        def wrapper(x, *args, **kwargs):
            captured[key] = x
            return function(x, *args, **kwargs)

        return wrapper

    try:
        for key, layer in layers:
            attribute = "activation" if _nonlinearity_kind(layer) == "activation" else "call"
            patch(layer, attribute, capture(key, getattr(layer, attribute)))
        yield captured
    finally:
        for layer, attribute, had_own, value in reversed(patched):
            if had_own:
                object.__setattr__(layer, attribute, value)
            else:
                object.__delattr__(layer, attribute)


def unit_axis_of(layer: keras.layers.Layer, rank: int) -> int:
    """The axis of a `rank`-d nonlinearity input that holds the units (the channels)."""
    if getattr(layer, "data_format", None) == "channels_first" and rank > 2:
        return 1
    return rank - 1


def unit_percentiles(x: np.ndarray, percentiles: Sequence[float], unit_axis: int) -> np.ndarray:
    """`np.percentile` of `x` over every axis but `unit_axis`: shape `(len(percentiles), units)`."""
    x = np.moveaxis(np.asarray(x, dtype="float64"), unit_axis, -1)
    return np.percentile(x.reshape(-1, x.shape[-1]), list(percentiles), axis=0)
