"""Batch normalization tools for Keras 3.

Placement-aware model builders, a model rewriter, a BN layer for momentum
experiments, callbacks that track and recompute moving statistics, BN
folding for inference, the circles study and a Hypothesis testing kit.

`import keras_bn_tools` imports Keras and `keras_bn_tools.layers`, whose
classes register themselves with `keras.saving` (the standard
`keras.saving.register_keras_serializable` decorator), so a `.keras` file that
holds them loads with `safe_mode=True` right after `import keras_bn_tools`.
The other submodules load on first use (a module-level `__getattr__`).

Keras needs a backend, which this package does not install: if the one Keras
is configured for is missing, the import fails with one `ImportError` naming
the extras that install it (`keras-bn-tools[tensorflow]`, `[jax]`, `[torch]`).
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
import types as _types
import typing as _typing

from keras_bn_tools.placement import Placement

__version__ = "0.1.0"

# The backends that the distribution's extras of the same names install.
_BACKEND_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _missing_backend_error(error: ModuleNotFoundError) -> ImportError:
    """The error for a Keras whose configured backend is not installed."""
    backend = error.name.partition(".")[0] if error.name else "?"
    configured = _os.environ.get("KERAS_BACKEND")
    where = f"KERAS_BACKEND={configured}" if configured else "~/.keras/keras.json or the default"
    return ImportError(
        f"keras_bn_tools needs a Keras backend: Keras is configured for {backend!r} ({where}), "
        f"but {backend!r} is not installed. Install a backend with the package's extras: "
        "pip install 'keras-bn-tools[tensorflow]' (or [jax], [torch], [all]); or select an "
        "installed backend with the KERAS_BACKEND environment variable."
    )


try:
    import keras as _keras  # noqa: F401 - Keras imports its backend here
except ModuleNotFoundError as _error:
    if _error.name and _error.name.partition(".")[0] in _BACKEND_EXTRAS:
        raise _missing_backend_error(_error) from None
    raise

# Importing `keras_bn_tools.layers` registers its layers with keras.saving.
from keras_bn_tools.layers import MomentumBatchNormalization  # noqa: E402

_LAZY_ATTRIBUTES = {
    "build_mlp": "keras_bn_tools.builders",
    "build_cnn": "keras_bn_tools.builders",
    "build_lstm": "keras_bn_tools.builders",
    "insert_batchnorm": "keras_bn_tools.rewrite",
    "batchnorm_layers": "keras_bn_tools.graph",
    "convert_batchnorm": "keras_bn_tools.convert",
    "fold_batchnorm": "keras_bn_tools.folding",
    "freeze_batchnorm": "keras_bn_tools.freezing",
    "unfreeze_batchnorm": "keras_bn_tools.freezing",
    "recalibrate_batchnorm": "keras_bn_tools.recalibration",
}
_LAZY_SUBMODULES = {
    "builders",
    "callbacks",
    "cli",
    "convert",
    "folding",
    "freezing",
    "graph",
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
    "convert_batchnorm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "insert_batchnorm",
    "recalibrate_batchnorm",
    "unfreeze_batchnorm",
]

if _typing.TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from keras_bn_tools.builders import build_cnn, build_lstm, build_mlp
    from keras_bn_tools.convert import convert_batchnorm
    from keras_bn_tools.folding import fold_batchnorm
    from keras_bn_tools.freezing import freeze_batchnorm, unfreeze_batchnorm
    from keras_bn_tools.graph import batchnorm_layers
    from keras_bn_tools.recalibration import recalibrate_batchnorm
    from keras_bn_tools.rewrite import insert_batchnorm


def __getattr__(name: str) -> object:
    """Load a public function or a submodule on first use (PEP 562)."""
    if name in _LAZY_ATTRIBUTES:
        value = getattr(_importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    elif name in _LAZY_SUBMODULES:
        value = _importlib.import_module(f"keras_bn_tools.{name}")
    else:
        raise AttributeError(f"module 'keras_bn_tools' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    loaded = {
        name
        for name, value in globals().items()
        if not name.startswith("_")
        and isinstance(value, _types.ModuleType)
        and value.__name__.startswith("keras_bn_tools.")
    }
    return sorted(loaded | set(__all__) | set(_LAZY_ATTRIBUTES) | _LAZY_SUBMODULES)
