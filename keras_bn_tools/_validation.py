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


#: The largest layer size the builders accept: far above any model that fits in memory,
#: far below the sizes that overflow a backend's int32/int64 shape arithmetic.
MAX_LAYER_SIZE = 2**24


def check_layer_sizes(name: str, values: Sequence[int], limit: int = MAX_LAYER_SIZE) -> None:
    """Raise `ValueError` naming `name` if an entry of `values` exceeds `limit`."""
    too_big = [value for value in values if value > limit]
    if too_big:
        raise ValueError(
            f"`{name}` entries must be at most {limit} (a layer that size already needs "
            f"gigabytes of memory), got {too_big[0]!r} in {tuple(values)!r}."
        )
