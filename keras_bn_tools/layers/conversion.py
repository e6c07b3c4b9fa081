"""One BN layer as a new layer of another BN class, with its configuration and weights.

What `MomentumBatchNormalization.from_batchnorm` and `convert_batchnorm` do to
each layer, through the BN interface only.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras

from keras_bn_tools.layers.interface import as_batchnorm
from keras_bn_tools.ops import to_numpy

__all__ = ["constructor_arguments", "copy_batchnorm"]


def constructor_arguments(cls: type) -> frozenset[str]:
    """The keyword arguments `cls(...)` accepts by name (base layer arguments included)."""
    names = {"name", "trainable", "dtype"}
    for klass in cls.__mro__:
        if klass is keras.layers.Layer:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                names.add(parameter.name)
    names.discard("self")
    return frozenset(names)


def copy_batchnorm(
    layer: keras.layers.Layer, cls: type, overrides: Mapping[str, Any] | None = None
) -> keras.layers.Layer:
    """A new layer of BN class `cls` with `layer`'s configuration, name and weights.

    The new layer takes the constructor arguments of `cls` found in
    `layer.get_config()`, replaced by `overrides`; when `layer` is built, the
    new one is built alike and gets its gamma, beta and moving (and renorm)
    statistics, its other state starting fresh. `layer` is left untouched.

    Raises:
        TypeError: on a `layer` that is not a BN layer, or an override that is
            not an argument of `cls`.
        ValueError: on an invalid override value (the class's own check).
    """
    source = as_batchnorm(layer)
    overrides = dict(overrides or {})
    accepted = constructor_arguments(cls)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise TypeError(
            f"Unknown override(s) {unknown} for {cls.__name__}: overrides must be arguments "
            f"of its constructor, one of {sorted(accepted)}."
        )
    config = {key: value for key, value in layer.get_config().items() if key in accepted}
    config.update(overrides)
    new = cls.from_config(config)
    if layer.built:
        new.build_from_config(layer.get_build_config())
        values = {name: to_numpy(v) for name, v in source.keras_variables().items()}
        as_batchnorm(new).set_keras_variables(values)
    return new
