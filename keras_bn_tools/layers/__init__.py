"""Normalization layers: `MomentumBatchNormalization`, `FrozenBatchNormalization`, recurrent
batch normalization and `ChannelAffine` (what `fold_batchnorm` leaves of a BN layer it cannot
merge).

Importing this package (which `import keras_bn_tools` does) registers every layer with
`keras.saving`, so a `.keras` file that holds them loads with `safe_mode=True`.
"""

from keras_bn_tools.layers.channel_affine import ChannelAffine
from keras_bn_tools.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_bn_tools.layers.momentum_batch_normalization import MomentumBatchNormalization
from keras_bn_tools.layers.recurrent import BatchNormLSTM, BatchNormLSTMCell

#: Every class this package registers with `keras.saving` (package "keras_bn_tools").
SERIALIZABLE_CLASSES = (
    BatchNormLSTM,
    BatchNormLSTMCell,
    ChannelAffine,
    FrozenBatchNormalization,
    MomentumBatchNormalization,
)

__all__ = [
    "SERIALIZABLE_CLASSES",
    "BatchNormLSTM",
    "BatchNormLSTMCell",
    "ChannelAffine",
    "FrozenBatchNormalization",
    "MomentumBatchNormalization",
]
