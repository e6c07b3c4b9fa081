"""Convert the batch normalization layers of an existing model to another BN class.

Every real architecture (`keras.applications`, a user's checkpoint) ships with
`keras.layers.BatchNormalization`. `convert_batchnorm` gives the same model with
`keras_bn_tools.layers.MomentumBatchNormalization` in its place, or back, with the same
configuration, layer names, gamma, beta and moving statistics. A conversion that would
lose an option the target class cannot represent is refused unless asked for
(`lossy=True`), and then said aloud.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

from keras_bn_tools._keras_compat import is_functional
from keras_bn_tools._validation import check_bool
from keras_bn_tools.graph import BatchNormPolicy, batchnorm_layers, clone_model
from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.layers.conversion import constructor_arguments
from keras_bn_tools.layers.interface import KERAS_BN_VARIABLES, as_batchnorm
from keras_bn_tools.ops import to_numpy

__all__ = ["BN_VARIABLES", "convert_batchnorm", "convert_layer"]

#: The variables of `keras.layers.BatchNormalization`, in the order its `weights` lists them
#: (`gamma`/`beta` only with `scale`/`center`, the last three only with `renorm`).
BN_VARIABLES = KERAS_BN_VARIABLES


def convert_batchnorm(
    model: keras.Model,
    to: type[keras.layers.BatchNormalization] = MomentumBatchNormalization,
    *,
    lossy: bool = False,
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
    debias accumulators) is dropped, so the result's `get_weights()` is exactly a
    Keras-BN model's. Convert back before saving weights for users of plain Keras BN.

    A conversion is never silently lossy: when a layer uses an option that `to` cannot
    represent (`virtual_batch_size`, `debias`, a cumulative `momentum=None`, ... as
    the layer's `dropped_options(to)` says), the training-mode output of the result
    would differ, so `convert_batchnorm` raises `ValueError` naming the options and
    the layers, unless `lossy=True`, which drops them (the target's defaults apply)
    with a warning that lists them. An option given in `overrides` is not dropped.

    Args:
        model: a `keras.Sequential` or functional `keras.Model` (for instance from
            `keras.applications`).
        to: the BN class to convert to: `keras.layers.BatchNormalization`,
            `MomentumBatchNormalization` (default) or a subclass of either.
        lossy: allow dropping options `to` cannot represent (with a warning).
        **overrides: constructor arguments for every new layer, e.g. `momentum=None,
            debias=True`; they replace the converted layers' own values.

    Returns:
        The new model, of the same kind, name and compile config as `model`.

    Raises:
        TypeError: if `model` is not a Sequential or functional model, `to` is not a
            BN class, `lossy` is not a bool, or an override is not an argument of `to`.
        ValueError: if an override value is invalid or cannot be expressed by `to`
            (`momentum=None` for Keras BN), or, without `lossy=True`, a layer uses
            options `to` cannot represent.

    Warns:
        UserWarning: if `model` has no BN layer (the result is an equivalent copy), or
            with `lossy=True`, listing the options dropped.

    Example:

    ```python
    import keras
    from keras_bn_tools import convert_batchnorm

    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=3)
    model = convert_batchnorm(base, momentum=0.9)
    ```
    """
    _check_target(to)
    lossy = check_bool("lossy", lossy)
    if not isinstance(model, keras.Model) or not is_functional(model):
        raise TypeError(
            f"`model` must be a keras.Sequential or a functional keras.Model, got {model!r} "
            f"({type(model).__name__}). Subclassed models have no layer graph to copy; "
            "convert their BN layers one by one with "
            "MomentumBatchNormalization.from_batchnorm(layer)."
        )
    _check_overrides(to, overrides)
    layers = batchnorm_layers(model)
    if not layers:
        warnings.warn(
            f"Model {model.name!r} has no BatchNormalization layer; convert_batchnorm "
            "returns an equivalent copy.",
            UserWarning,
            stacklevel=2,
        )
    _check_lossless(layers, to, overrides, lossy, stacklevel=3)
    return clone_model(model, BatchNormPolicy(lambda bn: _convert(bn, to, overrides)))


