"""Fold batch normalization into adjacent layers for inference.

At inference a batch normalization layer is a fixed per-channel affine map,
`y = s * x + t` with `s = gamma / sqrt(moving_variance + epsilon)` and
`t = beta - moving_mean * s`. `fold_batchnorm` merges that map into the
kernel and bias of a neighbouring `Dense` or convolution layer wherever the
result is exact, and replaces every other BN layer with a
`ChannelAffine` layer holding the same numbers. The folded model never
contains a `BatchNormalization` layer and never computes anything different
from `model(x, training=False)` beyond float32 round-off.

The folded weights are computed in float64 NumPy and cast once to each
layer's variable dtype.

Modules: `kinds` (the layer kinds and how the map moves through them),
`analysis` (the plan and its reasons), `weights` (the folded weights),
`core` (`fold_batchnorm` and `plan_folding`, folding as a `graph.Policy`).
"""

from __future__ import annotations

from keras_bn_tools.folding.analysis import FoldDecision
from keras_bn_tools.folding.core import fold_batchnorm, plan_folding
from keras_bn_tools.layers.channel_affine import ChannelAffine

__all__ = ["ChannelAffine", "FoldDecision", "fold_batchnorm", "plan_folding"]
