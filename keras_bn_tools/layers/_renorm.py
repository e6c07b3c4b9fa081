"""Batch renormalization (Ioffe, 2017) for `MomentumBatchNormalization`, as tf.keras 2
and Keras >= 3.10 compute it.

In training the normalized batch is corrected by `r = clip(std / renorm_std)` and
`d = clip((mean - renorm_mean) / renorm_std)` (both without gradient); the renorm
statistics are moving averages with `renorm_momentum`, and the inference
statistics track the mean and the standard deviation, from which
`moving_variance = relu(moving_stddev**2 - epsilon)` is derived.
"""

from __future__ import annotations

from typing import Any

from keras import ops

__all__ = ["renorm_affine", "renormalized_variance"]


def renorm_affine(
    mean: Any,
    variance: Any,
    gamma: Any,
    beta: Any,
    *,
    renorm_mean: Any,
    renorm_stddev: Any,
    epsilon: float,
    clipping: dict[str, Any],
) -> tuple[Any, Any]:
    """The scale and offset of `(x_hat * r + d) * gamma + beta` as one affine map.

    `clipping` maps `"rmin"`, `"rmax"`, `"dmax"` to a limit (a float or a
    scalar tensor) or None (no clipping on that side).
    """
    dtype = mean.dtype
    stddev = ops.sqrt(variance + epsilon)
    renorm_mean = ops.cast(renorm_mean, dtype)
    # Avoid dividing by zero early in training (as tf.keras 2 and Keras do).
    renorm_stddev = ops.maximum(ops.cast(renorm_stddev, dtype), ops.sqrt(ops.cast(epsilon, dtype)))
    r = ops.divide(stddev, renorm_stddev)
    d = ops.divide(ops.subtract(mean, renorm_mean), renorm_stddev)
    rmin, rmax, dmax = (clipping.get(key) for key in ("rmin", "rmax", "dmax"))
    if rmin is not None:
        r = ops.maximum(r, ops.cast(rmin, dtype))
    if rmax is not None:
        r = ops.minimum(r, ops.cast(rmax, dtype))
    if dmax is not None:
        dmax = ops.cast(dmax, dtype)
        d = ops.clip(d, -dmax, dmax)
    r = ops.stop_gradient(r)
    d = ops.stop_gradient(d)
    # (x_hat * r + d) * gamma + beta = x_hat * (r * gamma) + (d * gamma + beta)
    if gamma is not None:
        new_gamma, new_beta = r * gamma, d * gamma
    else:
        new_gamma, new_beta = r, d
    if beta is not None:
        new_beta = new_beta + beta
    return new_gamma, new_beta


def renormalized_variance(moving_stddev: Any, epsilon: float) -> Any:
    """`moving_variance` derived from the tracked standard deviation; relu guards round-off."""
    return ops.relu(ops.square(moving_stddev) - epsilon)
