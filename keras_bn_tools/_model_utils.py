"""Model utilities shared by the builders, rewriters, folding, recalibration,
callbacks and studies: finding BN layers, keying them, reading their statistics.

Low-level and private: it imports nothing else from this package, so every
module can use it without depending on another feature module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

__all__ = [
    "BN_STATISTICS",
    "BNFactory",
    "NormalizationFactory",
    "batchnorm_layers",
    "is_linear",
    "layer_keys",
    "statistic_variables",
    "unique_name",
]

#: A zero-argument callable returning a new normalization layer (`bn_layer=` arguments).
BNFactory = Callable[[], keras.layers.Layer]

#: The per-channel state of a BN layer that trackers and studies record.
BN_STATISTICS = ("moving_mean", "moving_variance", "gamma", "beta")


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch normalization layer of `model`, nested models included, in call order.

    `keras_bn_tools.layers.MomentumBatchNormalization` subclasses
    `keras.layers.BatchNormalization`, so both are found. BN inside a wrapper
    (`keras.layers.TimeDistributed(keras.layers.BatchNormalization())`) is
    found too. A layer shared by several nested models is listed once.

    Args:
        model: a built or unbuilt Keras model.

    Returns:
        A list of BN layers, outermost first, in the order the model calls them.

    Raises:
        TypeError: if `model` is not a `keras.Model` (a single layer is not a model:
            wrap it, e.g. `keras.Sequential([layer])`).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model, got {model!r} ({type(model).__name__}). "
            "To look into a single layer, wrap it: keras.Sequential([layer])."
        )
    found: list[keras.layers.BatchNormalization] = []
    seen: set[int] = set()

    def visit(layer: keras.layers.Layer) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.layers.Wrapper):
            # TimeDistributed(BatchNormalization()) and the like: the BN is the
            # wrapped layer, and its statistics are what a user means to track.
            visit(layer.layer)
        elif isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)

    for layer in model.layers:
        visit(layer)
    return found


def layer_keys(layers: Sequence[keras.layers.Layer]) -> list[str]:
    """Unique, stable keys for `layers`: the layer name, `name#2`, `name#3`, ... for repeats.

    Layer names are unique inside one model, but two nested models may each hold
    a layer called `"bn"`; the second one found is keyed `"bn#2"`.
    """
    seen: dict[str, int] = {}
    keys = []
    for layer in layers:
        seen[layer.name] = seen.get(layer.name, 0) + 1
        count = seen[layer.name]
        keys.append(layer.name if count == 1 else f"{layer.name}#{count}")
    return keys


def statistic_variables(
    layers: Sequence[tuple[str, keras.layers.Layer]], stats: Sequence[str] = BN_STATISTICS
) -> list[tuple[str, str, Any]]:
    """`(layer key, stat, variable)` for each keyed BN layer and each of `stats` it has.

    A BN layer built with `center=False` has no `beta` and one with
    `scale=False` no `gamma`: those are left out, not reported as zeros.
    This is the one place that decides which variables count as "the
    statistics" of a BN layer, for `MovingStatsTracker` and the studies alike.
    """
    found = []
    for key, layer in layers:
        for stat in stats:
            variable = getattr(layer, stat, None)
            if variable is not None and hasattr(variable, "assign"):
                found.append((key, stat, variable))
    return found


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
