"""What `clone_model` asks about each layer: `Policy` and its ready-made kinds, and the
helpers a policy uses to make its replacements (`copy_layer`, `rewrap`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keras_bn_tools._keras_compat import copy_lambda
from keras_bn_tools.layers.interface import is_batchnorm
from keras_bn_tools.ops import to_numpy

__all__ = [
    "DROP",
    "BatchNormPolicy",
    "CallablePolicy",
    "Policy",
    "Replacement",
    "copy_layer",
    "rewrap",
]


class _Drop:
    """The type of `DROP`."""

    def __repr__(self) -> str:
        return "DROP"


#: Returned by `Policy.replace`: the layer's call disappears, its input passes through.
DROP = _Drop()


@dataclass
class Replacement:
    """A new layer for `clone_model`, with the weights it gets once the new model builds it.

    Attributes:
        layer: the new layer (built or not).
        weights: NumPy arrays in the order of `layer.weights`, cast to each variable's
            dtype; None keeps the layer's own weights.
    """

    layer: Any
    weights: list[np.ndarray] | None = None


class Policy:
    """What `clone_model` does with each layer. The default keeps a copy of every layer."""

    def replace(self, layer: Any) -> Replacement | keras.layers.Layer | _Drop | None:
        """`layer`'s replacement: None (a copy), `DROP`, a new layer or a `Replacement`."""
        return None

    def insert_after(self, original: Any) -> list[keras.layers.Layer]:
        """New layers called right after the copy of `original` (on its first output)."""
        return []

    def nested(self, model: keras.Model) -> Policy:
        """The policy for the layers of `model`, a nested Sequential or functional model."""
        return self


class CallablePolicy(Policy):
    """`replace(layer) -> new layer | None` as a policy (nested models walked into)."""

    def __init__(self, replace: Callable[[Any], Any]) -> None:
        self._replace = replace

    def replace(self, layer: Any) -> Any:
        return self._replace(layer)


class BatchNormPolicy(Policy):
    """Replace BN layers only: `replace_bn(bn) -> new layer | Replacement | None`.

    BN inside wrappers is given to `replace_bn` too, and its wrapper re-created
    around the result by `clone_model`.
    """

    def __init__(self, replace_bn: Callable[[Any], Any]) -> None:
        self._replace_bn = replace_bn

    def replace(self, layer: Any) -> Any:
        return self._replace_bn(layer) if is_batchnorm(layer) else None


def _from_config(layer: Any, config: dict) -> Any:
    """`layer`'s class re-created from `config`, or a ValueError that says what to do."""
    try:
        return layer.__class__.from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot copy layer {layer.name!r} ({type(layer).__name__}) from its config: "
            f"{type(error).__name__}: {error}. The rewritten model needs a new copy of every "
            f"layer; give {type(layer).__name__} a get_config() that returns every constructor "
            f"argument (https://keras.io/guides/serialization_and_saving/)."
        ) from error


def copy_layer(
    layer: Any, *, config: dict | None = None, weights: list[np.ndarray] | None = None
) -> Replacement:
    """A new copy of `layer` (from `config`, default its own) with its weights or `weights`.

    A `Lambda` layer shares its function (its serialized bytecode loads only
    outside safe mode). A bare operation (such as `keras.ops.add` in a functional
    graph) has no weights.
    """
    if isinstance(layer, keras.layers.Lambda) and config is None:
        new = copy_lambda(layer)
    else:
        new = _from_config(layer, layer.get_config() if config is None else config)
    if not isinstance(layer, keras.layers.Layer):
        return Replacement(new)
    if weights is None:
        weights = [to_numpy(variable) for variable in layer.weights]
    return Replacement(new, weights)


def rewrap(wrapper: keras.layers.Wrapper, inner: keras.layers.Layer) -> keras.layers.Wrapper:
    """`wrapper` re-created around a new `inner` layer (built when `wrapper` was)."""
    config = wrapper.get_config()
    config.pop("layer", None)
    try:
        new = type(wrapper)(inner, **config)
    except Exception as error:
        raise ValueError(
            f"Cannot replace the layer inside {wrapper.name!r} ({type(wrapper).__name__}): "
            f"the wrapper cannot be re-created around a new layer ({error})."
        ) from error
    if wrapper.built:
        new.build_from_config(wrapper.get_build_config())
    return new
