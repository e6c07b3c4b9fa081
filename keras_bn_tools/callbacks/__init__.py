"""Keras callbacks for batch normalization experiments.

- `ActivationTracker`: record percentiles of each nonlinearity's input on a fixed probe batch.
- `MovingStatsTracker`: record BN moving statistics, gamma and beta during training.
- `MomentumScheduler`: change `MomentumBatchNormalization.momentum` epoch by epoch.
- `RenormScheduler`: change batch renorm's clipping limits during training
  (`PaperRenormSchedule`: the paper's schedule, scaled to the run).
- `RecalibrateBatchNorm`: recompute exact ("precise BN") statistics during or after training.
"""

from __future__ import annotations

from keras_bn_tools.callbacks.activations import ActivationLog, ActivationTracker
from keras_bn_tools.callbacks.momentum import MomentumScheduler
from keras_bn_tools.callbacks.moving_stats import MovingStatsLog, MovingStatsTracker
from keras_bn_tools.callbacks.recalibrate import RecalibrateBatchNorm
from keras_bn_tools.callbacks.renorm import PaperRenormSchedule, RenormScheduler

__all__ = [
    "ActivationLog",
    "ActivationTracker",
    "MomentumScheduler",
    "MovingStatsLog",
    "MovingStatsTracker",
    "PaperRenormSchedule",
    "RecalibrateBatchNorm",
    "RenormScheduler",
]
