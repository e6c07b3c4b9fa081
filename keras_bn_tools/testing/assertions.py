"""Assertions that hold a normalization layer to the NumPy reference.

Both call the layer eagerly and compare in float64; a failure raises
`AssertionError` whose message names the worst feature and shows the
expected and actual numbers, so a Hypothesis failure reads like a bug report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from keras_bn_tools.ops import to_numpy
from keras_bn_tools.testing._normalization_check import NormalizationCheck, fmt, ratio
from keras_bn_tools.testing._subject import Subject, read_subject
from keras_bn_tools.testing.reference import (
    normalize_axes,
    reference_moments,
    reference_moving_statistics,
)

__all__ = ["assert_moving_statistics", "assert_normalizes", "default_tolerances"]

# (atol, rtol) per output dtype; half precision computes the statistics in
# float32 but rounds the output.
_TOLERANCES = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-4, 1e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (3e-2, 3e-2),
}


def default_tolerances(dtype: Any) -> tuple[float, float]:
    """`(atol, rtol)` the assertions use for outputs of `dtype` (float32's for unknown ones)."""
    name = keras.backend.standardize_dtype(dtype)
    return _TOLERANCES.get(name, _TOLERANCES["float32"])


def _layer_axis(subject: Subject, axis: int | Sequence[int] | None) -> int | Sequence[int]:
    if axis is not None:
        return axis
    layer_axis = subject.axis
    if isinstance(layer_axis, (int, np.integer)) or (
        isinstance(layer_axis, (list, tuple)) and layer_axis
    ):
        return layer_axis
    return -1


def assert_normalizes(
    layer: Any,
    x: Any,
    *,
    axis: int | Sequence[int] | None = None,
    training: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> np.ndarray:
    """Assert that `layer(x, training=training)` is batch normalization of `x`.

    Calls the layer once (so in training a BN layer's moving statistics move,
    as in any training step) and compares its output with
    `reference_batchnorm`, reading `gamma`, `beta` and `epsilon` from the layer
    when it has them (`None` gamma/beta, i.e. `scale=False`/`center=False`,
    mean 1/0). Three checks, per feature:

    - the output mean equals the reference's (`beta` in training);
    - the output standard deviation equals the reference's
      (`|gamma| * sqrt(var / (var + epsilon))` in training, with the biased
      batch variance `var`);
    - every output element equals the reference's.

    In inference (`training=False`) the reference uses the layer's
    `moving_mean` and `moving_variance`. A layer with `trainable=False` is
    held to inference behaviour even with `training=True`, as Keras's own BN
    is. A layer whose `virtual_batch_size` (ghost batches) is smaller than
    the batch normalizes each ghost batch separately, in an order this check
    cannot know; then only the grouping-independent properties are checked:
    the output mean equals `beta` and the output std is at most `|gamma|`.

    Args:
        layer: a Keras layer (any callable taking `training=` works).
        x: the input batch, array-like, at least two rows.
        axis: the feature axis (or axes); default: the layer's `axis`
            attribute, else -1.
        training: which mode to call the layer in.
        atol: absolute tolerance; default by output dtype (float32: 1e-4).
        rtol: relative tolerance; default by output dtype (float32: 1e-3).
            Mean and element errors are relative to the feature's output
            scale (`max|output - beta| + |beta|`), std errors to the std.

    Returns:
        The layer's output as a NumPy array.

    Raises:
        AssertionError: when the output is not batch normalization of `x`;
            the message names the worst feature with expected and actual
            mean and std.

    Example:
        ```python
        import keras
        import numpy as np
        from keras_bn_tools.testing import assert_normalizes

        x = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype("float32")
        assert_normalizes(keras.layers.BatchNormalization(), x)
        ```
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"`x` must have at least two rows and two axes, got shape {x.shape}.")
    output = layer(x, training=training)
    default_atol, default_rtol = default_tolerances(getattr(output, "dtype", np.float32))
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    returned = to_numpy(output)
    y = returned.astype(np.float64)
    subject = read_subject(layer)
    if y.shape != x.shape:
        raise AssertionError(
            f"{subject.name} changed the shape of its input: got {y.shape}, expected {x.shape}."
        )
    check = NormalizationCheck(subject, x, y, _layer_axis(subject, axis), bool(training))
    badness = check.badness(atol, rtol)
    if np.all(badness <= 1.0):
        return returned
    raise AssertionError(check.report(badness))


def _close(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, scale: np.ndarray):
    return np.abs(actual - expected) <= atol + rtol * scale


def assert_moving_statistics(
    layer: Any,
    batches: Iterable[Any],
    *,
    momentum: float | str | None = "layer",
    axis: int | Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Assert that training on `batches` moves the layer's moving statistics as Keras does.

    Calls `layer(batch, training=True)` for each batch and checks, after each
    one, `moving_mean` and `moving_variance` against
    `reference_moving_statistics`: `moving = momentum * moving + (1 -
    momentum) * batch_statistic` with the biased batch variance, or, with
    `momentum=None`, the cumulative average since the last reset (counting
    the layer's `num_batches_tracked`, if any). A layer with
    `trainable=False` must leave them unchanged.

    Not for layers with bias-corrected (`debias=True`) averages or with ghost
    batches smaller than a batch, whose stored statistics follow other rules;
    those raise `ValueError`.

    Args:
        layer: a Keras BN-like layer with `moving_mean` and `moving_variance`.
        batches: the training batches, in order (array-likes).
        momentum: the momentum to expect; default: the layer's `momentum`.
        axis: the feature axis; default: the layer's `axis`, else -1.
        atol: absolute tolerance; default by the statistics' dtype.
        rtol: relative tolerance; default by the statistics' dtype.

    Returns:
        The layer's `(moving_mean, moving_variance)` after each batch.

    Raises:
        AssertionError: naming the batch, statistic and worst feature, with
            the expected and actual values (and a hint when the values match
            a known bug: momentum the wrong way round, unbiased variance).

    Example:
        ```python
        import keras
        import numpy as np
        from keras_bn_tools.testing import assert_moving_statistics

        rng = np.random.default_rng(0)
        data = [rng.normal(size=(16, 3)).astype("float32") for _ in range(3)]
        assert_moving_statistics(keras.layers.BatchNormalization(momentum=0.9), data)
        ```
    """
    batches = [np.asarray(b) for b in batches]
    if not batches:
        raise ValueError("`batches` must hold at least one batch.")
    subject, momentum = _moving_statistics_subject(layer, batches, momentum)

    def read_moving() -> tuple[np.ndarray, np.ndarray]:
        mean, variance = subject.read_moving()
        return mean.reshape(-1), variance.reshape(-1)

    axes = normalize_axes(_layer_axis(subject, axis), batches[0].ndim)
    default_atol, default_rtol = default_tolerances(subject.statistics_dtype)
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)

    previous = read_moving()
    history = []
    for index, batch in enumerate(batches):
        layer(batch, training=True)
        actual = read_moving()
        history.append(actual)
        if subject.trainable:
            expected = reference_moving_statistics(
                [batch],
                momentum,
                axis=axes,
                moving_mean=previous[0],
                moving_variance=previous[1],
                num_batches_tracked=subject.num_batches_tracked + index,
            )[0]
        else:
            expected = previous
        batch_stats = reference_moments(batch, axis=axes)
        for k in (0, 1):
            scale = np.maximum.reduce(
                [np.abs(expected[k]), np.abs(previous[k]), np.abs(batch_stats[k])]
            )
            if _close(actual[k], expected[k], atol, rtol, scale).all():
                continue
            raise AssertionError(
                _update_report(
                    subject,
                    momentum,
                    (index, len(batches), batch),
                    k,
                    (actual, expected, previous, batch_stats),
                    (atol, rtol, scale),
                )
            )
        previous = actual
    return history


def _moving_statistics_subject(
    layer: Any, batches: list[np.ndarray], momentum: Any
) -> tuple[Subject, Any]:
    """The built layer as `assert_moving_statistics` sees it, and the momentum to expect;
    raises for what the assertion does not model."""
    if not getattr(layer, "built", True):
        layer(batches[0], training=False)  # builds without touching the statistics
    subject = read_subject(layer)
    if subject.debias:
        raise ValueError(
            f"{subject.name} uses debias=True; assert_moving_statistics does not model it."
        )
    ghost = subject.virtual_batch_size
    if ghost is not None and any(int(ghost) < b.shape[0] for b in batches):
        raise ValueError(
            f"{subject.name} uses ghost batches (virtual_batch_size={ghost}) smaller than the "
            "batches; assert_moving_statistics does not model them."
        )
    if momentum == "layer":
        momentum = subject.momentum
    if subject.read_moving() is None:
        raise TypeError(f"{subject.name} has no `moving_mean`/`moving_variance` to check.")
    return subject, momentum


def _update_report(
    subject: Subject,
    momentum: float | None,
    where: tuple[int, int, np.ndarray],
    k: int,
    values: tuple[Any, Any, Any, Any],
    tolerance: tuple[float, float, np.ndarray],
) -> str:
    """The failure message for moving statistic `k` (0: mean, 1: variance) after batch
    `where = (index, count, batch)`; `values` = (actual, expected, previous, batch moments)."""
    index, count, batch = where
    actual, expected, previous, batch_stats = values
    atol, rtol, scale = tolerance
    stat = ("moving_mean", "moving_variance")[k]
    ok = _close(actual[k], expected[k], atol, rtol, scale)
    error = ratio(np.abs(actual[k] - expected[k]), atol + rtol * scale)
    worst = int(np.argmax(error))
    rule = _update_rule(subject.trainable, momentum)
    lines = [
        f"{subject.name}: `{stat}` is wrong after batch {index + 1} of {count} "
        f"(momentum={momentum}, batch shape {batch.shape}); "
        f"{int((~ok).sum())} feature(s) off.",
        f"Worst feature {worst}: previous {fmt(previous[k][worst])}, batch "
        f"{'mean' if k == 0 else 'variance (biased)'} {fmt(batch_stats[k][worst])}",
        f"  expected {fmt(expected[k][worst])} ({rule}), got {fmt(actual[k][worst])}",
    ]
    if subject.trainable and momentum is not None:
        lines += _known_bug_hints(
            k, batch, actual, previous, batch_stats, momentum, (atol, rtol, scale)
        )
    return "\n".join(lines)


def _update_rule(trainable: bool, momentum: float | None) -> str:
    """The rule a moving statistic follows, in words."""
    if not trainable:
        return "unchanged: the layer is not trainable"
    if momentum is None:
        return "cumulative average"
    return f"{momentum} * previous + (1 - {momentum}) * batch"


def _known_bug_hints(
    k: int,
    batch: np.ndarray,
    actual: tuple[np.ndarray, np.ndarray],
    previous: tuple[np.ndarray, np.ndarray],
    batch_stats: tuple[np.ndarray, np.ndarray],
    momentum: float,
    tolerance: tuple[float, float, np.ndarray],
) -> list[str]:
    """Hints for statistic `k` (0: mean, 1: variance) matching a known bug's rule."""
    hints = []
    swapped = (1.0 - momentum) * previous[k] + momentum * batch_stats[k]
    if _close(actual[k], swapped, *tolerance).all():
        hints.append(
            "  hint: matches momentum the wrong way round "
            "(moving = momentum * batch + (1 - momentum) * moving)"
        )
    if k == 1:
        n = batch.size // batch_stats[1].size
        unbiased = batch_stats[1] * n / max(n - 1, 1)
        guess = momentum * previous[1] + (1.0 - momentum) * unbiased
        if n > 1 and _close(actual[k], guess, *tolerance).all():
            hints.append("  hint: matches the unbiased (n - 1) batch variance")
    return hints
