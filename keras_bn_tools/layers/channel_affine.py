"""`ChannelAffine`: a fixed per-channel affine map, what `fold_batchnorm` leaves of a BN layer."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_bn_tools._validation import check_channel_axis

__all__ = ["ChannelAffine"]


@keras.saving.register_keras_serializable(package="keras_bn_tools")
class ChannelAffine(keras.layers.Layer):
    """A fixed per-channel affine map, `outputs = inputs * scale + offset`.

    `scale` and `offset` are vectors along `axis`, broadcast over every other
    axis. `fold_batchnorm` puts one where a batch normalization layer cannot
    be merged into a neighbour; it computes exactly what that BN layer
    computes at inference, with no notion of batch statistics.

    Args:
        axis: the channel axis (an integer, negative counts from the end).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Weights: `scale` (initialized to ones) and `offset` (zeros), each of shape
    `(channels,)`.
    """

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"`axis` must be an integer, got {axis!r} ({type(axis).__name__}).")
        self.axis = int(axis)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        rank = len(input_shape)
        channels = check_channel_axis(self.axis, input_shape)
        self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones")
        self.offset = self.add_weight(name="offset", shape=(channels,), initializer="zeros")
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})

    def call(self, inputs: Any, mask: Any = None) -> Any:
        # `mask` passes through unchanged (`supports_masking`); accepting it lets the layer
        # stand in for a BN call recorded with a mask argument.
        del mask
        rank = len(inputs.shape)
        scale, offset = self.scale, self.offset
        if self.axis % rank != rank - 1:
            shape = [1] * rank
            shape[self.axis] = -1
            scale, offset = ops.reshape(scale, shape), ops.reshape(offset, shape)
        return inputs * ops.cast(scale, inputs.dtype) + ops.cast(offset, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis}
