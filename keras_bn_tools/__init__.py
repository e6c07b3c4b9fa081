"""Batch normalization tools for Keras 3.

Placement-aware model builders, a model rewriter, a BN layer for momentum
experiments, callbacks that track and recompute moving statistics, BN
folding for inference, the circles study and a Hypothesis testing kit.

`import keras_bn_tools` registers every serializable class of the package
(`keras_bn_tools.layers.SERIALIZABLE_CLASSES`) with `keras.saving`, so a
`.keras` file holding them loads with `safe_mode=True` without importing a
submodule first. It does so at once if Keras is already imported, else the
moment Keras is imported, so that `import keras_bn_tools` alone does not load
Keras and its backend (a command-line `--help` stays fast). Submodules are
imported lazily, on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

import keras_bn_tools._cli_startup  # noqa: F401 - before TF loads: quiets its C++ logs in the CLI only
from keras_bn_tools.placement import Placement

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "build_mlp": "keras_bn_tools.builders",
    "build_cnn": "keras_bn_tools.builders",
    "build_lstm": "keras_bn_tools.builders",
    "insert_batchnorm": "keras_bn_tools.rewrite",
    "batchnorm_layers": "keras_bn_tools.graph",
    "convert_batchnorm": "keras_bn_tools.convert",
    "fold_batchnorm": "keras_bn_tools.folding",
    "recalibrate_batchnorm": "keras_bn_tools.recalibration",
    "MomentumBatchNormalization": "keras_bn_tools.layers",
}
_LAZY_SUBMODULES = {
    "builders",
    "callbacks",
    "cli",
    "convert",
    "folding",
    "graph",
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
    "convert_batchnorm",
    "fold_batchnorm",
    "insert_batchnorm",
    "recalibrate_batchnorm",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from keras_bn_tools.builders import build_cnn, build_lstm, build_mlp
    from keras_bn_tools.convert import convert_batchnorm
    from keras_bn_tools.folding import fold_batchnorm
    from keras_bn_tools.graph import batchnorm_layers
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


def _register_serializable_classes() -> None:
    """Import `keras_bn_tools.layers`, whose classes register themselves with keras.saving."""
    try:
        importlib.import_module("keras_bn_tools.layers")
    except Exception as error:  # never break the user's `import keras` over it
        warnings.warn(
            f"keras_bn_tools could not register its layers with keras.saving ({error!r}); "
            "import keras_bn_tools.layers before loading a model that holds them.",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs `_register_serializable_classes` right after Keras is imported.

    It hands out Keras's own spec with itself as the loader, which runs Keras's
    loader and then the registration. It stays in `sys.meta_path` until Keras
    is actually executed: a mere `importlib.util.find_spec("keras")` (as
    TensorFlow makes) does not count.
    """

    def __init__(self) -> None:
        self._loader: Any = None
        self._searching = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "keras" or self._searching:
            return None
        self._searching = True  # let the regular finders locate Keras
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self._searching = False
        if spec is None or spec.loader is None or spec.loader is self:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self._loader.exec_module(module)
        _register_serializable_classes()


if "keras" in sys.modules:
    _register_serializable_classes()
elif not any(isinstance(finder, _RegisterAfterKerasImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKerasImport())
