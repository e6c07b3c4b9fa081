"""Reproducible studies of batch normalization.

- `keras_bn_tools.studies.circles`: the "circles" study (an MLP on
  `sklearn.datasets.make_circles` without BN, with BN after and with BN before
  the ReLU, and variants), over many seeds, with a compiled TensorFlow engine
  that runs the whole protocol as one graph.

Submodules are imported lazily: `import keras_bn_tools.studies` does not
import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY_SUBMODULES = {"circles"}

__all__ = sorted(_LAZY_SUBMODULES)

if TYPE_CHECKING:  # pragma: no cover
    from keras_bn_tools.studies import circles  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _LAZY_SUBMODULES:
        raise AttributeError(f"module 'keras_bn_tools.studies' has no attribute {name!r}")
    value = importlib.import_module(f"keras_bn_tools.studies.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)
