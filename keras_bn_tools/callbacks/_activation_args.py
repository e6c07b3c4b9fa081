"""Argument checks of `ActivationTracker`: each error names the argument, value and rule."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from keras_bn_tools._validation import check_layer_names

__all__ = ["check_layers", "check_percentiles", "check_probe", "check_probe_fits"]


def check_percentiles(percentiles: Any) -> tuple[float, ...]:
    if isinstance(percentiles, numbers.Real) and not isinstance(percentiles, bool):
        percentiles = (percentiles,)
    if isinstance(percentiles, str) or not isinstance(percentiles, Iterable):
        raise TypeError(
            f"`percentiles` must be a sequence of numbers in [0, 100], got {percentiles!r}."
        )
    values = tuple(percentiles)
    if not values or not all(
        isinstance(p, numbers.Real) and not isinstance(p, bool) for p in values
    ):
        raise TypeError(
            f"`percentiles` must be a non-empty sequence of numbers in [0, 100], "
            f"got {percentiles!r}."
        )
    values = tuple(float(p) for p in values)
    if not all(math.isfinite(p) and 0 <= p <= 100 for p in values):
        raise ValueError(f"`percentiles` must lie in [0, 100], got {list(values)}.")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(
            f"`percentiles` must be strictly increasing (sorted, no repeats), got {list(values)}."
        )
    return values


def check_layers(layers: Any) -> tuple[str, ...] | None:
    return check_layer_names(layers, none_means="every nonlinearity")


def check_probe(probe: Any) -> Any:
    def as_array(value: Any) -> np.ndarray:
        array = np.asarray(value)
        if array.ndim < 1 or array.shape[0] < 1 or array.dtype == object:
            raise ValueError(
                f"`probe` must be a batch (an array with at least one row, or a list/dict of "
                f"such arrays for a multi-input model), got shape {array.shape} "
                f"dtype {array.dtype}."
            )
        return array

    if isinstance(probe, dict):
        return {key: as_array(value) for key, value in probe.items()}
    if isinstance(probe, list | tuple):
        return [as_array(value) for value in probe]
    try:
        return as_array(probe)
    except TypeError as error:
        raise TypeError(f"`probe` must be an array (or arrays), got {type(probe)}.") from error


def check_probe_fits(model: keras.Model, probe: Any) -> None:
    """Refuse a probe (checked by `check_probe`) whose arrays do not match `model`'s inputs.

    Only a model with known inputs (built from `keras.Input`) is checked here;
    another model's first call on the probe names the problem instead.
    """
    inputs = getattr(model, "inputs", None) or []
    probes = (
        list(probe.values())
        if isinstance(probe, dict)
        else (probe if isinstance(probe, list) else [probe])
    )
    if inputs and len(inputs) == len(probes):
        for tensor, array in zip(inputs, probes, strict=True):
            expected = tuple(tensor.shape)[1:]
            got = array.shape[1:]
            if len(expected) != len(got) or any(
                e is not None and e != g for e, g in zip(expected, got, strict=True)
            ):
                raise ValueError(
                    f"ActivationTracker: `probe` rows have shape {got}, but model "
                    f"{model.name!r} takes inputs of shape {expected} per row."
                )
    elif inputs:
        raise ValueError(
            f"ActivationTracker: `probe` holds {len(probes)} array(s), but model "
            f"{model.name!r} has {len(inputs)} input(s)."
        )
