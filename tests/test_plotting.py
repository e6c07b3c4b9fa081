"""Plots: valid PNGs, the expected axes, headless and without pyplot."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import keras
import matplotlib.image
import numpy as np
import pytest

from keras_bn_tools.callbacks import MovingStatsTracker
from keras_bn_tools.plotting import plot_learning_curves, plot_moving_stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _run(rng, epochs, start=0.5):
    acc = np.clip(start + np.cumsum(rng.uniform(0, 0.05, epochs)), 0, 1)
    return {"accuracy": list(acc), "val_accuracy": list(acc - 0.02), "loss": list(1 - acc)}


@pytest.mark.backend_agnostic
def test_learning_curves_average_runs_per_label(tmp_path):
    rng = np.random.default_rng(0)
    history = keras.callbacks.History()
    history.history = _run(rng, 12)
    runs = {
        "bn-after": [_run(rng, 12), _run(rng, 12), _run(rng, 9)],  # early-stopped run included
        "baseline": history,
    }
    path = tmp_path / "curves" / "learning.png"
    figure = plot_learning_curves(runs, title="circles", threshold=0.8, path=path)
    _assert_png(path)
    assert len(figure.axes) == 2
    accuracy_axes = figure.axes[0]
    assert accuracy_axes.get_title() == "accuracy"
    labels = [line.get_label() for line in accuracy_axes.get_lines()]
    assert labels == ["bn-after (n=3)", "baseline", "0.8"]
    mean = accuracy_axes.get_lines()[0].get_ydata()
    curves = [runs["bn-after"][i]["accuracy"] for i in range(3)]
    np.testing.assert_allclose(mean[:9], np.mean([c[:9] for c in curves], axis=0))
    np.testing.assert_allclose(mean[9:], np.mean([c[9:] for c in curves[:2]], axis=0))
    assert len(accuracy_axes.collections) == 1  # one band: only bn-after has several runs
    assert figure.get_suptitle() == "circles"


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("band", ["sd", "se", "minmax", None])
def test_learning_curve_bands_and_a_single_history(band):
    rng = np.random.default_rng(1)
    figure = plot_learning_curves({"a": [_run(rng, 5), _run(rng, 5)]}, metrics=("loss",), band=band)
    assert len(figure.axes) == 1
    assert len(figure.axes[0].collections) == (0 if band is None else 1)
    single = plot_learning_curves(_run(rng, 5), metrics=["accuracy", "val_accuracy", "loss"])
    assert len(single.axes) == 3


def test_learning_curve_errors():
    with pytest.raises(ValueError, match=r"\['f1'\].*available metrics: \['accuracy'"):
        plot_learning_curves({"a": _run(np.random.default_rng(2), 3)}, metrics=("f1",))
    with pytest.raises(ValueError, match="band"):
        plot_learning_curves(_run(np.random.default_rng(2), 3), band="iqr")
    with pytest.raises(TypeError, match="histories"):
        plot_learning_curves(42)


@pytest.mark.backend_agnostic
def test_moving_stats_one_axes_per_layer_and_stat(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.BatchNormalization(name="bn_in"),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="bn_hidden", scale=False),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    tracker = MovingStatsTracker(every=2, log_dir=tmp_path / "log")
    model.fit(
        np.random.default_rng(3).normal(size=(64, 3)),
        np.ones(64),
        epochs=2,
        verbose=0,
        callbacks=[tracker],
    )

    figure = plot_moving_stats(tracker, path=tmp_path / "stats.png")
    _assert_png(tmp_path / "stats.png")
    assert len(figure.axes) == 4  # 2 layers x (moving_mean, moving_variance)
    first = figure.axes[0]
    assert first.get_title() == "bn_in: moving_mean"
    assert len(first.get_lines()) == 3  # one line per feature
    np.testing.assert_array_equal(first.get_lines()[0].get_xdata(), tracker.steps)

    # gamma is missing in bn_hidden (scale=False): that panel is left out.
    loaded = MovingStatsTracker.load(tmp_path / "log")
    figure = plot_moving_stats(loaded, stats=("gamma", "beta"), x="epochs", max_features=2)
    assert [ax.get_title() for ax in figure.axes] == [
        "bn_in: gamma",
        "bn_in: beta",
        "bn_hidden: beta",
    ]
    assert len(figure.axes[0].get_lines()) == 2
    raw = plot_moving_stats(tracker.history, layers=["bn_hidden"])
    assert len(raw.axes) == 2
    with pytest.raises(ValueError, match=r"Unknown layers \['nope'\]"):
        plot_moving_stats(tracker, layers=["nope"])
    with pytest.raises(ValueError, match="x"):
        plot_moving_stats(tracker, x="time")


def test_figures_render_concurrently_without_pyplot(tmp_path):
    rng = np.random.default_rng(4)
    paths = [tmp_path / f"curve{i}.png" for i in range(4)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: plot_learning_curves(_run(rng, 8), path=p), paths))
    for path in paths:
        _assert_png(path)
    # Keras itself imports pyplot when it can (keras.src.visualization), so the child
    # makes pyplot unimportable: our plots must not need it.
    code = (
        "import sys; sys.modules['matplotlib.pyplot'] = None; "
        "from keras_bn_tools.plotting import plot_learning_curves as p; "
        "p({'accuracy': [0.5, 0.7], 'val_accuracy': [0.4, 0.6]}, path=sys.argv[1])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sub.png")], check=True, env=env, timeout=120
    )
    _assert_png(tmp_path / "sub.png")
