"""Learning-curve, moving-statistics and activation-percentile plots.

Headless- and thread-safe: figures are built with `matplotlib.figure.Figure`
on an Agg canvas and never touch `matplotlib.pyplot`'s global state, so they
work without a display, in tests and in worker threads. Each function returns
the `Figure` (show it in a notebook by evaluating it) and saves it when given
a `path` (the format follows the extension: .png, .svg, .pdf, ...).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_activation_percentiles", "plot_learning_curves", "plot_moving_stats"]

_BANDS = ("sd", "se", "minmax", None)


def _new_figure(rows: int, cols: int, *, width: float, height: float) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _save(figure: Figure, path: str | os.PathLike | None) -> None:
    if path is not None:
        parent = os.path.dirname(os.fspath(path))
        if parent:
            os.makedirs(parent, exist_ok=True)
        figure.savefig(path, dpi=100)


# --------------------------------------------------------------------------- learning curves


def _history_dict(item: Any) -> dict[str, Sequence[float]]:
    """`{metric: per-epoch values}` from a `keras.callbacks.History` or a dict."""
    history = getattr(item, "history", item)
    if not isinstance(history, Mapping):
        raise TypeError(
            "Each history must be a keras.callbacks.History or a dict of metric -> "
            f"per-epoch values; got {type(item).__name__}."
        )
    return history


def _is_series(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(v, numbers.Real) for v in value)
    )


def _is_single_history(item: Any) -> bool:
    """A History, or a non-empty dict of metric -> per-epoch numbers."""
    if isinstance(getattr(item, "history", None), Mapping):
        return True
    return isinstance(item, Mapping) and bool(item) and all(map(_is_series, item.values()))


def _normalize_runs(histories: Any) -> dict[str, list[dict[str, Sequence[float]]]]:
    if _is_single_history(histories):
        return {"": [_history_dict(histories)]}
    if not isinstance(histories, Mapping) or not histories:
        raise TypeError(
            "`histories` must be a History, a history dict, or a non-empty mapping "
            "label -> History / history dict / list of them."
        )
    runs = {}
    for label, value in histories.items():
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if not items:
            raise ValueError(f"`histories[{label!r}]` holds no run.")
        runs[str(label)] = [_history_dict(item) for item in items]
    return runs


def _curves(runs: list[dict[str, Sequence[float]]], metric: str) -> np.ndarray | None:
    """(runs, epochs) array padded with NaN, or None if no run has `metric`."""
    series = [np.asarray(run[metric], dtype=float) for run in runs if metric in run]
    if not series:
        return None
    length = max(len(s) for s in series)
    out = np.full((len(series), length), np.nan)
    for row, s in zip(out, series, strict=True):
        row[: len(s)] = s
    return out


def plot_learning_curves(
    histories: Any,
    *,
    metrics: Sequence[str] = ("accuracy", "val_accuracy"),
    band: str | None = "sd",
    title: str | None = None,
    threshold: float | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Plot per-epoch metrics, one axes per metric, averaged over runs.

    Args:
        histories: a `keras.callbacks.History` or history dict (one curve), or
            a mapping label -> one History / history dict, or a list of them
            (several runs, e.g. seeds). Runs of different lengths (early
            stopping) are averaged over the runs that reached each epoch.
        metrics: metric names; one axes each. Labels whose runs lack a metric
            are left out of that axes.
        band: shaded band around the mean over runs: `"sd"` (± one standard
            deviation), `"se"` (± standard error), `"minmax"` (range) or None.
            Nothing is shaded for a single run.
        title: figure title.
        threshold: if given, a dashed horizontal reference line (e.g. 0.8 for
            "80% accuracy").
        path: save the figure there.

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: for an unknown `band`, no metrics, or a metric that no run has.
    """
    if band not in _BANDS:
        raise ValueError(f"`band` must be one of {list(_BANDS)}, got {band!r}.")
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(metrics)
    if not metrics:
        raise ValueError("`metrics` must name at least one metric.")
    runs = _normalize_runs(histories)
    available = sorted({m for label_runs in runs.values() for run in label_runs for m in run})
    missing = [m for m in metrics if not any(m in run for rs in runs.values() for run in rs)]
    if missing:
        raise ValueError(f"No history has metric(s) {missing}; available metrics: {available}.")

    cols = min(len(metrics), 3)
    figure, grid = _new_figure(math.ceil(len(metrics) / cols), cols, width=4.5, height=3.3)
    axes_list = grid.ravel()
    for ax in axes_list[len(metrics) :]:
        figure.delaxes(ax)
    for ax, metric in zip(axes_list, metrics, strict=False):
        for index, (label, label_runs) in enumerate(runs.items()):
            curves = _curves(label_runs, metric)
            if curves is None:
                continue
            epochs = np.arange(1, curves.shape[1] + 1)
            mean = np.nanmean(curves, axis=0)
            color = f"C{index % 10}"
            name = label or metric
            if len(curves) > 1:
                name = f"{name} (n={len(curves)})"
            ax.plot(epochs, mean, color=color, label=name, linewidth=1.5)
            counts = np.sum(~np.isnan(curves), axis=0)
            if band is not None and len(curves) > 1:
                if band == "minmax":
                    low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
                else:
                    spread = np.nanstd(curves, axis=0)
                    if band == "se":
                        spread = spread / np.sqrt(counts)
                    low, high = mean - spread, mean + spread
                ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        if threshold is not None:
            ax.axhline(threshold, color="0.4", linestyle="--", linewidth=1, label=f"{threshold:g}")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    _save(figure, path)
    return figure


