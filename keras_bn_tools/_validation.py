"""Argument checks shared by the public functions.

Each check raises at construction time with a message that names the
argument, shows the bad value and says what is allowed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_int_sequence",
    "check_positive_int",
    "check_probability",
]


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """Return `value` if it is an integer >= 1, else raise naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        allowed = "a positive integer" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {allowed}, got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer (>= 1), got {value!r}.")
    return int(value)


def check_int_sequence(name: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Return `value` as a tuple of positive ints (an int is a 1-tuple)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence of positive integers, got {value!r} "
            f"({type(value).__name__})."
        )
    if not value and not allow_empty:
        raise ValueError(f"`{name}` must hold at least one positive integer, got {value!r}.")
    items = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < 1:
            raise ValueError(
                f"`{name}` must hold only positive integers (>= 1), got {value!r} "
                f"(bad entry: {item!r})."
            )
        items.append(int(item))
    return tuple(items)


def check_probability(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """Return `value` as a float in [0, 1], else raise naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        allowed = "a float in [0, 1]" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {allowed}, got {value!r} ({type(value).__name__}).")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}.")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """Return `value` if it is a bool (NumPy's included), else raise naming `name`.

    Truthiness is not enough: `"no"` or NaN would silently mean True.
    """
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


#: The most weights one layer of a built model may have: 2**31 float32 weights are 8 GiB,
#: beyond any model these builders are for, and far below the sizes that overflow a
#: backend's shape arithmetic (which fails deep inside it, or runs out of memory).
MAX_LAYER_WEIGHTS = 2**31


def check_layer_weights(name: str, value: Any, fan_in: int, width: int, fed_by: str = "") -> None:
    """Raise `ValueError` naming `name` if a layer `fan_in` wide in, `width` out is too big.

    Args:
        name: the argument that set `width` (named in the message).
        value: that argument's value (shown in the message).
        fan_in: inputs per output unit (e.g. previous width times kernel area).
        width: the layer's output units.
        fed_by: what set `fan_in`, when another argument did (e.g. "`input_dim`=10").
    """
    if fan_in * width > MAX_LAYER_WEIGHTS:
        source = f" fed by {fed_by}" if fed_by else ""
        raise ValueError(
            f"`{name}`={value!r}{source} gives a layer of {fan_in} x {width} = "
            f"{fan_in * width:.3g} weights, more than the {MAX_LAYER_WEIGHTS:.3g} "
            f"({MAX_LAYER_WEIGHTS * 4 // 2**30} GiB of float32) a model can hold; use "
            "smaller sizes."
        )
