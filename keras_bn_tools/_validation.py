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


def check_int_in_range(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return `value` as an int in `[minimum, maximum]` (either bound optional), else raise.

    Raises `TypeError` for a non-integer (bools included) and `ValueError` for
    an integer out of range; both messages name `name`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else str(minimum)
        high = "inf" if maximum is None else str(maximum)
        raise ValueError(f"`{name}` must be an integer in [{low}, {high}], got {value!r}.")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return `value` lower-cased if it is one of `choices` (case-insensitive), else raise."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r} "
            f"({type(value).__name__})."
        )
    if value.lower() not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value.lower()


#: Seeds go to `keras.utils.set_random_seed`, which seeds NumPy: 32-bit unsigned.
MAX_SEED = 2**32 - 1


def check_seeds(name: str, seeds: Any) -> Sequence[int]:
    """Return `seeds` as a sequence of distinct ints in `[0, MAX_SEED]`, else raise.

    A `range` is checked from its ends and returned as is, never expanded, so
    `range(10**12)` costs nothing until it is iterated; any other iterable is
    read into a tuple.
    """
    if isinstance(seeds, range):
        if len(seeds) == 0:
            raise ValueError(f"`{name}` must hold at least one seed, got {seeds!r}.")
        if min(seeds[0], seeds[-1]) < 0 or max(seeds[0], seeds[-1]) > MAX_SEED:
            raise ValueError(
                f"`{name}` must hold integers in [0, {MAX_SEED}] (2**32 - 1), got {seeds!r}."
            )
        return seeds
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = (seeds,)
    if isinstance(seeds, str) or not hasattr(seeds, "__iter__"):
        raise TypeError(
            f"`{name}` must be an iterable of integers (e.g. range(10)), got {seeds!r} "
            f"({type(seeds).__name__})."
        )
    items = tuple(check_int_in_range(name, s, minimum=0, maximum=MAX_SEED) for s in seeds)
    if not items:
        raise ValueError(f"`{name}` must hold at least one seed, got {seeds!r}.")
    if len(set(items)) != len(items):
        repeated = sorted({s for s in items if items.count(s) > 1})
        raise ValueError(f"`{name}` holds a seed more than once: {repeated}.")
    return items
