"""The weights of a linear layer with a BN's affine map merged in, in float64."""

from __future__ import annotations

import keras
import numpy as np

from keras_bn_tools.folding.kinds import DEPTHWISE_TYPES, SEPARABLE_TYPES, TRANSPOSED_TYPES
from keras_bn_tools.ops import to_numpy

__all__ = ["folded_weights", "to_numpy64"]


def to_numpy64(value) -> np.ndarray:
    return np.asarray(to_numpy(value), dtype=np.float64)


def folded_weights(
    layer: keras.layers.Layer,
    fold_in: tuple[np.ndarray, np.ndarray] | None,
    fold_out: tuple[np.ndarray, np.ndarray] | None,
) -> list[np.ndarray]:
    """The weights of `layer` with the input-side and output-side maps merged in.

    With `fold_in = (s, t)` on the input: `W' = diag(s) W`, `b' = b + W^T t`
    (Dense/Conv only: the analysis checks that every kernel tap sees the
    whole shift). With `fold_out = (s, t)` on the output: `W' = W s`,
    `b' = b s + t`. A separable convolution's map goes into its pointwise
    kernel, a depthwise convolution's into its (in, multiplier) pairs, a
    transposed convolution's into its kernel axis -2.
    """
    separable = type(layer) in SEPARABLE_TYPES
    kernel = to_numpy64(layer.pointwise_kernel if separable else layer.kernel)
    # kernel: (in, out) for Dense, (*window, in, out) for a convolution, (*window, in,
    # multiplier) for a depthwise one, whose output channel is c * multiplier + m, and
    # (*window, out, in) for a transposed convolution.
    depthwise = type(layer) in DEPTHWISE_TYPES
    transposed = type(layer) in TRANSPOSED_TYPES
    if depthwise:
        channels = kernel.shape[-2] * kernel.shape[-1]
    else:
        channels = kernel.shape[-2] if transposed else kernel.shape[-1]
    bias = to_numpy64(layer.bias) if layer.use_bias else np.zeros(channels)
    if fold_in is not None:
        scale, offset = fold_in
        shifted = np.tensordot(kernel, offset, axes=([kernel.ndim - 2], [0]))
        bias = bias + shifted.reshape(-1, kernel.shape[-1]).sum(axis=0)
        kernel = kernel * scale[:, None]
    if fold_out is not None:
        scale, offset = fold_out
        if depthwise:
            kernel = kernel * scale.reshape(kernel.shape[-2:])
        elif transposed:
            kernel = kernel * scale[:, None]
        else:
            kernel = kernel * scale
        bias = bias * scale + offset
    if separable:
        return [to_numpy64(layer.depthwise_kernel), kernel, bias]
    return [kernel, bias]
