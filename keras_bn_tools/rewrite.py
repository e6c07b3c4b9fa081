"""Find and insert batch normalization layers in existing Keras models."""

from __future__ import annotations

import keras

__all__ = ["batchnorm_layers"]


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch normalization layer of `model`, nested models included, in call order.

    `keras_bn_tools.layers.MomentumBatchNormalization` subclasses
    `keras.layers.BatchNormalization`, so both are found. A layer shared by
    several nested models is listed once.

    Args:
        model: a built or unbuilt Keras model.

    Returns:
        A list of BN layers, outermost first, in the order the model calls them.
    """
    found: list[keras.layers.BatchNormalization] = []
    seen: set[int] = set()

    def visit(layer: keras.layers.Layer) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)

    for layer in model.layers:
        visit(layer)
    return found
