"""Precise batch normalization: recompute BN moving statistics from data.

During training a BN layer keeps an exponential moving average of the batch
statistics it saw, under weights that kept changing. `recalibrate_batchnorm`
replaces that estimate with statistics recomputed under the final weights
(Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm"), in one of two ways:

- `method="exact"` (default): layer by layer in call order, each BN layer's
  input computed in inference mode with the earlier layers already
  recalibrated; its statistics become the mean and population variance
  (ddof=0) over every sample and position. What inference will see, exactly.
  Per batch, the moments are computed with backend ops in (at least) float32
  on the data minus the first batch's mean; batches are merged in float64
  with Chan et al.'s parallel update. The data is read once per BN layer
  (each pass stops at its layer), plus one probe batch.
- `method="single_pass"`: fvcore's `update_bn_stats` (Detectron2's precise
  BN) with its population-variance estimator. One pass in training mode; each
  layer pools its per-batch means and variances, weighted by batch size, the
  spread of the batch means included. About the cost of one training-mode
  forward pass.

Modules: `data` (`BatchSource`, the forms of data accepted), `statistics`
(the accumulators), `report` (`RecalibrationReport`), `core` (the passes).
"""

from __future__ import annotations

from keras_bn_tools.recalibration.core import METHODS, recalibrate_batchnorm
from keras_bn_tools.recalibration.data import BatchSource
from keras_bn_tools.recalibration.report import RecalibrationReport

__all__ = ["METHODS", "BatchSource", "RecalibrationReport", "recalibrate_batchnorm"]
