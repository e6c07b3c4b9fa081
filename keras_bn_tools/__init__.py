"""Batch normalization tools for Keras 3.

Placement-aware model builders, a model rewriter, a BN layer for momentum
experiments, callbacks that track and recompute moving statistics, BN
folding for inference, the circles study and a Hypothesis testing kit.

Submodules are imported lazily so that `import keras_bn_tools` stays cheap
and a command-line user pays only for what they use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import keras_bn_tools._cli_startup  # noqa: F401 - before TF loads: quiets its C++ logs in the CLI only
from keras_bn_tools.placement import Placement

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "build_mlp": "keras_bn_tools.builders",
    "build_cnn": "keras_bn_tools.builders",
    "build_lstm": "keras_bn_tools.builders",
    "insert_batchnorm": "keras_bn_tools.rewrite",
    "batchnorm_layers": "keras_bn_tools._model_utils",
    "fold_batchnorm": "keras_bn_tools.folding",
    "recalibrate_batchnorm": "keras_bn_tools.recalibration",
    "MomentumBatchNormalization": "keras_bn_tools.layers",
}
_LAZY_SUBMODULES = {
    "builders",
    "callbacks",
    "cli",
    "folding",
    "layers",
    "plotting",
    "recalibration",
    "rewrite",
    "studies",
    "testing",
}

__all__ = [
    "MomentumBatchNormalization",
    "Placement",
    "__version__",
    "batchnorm_layers",
    "build_cnn",
    "build_lstm",
    "build_mlp",
    "fold_batchnorm",
    "insert_batchnorm",
    "recalibrate_batchnorm",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from keras_bn_tools._model_utils import batchnorm_layers
    from keras_bn_tools.builders import build_cnn, build_lstm, build_mlp
    from keras_bn_tools.folding import fold_batchnorm
    from keras_bn_tools.layers import MomentumBatchNormalization
    from keras_bn_tools.recalibration import recalibrate_batchnorm
    from keras_bn_tools.rewrite import insert_batchnorm


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f"keras_bn_tools.{name}")
    else:
        raise AttributeError(f"module 'keras_bn_tools' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | _LAZY_SUBMODULES)
