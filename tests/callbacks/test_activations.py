"""ActivationTracker: exact percentiles of each nonlinearity's input, its log, its errors."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_bn_tools.callbacks import ActivationTracker
from keras_bn_tools.callbacks.activations import ACTIVATION_RECORDS_FILE, nonlinearity_layers


def _data(rows=64, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype("float32")
    return x, (x[:, 0] > 0).astype("float32")


def _model():
    """Dense(sigmoid) -> Dense -> BN -> Activation(tanh) -> ReLU -> Dense(1, sigmoid)."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(7, activation="sigmoid", name="hidden"),
            keras.layers.Dense(6, name="linear"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Activation("tanh", name="act"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    return model


def test_finds_every_nonlinearity_in_call_order_nested_included():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="relu")])
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, name="plain")(inputs)  # linear: not a nonlinearity
    x = keras.layers.Activation("sigmoid", name="sig")(x)
    x = inner(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    keys = [key for key, _ in nonlinearity_layers(model)]
    assert keys == ["sig", inner.layers[0].name, "head"]


def test_records_pre_activation_percentiles_per_unit_against_numpy():
    x, y = _data()
    model = _model()
    probe = x[:40]
    tracker = ActivationTracker(probe, percentiles=(15, 50, 85))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[tracker])
    assert list(tracker.history) == ["hidden", "act", "relu", "out"]
    assert tracker.history["hidden"].shape == (3, 3, 7)
    assert tracker.history["act"].shape == (3, 3, 6)
    np.testing.assert_array_equal(tracker.steps, [0, 4, 8])
    np.testing.assert_array_equal(tracker.epochs, [0, 1, 2])
    # The last record is the state after training: recompute each input by hand.
    kernel, bias = model.get_layer("hidden").get_weights()
    pre_hidden = probe @ kernel + bias
    np.testing.assert_allclose(
        tracker.history["hidden"][-1], np.percentile(pre_hidden, [15, 50, 85], axis=0), atol=1e-5
    )
    bn_out = keras.Model(model.inputs, model.get_layer("bn").output)([probe], training=False)
    np.testing.assert_allclose(
        tracker.history["act"][-1],
        np.percentile(keras.ops.convert_to_numpy(bn_out), [15, 50, 85], axis=0),
        atol=1e-5,
    )
    # The model works as before: the capture patches are gone.
    assert "call" not in vars(model.get_layer("relu"))
    assert model.get_layer("hidden").activation is keras.activations.sigmoid


@settings(max_examples=15, deadline=None)
@given(
    probe=hnp.arrays(
        "float32",
        st.tuples(st.integers(1, 12), st.integers(1, 4)),
        elements=st.floats(-100, 100, width=32),
    ),
    percentiles=st.lists(st.floats(0, 100), min_size=1, max_size=5, unique=True).map(sorted),
)
def test_percentiles_equal_numpy_exactly(probe, percentiles):
    # The Activation layer's input is the model's input: the probe itself, bit for bit.
    model = keras.Sequential(
        [keras.Input((probe.shape[1],)), keras.layers.Activation("sigmoid", name="sig")]
    )
    model.compile("sgd", "mse")
    tracker = ActivationTracker(probe, percentiles=percentiles)
    tracker.set_model(model)
    tracker.on_train_begin()
    expected = np.percentile(probe.astype("float64"), percentiles, axis=0)
    np.testing.assert_array_equal(tracker.history["sig"][0], expected)


def test_conv_percentiles_are_per_channel_over_rows_and_pixels():
    rng = np.random.default_rng(1)
    probe = rng.normal(size=(6, 5, 5, 2)).astype("float32")
    model = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Activation("relu", name="a")])
    tracker = ActivationTracker(probe, percentiles=(10, 90))
    tracker.set_model(model)
    tracker.on_train_begin()
    expected = np.percentile(probe.reshape(-1, 2).astype("float64"), [10, 90], axis=0)
    np.testing.assert_array_equal(tracker.history["a"][0], expected)


def test_training_mode_probe_uses_batch_statistics_and_leaves_moving_statistics_alone():
    x, _ = _data()
    model = _model()
    bn = model.get_layer("bn")
    before = [keras.ops.convert_to_numpy(v).copy() for v in bn.non_trainable_variables]
    tracker = ActivationTracker(x, layers=["act"], percentiles=(50,), training=True)
    tracker.set_model(model)
    tracker.on_train_begin()
    for old, new in zip(before, bn.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    # Training-mode BN output has per-unit mean 0: the median of 64 normal-ish rows is near 0.
    linear = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.get_layer("linear").output)([x])
    )
    normalized = (linear - linear.mean(0)) / np.sqrt(linear.var(0) + bn.epsilon)
    np.testing.assert_allclose(
        tracker.history["act"][0, 0], np.median(normalized, axis=0), atol=1e-4
    )


