"""Keras callbacks for batch normalization experiments.

- `MovingStatsTracker`: record BN moving statistics, gamma and beta during training.
- `MomentumScheduler`: change `MomentumBatchNormalization.momentum` epoch by epoch.
- `RecalibrateBatchNorm`: recompute exact ("precise BN") statistics during or after training.
"""

from __future__ import annotations

from keras_bn_tools.callbacks.momentum import MomentumScheduler
from keras_bn_tools.callbacks.moving_stats import MovingStatsLog, MovingStatsTracker
from keras_bn_tools.callbacks.recalibrate import RecalibrateBatchNorm

__all__ = ["MomentumScheduler", "MovingStatsLog", "MovingStatsTracker", "RecalibrateBatchNorm"]
