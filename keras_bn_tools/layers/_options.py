"""The options of `MomentumBatchNormalization`: their checks, the input shapes they
allow, and which of them another BN class cannot represent."""

from __future__ import annotations

from typing import Any

import keras

from keras_bn_tools._validation import (
    check_axis,
    check_bool,
    check_epsilon,
    check_momentum,
    check_positive_int,
    check_probability,
    check_renorm_clipping,
)
from keras_bn_tools.layers.conversion import constructor_arguments

__all__ = ["check_input_shape", "check_options", "check_synchronized", "dropped_options"]

_FLAGS = ("center", "scale", "renorm", "synchronized", "debias", "skip_nonfinite")


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` (constructor arguments by name) checked and normalized.

    Raises:
        TypeError, ValueError: naming the argument, its value and what is allowed.
    """
    checked = dict(options)
    checked["axis"] = check_axis("axis", options["axis"])
    for name in _FLAGS:
        checked[name] = check_bool(name, options[name])
    if checked["synchronized"]:
        check_synchronized()
    checked["momentum"] = check_momentum("momentum", options["momentum"])
    checked["epsilon"] = check_epsilon("epsilon", options["epsilon"])
    checked["renorm_clipping"] = check_renorm_clipping(
        options["renorm_clipping"], renorm=checked["renorm"]
    )
    if checked["renorm"] and checked["renorm_clipping"] is None:
        checked["renorm_clipping"] = {}
    checked["renorm_momentum"] = check_probability("renorm_momentum", options["renorm_momentum"])
    checked["virtual_batch_size"] = check_positive_int(
        "virtual_batch_size", options["virtual_batch_size"], allow_none=True
    )
    return checked


def check_synchronized() -> None:
    """Refuse `synchronized=True` where the batch statistics would not be the global batch's.

    TensorFlow reduces them across `tf.distribute` replicas. On JAX, a batch
    sharded by an active `keras.distribution` (DataParallel, or ModelParallel
    with a batch axis) is reduced by XLA across devices, so the statistics are
    global: that is what `synchronized=True` asks for.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    if backend == "jax":
        if keras.distribution.distribution() is not None:
            return
        raise ValueError(
            "`synchronized=True` on the JAX backend needs an active keras.distribution "
            "data-parallel distribution (e.g. `keras.distribution.set_distribution("
            "keras.distribution.DataParallel())` before building the model): the batch "
            "statistics are then the global batch's; or the TensorFlow backend with a "
            "tf.distribute strategy. Without one, JAX trains on one device and there is "
            "nothing to synchronize: use `synchronized=False`."
        )
    raise ValueError(
        f"`synchronized=True` is not supported on the {backend} backend. Use the "
        "TensorFlow backend with a tf.distribute strategy, or JAX with "
        "`keras.distribution.DataParallel`, for batch statistics over all devices."
    )


def check_input_shape(layer: Any, input_shape: tuple[int | None, ...]) -> int:
    """The non-negative feature axis of `input_shape`, or a ValueError naming what is wrong."""
    rank = len(input_shape)
    if not -rank <= layer.axis < rank:
        raise ValueError(
            f"Invalid `axis`={layer.axis} for layer {layer.name!r}: the input shape "
            f"{input_shape} has rank {rank}, so `axis` must be in [{-rank}, {rank - 1}]."
        )
    feature_axis = layer.axis % rank
    if input_shape[feature_axis] is None:
        raise ValueError(
            f"The feature axis (`axis`={layer.axis}) of the input shape {input_shape} "
            f"must have a known size; layer {layer.name!r}."
        )
    if layer.virtual_batch_size is not None and feature_axis == 0:
        raise ValueError(
            f"`virtual_batch_size`={layer.virtual_batch_size} needs a batch axis to "
            f"split, but `axis`={layer.axis} makes axis 0 the feature axis; use a "
            "feature axis other than 0."
        )
    return feature_axis


def dropped_options(layer: Any, target: type, own_class: type) -> dict[str, Any]:
    """The options (name -> value) of `layer` that BN class `target` cannot represent.

    An option is dropped when `target` has no such constructor argument and
    the layer's value is not the default (`skip_nonfinite` is not counted: it
    only matters for a non-finite batch), or when `target` is not a subclass of
    `own_class` (nothing else takes `momentum=None`) and the layer uses it.
    """
    if isinstance(target, type) and issubclass(target, own_class):
        return {}
    accepted = constructor_arguments(target)
    defaults = {"debias": False, "renorm": False, "virtual_batch_size": None}
    dropped = {
        name: getattr(layer, name)
        for name, default in defaults.items()
        if name not in accepted and getattr(layer, name) != default
    }
    if layer.momentum is None:
        dropped["momentum"] = None
    return dropped
