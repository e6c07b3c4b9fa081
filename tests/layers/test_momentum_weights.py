"""MomentumBatchNormalization's weights are Keras BN's (issue 26 item 8).

The momentum, the last batch's statistics (and the counter, unless the average
depends on it) are layer state outside `weights`: compiled steps read them, but
`get_weights`, `count_params`, `summary` and saved files do not hold them.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.ops import to_numpy

DATA = Path(__file__).parent / "data"


def names(variables):
    return [v.path.split("/")[-1] for v in variables]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("options", "extra"),
    [
        ({}, []),
        ({"renorm": True}, []),
        ({"virtual_batch_size": 2, "center": False}, []),
        ({"momentum": None}, ["num_batches_tracked"]),
        (
            {"debias": True},
            ["num_batches_tracked", "biased_moving_mean", "biased_moving_variance"],
        ),
    ],
)
def test_weights_are_keras_bns_plus_what_a_feature_needs(options, extra):
    keras_options = {k: v for k, v in options.items() if k in ("renorm", "center")}
    reference = keras.layers.BatchNormalization(**keras_options)
    reference.build((None, 3))
    layer = MomentumBatchNormalization(**options)
    layer.build((None, 3))
    weights = names(layer.weights)
    assert weights[: len(reference.weights)] == names(reference.weights)
    assert sorted(weights[len(reference.weights) :]) == sorted(
        extra + (["bias_correction"] if "debias" in options else [])
    )
    assert layer.count_params() == reference.count_params() + sum(
        int(np.prod(v.shape)) for v in layer.weights[len(reference.weights) :]
    )
    assert len(layer.get_weights()) == len(weights)
    # The state outside the weights is still layer state, read by compiled steps.
    state = names(layer.variables)
    for name in ("momentum", "momentum_complement", "cumulative", "batch_mean", "batch_variance"):
        assert name in state and name not in weights
    assert "num_batches_tracked" in state


def test_switching_to_a_cumulative_momentum_makes_the_counter_a_weight():
    layer = MomentumBatchNormalization()
    layer.build((None, 2))
    assert len(layer.weights) == 4
    layer.momentum = None
    assert names(layer.weights)[-1] == "num_batches_tracked"
    layer.momentum = 0.9
    assert len(layer.weights) == 4


def test_default_layer_summary_and_count_match_keras():
    def model(bn):
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), bn()])

    ours, theirs = model(MomentumBatchNormalization), model(keras.layers.BatchNormalization)
    assert ours.count_params() == theirs.count_params() == 18 + 12

    def param_lines(m):
        printed = []
        m.summary(print_fn=lambda line, *args, **kwargs: printed.append(line))
        return [line for line in "\n".join(printed).splitlines() if "params" in line]

    assert param_lines(ours) == param_lines(theirs)


@pytest.mark.slow
def test_converted_mobilenet_v2_has_kerass_parameter_count_and_weights_both_ways():
    from keras_bn_tools.convert import convert_batchnorm

    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5
    )
    converted = convert_batchnorm(base)
    assert converted.count_params() == base.count_params()
    assert len(converted.get_weights()) == len(base.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    # Keras -> ours: fresh random weights in the Keras model, copied over.
    fresh = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5
    )
    fresh.compile("sgd", "categorical_crossentropy")
    fresh.fit(x, np.eye(5)[[0, 3]], verbose=0)  # moving statistics away from 0 and 1
    converted.set_weights(fresh.get_weights())
    np.testing.assert_array_equal(to_numpy(converted(x)), to_numpy(fresh(x)))
    # ours -> Keras.
    converted.compile("sgd", "categorical_crossentropy")
    converted.fit(x, np.eye(5)[[1, 2]], verbose=0)
    base.set_weights(converted.get_weights())
    np.testing.assert_array_equal(to_numpy(base(x)), to_numpy(converted(x)))


def test_keras_file_saves_only_the_weights_and_round_trips(tmp_path):
    layer = MomentumBatchNormalization(momentum=None, name="bn")
    model = keras.Sequential([keras.Input((3,)), layer])
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(8, 3)).astype("float32")
    for _ in range(3):
        layer(x * (1 + _), training=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    bn = loaded.get_layer("bn")
    assert bn.momentum is None
    assert int(to_numpy(bn.num_batches_tracked)) == 3  # a weight with momentum=None
    for a, b in zip(bn.get_weights(), layer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    weights_path = tmp_path / "model.weights.h5"
    model.save_weights(weights_path)
    h5py = pytest.importorskip("h5py")
    with h5py.File(weights_path) as f:
        stored = []
        f.visit(lambda name: stored.append(name) if isinstance(f[name], h5py.Dataset) else None)
    assert len(stored) == 5  # gamma, beta, moving mean and variance, num_batches_tracked


def test_a_checkpoint_of_version_0_1_with_every_variable_still_loads():
    expected = dict(np.load(DATA / "momentum_bn_v0_1.npz"))
    model = keras.saving.load_model(DATA / "momentum_bn_v0_1.keras", safe_mode=True)
    np.testing.assert_allclose(
        to_numpy(model(expected["probe"], training=False)), expected["inference"], rtol=1e-6
    )
    plain, cumulative = model.get_layer("plain"), model.get_layer("cumulative")
    assert plain.momentum == pytest.approx(0.99) and cumulative.momentum is None
    for layer in (plain, cumulative):
        for variable in layer.variables:
            key = f"{layer.name}/{variable.name}"
            if key in expected:
                np.testing.assert_array_equal(to_numpy(variable), expected[key], err_msg=key)
    assert int(to_numpy(cumulative.num_batches_tracked)) == 3
    assert len(plain.weights) == 4
