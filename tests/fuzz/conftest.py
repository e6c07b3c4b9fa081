"""The property every fuzz test in this folder checks (issue 16).

A public call given arbitrary arguments either succeeds, with no NaN in what it
returns, or raises `ValueError`/`TypeError` whose message names the argument
that was wrong. Any other exception type is a bug: the user is left to read a
traceback from deep inside Keras or NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return bool(np.isnan(value).any())
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nan(v) for v in value)
    return False


def succeeds_or_names_argument(call: Callable[[], Any], arguments: Iterable[str]) -> Any:
    """Run `call()`; check it succeeds without NaN or fails clearly naming one of `arguments`.

    Returns what `call()` returned, or `None` when it raised the expected error.
    """
    names = tuple(arguments)
    try:
        result = call()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert any(name in message for name in names), (
            f"{type(error).__name__} does not name any of {names}: {message}"
        )
        return None
    assert not _has_nan(result), f"the call succeeded but returned NaN: {result!r}"
    return result


@pytest.fixture
def check_call():
    """The fuzz property as a fixture: `check_call(lambda: f(...), ["arg", ...])`."""
    return succeeds_or_names_argument
