"""The engines that run a study: `fit` everywhere, `compiled` on TensorFlow and JAX.

Every engine module exposes the same contract:

- `run(protocol, config, seed, *, data, settings, ...) -> RunResult`
- `run_seeds(protocol, config, seeds, *, data, settings, ...) -> Iterator[RunResult]`
  (seeds read lazily; a compiled engine compiles once per config)

and feeds the study's `training_orders`, starts each seed from
`fresh_model(protocol, config, seed)` and reads the BN statistics as
`MovingStatsTracker` does, so that the engines agree run for run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from keras_bn_tools._validation import check_choice

__all__ = ["COMPILED_BACKENDS", "ENGINES", "EngineUnavailableError", "resolve_engine"]

#: The values of `run_study(engine=...)`.
ENGINES = ("auto", "compiled", "fit")
#: Backend -> the module of its compiled engine.
COMPILED_BACKENDS = {
    "tensorflow": "keras_bn_tools.studies.engines.tensorflow",
    "jax": "keras_bn_tools.studies.engines.jax",
}


class EngineUnavailableError(ValueError):
    """`engine="compiled"` on a backend that has no compiled engine."""


def resolve_engine(engine: str, backend: str | None = None) -> ModuleType:
    """The engine module that runs `engine` on `backend` (default: Keras's backend).

    Raises:
        ValueError: an unknown engine name.
        EngineUnavailableError: `"compiled"` on a backend without a compiled
            engine (the message names the backend and the alternative).
    """
    engine = check_choice("engine", engine, ENGINES)
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if engine == "fit" or (engine == "auto" and backend not in COMPILED_BACKENDS):
        return importlib.import_module("keras_bn_tools.studies.engines.fit")
    if backend not in COMPILED_BACKENDS:
        raise EngineUnavailableError(
            f"engine='compiled' has no implementation on the {backend!r} backend (it has one "
            f"on {' and '.join(COMPILED_BACKENDS)}); use engine='fit' (--engine fit on the "
            f"command line) or engine='auto', which picks 'fit' there."
        )
    return importlib.import_module(COMPILED_BACKENDS[backend])
