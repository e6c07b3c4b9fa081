"""The kit's tests: the suite's fresh Keras state, without a full garbage collection per test.

`keras.backend.clear_session()` runs `gc.collect()` by default, which costs
0.7-2 s per test in a process that has imported TensorFlow (or JAX) and
Hypothesis, several times what most of these tests take. The same reset
without it keeps the guarantee that matters here (fresh layer names, seed,
float32 policy); Python's own collector still runs as usual.
"""

from __future__ import annotations

import keras
import pytest


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Override of the suite-wide fixture of the same name (tests/conftest.py)."""
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
