"""The moving-average rules of `MomentumBatchNormalization`, as small functions.

Every moving statistic is updated as `moving = moving * keep + batch * take`:

- exponential (`momentum=m`): `keep = m`, `take = 1 - m`;
- cumulative (`momentum=None`): `keep = n / (n + 1)`, `take = 1 / (n + 1)` after
  `n` batches, the arithmetic mean of every batch;
- bias-corrected (`debias=True`): the same average of a zero-started
  accumulator, divided by the same average of ones (`1 - prod(momenta)`).

The momentum lives in three float32 variables (`momentum`, `1 - momentum`, a
cumulative flag), so assigning a new one changes a compiled step without
retracing; `1 - momentum` is computed in double precision and stored, so the
update uses exactly the float32 constants `keras.layers.BatchNormalization` uses.
A `finite` flag (None: no guard) keeps every variable's old value for a batch
whose statistics are not finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras import ops

__all__ = ["blend", "debiased_update", "guarded_assign", "momentum_numbers", "update_weights"]


def momentum_numbers(momentum: float | None) -> tuple[float, float, float]:
    """(momentum, 1 - momentum, cumulative flag) as stored in the momentum variables."""
    if momentum is None:
        return (1.0, 0.0, 1.0)
    return (momentum, 1.0 - momentum, 0.0)


def update_weights(momentum_variables: Sequence[Any], count: Any, dtype: str) -> tuple[Any, Any]:
    """`(keep, take)` of this step's update, from the momentum variables and the batch count."""
    momentum, complement, cumulative = (ops.cast(v, dtype) for v in momentum_variables)
    inverse_count = 1.0 / (ops.cast(count, dtype) + 1.0)
    cumulative = ops.greater(cumulative, 0.5)
    keep = ops.where(cumulative, 1.0 - inverse_count, momentum)
    take = ops.where(cumulative, inverse_count, complement)
    return keep, take


def guarded_assign(variable: Any, value: Any, finite: Any, old: Any = None) -> Any:
    """Assign `value`, or keep the old value where `finite` is False; return what was assigned."""
    if finite is not None:
        if old is None:
            old = ops.cast(variable, value.dtype)
        value = ops.where(finite, value, old)
    variable.assign(value)
    return value


def blend(variable: Any, value: Any, keep: Any, take: Any, finite: Any) -> Any:
    """`variable = variable * keep + value * take` (guarded by `finite`); return it."""
    old = ops.cast(variable, value.dtype)
    return guarded_assign(variable, old * keep + value * take, finite, old)


def debiased_update(
    tracked: Sequence[tuple[Any, Any]],
    accumulators: Sequence[Any],
    correction_variable: Any,
    keep: Any,
    take: Any,
    finite: Any,
) -> list[Any]:
    """Bias-corrected moving averages: each `(variable, batch value)` of `tracked` gets
    `accumulator / correction`, where the accumulator is the zero-started average of the
    batch values and the correction the same average of ones. Returns the new values."""
    dtype = tracked[0][1].dtype
    old_correction = ops.cast(correction_variable, dtype)
    correction = old_correction * keep + take
    guarded_assign(correction_variable, correction, finite, old_correction)
    # False while every momentum so far was 1: nothing averaged yet.
    averaged = ops.greater(correction, 0.0)
    correction = ops.where(averaged, correction, 1.0)
    new_values = []
    for accumulator, (variable, value) in zip(accumulators, tracked, strict=True):
        biased = blend(accumulator, value, keep, take, finite)
        old = ops.cast(variable, dtype)
        debiased = ops.where(averaged, biased / correction, old)
        new_values.append(guarded_assign(variable, debiased, finite, old))
    return new_values
