"""Argument checks shared by the public functions.

Each check raises at construction time with a message that names the
argument, shows the bad value and says what is allowed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_LAYER_WEIGHTS",
    "MAX_SEED",
    "RENORM_CLIPPING_KEYS",
    "check_axis",
    "check_bool",
    "check_channel_axis",
    "check_choice",
    "check_epsilon",
    "check_every",
    "check_float_array",
    "check_int_in_range",
    "check_int_sequence",
    "check_layer_names",
    "check_layer_weights",
    "check_momentum",
    "check_nonnegative_float",
    "check_positive_int",
    "check_probability",
    "check_renorm_clipping",
    "check_seeds",
    "check_statistic",
    "check_writable_directory",
]


def check_channel_axis(axis: int, input_shape: Sequence[int | None]) -> int:
    """The size of `input_shape`'s channel axis `axis`, checked when a layer builds.

    Raises:
        ValueError: `axis` is outside the inputs' rank, or the axis has no known size.
    """
    rank = len(input_shape)
    if not -rank <= axis < rank:
        raise ValueError(f"`axis`={axis} is out of range for inputs of shape {tuple(input_shape)}.")
    channels = input_shape[axis]
    if channels is None:
        raise ValueError(
            f"The channel axis {axis} of inputs of shape {tuple(input_shape)} "
            "must have a known size."
        )
    return channels


def check_layer_names(layers: Any, *, none_means: str) -> tuple[str, ...] | None:
    """`layers` as a tuple of distinct layer names (a single name allowed), or None.

    Args:
        layers: None, a layer name, or a sequence of layer names.
        none_means: what None selects, for the error message (e.g. "all BN layers").

    Raises:
        TypeError: `layers` is neither None, a name nor a sequence of names.
        ValueError: `layers` names no layer.
    """
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = (layers,)
    if not isinstance(layers, Iterable) or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"`layers` must be None or a sequence of layer names, got {layers!r}.")
    layers = tuple(dict.fromkeys(layers))
    if not layers:
        raise ValueError(f"`layers` must be None ({none_means}) or name at least one layer.")
    return layers


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


def check_every(every: Any) -> str | int:
    """A callback's recording period: `"epoch"`, or batches (`"batch"` is 1, or an int >= 1)."""
    if isinstance(every, str) and every in ("epoch", "batch"):
        return 1 if every == "batch" else every
    rule = f'`every` must be "epoch", "batch" or a positive integer (batches), got {every!r}.'
    if isinstance(every, bool) or not isinstance(every, str | numbers.Integral):
        raise TypeError(rule)
    if isinstance(every, str) or every < 1:
        raise ValueError(rule)
    return int(every)


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


# --------------------------------------------------------------------------- layer arguments
# Shared by MomentumBatchNormalization, the recurrent BN layers and the callbacks.


def check_axis(name: str, value: Any) -> int:
    """Return `value` as an int (a feature axis; negative counts from the end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer (the feature axis, e.g. -1), got {value!r} "
            f"({type(value).__name__})."
        )
    return int(value)


def check_epsilon(name: str, value: Any) -> float:
    """Return `value` as a positive, finite float.

    Raises:
        TypeError: if `value` is not a real number (a bool is not one).
        ValueError: if it is not positive and finite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a positive float, got {value!r} ({type(value).__name__})."
        )
    if not (math.isfinite(float(value)) and float(value) > 0.0):
        raise ValueError(f"`{name}` must be a positive, finite float, got {value!r}.")
    return float(value)


