"""Finding BN layers in a model: `batchnorm_layers`, keys and statistics, one decision of
"this is a BN layer, wrapped or not" (`batchnorm_of`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_bn_tools.layers.interface import as_batchnorm, is_batchnorm

__all__ = [
    "BN_STATISTICS",
    "batchnorm_layers",
    "batchnorm_of",
    "find_layers",
    "keyed_batchnorm_layers",
    "layer_keys",
    "num_inputs",
    "statistic_variables",
]

#: The per-channel state of a BN layer that trackers and studies record.
BN_STATISTICS = ("moving_mean", "moving_variance", "gamma", "beta")


# --------------------------------------------------------------------------------------
# Finding BN layers
# --------------------------------------------------------------------------------------


def batchnorm_of(layer: Any) -> keras.layers.Layer | None:
    """The BN layer that `layer` is, or that it wraps (`TimeDistributed(BN)`), else None.

    The one place that decides "this is a BN layer, wrapped or not".
    """
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer if is_batchnorm(layer) else None


def find_layers(model: keras.Model, matches: Callable[[keras.layers.Layer], bool], *,
                unwrap: bool = False) -> list[keras.layers.Layer]:  # fmt: skip
    """Every layer of `model` that `matches`, nested models included, in call order.

    The one walk over a model's layers: a layer shared by several nested models
    is listed once, and with `unwrap` a wrapper that does not match is looked
    into (`TimeDistributed(BatchNormalization())`).

    Raises:
        TypeError: if `model` is not a `keras.Model` (a single layer is not a model:
            wrap it, e.g. `keras.Sequential([layer])`).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model, got {model!r} ({type(model).__name__}). "
            "To look into a single layer, wrap it: keras.Sequential([layer])."
        )
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()

    def visit(layer: keras.layers.Layer) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if matches(layer):
            found.append(layer)
        elif unwrap and isinstance(layer, keras.layers.Wrapper):
            visit(layer.layer)
        elif isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)

    for layer in model.layers:
        visit(layer)
    return found


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch normalization layer of `model`, nested models included, in call order.

    `keras_bn_tools.layers.MomentumBatchNormalization` subclasses
    `keras.layers.BatchNormalization`, so both are found. BN inside a wrapper
    (`keras.layers.TimeDistributed(keras.layers.BatchNormalization())`) is
    found too: its statistics are what a user means to track. A layer shared by
    several nested models is listed once.

    Args:
        model: a built or unbuilt Keras model.

    Returns:
        A list of BN layers, outermost first, in the order the model calls them.

    Raises:
        TypeError: if `model` is not a `keras.Model` (a single layer is not a model:
            wrap it, e.g. `keras.Sequential([layer])`).
    """
    return find_layers(model, is_batchnorm, unwrap=True)


def num_inputs(model: keras.Model) -> int | None:
    """How many input tensors `model` takes, or None while that is unknown (not built,
    or a subclassed model that has not been called)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return len(inputs) if inputs else None


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


def keyed_batchnorm_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """`(key, layer)` for every BN layer of `model`, keyed by `layer_keys`."""
    layers = batchnorm_layers(model)
    return list(zip(layer_keys(layers), layers, strict=True))


def statistic_variables(
    layers: Sequence[tuple[str, keras.layers.Layer]], stats: Sequence[str] = BN_STATISTICS
) -> list[tuple[str, str, Any]]:
    """`(layer key, stat, variable)` for each keyed BN layer and each of `stats` it has.

    A BN layer built with `center=False` has no `beta` and one with
    `scale=False` no `gamma`: those are left out, not reported as zeros.
    This is the one place that decides which variables count as "the
    statistics" of a BN layer, for `MovingStatsTracker` and the studies alike;
    the layer itself says which it has (`BatchNormInterface.statistic_variables`).
    """
    found = []
    for key, layer in layers:
        own = as_batchnorm(layer).statistic_variables()
        found.extend((key, stat, own[stat]) for stat in stats if stat in own)
    return found
