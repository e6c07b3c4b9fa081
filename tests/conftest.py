"""Shared pytest set-up: Hypothesis profiles and quiet, deterministic backends."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import keras
import pytest
from hypothesis import HealthCheck, settings

# "ci" bounds the number of examples so the whole suite stays fast on 2 cores;
# "thorough" is for a local soak: HYPOTHESIS_PROFILE=thorough pytest.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", deadline=None, max_examples=10, suppress_health_check=_SLOW_OK)
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=_SLOW_OK)
settings.register_profile(
    "thorough", deadline=None, max_examples=200, suppress_health_check=_SLOW_OK
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_finish(session: pytest.Session) -> None:
    # clear_session() runs gc.collect() before every test; moving the objects that
    # exist after import and collection (TensorFlow's graph, Hypothesis' tables)
    # into the permanent generation makes that collection cheap.
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Give every test a clean Keras session, a fixed seed and the float32 policy."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
