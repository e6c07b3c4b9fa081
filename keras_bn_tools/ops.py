"""Numeric ops of batch normalization: the one moments function and the BN affine map.

Everything the package computes about a batch's statistics goes through
`moments`: the layers' training step, ghost batches (`ghost_moments`), the
recurrent cell and the recalibration passes. It computes in float32 or wider
(BN statistics overflow in float16/bfloat16), with `keras.ops` only, so it runs
on every Keras backend. Unmasked, it is `keras.ops.moments` itself; masked, it
is the arithmetic of `keras.layers.BatchNormalization`'s masked moments, so a
layer built on it stays bit-identical to Keras's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

__all__ = [
    "GhostMoments",
    "affine_from_statistics",
    "compute_dtype",
    "count_values",
    "ghost_moments",
    "moments",
    "to_numpy",
    "ungroup",
]


def compute_dtype(dtype: Any) -> str:
    """The dtype BN statistics are computed in: `dtype` promoted to float32 at least."""
    return keras.backend.result_type(dtype, "float32")


def _broadcast_mask(x: Any, mask: Any) -> Any:
    """A boolean mask shaped like `x` from Keras's BN mask (one dimension less than `x`,
    broadcast on the last axis)."""
    if len(mask.shape) != len(x.shape) - 1:
        raise ValueError(
            "The mask provided should be one dimension less than the inputs. "
            f"Received: mask.shape={tuple(mask.shape)}, inputs.shape={tuple(x.shape)}"
        )
    return ops.cast(ops.broadcast_to(ops.expand_dims(mask, axis=-1), ops.shape(x)), "bool")


def moments(
    x: Any,
    axes: Sequence[int],
    *,
    mask: Any = None,
    keepdims: bool = False,
    synchronized: bool = False,
) -> tuple[Any, Any]:
    """Mean and (biased, ddof=0) variance of `x` over `axes`, in float32 or wider.

    The one place this package takes batch moments. `x` is first cast to
    `compute_dtype(x.dtype)`. Without a mask this is `keras.ops.moments`
    (which, with `synchronized=True` under a `tf.distribute` strategy, reduces
    over all replicas; on JAX the moments of a batch sharded by a
    `keras.distribution` are the global batch's in any case). With a mask
    (Keras's convention: one dimension less than `x`, broadcast on its last
    axis; nonzero = counted) the statistics are
    those of the unmasked values only, computed exactly as
    `keras.layers.BatchNormalization` computes them (the count gets
    `keras.backend.epsilon()` added, so an all-masked feature gives 0, not
    NaN); `synchronized` is then ignored, as in Keras.

    Args:
        x: a tensor.
        axes: the axes to reduce (the non-feature axes for BN).
        mask: optional mask, shape `x.shape[:-1]`.
        keepdims: keep the reduced axes with size 1.
        synchronized: reduce across `tf.distribute` replicas (TensorFlow; on
            JAX nothing to do, on PyTorch Keras refuses it).

    Returns:
        `(mean, variance)`, each of shape `x.shape` without `axes` (or with
        them of size 1 when `keepdims`).

    Example: `moments(np.arange(12.0).reshape(4, 3), axes=[0])` gives
    `([4.5, 5.5, 6.5], [11.25, 11.25, 11.25])`.
    """
    x = ops.convert_to_tensor(x)
    dtype = compute_dtype(x.dtype)
    if keras.backend.standardize_dtype(x.dtype) != dtype:
        x = ops.cast(x, dtype)
    axes = [int(axis) % len(x.shape) for axis in axes]
    if mask is None:
        # On JAX, a batch sharded by a keras.distribution is reduced across devices by
        # XLA's SPMD partitioner: its moments already are the global batch's.
        synchronized = synchronized and keras.backend.backend() != "jax"
        return ops.moments(x, axes=axes, keepdims=keepdims, synchronized=synchronized)
    weights = _broadcast_mask(x, mask)
    sum_of_weights = ops.sum(ops.cast(weights, dtype), axes, keepdims=True)
    denominator = sum_of_weights + keras.backend.epsilon()
    mean = ops.sum(ops.where(weights, x, 0), axes, keepdims=True) / denominator
    squared = ops.square(ops.where(weights, x - mean, 0))
    variance = ops.sum(squared, axes, keepdims=True) / denominator
    if not keepdims:
        mean, variance = ops.squeeze(mean, axis=axes), ops.squeeze(variance, axis=axes)
    return mean, variance


def count_values(x: Any, axes: Sequence[int], *, mask: Any = None, keepdims: bool = False) -> Any:
    """How many values `moments(x, axes, mask=mask)` averages per feature.

    A Python float when `x` has a static shape and no mask, else a tensor
    (shaped like the moments).
    """
    axes = [int(axis) % len(x.shape) for axis in axes]
    if mask is None:
        sizes = [x.shape[axis] for axis in axes]
        if all(isinstance(size, int) for size in sizes):
            return float(math.prod(sizes))
        shape = ops.shape(x)
        return ops.cast(math.prod(shape[axis] for axis in axes), compute_dtype(x.dtype))
    weights = ops.cast(_broadcast_mask(x, mask), compute_dtype(x.dtype))
    return ops.sum(weights, axes, keepdims=keepdims)


class GhostMoments(NamedTuple):
    """The statistics of a batch split into virtual ("ghost") batches.

    `grouped` is the batch zero-padded and reshaped to `(groups, size, ...)`;
    `group_mean` / `group_variance` are each group's moments in that layout
    (`keepdims=True`); `mean` / `variance` are per feature, the sample-weighted
    average of the group means (the full-batch mean) and of the group
    variances (the pooled within-group variance).
    """

    grouped: Any
    group_mean: Any
    group_variance: Any
    mean: Any
    variance: Any


def ghost_moments(
    x: Any, virtual_batch_size: int, *, axis: int = -1, mask: Any = None
) -> GhostMoments:
    """`moments` of each group of `virtual_batch_size` consecutive samples of `x`.

    Ghost batch normalization (Hoffer et al., 2017) normalizes each group
    with its own statistics. The batch axis is 0; a last, smaller group
    (batch size not divisible) gets its own exact statistics: padding rows are
    masked out. Works with a batch size known only at run time. A virtual
    batch larger than the batch is the whole batch.

    Args:
        x: a tensor with the batch on axis 0 and the feature axis `axis` (not 0).
        virtual_batch_size: samples per group, >= 1.
        axis: the feature axis.
        mask: optional mask, Keras's convention (shape `x.shape[:-1]`).

    Returns:
        A `GhostMoments`; `ungroup(values, batch)` maps a tensor in the
        grouped layout back to the batch.
    """
    x = ops.convert_to_tensor(x)
    dtype = compute_dtype(x.dtype)
    x = ops.cast(x, dtype)
    rank = len(x.shape)
    shape = ops.shape(x)
    batch = shape[0]
    size = virtual_batch_size
    if isinstance(batch, int):
        size = max(1, min(size, batch))  # never pad beyond the batch
    else:  # batch size known only at run time (a traced step)
        size = ops.minimum(ops.cast(batch, "int32"), min(size, 2**31 - 1))
    pad = (-batch) % size
    grouped = ops.reshape(ops.pad(x, [[0, pad]] + [[0, 0]] * (rank - 1)), (-1, size, *shape[1:]))
    # One mask in the grouped layout: padding rows (and masked positions) count 0.
    rows = ops.ones((batch, *shape[1:-1]), dtype=dtype) if mask is None else ops.cast(mask, dtype)
    group_mask = ops.reshape(
        ops.pad(rows, [[0, pad]] + [[0, 0]] * (rank - 2)), (-1, size, *shape[1:-1])
    )
    feature = axis % rank + 1  # the grouped layout adds the group axis in front
    reduction = [i for i in range(1, rank + 1) if i != feature]
    group_mean, group_variance = moments(grouped, reduction, mask=group_mask, keepdims=True)
    count = count_values(grouped, reduction, mask=group_mask, keepdims=True)
    total = ops.maximum(ops.sum(count, axis=0), 1.0)
    mean = ops.reshape(ops.sum(group_mean * count, axis=0) / total, (-1,))
    variance = ops.reshape(ops.sum(group_variance * count, axis=0) / total, (-1,))
    return GhostMoments(grouped, group_mean, group_variance, mean, variance)


def ungroup(grouped: Any, batch: Any) -> Any:
    """A tensor in `ghost_moments`' grouped layout back to the first `batch` samples."""
    shape = ops.shape(grouped)
    flat = ops.reshape(grouped, (-1, *shape[2:]))
    return flat[:batch]


def affine_from_statistics(
    mean: Any, variance: Any, epsilon: float, gamma: Any = None, beta: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inference BN as an affine map, in float64: `y = x * scale + shift`.

    `scale = gamma / sqrt(variance + epsilon)`, `shift = beta - mean * scale`
    (gamma 1 and beta 0 when absent). Float64 so that folding the map into a
    neighbour's weights adds no round-off of its own.
    """
    mean = np.asarray(mean, np.float64)
    variance = np.asarray(variance, np.float64)
    gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float64)
    scale = gamma / np.sqrt(variance + float(epsilon))
    return scale, beta - mean * scale


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a tensor or `keras.Variable`, on every backend.

    `keras.ops.convert_to_numpy` calls `np.array(tensor)`, which under NumPy 2
    warns (DeprecationWarning) for TensorFlow and PyTorch tensors, whose
    `__array__` takes no `copy` argument; `np.asarray` passes none.
    """
    tensor = ops.stop_gradient(ops.convert_to_tensor(x))
    return np.array(np.asarray(tensor))
