"""Small helpers shared by the test modules (not collected: no `test_` prefix)."""

from __future__ import annotations

import keras
import numpy as np

from keras_bn_tools import batchnorm_layers


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model`, nested models and their layers included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found


def two_bn_stack(bn=keras.layers.BatchNormalization) -> keras.Model:
    """Dense(relu) -> BN1 -> Dense -> BN2 -> Dense: BN2's input depends on BN1's statistics.

    `bn(name=...)` makes each BN layer (default: Keras's).
    """
    inputs = keras.Input((3,))
    h = keras.layers.Dense(5, activation="relu", name="d1")(inputs)
    h = bn(name="bn1")(h)
    h = keras.layers.Dense(4, name="d2")(h)
    h = bn(name="bn2")(h)
    return keras.Model(inputs, keras.layers.Dense(1, name="out")(h))


def randomize_bn(model: keras.Model, rng: np.random.Generator) -> None:
    """Give every BN layer of `model` random gamma, beta and moving statistics."""
    for layer in batchnorm_layers(model):
        shape = layer.moving_mean.shape
        layer.gamma.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        layer.beta.assign(rng.normal(size=shape).astype("float32"))
        layer.moving_mean.assign(rng.normal(size=shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.1, 3.0, shape).astype("float32"))