def test_every_batch_and_every_n(tmp_path):
    x, y = _data()
    for every, steps in (("batch", list(range(9))), (3, [0, 3, 6])):
        tracker = ActivationTracker(x[:8], every=every)
        _model().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[tracker])
        np.testing.assert_array_equal(tracker.steps, steps)


def test_log_on_disk_record_by_record_and_second_fit_continues(tmp_path):
    x, y = _data()
    log_dir = tmp_path / "acts"
    model = _model()
    sizes = []

    class WatchDisk(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            sizes.append(os.path.getsize(log_dir / ACTIVATION_RECORDS_FILE))

    tracker = ActivationTracker(x[:10], log_dir=log_dir)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[tracker, WatchDisk()])
    # Each epoch's record is on disk before the next callback sees the epoch end.
    assert sizes[1] == 1.5 * sizes[0]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[tracker])
    loaded = ActivationTracker.load(log_dir)
    np.testing.assert_array_equal(loaded.steps, [0, 4, 8, 12])
    np.testing.assert_array_equal(tracker.steps, loaded.steps)
    for key in tracker.history:
        np.testing.assert_array_equal(loaded.history[key], tracker.history[key])
    assert loaded.percentiles == (15.0, 50.0, 85.0)
    # A torn last record (a crash mid-write) is dropped, earlier ones kept.
    with open(log_dir / ACTIVATION_RECORDS_FILE, "ab") as f:
        f.write(b"\x00" * 7)
    assert len(ActivationTracker.load(log_dir)) == 4
    # Never overwritten: a new tracker refuses the directory.
    with pytest.raises(ValueError, match=r"log_dir.*never overwritten"):
        ActivationTracker(x[:10], log_dir=log_dir)


def test_nonfinite_percentiles_are_flagged_and_warned():
    probe = np.array([[1.0, np.nan], [2.0, 3.0]], dtype="float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Activation("relu", name="a")])
    tracker = ActivationTracker(probe)
    tracker.set_model(model)
    with pytest.warns(RuntimeWarning, match="non-finite percentiles"):
        tracker.on_train_begin()
    assert tracker.nonfinite["a"].tolist() == [True]
    assert np.isnan(tracker.history["a"][0, :, 1]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"percentiles": (50, 15)}, ValueError, "percentiles.*increasing"),
        ({"percentiles": (15, 15)}, ValueError, "percentiles.*increasing"),
        ({"percentiles": (-1, 50)}, ValueError, r"percentiles.*\[0, 100\]"),
        ({"percentiles": (50, 101)}, ValueError, r"percentiles.*\[0, 100\]"),
        ({"percentiles": (float("nan"),)}, ValueError, r"percentiles.*\[0, 100\]"),
        ({"percentiles": "15"}, TypeError, "percentiles"),
        ({"percentiles": ()}, TypeError, "percentiles"),
        ({"every": "step"}, ValueError, "every"),
        ({"every": 0}, ValueError, "every"),
        ({"every": 1.5}, TypeError, "every"),
        ({"every": True}, TypeError, "every"),
        ({"layers": [3]}, TypeError, "layers"),
        ({"layers": []}, ValueError, "layers"),
        ({"training": "yes"}, TypeError, "training"),
    ],
)
def test_bad_arguments_at_construction(kwargs, error, match):
    x, _ = _data()
    with pytest.raises(error, match=match):
        ActivationTracker(x[:4], **kwargs)


def test_bad_probe_at_construction():
    with pytest.raises(ValueError, match="probe"):
        ActivationTracker(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="probe"):
        ActivationTracker(np.float32(3.0))


@pytest.mark.parametrize(
    ("tracker_kwargs", "match"),
    [
        ({"probe": np.zeros((4, 3), "float32")}, r"probe.*\(3,\).*\(5,\)"),
        ({"probe": np.zeros((4, 5), "float32"), "layers": ["bn"]}, "layers.*'bn'"),
        ({"probe": np.zeros((4, 5), "float32"), "layers": ["nope"]}, "layers.*'nope'"),
    ],
)
def test_bad_probe_or_layer_fails_before_the_first_step(tracker_kwargs, match):
    x, y = _data()
    model = _model()
    weights = [w.copy() for w in model.get_weights()]
    tracker = ActivationTracker(**tracker_kwargs)
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[tracker])
    for old, new in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
