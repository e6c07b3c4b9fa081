"""Helpers for building models with BN: normalization-layer factories, layer names,
linear activations. Shared by `builders` and `rewrite`.

Finding BN layers in a model, keying them and reading their statistics live in
the graph module (`keras_bn_tools.graph`). Private; it imports nothing else from
this package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

__all__ = ["BNFactory", "NormalizationFactory", "is_linear", "unique_name"]

#: A zero-argument callable returning a new normalization layer (`bn_layer=` arguments).
BNFactory = Callable[[], keras.layers.Layer]


class NormalizationFactory:
    """Makes the normalization layers of one model from a user's `bn_layer`.

    Checks at construction that `bn_layer` is callable, and at each call that it
    returned a new, unbuilt Keras layer. Without a `bn_layer` it makes
    `keras.layers.BatchNormalization` on the channel axis of the layer it follows.
    """

    def __init__(self, bn_layer: BNFactory | None) -> None:
        if bn_layer is not None and (
            not callable(bn_layer) or isinstance(bn_layer, keras.layers.Layer)
        ):
            raise TypeError(
                f"`bn_layer` must be None or a zero-argument callable returning a new "
                f"normalization layer (e.g. `keras.layers.BatchNormalization` or "
                f"`lambda: keras.layers.BatchNormalization(momentum=0.9)`), got {bn_layer!r}."
            )
        self._bn_layer = bn_layer
        self._made: list[keras.layers.Layer] = []

    def __call__(self, *, channels_first: bool = False) -> keras.layers.Layer:
        if self._bn_layer is None:
            return keras.layers.BatchNormalization(axis=1 if channels_first else -1)
        layer = self._bn_layer()
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"`bn_layer` must return a Keras layer, but {self._bn_layer!r} "
                f"returned {layer!r} ({type(layer).__name__})."
            )
        if layer.built or any(layer is made for made in self._made):
            raise ValueError(
                f"`bn_layer` must return a new, unbuilt layer on every call, but "
                f"{self._bn_layer!r} returned the layer {layer.name!r} again or already "
                f"built. Pass a factory such as `lambda: keras.layers.BatchNormalization()`, "
                f"not a layer instance."
            )
        self._made.append(layer)
        return layer


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ...: the first one not in `taken`, which is updated."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def is_linear(activation: Any) -> bool:
    """True if `activation` (None, a name or a callable) is the identity."""
    return activation is None or keras.activations.get(activation) is keras.activations.linear
