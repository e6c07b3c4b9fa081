"""Convert the batch normalization layers of an existing model to another BN class.

Every real architecture (`keras.applications`, a user's checkpoint) ships with
`keras.layers.BatchNormalization`. `convert_batchnorm` gives the same model with
`keras_bn_tools.layers.MomentumBatchNormalization` in its place, or back, with the same
configuration, layer names, gamma, beta and moving statistics.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import keras
import numpy as np

from keras_bn_tools._keras_compat import is_functional
from keras_bn_tools.graph import BatchNormPolicy, batchnorm_layers, clone_model
from keras_bn_tools.layers import MomentumBatchNormalization

__all__ = ["BN_VARIABLES", "convert_batchnorm", "convert_layer"]

#: The variables of `keras.layers.BatchNormalization`, in the order its `weights` lists them
#: (`gamma`/`beta` only with `scale`/`center`, the last three only with `renorm`).
BN_VARIABLES = (
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
)
# Arguments of every Keras layer's constructor that a BN layer's config carries.
_LAYER_ARGUMENTS = frozenset({"name", "trainable", "dtype"})


def convert_batchnorm(
    model: keras.Model,
    to: type[keras.layers.BatchNormalization] = MomentumBatchNormalization,
    **overrides: Any,
) -> keras.Model:
    """A copy of `model` in which every batch normalization layer is an instance of `to`.

    Each BN layer (nested models and wrappers such as `TimeDistributed` included)
    becomes `to` with the same configuration, layer name, gamma, beta and moving
    statistics; other layers are copied with their weights, so the outputs are
    bit-identical to the original's in inference and, when `to` computes what the
    original class computes (the default overrides), in training. The input model is
    left untouched.

    `to=keras.layers.BatchNormalization` converts back: the extra state of
    `MomentumBatchNormalization` (`num_batches_tracked`, the last batch's statistics,
    debias accumulators) and its extra arguments (`debias`, `virtual_batch_size`,
    `skip_nonfinite`) are dropped, so the result's `get_weights()` is exactly a Keras-BN
    model's. Convert back before saving weights for users of plain Keras BN.

    Args:
        model: a `keras.Sequential` or functional `keras.Model` (for instance from
            `keras.applications`).
        to: the BN class to convert to: `keras.layers.BatchNormalization`,
            `MomentumBatchNormalization` (default) or a subclass of either.
        **overrides: constructor arguments for every new layer, e.g. `momentum=None,
            debias=True`; they replace the converted layers' own values.

    Returns:
        The new model, of the same kind, name and compile config as `model`.

    Raises:
        TypeError: if `model` is not a Sequential or functional model, `to` is not a
            BN class, or an override is not an argument of `to`.
        ValueError: if an override value is invalid, or a setting has no equivalent
            in `to` (a cumulative `momentum=None` converted to Keras BN).

    Warns:
        UserWarning: if `model` has no BN layer (the result is an equivalent copy).

    Example:

    ```python
    import keras
    from keras_bn_tools import convert_batchnorm

    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=3)
    model = convert_batchnorm(base, momentum=0.9)
    ```
    """
    _check_target(to)
    if not isinstance(model, keras.Model) or not is_functional(model):
        raise TypeError(
            f"`model` must be a keras.Sequential or a functional keras.Model, got {model!r} "
            f"({type(model).__name__}). Subclassed models have no layer graph to copy; "
            "convert their BN layers one by one with "
            "MomentumBatchNormalization.from_batchnorm(layer)."
        )
    _check_overrides(to, overrides)
    if not batchnorm_layers(model):
        warnings.warn(
            f"Model {model.name!r} has no BatchNormalization layer; convert_batchnorm "
            "returns an equivalent copy.",
            UserWarning,
            stacklevel=2,
        )

    return clone_model(model, BatchNormPolicy(lambda bn: _convert(bn, to, overrides)))


def convert_layer(
    layer: keras.layers.BatchNormalization,
    to: type[keras.layers.BatchNormalization] = MomentumBatchNormalization,
    **overrides: Any,
) -> keras.layers.BatchNormalization:
    """One BN layer as a new instance of `to`, with its configuration and weights.

    What `convert_batchnorm` does to each layer, and what
    `MomentumBatchNormalization.from_batchnorm(layer, **overrides)` calls. The new
    layer is built when `layer` is, and then holds its gamma, beta and moving
    statistics (and, with renorm on both sides, its renorm statistics); its other
    state starts fresh.

    Args:
        layer: a `keras.layers.BatchNormalization` (or subclass) instance.
        to: the class of the new layer.
        **overrides: constructor arguments that replace `layer`'s own.

    Returns:
        The new layer.

    Raises:
        TypeError: on a `layer` that is not a BN layer, a `to` that is not a BN
            class or an override that is not an argument of `to`.
        ValueError: on an invalid override value or a setting `to` cannot express.
    """
    if not isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(
            f"`layer` must be a keras.layers.BatchNormalization (or a subclass such as "
            f"MomentumBatchNormalization), got {layer!r} ({type(layer).__name__})."
        )
    _check_target(to)
    _check_overrides(to, overrides)
    return _convert(layer, to, overrides)


def _check_target(to: Any) -> None:
    if not (isinstance(to, type) and issubclass(to, keras.layers.BatchNormalization)):
        raise TypeError(
            "`to` must be keras.layers.BatchNormalization, "
            "keras_bn_tools.layers.MomentumBatchNormalization or a subclass of either, "
            f"got {to!r}."
        )


def _constructor_arguments(to: type) -> frozenset[str]:
    """The keyword arguments `to(...)` accepts by name (base layer arguments included)."""
    names = set(_LAYER_ARGUMENTS)
    for klass in to.__mro__:
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


def _check_overrides(to: type, overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - _constructor_arguments(to))
    if unknown:
        raise TypeError(
            f"Unknown override(s) {unknown} for {to.__name__}: overrides must be arguments "
            f"of its constructor, one of {sorted(_constructor_arguments(to))}."
        )
    if "name" in overrides:
        raise TypeError(
            "The override `name` would give every converted layer the same name; the "
            "converted layers keep their own names."
        )
    if overrides:
        to(**overrides)  # the class's own checks name a bad value, before any copying


def _convert(
    layer: keras.layers.BatchNormalization, to: type, overrides: dict[str, Any]
) -> keras.layers.BatchNormalization:
    accepted = _constructor_arguments(to)
    config = {key: value for key, value in layer.get_config().items() if key in accepted}
    config.update(overrides)
    if config.get("momentum", 0.99) is None and "momentum" not in _cumulative_capable(to):
        raise ValueError(
            f"Layer {layer.name!r} uses `momentum`=None (a cumulative average), which "
            f"{to.__name__} cannot express. Pass a float momentum to convert it, e.g. "
            f"convert_batchnorm(model, to={to.__name__}, momentum=0.99)."
        )
    new = to.from_config(config)
    if layer.built:
        new.build_from_config(layer.get_build_config())
        _copy_statistics(layer, new)
    return new


def _cumulative_capable(to: type) -> set[str]:
    """`{"momentum"}` if `to` accepts `momentum=None`, else empty."""
    return {"momentum"} if issubclass(to, MomentumBatchNormalization) else set()


def _copy_statistics(source: Any, target: Any) -> None:
    """Give `target` the gamma, beta and moving (and renorm) statistics of `source`."""
    own = {id(getattr(target, name)): name for name in BN_VARIABLES if _has(target, name)}
    order = [own[id(variable)] for variable in target.weights if id(variable) in own]
    arrays = [_value_for(source, target, name) for name in order]
    if isinstance(target, MomentumBatchNormalization) or len(arrays) == len(target.weights):
        # MomentumBatchNormalization takes Keras BN's arrays and starts its extra state fresh.
        target.set_weights(arrays)
        return
    for name, array in zip(order, arrays, strict=True):  # a subclass with more state
        getattr(target, name).assign(array)


def _has(layer: Any, name: str) -> bool:
    return isinstance(getattr(layer, name, None), keras.Variable)


def _value_for(source: Any, target: Any, name: str) -> np.ndarray:
    """`source`'s value of variable `name`, or one derived from its moving statistics."""
    dtype = getattr(target, name).dtype
    if _has(source, name):
        return np.asarray(keras.ops.convert_to_numpy(getattr(source, name)), dtype=dtype)
    # Renorm turned on by an override: its statistics start from the moving ones, as
    # Keras initializes them (stddev = sqrt(variance)).
    mean = keras.ops.convert_to_numpy(source.moving_mean)
    variance = keras.ops.convert_to_numpy(source.moving_variance)
    value = mean if name == "renorm_mean" else np.sqrt(variance)
    return np.asarray(value, dtype=dtype)
