"""The diabetes protocol: data, models, and what each config puts where."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools import batchnorm_layers
from keras_bn_tools.studies import PROTOCOLS
from keras_bn_tools.studies.diabetes import CONFIGS, PROTOCOL, build_model, load_diabetes_split

pytestmark = pytest.mark.backend_agnostic


def test_split_is_every_fifth_patient_in_the_features_own_units():
    from sklearn.datasets import load_diabetes

    (train_x, train_y), (test_x, test_y) = load_diabetes_split()
    x, y = load_diabetes(return_X_y=True, scaled=False)
    assert train_x.shape == (354, 10) and test_x.shape == (88, 10)
    np.testing.assert_array_equal(test_x, x[4::5].astype("float32"))
    np.testing.assert_array_equal(test_y, y[4::5].astype("float32"))
    assert train_x[:, 3].min() > 50  # blood pressure in mm Hg: not standardized
    assert train_y.min() >= 25 and train_y.max() <= 346


def test_protocol_is_a_regression_scored_by_mae():
    assert PROTOCOLS["diabetes"] is PROTOCOL
    assert (PROTOCOL.metric, PROTOCOL.direction, PROTOCOL.loss) == ("mae", "min", "mse")
    assert PROTOCOL.target == 50.0 and list(PROTOCOL.default_configs) == list(CONFIGS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_config_builds_a_regressor_with_bn_and_scaling_where_it_says(name):
    config = CONFIGS[name]
    model = build_model(name)
    assert model.built and not model.compiled and tuple(model.output_shape) == (None, 1)
    bn = [layer.name for layer in batchnorm_layers(model)]
    expected = (["input_bn"] if config.input_bn else []) + (
        ["bn_0", "bn_1"] if config.bn != "none" else []
    )
    assert bn == expected
    kinds = [type(layer).__name__ for layer in model.layers]
    assert ("Normalization" in kinds) == config.standardize_x
    assert (kinds[-1] == "Rescaling") == config.standardize_y


def test_scaling_layers_use_the_training_moments():
    (train_x, train_y), _ = load_diabetes_split()
    model = build_model("standardized-scaled-y")
    normalized = keras.ops.convert_to_numpy(model.layers[0](train_x))
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalized.std(0), 1.0, atol=1e-4)
    rescaling = model.layers[-1]
    assert rescaling.scale == pytest.approx(train_y.astype("float64").std())
    assert rescaling.offset == pytest.approx(train_y.astype("float64").mean())
    with pytest.raises(ValueError, match="Unknown diabetes config 'bn'"):
        build_model("bn")
