"""Normalization layers: `MomentumBatchNormalization` and recurrent batch normalization.

Importing this package registers every layer with `keras.saving`, so a `.keras`
file that holds them loads after `import keras_bn_tools.layers`.
"""

from keras_bn_tools.layers.momentum_batch_normalization import MomentumBatchNormalization
from keras_bn_tools.layers.recurrent import BatchNormLSTM, BatchNormLSTMCell

__all__ = ["BatchNormLSTM", "BatchNormLSTMCell", "MomentumBatchNormalization"]
