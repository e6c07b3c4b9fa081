"""Ghost batch normalization (Hoffer et al., 2017) for `MomentumBatchNormalization`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

from keras_bn_tools.ops import ghost_moments, ungroup

__all__ = ["ghost_batch_normalization"]


def ghost_batch_normalization(
    inputs: Any,
    virtual_batch_size: int,
    *,
    axis: int,
    epsilon: float,
    gamma: Any,
    beta: Any,
    mask: Any = None,
    correct_affine: Callable[[Any, Any, Any, Any], tuple[Any, Any]] | None = None,
) -> tuple[Any, Any, Any]:
    """Normalize each virtual batch of `inputs` with its own statistics.

    Args:
        inputs: the batch (float32 or wider), batch axis 0, feature axis `axis`.
        virtual_batch_size: samples per virtual batch; a last, smaller one
            is normalized with its own statistics.
        axis: the feature axis.
        epsilon: added to the variance.
        gamma, beta: per-feature scale and offset, or None.
        mask: optional Keras BN mask.
        correct_affine: `(mean, variance, gamma, beta) -> (gamma, beta)` applied
            with the aggregated statistics (batch renormalization).

    Returns:
        `(outputs, mean, variance)`: the aggregated statistics are the
        sample-weighted averages of the group means and group variances.
    """
    rank = len(inputs.shape)
    stats = ghost_moments(inputs, virtual_batch_size, axis=axis, mask=mask)
    if correct_affine is not None:
        gamma, beta = correct_affine(stats.mean, stats.variance, gamma, beta)
    feature_shape = [1] * (rank + 1)
    feature_shape[axis % rank + 1] = -1
    scale = ops.rsqrt(stats.group_variance + epsilon)
    if gamma is not None:
        scale = scale * ops.reshape(gamma, feature_shape)
    normalized = (stats.grouped - stats.group_mean) * scale
    if beta is not None:
        normalized = normalized + ops.reshape(beta, feature_shape)
    outputs = ungroup(normalized, ops.shape(inputs)[0])
    return outputs, stats.mean, stats.variance
