"""Normalization layers: `MomentumBatchNormalization` and recurrent batch normalization."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY_ATTRIBUTES = {
    "MomentumBatchNormalization": "keras_bn_tools.layers.momentum_batch_normalization",
    "BatchNormLSTMCell": "keras_bn_tools.layers.recurrent",
    "BatchNormLSTM": "keras_bn_tools.layers.recurrent",
}

__all__ = list(_LAZY_ATTRIBUTES)

if TYPE_CHECKING:  # pragma: no cover
    from keras_bn_tools.layers.momentum_batch_normalization import MomentumBatchNormalization
    from keras_bn_tools.layers.recurrent import BatchNormLSTM, BatchNormLSTMCell


def __getattr__(name: str) -> Any:
    # Lazy so that importing one layer does not pull in the others' modules; the
    # classes register themselves with keras.saving when their module is imported.
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module 'keras_bn_tools.layers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    globals()[name] = value
    return value
