"""The circles protocol: data, configs, and the `circles.run_study` shortcut."""

from __future__ import annotations

import numpy as np
import pytest

from keras_bn_tools.studies import PROTOCOLS, Protocol
from keras_bn_tools.studies.circles import (
    CONFIGS,
    DEFAULT_CONFIGS,
    PROTOCOL,
    CirclesConfig,
    load_circles,
    run_study,
)


@pytest.mark.backend_agnostic
def test_load_circles_is_the_tutorials_split():
    from sklearn.datasets import make_circles

    (train_x, train_y), (test_x, test_y) = load_circles()
    assert train_x.shape == (500, 2) and test_x.shape == (500, 2)
    assert train_y.shape == (500,) and train_x.dtype == np.float32
    x, y = make_circles(n_samples=1000, noise=0.1, random_state=1)
    np.testing.assert_array_equal(train_x, x[:500].astype("float32"))
    np.testing.assert_array_equal(test_y, y[500:].astype("float32"))


@pytest.mark.backend_agnostic
def test_load_circles_arguments():
    (train_x, _), (test_x, _) = load_circles(n_samples=100, n_train=80, random_state=3)
    assert len(train_x) == 80 and len(test_x) == 20
    with pytest.raises(ValueError, match="n_train"):
        load_circles(n_samples=100, n_train=100)
    with pytest.raises(ValueError, match="n_train"):
        load_circles(n_train=0)
    with pytest.raises(TypeError, match="n_samples"):
        load_circles(n_samples=10.5)


@pytest.mark.backend_agnostic
def test_the_protocol_is_the_tutorials():
    assert PROTOCOLS["circles"] is PROTOCOL and isinstance(PROTOCOL, Protocol)
    assert (PROTOCOL.epochs, PROTOCOL.batch_size, PROTOCOL.target) == (100, 32, 0.8)
    assert (
        tuple(PROTOCOL.default_configs) == DEFAULT_CONFIGS == ("baseline", "bn-after", "bn-before")
    )
    assert list(PROTOCOL.configs) == list(CONFIGS)
    required = {"baseline", "bn-after", "bn-before", "bn-after-no-affine", "bn-after-momentum0",
                "bn-input", "bn-after-cumulative", "bn-after-debiased"}  # fmt: skip
    assert required <= set(CONFIGS)
    optimizer = PROTOCOL.optimizer()
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert optimizer.momentum == pytest.approx(0.9)


def _kinds(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.backend_agnostic
def test_config_models():
    import keras

    from keras_bn_tools.layers import MomentumBatchNormalization

    assert _kinds(PROTOCOL.build("baseline")) == ["Dense", "Dense"]
    assert _kinds(PROTOCOL.build("bn-after")) == ["Dense", "BatchNormalization", "Dense"]
    assert _kinds(PROTOCOL.build("bn-before")) == [
        "Dense", "BatchNormalization", "Activation", "Dense",
    ]  # fmt: skip
    assert _kinds(PROTOCOL.build("bn-input"))[0] == "BatchNormalization"
    hidden = PROTOCOL.build("bn-after").layers[0]
    assert hidden.units == 50 and hidden.activation is keras.activations.relu
    assert isinstance(hidden.kernel_initializer, keras.initializers.HeUniform)
    no_affine = PROTOCOL.build("bn-after-no-affine").layers[1]
    assert no_affine.gamma is None and no_affine.beta is None
    assert PROTOCOL.build("bn-after-momentum0").layers[1].momentum == 0.0
    cumulative = PROTOCOL.build("bn-after-cumulative").layers[1]
    assert isinstance(cumulative, MomentumBatchNormalization) and cumulative.momentum is None


@pytest.mark.backend_agnostic
def test_bn_layer_names_are_stable_across_builds():
    for _ in range(2):
        names = [layer.name for layer in PROTOCOL.build("bn-input").layers]
        assert names[0] == "batch_normalization" and names[2] == "batch_normalization_1"


@pytest.mark.backend_agnostic
def test_shortcut_takes_custom_configs_and_data():
    wide = CirclesConfig("wide", "BN after a wider ReLU layer", hidden_units=(8,))
    (train_x, train_y), test = load_circles(n_samples=120, n_train=80)
    result = run_study([wide, "baseline"], seeds=[1], epochs=2, data=((train_x, train_y), test))
    assert result.configs == ("wide", "baseline") and result.protocol == "circles"
    assert result.runs[0].moving_stats["batch_normalization"]["moving_mean"].shape == (2, 8)
    assert result.shuffle == "epoch"  # the tutorial's order is the default
    assert result.metadata["config_descriptions"]["wide"] == "BN after a wider ReLU layer"
