"""Fuzz the model-structure API (issue 16): builders, rewriters, folding and conversion.

Every call gets a mix of valid and hostile arguments; it must succeed (with no NaN in
what it returns) or raise `ValueError`/`TypeError` naming the argument (the `check_call`
property of `tests/fuzz/conftest.py`).
"""

from __future__ import annotations

import math

import keras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_bn_tools import (
    batchnorm_layers,
    build_cnn,
    build_lstm,
    build_mlp,
    convert_batchnorm,
    fold_batchnorm,
    insert_batchnorm,
)
from keras_bn_tools.layers import MomentumBatchNormalization

pytestmark = pytest.mark.backend_agnostic
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values no argument here accepts, or accepts only by accident: wrong types, huge and
# negative numbers, NaN, strings that look like booleans.
HOSTILE = st.sampled_from(
    [None, True, False, -1, 0, 2**63, 10**12, math.nan, math.inf, -0.5, "no", "", "relu", (), [0]]
)
SMALL = st.integers(1, 4)


def sometimes(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly `valid`, sometimes a hostile value."""
    return st.one_of(valid, valid, HOSTILE)


def unit_tuples() -> st.SearchStrategy:
    return st.lists(SMALL, min_size=1, max_size=2).map(tuple)


PLACEMENTS = st.sampled_from(["none", "after", "before", "AFTER"])
ACTIVATIONS = st.sampled_from(["relu", "tanh", None, "linear"])


@fixture_ok
@given(
    input_dim=sometimes(SMALL),
    hidden_units=sometimes(unit_tuples()),
    activation=sometimes(ACTIVATIONS),
    bn=sometimes(PLACEMENTS),
    input_bn=sometimes(st.booleans()),
    output_units=sometimes(SMALL),
    output_activation=sometimes(ACTIVATIONS),
)
def test_build_mlp(check_call, **kwargs):
    check_call(lambda: build_mlp(**kwargs), list(kwargs))


@fixture_ok
@given(
    input_shape=sometimes(st.tuples(st.integers(4, 8), st.integers(4, 8), SMALL)),
    filters=sometimes(unit_tuples()),
    kernel_size=sometimes(st.sampled_from([1, 3, (3, 3)])),
    bn=sometimes(PLACEMENTS),
    pool_every=sometimes(st.sampled_from([None, 1, 2])),
    dense_units=sometimes(st.lists(SMALL, max_size=1).map(tuple)),
    output_units=sometimes(SMALL),
)
def test_build_cnn(check_call, **kwargs):
    check_call(lambda: build_cnn(**kwargs), list(kwargs))


@fixture_ok
@given(
    input_shape=sometimes(st.tuples(st.sampled_from([None, 3]), SMALL)),
    units=sometimes(unit_tuples()),
    bn=sometimes(PLACEMENTS),
    dense_units=sometimes(st.lists(SMALL, max_size=1).map(tuple)),
    output_units=sometimes(SMALL),
)
def test_build_lstm(check_call, **kwargs):
    check_call(lambda: build_lstm(**kwargs), list(kwargs))


def _small_model() -> keras.Model:
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


LAYER_TYPES = st.sampled_from(
    [None, keras.layers.Dense, (keras.layers.Dense, keras.layers.Conv2D), keras.layers.LSTM]
)
BN_LAYERS = st.sampled_from(
    [None, keras.layers.BatchNormalization, lambda: MomentumBatchNormalization(momentum=None)]
)


@fixture_ok
@given(
    placement=sometimes(PLACEMENTS),
    layer_types=sometimes(LAYER_TYPES),
    bn_layer=sometimes(BN_LAYERS),
    skip_output=sometimes(st.booleans()),
)
def test_insert_batchnorm(check_call, **kwargs):
    check_call(lambda: insert_batchnorm(_small_model(), **kwargs), list(kwargs))


MODELS = st.sampled_from(["model", "sequential"])


def _model_or_hostile(choice):
    if choice == "model":
        return _small_model()
    if choice == "sequential":
        return keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    return choice


@fixture_ok
@given(model=sometimes(MODELS))
def test_fold_and_find_batchnorm(check_call, model):
    model = _model_or_hostile(model)
    check_call(lambda: fold_batchnorm(model), ["model", "fold_batchnorm expects a keras.Model"])
    check_call(lambda: batchnorm_layers(model), ["model"])


OVERRIDE_VALUES = {
    "momentum": st.one_of(st.floats(0.0, 1.0), st.none()),
    "epsilon": st.floats(1e-5, 1e-1),
    "debias": st.booleans(),
    "virtual_batch_size": st.one_of(st.none(), SMALL),
    "center": st.booleans(),
}


@fixture_ok
@given(
    model=sometimes(MODELS),
    to=sometimes(st.sampled_from([MomentumBatchNormalization, keras.layers.BatchNormalization])),
    overrides=st.dictionaries(
        st.sampled_from([*OVERRIDE_VALUES, "momentom"]),
        st.one_of(HOSTILE, st.sampled_from([0.5, True, 2])),
        max_size=2,
    ),
)
def test_convert_batchnorm(check_call, model, to, overrides):
    model = _model_or_hostile(model)
    names = ["model", "`to`", *overrides]
    converted = check_call(lambda: convert_batchnorm(model, to, **overrides), names)
    if converted is not None:
        assert all(isinstance(layer, to) for layer in batchnorm_layers(converted))
