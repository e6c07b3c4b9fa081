"""Shared pieces of the kit's tests.

`layer_settings`: example budgets for tests that call Keras layers on
Hypothesis-drawn shapes. Under JAX every eager op is compiled once per new input shape, and nearly
every drawn batch has a new shape, so those tests draw half as many examples
there (still at least 5). The count otherwise follows the active Hypothesis
profile (`ci`, `dev`, `thorough`; see tests/conftest.py).
"""

from __future__ import annotations

import keras
from hypothesis import settings
from hypothesis import strategies as st

from keras_bn_tools.testing import batches


def layer_settings() -> settings:
    """`@settings` for a property test whose examples each call a layer on a new shape."""
    examples = settings.default.max_examples
    if keras.backend.backend() == "jax":
        examples = max(5, examples // 2)
    return settings(max_examples=examples)


def same_width_batches(max_batches: int = 4) -> st.SearchStrategy[list]:
    """Lists of 1-`max_batches` batches that share their number of features."""
    return st.integers(1, 4).flatmap(
        lambda f: st.lists(
            batches(min_features=f, max_features=f), min_size=1, max_size=max_batches
        )
    )
