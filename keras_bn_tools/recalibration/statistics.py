"""Accumulators of a BN layer's input statistics, and the hook that feeds them.

- `PopulationMoments` (`method="exact"`): the mean and population variance
  (ddof=0) of every value a layer sees, merged batch by batch in float64.
- `PooledBatchMoments` (`method="single_pass"`): population statistics pooled
  from the per-batch moments, each batch weighted by its size, as fvcore's
  precise BN computes them; the per-batch moments stay on the device.

Both leave out a batch whose statistics are not finite (NaN or inf) and count it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_bn_tools.ops import compute_dtype, count_values, moments, to_numpy

__all__ = ["PooledBatchMoments", "PopulationMoments", "StopForward", "input_moments", "intercept"]


def _float64(tensor: Any) -> np.ndarray:
    return np.asarray(to_numpy(tensor), dtype=np.float64)


def input_moments(inputs: Any, mask: Any, axis: int, shift: Any = None):
    """Per-feature `(count, mean, variance, reduced axes)` of a BN layer's input.

    `ops.moments` of `inputs - shift` (float32 or wider) over every axis but
    `axis`, with `keepdims=True`; `mask` follows Keras's BN convention.
    `count` is the number of values per feature: a Python float for an
    unmasked input of static shape, else a scalar tensor.
    """
    x = keras.ops.convert_to_tensor(inputs)
    x = keras.ops.cast(x, compute_dtype(x.dtype))
    if shift is not None:
        x = x - shift
    rank = len(x.shape)
    axes = tuple(i for i in range(rank) if i != axis % rank)
    mean, variance = moments(x, axes, mask=mask, keepdims=True)
    count = count_values(x, axes, mask=mask)
    if mask is not None:  # the mask is the same for every feature
        count = keras.ops.max(count)
    return count, mean, variance, axes


class PopulationMoments:
    """Exact mean and population variance (ddof=0) of a BN layer's input, batch by batch.

    Per batch, the mean and the two-pass variance of `x - shift` are computed
    with backend ops in (at least) float32, where `shift` is the first batch's
    mean: subtracting a value close to the data keeps the float32 round-off
    relative to the spread of the data rather than to its offset. Batches are
    merged in float64 with Chan et al.'s parallel update. A batch with a
    non-finite statistic is left out and counted in `skipped`.
    """

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.count = 0.0
        self.skipped = 0
        self.batches = 0  # batches merged (finite, with at least one value)
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self._shift = None
        self._shift64: np.ndarray | None = None

    def add_batch(self, inputs: Any, mask: Any = None) -> None:
        ops = keras.ops
        if self._shift is None:
            _, shift, _, axes = input_moments(inputs, mask, self.axis)
            shift64 = _float64(ops.squeeze(shift, axes))
            if not np.isfinite(shift64).all():
                self.skipped += 1
                return
            self._shift, self._shift64 = shift, shift64
        count, mean, variance, axes = input_moments(inputs, mask, self.axis, self._shift)
        count = float(to_numpy(count))
        if count == 0:
            return
        mean64 = self._shift64 + _float64(ops.squeeze(mean, axes))
        variance64 = _float64(ops.squeeze(variance, axes))
        if not (np.isfinite(mean64).all() and np.isfinite(variance64).all()):
            self.skipped += 1
            return
        self._merge(count, mean64, variance64)
        self.batches += 1

    def _merge(self, count: float, mean: np.ndarray, variance: np.ndarray) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, variance * count
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + variance * count + delta * delta * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / self.count


class PooledBatchMoments:
    """Population statistics pooled from per-batch moments (fvcore's precise BN).

    fvcore's `_PopulationVarianceEstimator` (Wu & Johnson, 2021, "Rethinking
    'Batch' in BatchNorm", appendix): the batches are combined as one
    population, each weighted by its number of values `n_b`, and the variance
    includes the spread of the batch means:

        mean = sum_b n_b m_b / N
        variance = sum_b n_b (v_b + (m_b - mean)^2) / N

    with `m_b`, `v_b` the batch's mean and biased variance (ddof=0, what
    Keras's BN normalizes with) and `N = sum_b n_b`. When every batch is the
    raw input, this is exactly the mean and population variance of all the
    values, whatever the batch sizes. The per-batch statistics stay backend
    tensors until `result()` (no device-to-host copy per batch), and are pooled
    in float64; a batch whose statistics are not finite is left out and counted.
    """

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self._batches: list[tuple[Any, Any, Any]] = []

    @property
    def batches(self) -> int:
        """Batches added so far (finite or not)."""
        return len(self._batches)

    def add(self, mean: Any, variance: Any, count: Any) -> None:
        """Add one batch's per-feature `mean` and biased `variance` over `count` values."""
        self._batches.append((mean, variance, count))

    def result(self) -> tuple[np.ndarray | None, np.ndarray | None, int, int, int]:
        """(mean, variance, batches used, batches skipped, values used); means None if none."""
        if not self._batches:
            return None, None, 0, 0, 0
        means = np.stack([_float64(m).reshape(-1) for m, _, _ in self._batches])
        variances = np.stack([_float64(v).reshape(-1) for _, v, _ in self._batches])
        counts = np.array([float(to_numpy(c)) for _, _, c in self._batches])
        kept = np.isfinite(means).all(axis=1) & np.isfinite(variances).all(axis=1) & (counts > 0)
        used, skipped = int(kept.sum()), int((~kept).sum())
        if used == 0:
            return None, None, 0, skipped, 0
        means, variances, counts = means[kept], variances[kept], counts[kept]
        weights = (counts / counts.sum())[:, None]
        mean = (weights * means).sum(axis=0)
        variance = (weights * (variances + np.square(means - mean))).sum(axis=0)
        return mean, variance, used, skipped, round(float(counts.sum()))


class StopForward(Exception):
    """Raised inside an intercepted BN call to end a forward pass early."""


@contextlib.contextmanager
def intercept(layer: keras.layers.Layer, hook: Callable[..., Any]):
    """Temporarily route `layer.call(inputs, ...)` through `hook(original, inputs, ...)`.

    The instance attribute shadows the class's `call`; Keras's `__call__`
    and wrappers such as `TimeDistributed` (which calls `layer.call`) both
    reach it.
    """
    original = layer.call
    previous = vars(layer).get("call", None)

    def call(inputs, *args, **kwargs):
        return hook(original, inputs, *args, **kwargs)

    object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        if previous is None:
            object.__delattr__(layer, "call")
        else:
            object.__setattr__(layer, "call", previous)
