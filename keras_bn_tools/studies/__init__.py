"""Reproducible studies of batch normalization.

A study trains each config of a `Protocol` once per seed and reports final
accuracies, epochs to the protocol's target and learning curves:

- `Protocol` (`studies.protocol`): one experiment, and the data order a study feeds;
  `Config`: a config's description and its own training settings.
- `studies.metrics`: the metrics a study reports, scored in NumPy.
- `PROTOCOLS`: the built-in ones (`studies.registry.BUILTIN` lists them).
- `run_study(protocol, configs, seeds, ...)` (`studies.study`) -> `StudyResult`.
- `RunResult`, `StudyResult` (`studies.results`).
- `studies.engines`: `fit` (every backend) and `compiled` (TensorFlow, JAX).

Everything is imported lazily: `import keras_bn_tools.studies` imports
neither Keras nor TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from keras_bn_tools.studies.registry import BUILTIN

_LAZY_ATTRIBUTES = {
    "Config": "keras_bn_tools.studies.protocol",
    "Protocol": "keras_bn_tools.studies.protocol",
    "training_orders": "keras_bn_tools.studies.protocol",
    "PROTOCOLS": "keras_bn_tools.studies.registry",
    "run_study": "keras_bn_tools.studies.study",
    "RunResult": "keras_bn_tools.studies.results",
    "StudyResult": "keras_bn_tools.studies.results",
}
#: The built-in protocols' modules (from the one registry) and the study machinery.
_LAZY_SUBMODULES = {
    *(
        target.partition(":")[0].rpartition(".")[2]
        for target in BUILTIN.values()
        if target.startswith(f"{__name__}.")
    ),
    "engines",
    "experiments",
    "metrics",
    "protocol",
    "registry",
    "results",
    "runs",
    "statistics",
    "study",
}

__all__ = [
    "PROTOCOLS",
    "Config",
    "Protocol",
    "RunResult",
    "StudyResult",
    "run_study",
    "training_orders",
]

if TYPE_CHECKING:  # pragma: no cover
    from keras_bn_tools.studies.protocol import Config, Protocol, training_orders
    from keras_bn_tools.studies.registry import PROTOCOLS
    from keras_bn_tools.studies.results import RunResult, StudyResult
    from keras_bn_tools.studies.study import run_study


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f"keras_bn_tools.studies.{name}")
    else:
        raise AttributeError(f"module 'keras_bn_tools.studies' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | _LAZY_SUBMODULES)