def check_momentum(name: str, value: Any) -> float | None:
    """Return a BN momentum: a float in [0, 1], or None (a cumulative average)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a float in [0, 1] or None (a cumulative average), got "
            f"{value!r} ({type(value).__name__})."
        )
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`{name}` must be a float in [0, 1] or None (a cumulative average), got {value!r}."
        )
    return float(value)


RENORM_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def check_renorm_clipping(value: Any, *, renorm: bool) -> dict[str, float | None] | None:
    """Return batch renorm's clipping dict, checked.

    Keys are optional among `"rmax"`, `"rmin"`, `"dmax"` (a missing key or None
    means no clipping on that side). The clip range of `r` must hold 1 (the
    correction that changes nothing): `0 <= rmin <= 1 <= rmax`; `dmax >= 0`; all
    finite. Clipping without `renorm=True` would be silently ignored, so it is an
    error.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            "`renorm_clipping` must be None or a dict with optional keys "
            f"{list(RENORM_CLIPPING_KEYS)}, got {value!r} ({type(value).__name__})."
        )
    unknown = sorted(set(value) - set(RENORM_CLIPPING_KEYS), key=str)
    if unknown:
        raise ValueError(
            f"Invalid keys {unknown} in `renorm_clipping`={dict(value)!r}. "
            f"Allowed keys: {list(RENORM_CLIPPING_KEYS)}."
        )
    if value and not renorm:
        raise ValueError(
            f"`renorm_clipping`={dict(value)!r} has no effect without `renorm=True`; pass "
            "`renorm=True` or drop `renorm_clipping`."
        )
    clipping: dict[str, float | None] = {}
    for key, item in value.items():
        if item is None:
            clipping[key] = None
            continue
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise TypeError(
                f"`renorm_clipping[{key!r}]` must be a float or None, got {item!r} "
                f"({type(item).__name__})."
            )
        if not math.isfinite(float(item)):
            raise ValueError(
                f"`renorm_clipping[{key!r}]` must be finite (None means no clipping), got {item!r}."
            )
        clipping[key] = float(item)
    rmax, rmin, dmax = (clipping.get(key) for key in RENORM_CLIPPING_KEYS)
    if rmin is not None and not 0.0 <= rmin <= 1.0:
        raise ValueError(f"`renorm_clipping['rmin']` must be in [0, 1], got {rmin!r}.")
    if rmax is not None and rmax < 1.0:
        raise ValueError(
            f"`renorm_clipping['rmax']` must be >= 1 (r = 1 changes nothing), got {rmax!r}."
        )
    if dmax is not None and dmax < 0:
        raise ValueError(f"`renorm_clipping['dmax']` must be >= 0, got {dmax!r}.")
    return clipping


def check_statistic(
    name: str, value: Any, shape: tuple[int, ...], *, variance: bool, dtype: str = "float64"
) -> Any:
    """Return `value` as a NumPy array of `shape` and `dtype`: finite (and >= 0 for a variance).

    A scalar is broadcast to `shape`. Finiteness is checked in `dtype`: a
    float64 value beyond float32's range is refused for a float32 variable.
    """
    import numpy as np

    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`{name}` must be an array of numbers of shape {shape}, got {value!r}."
        ) from error
    if array.shape != tuple(shape):
        if array.ndim != 0:
            raise ValueError(
                f"`{name}` must have shape {tuple(shape)} (one value per feature), got an "
                f"array of shape {array.shape}."
            )
        array = np.full(shape, float(array))
    with np.errstate(over="ignore"):
        converted = array.astype(dtype)
    if not np.isfinite(converted).all():
        raise ValueError(f"`{name}` must be finite in {dtype}, got {array!r}.")
    if variance and (converted < 0).any():
        raise ValueError(f"`{name}` must be >= 0 (a variance), got {array!r}.")
    return converted


# --------------------------------------------------------------------------- file system


def check_writable_directory(name: str, value: Any) -> str:
    """Return `value` as a path where a directory exists or can be created and written.

    Checked without creating anything: the path must not be an existing file,
    and its deepest existing ancestor must be a writable directory.
    """
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path (str or os.PathLike), got {value!r}.")
    path = os.fspath(value)
    if isinstance(path, bytes) or not path:
        raise ValueError(f"`{name}` must be a non-empty path, got {value!r}.")
    absolute = os.path.abspath(path)
    if os.path.exists(absolute) and not os.path.isdir(absolute):
        raise ValueError(f"`{name}`={path!r} is an existing file, not a directory.")
    existing = absolute
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"`{name}`={path!r} cannot be created: {existing!r} is a file, not a directory."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"`{name}`={path!r} is not writable: no write permission on {existing!r}.")
    return path


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return `value` lower-cased if it is one of `choices` (any case), else raise naming `name`."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be one of {list(choices)}, got {value!r} ({type(value).__name__})."
        )
    if value.lower() not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value.lower()


def check_bool(name: str, value: Any) -> bool:
    """Return `value` if it is a bool (NumPy's included), else raise naming `name`.

    Truthiness is not enough: `"no"` or NaN would silently mean True.
    """
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


def check_nonnegative_float(name: str, value: Any) -> float:
    """Return `value` as a finite float >= 0, else raise naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a finite float >= 0, got {value!r} ({type(value).__name__})."
        )
    if not (math.isfinite(float(value)) and float(value) >= 0.0):
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value!r}.")
    return float(value)


def check_float_array(name: str, value: Any) -> Any:
    """Return `value` as a float64 NumPy array, else raise `TypeError` naming `name`."""
    import numpy as np

    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be an array of numbers, got {value!r}.") from error


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
