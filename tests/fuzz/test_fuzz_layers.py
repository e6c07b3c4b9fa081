"""Fuzz (issue 16): the layer, the callbacks, recalibration and the testing kit.

Every public call given hostile arguments succeeds without NaN in what it
returns, or raises `ValueError`/`TypeError` naming the bad argument (the
`check_call` fixture of conftest.py). Each test changes one argument at a time
from a working call, so that a failure points at that argument.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_bn_tools.callbacks import MomentumScheduler, MovingStatsTracker, RecalibrateBatchNorm
from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.recalibration import recalibrate_batchnorm
from keras_bn_tools.testing import reference_batchnorm, reference_moments

pytestmark = pytest.mark.backend_agnostic

# `check_call` is a pure function behind a fixture: sharing it across examples is safe.
fuzz = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ]
)

_NUMBERS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5))
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, -1, 3, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, -0.0, 1e-300, float("nan"), float("inf")]),
    st.text(max_size=6),
    st.sampled_from(["epoch", "exact", "single_pass", "train_end", "rmax", ""]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["rmax", "rmin", "dmax", "x"]), _NUMBERS, max_size=3),
)

X = np.random.default_rng(0).normal(2.0, 3.0, size=(6, 3)).astype("float32")

LAYER_ARGUMENTS = [
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "renorm_clipping",
    "renorm_momentum",
    "debias",
    "virtual_batch_size",
    "skip_nonfinite",
]


def _run_layer(kwargs):
    layer = MomentumBatchNormalization(**kwargs)
    training = keras.ops.convert_to_numpy(layer(X, training=True))
    inference = keras.ops.convert_to_numpy(layer(X, training=False))
    return training, inference, layer.get_config()


@fuzz
@given(name=st.sampled_from(LAYER_ARGUMENTS), value=HOSTILE, renorm=st.booleans())
def test_layer_arguments(check_call, name, value, renorm):
    kwargs = {name: value, "renorm": renorm}
    check_call(lambda: _run_layer(kwargs), [name])


@fuzz
@given(mean=HOSTILE, variance=HOSTILE)
def test_set_moving_statistics(check_call, mean, variance):
    layer = MomentumBatchNormalization()
    layer.build((None, 3))

    def call():
        layer.set_moving_statistics(mean, variance)
        return keras.ops.convert_to_numpy(layer(X, training=False))

    check_call(call, ["mean", "variance"])


@fuzz
@given(value=HOSTILE)
def test_momentum_assignment(check_call, value):
    layer = MomentumBatchNormalization()
    layer.build((None, 3))

    def call():
        layer.momentum = value
        return keras.ops.convert_to_numpy(layer(X, training=True))

    check_call(call, ["momentum"])


def _scheduled_model():
    model = keras.Sequential([keras.Input((3,)), MomentumBatchNormalization()])
    return model


@fuzz
@given(value=HOSTILE)
def test_momentum_scheduler_values(check_call, value):
    model = _scheduled_model()
    scheduler = MomentumScheduler(lambda epoch: value)
    scheduler.set_model(model)
    scheduler.on_train_begin()
    check_call(lambda: scheduler.on_epoch_begin(0), ["schedule(0)"])
    check_call(lambda: MomentumScheduler(value), ["schedule"])


@fuzz
@given(name=st.sampled_from(["every", "layers", "stats", "log_dir"]), value=HOSTILE)
def test_moving_stats_tracker_arguments(check_call, tmp_path_factory, name, value):
    if name == "log_dir" and isinstance(value, str) and value:
        value = str(tmp_path_factory.mktemp("fuzz") / value.replace("\x00", "_"))
    check_call(lambda: MovingStatsTracker(**{name: value}), [name])


@fuzz
@given(name=st.sampled_from(["num_batches", "when", "batch_size", "method", "data"]), value=HOSTILE)
def test_recalibrate_callback_arguments(check_call, name, value):
    kwargs = {"data": X, name: value}
    check_call(lambda: RecalibrateBatchNorm(**kwargs), [name])


def _model():
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()]
    )


def _recalibrate(kwargs):
    report = recalibrate_batchnorm(_model(), **kwargs)
    return {key: (item["new_mean"], item["new_variance"]) for key, item in report.items()}


@fuzz
@given(name=st.sampled_from(["num_batches", "batch_size", "method", "data"]), value=HOSTILE)
def test_recalibrate_arguments(check_call, name, value):
    kwargs = {"data": X, name: value}
    check_call(lambda: _recalibrate(kwargs), [name])


@fuzz
@given(
    rows=st.integers(0, 5),
    shape=st.sampled_from([(3,), (2,), (4, 3), (3, 3, 3), ()]),
    fill=st.sampled_from([0.0, 1.0, np.nan, np.inf, 1e38]),
    form=st.sampled_from(["array", "tuple", "list", "dict", "generator", "object"]),
    method=st.sampled_from(["exact", "single_pass"]),
)
def test_recalibrate_data(check_call, rows, shape, fill, form, method):
    x = np.full((rows, *shape), fill, "float32")
    x[::2] += np.arange(int(np.prod(shape)), dtype="float32").reshape(shape)
    data = {
        "array": x,
        "tuple": (x, np.ones(rows)),
        "list": [x, x],
        "dict": {"wrong_name": x},
        "generator": (x for _ in range(2)),
        "object": x.astype(object),
    }[form]
    check_call(lambda: _recalibrate({"data": data, "method": method}), ["data"])


@fuzz
@given(name=st.sampled_from(["axis", "epsilon", "gamma", "beta", "x"]), value=HOSTILE)
def test_reference_arguments(check_call, name, value):
    kwargs = {"x": X, name: value}
    check_call(lambda: reference_batchnorm(**kwargs), [name])
    if name in ("axis", "x"):
        check_call(lambda: reference_moments(**{"x": X, name: value}), [name])
