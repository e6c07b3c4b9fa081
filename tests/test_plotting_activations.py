"""plot_activation_percentiles: Figure 1 (b, c) panels with the recorded curves."""

from __future__ import annotations

import keras
import matplotlib.image
import numpy as np
import pytest

from keras_bn_tools.callbacks import ActivationTracker
from keras_bn_tools.plotting import plot_activation_percentiles


def _tracked(tmp_path, name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid", name="h"),
         keras.layers.Dense(1, activation="sigmoid", name="out")]
    )  # fmt: skip
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
    tracker = ActivationTracker(x[:20], log_dir=tmp_path / name)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[tracker])
    return tracker


def test_one_panel_per_tracker_with_the_recorded_curves(tmp_path):
    tracker = _tracked(tmp_path, "a")
    loaded = ActivationTracker.load(tmp_path / "a")
    path = tmp_path / "fig.png"
    figure = plot_activation_percentiles(
        {"live": tracker, "from disk": loaded}, "h", unit=2, path=path, title="Figure 1"
    )
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["live", "from disk"]
    for ax in axes:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["15th", "50th", "85th"]
        for column, line in enumerate(lines):
            np.testing.assert_array_equal(line.get_xdata(), tracker.steps)
            np.testing.assert_allclose(line.get_ydata(), tracker.history["h"][:, column, 2])
    assert axes[0].get_ylim() == axes[1].get_ylim()
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > 400


def test_median_over_units_epochs_axis_and_plain_dict(tmp_path):
    tracker = _tracked(tmp_path, "b")
    figure = plot_activation_percentiles(tracker, unit="median", x="epochs")
    (line,) = [ln for ln in figure.axes[0].get_lines() if ln.get_label() == "50th"]
    np.testing.assert_allclose(line.get_ydata(), np.median(tracker.history["h"][:, 1], axis=1))
    np.testing.assert_array_equal(line.get_xdata(), tracker.epochs)
    values = np.arange(24.0).reshape(4, 2, 3)
    figure = plot_activation_percentiles({"z": values}, percentiles=(10, 90), unit=1)
    labels = [ln.get_label() for ln in figure.axes[0].get_lines()]
    assert labels == ["10th", "90th"]


def test_bad_arguments(tmp_path):
    tracker = _tracked(tmp_path, "c")
    with pytest.raises(ValueError, match="layer"):
        plot_activation_percentiles(tracker, "nope")
    with pytest.raises(ValueError, match="unit"):
        plot_activation_percentiles(tracker, unit=3)
    with pytest.raises(ValueError, match="`x`"):
        plot_activation_percentiles(tracker, x="time")
    with pytest.raises(TypeError):
        plot_activation_percentiles(3)