def convert_layer(
    layer: keras.layers.BatchNormalization,
    to: type[keras.layers.BatchNormalization] = MomentumBatchNormalization,
    *,
    lossy: bool = False,
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
        lossy: allow dropping options `to` cannot represent (with a warning).
        **overrides: constructor arguments that replace `layer`'s own.

    Returns:
        The new layer.

    Raises:
        TypeError: on a `layer` that is not a BN layer, a `to` that is not a BN
            class, a `lossy` that is not a bool or an override that is not an
            argument of `to`.
        ValueError: on an invalid override value, or options `to` cannot represent
            without `lossy=True`.
    """
    if not isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(
            f"`layer` must be a keras.layers.BatchNormalization (or a subclass such as "
            f"MomentumBatchNormalization), got {layer!r} ({type(layer).__name__})."
        )
    _check_target(to)
    lossy = check_bool("lossy", lossy)
    _check_overrides(to, overrides)
    _check_lossless([layer], to, overrides, lossy, stacklevel=3)
    return _convert(layer, to, overrides)


def _check_target(to: Any) -> None:
    if not (isinstance(to, type) and issubclass(to, keras.layers.BatchNormalization)):
        raise TypeError(
            "`to` must be keras.layers.BatchNormalization, "
            "keras_bn_tools.layers.MomentumBatchNormalization or a subclass of either, "
            f"got {to!r}."
        )


def _check_overrides(to: type, overrides: dict[str, Any]) -> None:
    accepted = constructor_arguments(to)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise TypeError(
            f"Unknown override(s) {unknown} for {to.__name__}: overrides must be arguments "
            f"of its constructor, one of {sorted(accepted)}."
        )
    if "name" in overrides:
        raise TypeError(
            "The override `name` would give every converted layer the same name; the "
            "converted layers keep their own names."
        )
    if "momentum" in overrides and overrides["momentum"] is None and not _cumulative(to):
        raise ValueError(
            f"The override `momentum`=None (a cumulative average) cannot be expressed by "
            f"{to.__name__}; pass a float momentum, e.g. momentum=0.99."
        )
    if overrides:
        to(**overrides)  # the class's own checks name a bad value, before any copying


def _cumulative(to: type) -> bool:
    """True if `to` accepts `momentum=None` (a cumulative average)."""
    return issubclass(to, MomentumBatchNormalization)


def _dropped(layer: Any, to: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """The options of `layer` a conversion to `to` with `overrides` loses."""
    options = as_batchnorm(layer).dropped_options(to)
    return {name: value for name, value in options.items() if name not in overrides}


def _check_lossless(
    layers: list[Any], to: type, overrides: dict[str, Any], lossy: bool, *, stacklevel: int
) -> None:
    """Refuse (or, with `lossy`, warn about) options that `to` cannot represent."""
    by_option: dict[str, list[str]] = {}
    for layer in layers:
        for name, value in _dropped(layer, to, overrides).items():
            by_option.setdefault(f"{name}={value!r}", []).append(layer.name)
    if not by_option:
        return
    listed = "; ".join(
        f"{option} (layer{'s' if len(names) > 1 else ''} {', '.join(map(repr, names[:5]))}"
        f"{f' and {len(names) - 5} more' if len(names) > 5 else ''})"
        for option, names in by_option.items()
    )
    if lossy:
        warnings.warn(
            f"Converting to {to.__name__} dropped options it cannot represent: {listed}. "
            "Training-mode outputs of the converted layers differ from the originals'.",
            UserWarning,
            stacklevel=stacklevel,
        )
        return
    hint = " (e.g. momentum=0.99)" if any(o.startswith("momentum=") for o in by_option) else ""
    raise ValueError(
        f"Cannot convert to {to.__name__} without losing options it cannot represent: "
        f"{listed}; the converted layers would compute something else in training. Pass "
        f"lossy=True to drop them (a warning lists them), or override them{hint}."
    )


def _convert(
    layer: keras.layers.BatchNormalization, to: type, overrides: dict[str, Any]
) -> keras.layers.BatchNormalization:
    """`layer` as a new `to` (options `to` cannot represent dropped: checked before)."""
    accepted = constructor_arguments(to)
    dropped = _dropped(layer, to, overrides)
    config = {
        key: value
        for key, value in layer.get_config().items()
        if key in accepted and key not in dropped
    }
    config.update(overrides)
    new = to.from_config(config)
    if layer.built:
        new.build_from_config(layer.get_build_config())
        values = {
            name: to_numpy(variable)
            for name, variable in as_batchnorm(layer).keras_variables().items()
        }
        as_batchnorm(new).set_keras_variables(values)
    return new
