"""The metrics a study reports, scored in NumPy from the models' predictions.

Every engine returns predictions (training mode during each epoch, inference
mode on the test set after each epoch and on the training set after the last
one); `Metric.score` turns them into numbers, in float64, the same way for
every engine. Accuracies are integer counts (correct / total), so a run that
reaches a target exactly reaches it in every engine.

| metric | also | mode | range | labels |
|---|---|---|---|---|
| `accuracy` | | max | [0, 1] | binary, sparse or one-hot (from the output and labels) |
| `binary_accuracy` | | max | [0, 1] | 0/1, one per output unit (threshold 0.5) |
| `sparse_categorical_accuracy` | | max | [0, 1] | class indices, one per row |
| `categorical_accuracy` | | max | [0, 1] | one-hot rows, one column per output unit |
| `mean_squared_error` | `mse` | min | [0, inf) | one number per output unit |
| `mean_absolute_error` | `mae` | min | [0, inf) | one number per output unit |
| `auc` | | max | [0, 1] | 0/1, one sigmoid output; both classes present |

`auc` is the exact area under the ROC curve (ties count one half), not
Keras's thresholded approximation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALIASES",
    "METRICS",
    "NAMES",
    "Metric",
    "bounds_of",
    "get_metric",
    "mode_of",
    "prepare_labels",
    "resolve_accuracy",
]

ACCURACY_KINDS = ("binary_accuracy", "sparse_categorical_accuracy", "categorical_accuracy")


@dataclass(frozen=True)
class Metric:
    """One metric: its name, direction, range and NumPy scoring function.

    Attributes:
        name: the canonical name (`METRICS`' key).
        key: the name in `RunResult.history` (`key`, `val_<key>`) and in files:
            `"accuracy"` for every accuracy.
        mode: `"max"` (higher is better) or `"min"`.
        bounds: the metric's range `(low, high)`; intervals are clipped to it.
        label: its name in tables (`"acc"`, `"MSE"`, ...).
        score: `score(y_true, y_pred) -> float` in float64.
    """

    name: str
    key: str
    mode: str
    bounds: tuple[float, float]
    label: str
    score: Callable[[np.ndarray, np.ndarray], float]

    @property
    def is_accuracy(self) -> bool:
        return self.key == "accuracy"

    def reached(self, value: float, target: float) -> bool:
        """Whether `value` reaches `target` in this metric's direction."""
        return value >= target if self.mode == "max" else value <= target

    def in_range(self, value: float) -> bool:
        low, high = self.bounds
        return math.isfinite(value) and low <= value <= high


def _rows(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).reshape(len(y), -1)


def _binary_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    truth, pred = _rows(y_true) > 0.5, _rows(y_pred) > 0.5
    return int(np.count_nonzero(truth == pred)) / truth.size


def _sparse_categorical_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    labels = np.asarray(y_true).reshape(len(y_true)).astype("int64")
    return int(np.count_nonzero(np.argmax(_rows(y_pred), -1) == labels)) / len(labels)


def _categorical_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    hits = np.argmax(_rows(y_pred), -1) == np.argmax(_rows(y_true), -1)
    return int(np.count_nonzero(hits)) / len(hits)


def _errors(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return _rows(y_pred).astype("float64") - _rows(y_true).astype("float64")


def _mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.square(_errors(y_true, y_pred))))


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(_errors(y_true, y_pred))))