# --------------------------------------------------------------------------- moving statistics


def plot_moving_stats(
    tracker_or_history: Any,
    *,
    layers: Sequence[str] | None = None,
    stats: Sequence[str] = ("moving_mean", "moving_variance"),
    x: str = "steps",
    max_features: int | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Plot recorded BN statistics: one axes per (layer, stat), one line per feature.

    Args:
        tracker_or_history: a `MovingStatsTracker`, the `MovingStatsLog` that
            `MovingStatsTracker.load` returns, or a plain dict
            `{layer: {stat: (records, features) array}}` (x is then the record
            index).
        layers: layer keys to plot (default: all).
        stats: stat names to plot; a layer lacking one gets no axes for it.
        x: `"steps"` (training steps completed) or `"epochs"` (epochs
            completed) on the horizontal axis.
        max_features: plot at most this many features per axes (the first ones).
        path: save the figure there.

    Returns:
        The matplotlib `Figure`; axes are ordered layer by layer, stat by stat.

    Raises:
        ValueError: for an unknown layer, a bad `x`, or nothing to plot.
    """
    if x not in ("steps", "epochs"):
        raise ValueError(f'`x` must be "steps" or "epochs", got {x!r}.')
    if isinstance(stats, str):
        stats = (stats,)
    history = getattr(tracker_or_history, "history", tracker_or_history)
    if not isinstance(history, Mapping):
        raise TypeError(
            "Expected a MovingStatsTracker, a MovingStatsLog or a dict "
            f"{{layer: {{stat: array}}}}; got {type(tracker_or_history).__name__}."
        )
    positions = getattr(tracker_or_history, x, None)
    names = list(history) if layers is None else list(layers)
    unknown = [name for name in names if name not in history]
    if unknown:
        raise ValueError(f"Unknown layers {unknown}; recorded layers: {list(history)}.")
    panels = [(name, stat) for name in names for stat in stats if stat in history[name]]
    if not panels:
        raise ValueError(f"Nothing to plot: none of layers {names} has stats {list(stats)}.")

    cols = max(sum(1 for n, _ in panels if n == name) for name in names)
    rows = len(names)
    figure, grid = _new_figure(rows, cols, width=4.5, height=3.0)
    used = set()
    for row, name in enumerate(names):
        layer_panels = [stat for n, stat in panels if n == name]
        for col, stat in enumerate(layer_panels):
            ax = grid[row, col]
            used.add((row, col))
            values = np.asarray(history[name][stat], dtype=float)
            values = values.reshape(len(values), -1)
            if max_features is not None:
                values = values[:, :max_features]
            xs = np.arange(len(values)) if positions is None else np.asarray(positions)
            ax.plot(xs, values, linewidth=0.8, alpha=0.8)
            ax.set_title(f"{name}: {stat}", fontsize="medium")
            ax.set_xlabel(x if positions is not None else "record")
            ax.grid(True, alpha=0.3)
    for row in range(rows):
        for col in range(cols):
            if (row, col) not in used:
                figure.delaxes(grid[row, col])
    _save(figure, path)
    return figure


# ------------------------------------------------------------------ activation percentiles


def _percentile_source(item: Any, percentiles: Sequence[float] | None) -> tuple[Any, Any, Any]:
    """`(history, positions, percentiles)` of an ActivationTracker, ActivationLog or dict."""
    history = getattr(item, "history", item)
    if not isinstance(history, Mapping) or not history:
        raise TypeError(
            "Expected an ActivationTracker, an ActivationLog or a dict {layer: array of shape "
            f"(records, percentiles, units)}}; got {type(item).__name__}."
        )
    found = getattr(item, "percentiles", None)
    return history, getattr(item, "steps", None), found if found is not None else percentiles


def plot_activation_percentiles(
    tracker_or_history: Any,
    layer: str | None = None,
    *,
    unit: int | str = 0,
    percentiles: Sequence[float] | None = None,
    x: str = "steps",
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Percentiles of a nonlinearity's input over training: Ioffe & Szegedy's Figure 1 (b, c).

    Args:
        tracker_or_history: an `ActivationTracker`, an `ActivationLog`
            (`ActivationTracker.load(...)`), a dict `{layer: array (records,
            percentiles, units)}`, or a mapping label -> any of these: one
            panel per label (e.g. `{"without BN": a, "with BN": b}`), sharing
            the y axis so the drift compares at a glance.
        layer: the tracked layer to draw (default: the first one).
        unit: the unit (neuron / channel) to draw, or `"median"` for the
            median over units of each percentile curve.
        percentiles: the percentile labels, when a plain dict carries none.
        x: `"steps"` (training batches, the paper's axis) or `"epochs"`.
        path: save the figure there as well.
        title: the figure's title.

    Returns:
        The matplotlib `Figure`, one panel per tracker.

    Raises:
        ValueError: an unknown layer or unit, a bad `x`.
        TypeError: something that holds no activation percentiles.
    """
    if x not in ("steps", "epochs"):
        raise ValueError(f'`x` must be "steps" or "epochs", got {x!r}.')
    is_labelled = isinstance(tracker_or_history, Mapping) and all(
        hasattr(v, "history") or isinstance(v, Mapping) for v in tracker_or_history.values()
    )
    items = dict(tracker_or_history) if is_labelled else {"": tracker_or_history}
    figure, grid = _new_figure(1, len(items), width=4.5, height=3.2)
    for ax, (label, item) in zip(grid[0], items.items(), strict=True):
        history, steps, labels = _percentile_source(item, percentiles)
        name = next(iter(history)) if layer is None else layer
        if name not in history:
            raise ValueError(f"Unknown `layer` {name!r}; recorded layers: {list(history)}.")
        values = np.asarray(history[name], dtype=float)
        if values.ndim != 3:
            raise TypeError(f"history[{name!r}] must be (records, percentiles, units).")
        if unit == "median":
            curves = np.median(values, axis=2)
        elif isinstance(unit, numbers.Integral) and 0 <= unit < values.shape[2]:
            curves = values[:, :, int(unit)]
        else:
            raise ValueError(
                f'`unit` must be "median" or an int in [0, {values.shape[2] - 1}], got {unit!r}.'
            )
        positions = getattr(item, x, None) if x == "epochs" else steps
        xs = np.arange(len(curves)) if positions is None else np.asarray(positions)
        names = labels if labels is not None else range(curves.shape[1])
        for column, percentile in enumerate(names):
            ax.plot(xs, curves[:, column], linewidth=1.2, label=f"{float(percentile):g}th")
        ax.set_xlabel(x if positions is not None else "record")
        ax.set_ylabel(f"input of {name}" + ("" if unit == "median" else f", unit {unit}"))
        ax.set_title(label or name, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", title="percentile")
    if len(items) > 1:
        low = min(ax.get_ylim()[0] for ax in grid[0])
        high = max(ax.get_ylim()[1] for ax in grid[0])
        for ax in grid[0]:
            ax.set_ylim(low, high)
    if title:
        figure.suptitle(title)
    _save(figure, path)
    return figure
