"""The kit's strategies draw what they promise."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _helpers import layer_settings
from hypothesis import find, given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from keras_bn_tools.testing import MIN_RELATIVE_STD, batches, bn_configs, stack_specs
from keras_bn_tools.testing._stack_specs import _smallest_cnn_side

pytestmark = pytest.mark.backend_agnostic


def _per_feature(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]).astype(np.float64)


def _assert_non_degenerate(x: np.ndarray) -> None:
    flat = _per_feature(x)
    std = flat.std(axis=0)
    needed = MIN_RELATIVE_STD * (1.0 + np.abs(flat).max(axis=0))
    assert np.all(std >= needed), (std, needed)


BATCH_CASES = {
    "default": {},
    "images": {"ndim": 4, "min_side": 2, "max_side": 3, "max_rows": 6},
    "sequences": {"ndim": 3, "max_side": 5},
    "float16": {"dtype": "float16"},
    "float64-wide": {"dtype": "float64", "min_value": -1e4, "max_value": 1e4},
    "positive-narrow": {"min_value": 0.0, "max_value": 0.05},
    "offset": {"min_value": 90.0, "max_value": 100.0},
    "many-rows": {"min_rows": 16, "max_rows": 64, "max_features": 2},
}


@pytest.mark.parametrize("kwargs", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_batches_keep_their_promises(kwargs):
    strategy = batches(**kwargs)
    ndim = kwargs.get("ndim", 2)
    low, high = kwargs.get("min_value", -10.0), kwargs.get("max_value", 10.0)

    @given(strategy)
    def check(x):
        assert isinstance(x, np.ndarray)
        assert x.dtype == np.dtype(kwargs.get("dtype", "float32"))
        assert x.ndim == ndim
        assert kwargs.get("min_rows", 2) <= x.shape[0] <= kwargs.get("max_rows", 16)
        assert 1 <= x.shape[-1] <= kwargs.get("max_features", 6)
        for side in x.shape[1:-1]:
            assert kwargs.get("min_side", 1) <= side <= kwargs.get("max_side", 4)
        assert np.all(np.isfinite(x))
        assert x.min() >= low and x.max() <= high
        _assert_non_degenerate(x)

    check()


def test_degenerate_batches_are_drawn_only_on_request():
    def has_constant_feature(x):
        return bool(np.any(_per_feature(x).std(axis=0) == 0.0))

    found = find(batches(allow_degenerate=True), has_constant_feature)
    assert has_constant_feature(found)

    @given(batches())
    def check(x):
        assert not has_constant_feature(x)

    check()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_rows": 1},
        {"ndim": 1},
        {"min_features": 0},
        {"max_rows": 1},
        {"min_value": 1000.0, "max_value": 1000.5},
        {"min_value": 1.0, "max_value": -1.0},
        {"dtype": "int32"},
        {"max_value": float("inf")},
    ],
)
def test_batches_reject_impossible_arguments(kwargs):
    with pytest.raises(InvalidArgument):
        batches(**kwargs).example()


@layer_settings()
@given(bn_configs(layer="keras"), batches())
def test_keras_configs_construct_and_run_keras_bn(config, x):
    assert set(config) <= {
        "axis",
        "momentum",
        "epsilon",
        "center",
        "scale",
        "beta_initializer",
        "gamma_initializer",
        "moving_mean_initializer",
        "moving_variance_initializer",
    }
    layer = keras.layers.BatchNormalization(**config)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert keras.layers.BatchNormalization.from_config(layer.get_config()).epsilon == layer.epsilon


@given(bn_configs(include_ghost=True))
def test_momentum_configs_are_valid_combinations(config):
    momentum = config["momentum"]
    assert momentum is None or 0.0 <= momentum <= 1.0
    if config["debias"]:
        assert momentum is not None and momentum < 1.0
    vbs = config["virtual_batch_size"]
    assert vbs is None or (isinstance(vbs, int) and vbs >= 1)
    assert config["epsilon"] > 0 and config["axis"] == -1
    assert isinstance(config["skip_nonfinite"], bool)


def test_bn_configs_fix_fields_and_leave_ghosts_out_by_default():
    @given(bn_configs(momentum=0.0, epsilon=st.just(1e-5), axis=1, include_initializers=False))
    def check(config):
        assert config["momentum"] == 0.0 and config["epsilon"] == 1e-5 and config["axis"] == 1
        assert config["virtual_batch_size"] is None
        assert "gamma_initializer" not in config

    check()
    with pytest.raises(InvalidArgument):
        bn_configs(layer="torch").example()


def test_momentum_configs_construct_the_layer():
    module = pytest.importorskip(
        "keras_bn_tools.layers.momentum_batch_normalization",
        reason="MomentumBatchNormalization is not in this checkout",
    )

    @layer_settings()
    @given(bn_configs(include_ghost=True), batches())
    def check(config, x):
        layer = module.MomentumBatchNormalization(**config)
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        assert y.shape == x.shape

    check()


def _simulate_cnn_side(side: int, depth: int, kernel_size: int, pool_every: int) -> int:
    for index in range(depth):
        side -= kernel_size - 1
        if side < 1:
            return 0
        if pool_every is not None and (index + 1) % pool_every == 0:
            side //= 2
            if side < 1:
                return 0
    return side


@pytest.mark.parametrize("kind", ["mlp", "cnn", "lstm"])
def test_stack_specs_are_tiny_and_use_the_requested_placements(kind):
    @given(stack_specs(kind))
    def check(spec):
        placements = ("none", "after") if kind == "lstm" else ("none", "before", "after")
        assert spec["bn"] in placements
        if kind == "mlp":
            assert max(spec["hidden_units"]) <= 8 and 1 <= spec["input_dim"] <= 4
        elif kind == "cnn":
            height, width, channels = spec["input_shape"]
            assert max(height, width) <= 8 and channels <= 3 and max(spec["filters"]) <= 4
            args = (len(spec["filters"]), spec["kernel_size"], spec["pool_every"])
            assert _simulate_cnn_side(min(height, width), *args) >= 1
        else:
            assert spec["input_shape"][0] <= 5 and max(spec["units"]) <= 8

    check()

    @given(stack_specs(kind, placements=["BEFORE"]))
    def only_before(spec):
        assert spec["bn"] == "before"

    only_before()


def test_smallest_cnn_side_is_tight():
    for depth in (1, 2, 3):
        for kernel_size in (1, 2, 3):
            for pool_every in (1, 2, None):
                side = _smallest_cnn_side(depth, kernel_size, pool_every)
                assert _simulate_cnn_side(side, depth, kernel_size, pool_every) >= 1
                assert _simulate_cnn_side(side - 1, depth, kernel_size, pool_every) == 0


def test_stack_specs_reject_bad_arguments():
    for kwargs in ({"kind": "rnn"}, {"placements": ["sideways"]}, {"placements": []}):
        with pytest.raises(InvalidArgument):
            stack_specs(**kwargs)
    with pytest.raises(InvalidArgument):
        stack_specs(max_units=0)