def _auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Exact ROC AUC: the probability that a positive outscores a negative (ties 1/2)."""
    from scipy.stats import rankdata

    truth = _rows(y_true).ravel() > 0.5
    ranks = rankdata(_rows(y_pred).ravel().astype("float64"))
    positives = int(np.count_nonzero(truth))
    negatives = truth.size - positives
    if not positives or not negatives:
        return float("nan")
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


_UNIT = (0.0, 1.0)
_POSITIVE = (0.0, math.inf)
#: Every metric by canonical name (`"accuracy"` resolves to one of the three accuracies).
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("binary_accuracy", "accuracy", "max", _UNIT, "acc", _binary_accuracy),
        Metric("sparse_categorical_accuracy", "accuracy", "max", _UNIT, "acc",
               _sparse_categorical_accuracy),
        Metric("categorical_accuracy", "accuracy", "max", _UNIT, "acc", _categorical_accuracy),
        Metric("mean_squared_error", "mse", "min", _POSITIVE, "MSE", _mse),
        Metric("mean_absolute_error", "mae", "min", _POSITIVE, "MAE", _mae),
        Metric("auc", "auc", "max", _UNIT, "AUC", _auc),
    )
}  # fmt: skip
#: Short names and the generic accuracy.
ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error"}
#: What `Protocol.metric` accepts.
NAMES = ("accuracy", *ACCURACY_KINDS, "mean_squared_error", "mse", "mean_absolute_error",
         "mae", "auc")  # fmt: skip
#: `Protocol.accuracy` (older protocols) -> the metric it means.
LEGACY_ACCURACY = {"auto": "accuracy", "binary": "binary_accuracy",
                   "sparse_categorical": "sparse_categorical_accuracy"}  # fmt: skip


def get_metric(name: str) -> Metric:
    """The `Metric` named `name` (canonical or alias; not the generic `"accuracy"`)."""
    return METRICS[ALIASES.get(name, name)]


def mode_of(name: str) -> str:
    """The direction of a metric name, the generic `"accuracy"` included."""
    return "max" if name == "accuracy" else get_metric(name).mode


def bounds_of(name: str) -> tuple[float, float]:
    return _UNIT if name == "accuracy" else get_metric(name).bounds


def resolve_accuracy(units: int, labels: np.ndarray) -> str:
    """Which accuracy `"accuracy"` means for a model with `units` outputs per row and
    these labels: binary for one unit; one-hot when the labels have one column per
    unit; else sparse (class indices)."""
    if units == 1:
        return "binary_accuracy"
    if labels.ndim == 2 and labels.shape[1] == units and units > 1:
        return "categorical_accuracy"
    return "sparse_categorical_accuracy"


def _fail(protocol: str, metric: str, problem: str, allowed: str) -> None:
    raise ValueError(
        f"Protocol {protocol!r}: `metric`={metric!r} does not fit this problem: {problem}. "
        f"Allowed: {allowed}."
    )


def prepare_labels(
    protocol: str,
    metric_name: str,
    output_shape: tuple[int, ...],
    train_y: np.ndarray,
    test_y: np.ndarray,
) -> tuple[Metric, np.ndarray, np.ndarray]:
    """Resolve `metric_name` for a model whose output per row has `output_shape`, check
    that the labels fit it, and return the `Metric` and the labels as every engine feeds
    them to the loss: class indices int32 `(rows,)` for a sparse accuracy, else float32
    shaped like the model's output `(rows, *output_shape)`.

    Raises:
        ValueError: labels or an output that do not fit the metric, naming the
            protocol, `metric` and what would fit.
    """
    units = int(np.prod(output_shape, dtype="int64"))
    ys = [np.asarray(train_y), np.asarray(test_y)]
    name = metric_name
    if name == "accuracy":
        name = resolve_accuracy(units, ys[0])
    metric = get_metric(name)
    per_row = [y[0].size if len(y) else 0 for y in ys]
    if metric.name == "sparse_categorical_accuracy":
        return metric, *(_sparse_labels(protocol, metric_name, units, y) for y in ys)
    if any(size != units for size in per_row):
        _fail(protocol, metric_name, f"the labels have {per_row[0]} value(s) per row, the "
              f"model's output {units} (shape {output_shape})", _WHAT_FITS)  # fmt: skip
    if not all(np.issubdtype(y.dtype, np.number) or y.dtype == bool for y in ys):
        _fail(protocol, metric_name, "the labels are not numbers", _WHAT_FITS)
    if not all(np.all(np.isfinite(y.astype("float64"))) for y in ys):
        _fail(protocol, metric_name, "the labels hold NaN or inf", _WHAT_FITS)
    binary = metric.name in ("binary_accuracy", "auc", "categorical_accuracy")
    if binary and not all(np.isin(y, (0, 1)).all() for y in ys):
        _fail(protocol, metric_name, "the labels are not all 0 or 1", _WHAT_FITS)
    if metric.name == "categorical_accuracy" and not all(
        (y.reshape(len(y), -1).sum(axis=1) == 1).all() for y in ys
    ):
        _fail(protocol, metric_name, "a one-hot label row must hold exactly one 1", _WHAT_FITS)
    if metric.name == "auc":
        if units != 1:
            _fail(protocol, metric_name, f"AUC needs one sigmoid output, the model has {units}",
                  _WHAT_FITS)  # fmt: skip
        if not all(0 < np.count_nonzero(y) < y.size for y in ys):
            _fail(protocol, metric_name, "AUC needs both classes in the training and the "
                  "test labels", _WHAT_FITS)  # fmt: skip
    shaped = [y.astype("float32").reshape(len(y), *output_shape) for y in ys]
    return metric, shaped[0], shaped[1]


_WHAT_FITS = (
    "'binary_accuracy'/'auc' (0/1 labels, one per output unit; AUC: one output), "
    "'sparse_categorical_accuracy' (class indices below the number of outputs), "
    "'categorical_accuracy' (one-hot labels, one column per output), 'mse'/'mae' "
    "(one number per output unit), 'accuracy' (one of the three accuracies, from the "
    "output and the labels)"
)


def _sparse_labels(protocol: str, metric_name: str, units: int, y: np.ndarray) -> np.ndarray:
    if units < 2:
        _fail(protocol, metric_name, f"class indices need one output per class, the model has "
              f"{units}", _WHAT_FITS)  # fmt: skip
    if y.size != len(y):
        _fail(protocol, metric_name, f"class-index labels hold one value per row, these hold "
              f"{y.size // max(len(y), 1)} (one-hot labels need 'categorical_accuracy' or "
              f"'accuracy')", _WHAT_FITS)  # fmt: skip
    flat = y.reshape(len(y))
    if not np.issubdtype(flat.dtype, np.number) or not np.all(np.isfinite(flat)):
        _fail(protocol, metric_name, "the labels are not finite numbers", _WHAT_FITS)
    if not np.all(flat == np.round(flat)) or flat.min() < 0 or flat.max() >= units:
        _fail(protocol, metric_name, f"class indices must be integers in [0, {units - 1}], "
              f"got values in [{flat.min()}, {flat.max()}]", _WHAT_FITS)  # fmt: skip
    return flat.astype("int32")
