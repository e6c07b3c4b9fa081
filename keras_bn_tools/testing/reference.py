"""A plain NumPy (float64) reference for batch normalization.

Written for clarity, not speed: the definitions of Ioffe & Szegedy (2015) with
Keras's conventions (biased batch variance; `moving = momentum * moving +
(1 - momentum) * batch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from keras_bn_tools._validation import check_float_array, check_nonnegative_float

__all__ = [
    "normalize_axes",
    "reference_batchnorm",
    "reference_moments",
    "reference_moving_statistics",
]


def normalize_axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """The feature axes `axis` (an int or a sequence of ints) as sorted non-negative ints."""
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        axes = (axis,)
    elif isinstance(axis, Sequence) and not isinstance(axis, str):
        axes = tuple(axis)
    else:
        raise TypeError(f"`axis` must be an int or a sequence of ints, got {axis!r}.")
    if not axes or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"`axis` must be an int or a non-empty sequence of ints, got {axis!r}.")
    out = []
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"`axis` {axis!r} is out of bounds for an input of rank {ndim}.")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`axis` {axis!r} names the same axis twice.")
    return tuple(sorted(out))


def _feature_shape(x: np.ndarray, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Shape that broadcasts a per-feature vector against `x`."""
    return tuple(x.shape[i] if i in axes else 1 for i in range(x.ndim))


def _per_feature(value: Any, x: np.ndarray, axes: tuple[int, ...], default: float, name: str):
    shape = _feature_shape(x, axes)
    if value is None:
        return np.full(shape, default, dtype=np.float64)
    array = check_float_array(name, value)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if name == "moving_variance" and (array < 0).any():
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    size = int(np.prod([x.shape[i] for i in axes]))
    if array.size not in (1, size):
        raise ValueError(
            f"`{name}` has {array.size} values but the input has {size} features "
            f"(shape {x.shape}, axis {axes})."
        )
    return np.broadcast_to(array.reshape(-1), (size,)).reshape(shape)


def reference_moments(x: Any, *, axis: int | Sequence[int] = -1) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature batch mean and biased variance of `x`, in float64.

    Args:
        x: array-like input.
        axis: the feature axis (or axes); the statistics reduce over all others.

    Returns:
        `(mean, variance)`, each a 1-D array with one entry per feature.
    """
    x = check_float_array("x", x)
    axes = normalize_axes(axis, x.ndim)
    reduce = tuple(i for i in range(x.ndim) if i not in axes)
    mean = x.mean(axis=reduce)
    variance = x.var(axis=reduce)  # ddof=0: the biased variance BN uses
    return mean.reshape(-1), variance.reshape(-1)


def reference_batchnorm(
    x: Any,
    *,
    axis: int | Sequence[int] = -1,
    gamma: Any = None,
    beta: Any = None,
    epsilon: float = 1e-3,
    training: bool = True,
    moving_mean: Any = None,
    moving_variance: Any = None,
) -> np.ndarray:
    """Batch normalization of `x` computed in float64 NumPy.

    `gamma * (x - mean) / sqrt(variance + epsilon) + beta`, where in training
    `mean` and `variance` are the batch statistics over every axis except
    `axis` (biased variance, as Keras and the original paper use), and in
    inference the given moving statistics.

    Args:
        x: array-like input of rank >= 2.
        axis: the feature axis (or axes).
        gamma: per-feature scale (or a scalar); `None` means 1.
        beta: per-feature offset (or a scalar); `None` means 0.
        epsilon: added to the variance.
        training: use batch statistics (`True`) or the moving ones (`False`).
        moving_mean: per-feature moving mean, required when `training=False`.
        moving_variance: per-feature moving variance, required when
            `training=False`.

    Returns:
        A float64 array of the shape of `x`.

    Raises:
        ValueError: for a bad axis, mismatched per-feature sizes, or
            `training=False` without moving statistics.

    Example:
        ```python
        import numpy as np
        from keras_bn_tools.testing import reference_batchnorm

        y = reference_batchnorm(np.array([[0.0], [2.0]]), epsilon=0.0)
        assert np.allclose(y, [[-1.0], [1.0]])
        ```
    """
    x = check_float_array("x", x)
    if x.ndim < 1:
        raise ValueError(f"`x` must have at least one axis, got shape {x.shape}.")
    axes = normalize_axes(axis, x.ndim)
    epsilon = check_nonnegative_float("epsilon", epsilon)
    if training:
        mean, variance = reference_moments(x, axis=axes)
    else:
        if moving_mean is None or moving_variance is None:
            raise ValueError(
                "`training=False` needs `moving_mean` and `moving_variance` (inference "
                "normalizes with the moving statistics)."
            )
        mean, variance = moving_mean, moving_variance
    mean_name, variance_name = ("x", "x") if training else ("moving_mean", "moving_variance")
    mean = _per_feature(mean, x, axes, 0.0, mean_name)
    variance = _per_feature(variance, x, axes, 1.0, variance_name)
    gamma = _per_feature(gamma, x, axes, 1.0, "gamma")
    beta = _per_feature(beta, x, axes, 0.0, "beta")
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def reference_moving_statistics(
    batches: Iterable[Any],
    momentum: float | None,
    *,
    axis: int | Sequence[int] = -1,
    moving_mean: Any = 0.0,
    moving_variance: Any = 1.0,
    num_batches_tracked: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Moving mean and variance after each of `batches`, Keras's update rule in float64.

    With a float `momentum`: `moving = momentum * moving + (1 - momentum) *
    batch_statistic`. With `momentum=None`, the cumulative (true) average of
    every batch statistic since the last reset, `num_batches_tracked` batches
    of which are already in `moving_*`.

    Args:
        batches: the training batches, in order.
        momentum: a float in [0, 1], or None for a cumulative average.
        axis: the feature axis (or axes).
        moving_mean: the moving mean before the first batch.
        moving_variance: the moving variance before the first batch.
        num_batches_tracked: batches already averaged (`momentum=None` only).

    Returns:
        `[(moving_mean, moving_variance), ...]`, one pair per batch.
    """
    mean = np.asarray(moving_mean, dtype=np.float64)
    variance = np.asarray(moving_variance, dtype=np.float64)
    count = int(num_batches_tracked)
    history = []
    for batch in batches:
        batch_mean, batch_variance = reference_moments(batch, axis=axis)
        if momentum is None:
            count += 1
            mean = mean + (batch_mean - mean) / count
            variance = variance + (batch_variance - variance) / count
        else:
            mean = momentum * mean + (1.0 - momentum) * batch_mean
            variance = momentum * variance + (1.0 - momentum) * batch_variance
        mean = np.broadcast_to(mean, batch_mean.shape).copy()
        variance = np.broadcast_to(variance, batch_variance.shape).copy()
        history.append((mean, variance))
    return history
