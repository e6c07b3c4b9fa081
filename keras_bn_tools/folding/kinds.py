"""The layer kinds folding knows, and how a per-channel affine map moves through them.

A BN layer at inference is `y = s * x + t` per channel. It merges into a
linear layer on either side, and passes through some layers unchanged in form
(dropout at inference, pooling, `Flatten`); `through` says what it becomes on
the other side of such a layer, or why it cannot pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

__all__ = [
    "DEPTHWISE_TYPES",
    "LINEAR_TYPES",
    "SEPARABLE_TYPES",
    "TRANSPOSED_TYPES",
    "Pending",
    "channel_axis",
    "describe",
    "is_linear_activation",
    "is_plain",
    "through",
]

# A BN folds into these from either side ...
LINEAR_TYPES = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
# ... and into these only when it follows them (their output channels are plain).
DEPTHWISE_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
SEPARABLE_TYPES = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
# A transposed convolution's output channels are plain too; on its input side the
# number of kernel taps that reach an output position varies, so a shift `t`
# would add a position-dependent bias.
TRANSPOSED_TYPES = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
# Identities at inference: a per-channel affine map passes through unchanged.
_INFERENCE_IDENTITIES = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.Identity,
)
_MAX_POOLS = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
# Average pooling weights sum to one (padded positions are not counted), so an
# affine map commutes with it whatever the sign of the scale.
_AVG_POOLS = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
_GLOBAL_MAX_POOLS = (
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_GLOBAL_AVG_POOLS = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)


@dataclass
class Pending:
    """A per-channel affine map `s * x + t` along `axis` of a tensor of `shape`."""

    scale: np.ndarray
    offset: np.ndarray
    axis: int
    shape: tuple[int | None, ...]


def describe(layer: Any) -> str:
    """`'name' (Class)`, how reasons name a layer."""
    return f"{layer.name!r} ({type(layer).__name__})"


def channel_axis(layer: keras.layers.Layer, rank: int) -> int:
    """The channel axis of `layer`'s tensors of rank `rank` (its `data_format`)."""
    # Layers without a data_format (Dense, Flatten) have their features last.
    data_format = getattr(layer, "data_format", "channels_last")
    return 1 if data_format == "channels_first" else rank - 1


def is_plain(layer: keras.layers.Layer) -> bool:
    """A Dense/convolution layer whose call is exactly `activation(linear(x) + bias)`."""
    # Quantized and LoRA-enabled layers compute something else from their kernel;
    # plain Keras layers have these attributes, subclasses (excluded by type) need not.
    return (
        type(layer) in LINEAR_TYPES + DEPTHWISE_TYPES + SEPARABLE_TYPES + TRANSPOSED_TYPES
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
    )


def is_linear_activation(layer: keras.layers.Layer) -> bool:
    return layer.activation is keras.activations.linear  # also what activation=None gives


def through(
    layer: keras.layers.Layer, pending: Pending, out_shape: tuple[int | None, ...]
) -> tuple[Pending | None, str]:
    """The map on `layer`'s output equivalent to `pending` on its input, or why none is."""
    kind = type(layer)
    name = describe(layer)
    rank = len(pending.shape)
    out_shape = tuple(out_shape)
    if kind in _INFERENCE_IDENTITIES:
        return Pending(pending.scale, pending.offset, pending.axis, out_shape), ""
    pools = _MAX_POOLS + _AVG_POOLS + _GLOBAL_MAX_POOLS + _GLOBAL_AVG_POOLS
    if kind in pools:
        if channel_axis(layer, rank) != pending.axis:
            return None, f"{name} pools along the BN axis {pending.axis}"
        if kind in _MAX_POOLS + _GLOBAL_MAX_POOLS and np.any(pending.scale < 0):
            return None, f"{name} is a max pooling and the BN has a negative scale"
        axis = pending.axis if len(out_shape) == rank else len(out_shape) - 1
        return Pending(pending.scale, pending.offset, axis, out_shape), ""
    if kind is keras.layers.Flatten:
        return _through_flatten(layer, pending, out_shape)
    return None, f"it feeds {name}, which the BN map cannot be moved through"


def _through_flatten(
    layer: keras.layers.Flatten, pending: Pending, out_shape: tuple[int | None, ...]
) -> tuple[Pending | None, str]:
    features = pending.shape[1:]
    if any(d is None for d in features):
        return None, f"{describe(layer)} flattens a tensor of unknown shape {pending.shape}"
    broadcast = [1] * len(features)
    broadcast[pending.axis - 1] = -1

    def flat(vector: np.ndarray) -> np.ndarray:
        full = np.broadcast_to(vector.reshape(broadcast), features)
        if layer.data_format == "channels_first" and full.ndim > 1:
            full = np.moveaxis(full, 0, -1)
        return np.ascontiguousarray(full).reshape(-1)

    return Pending(flat(pending.scale), flat(pending.offset), 1, out_shape), ""
