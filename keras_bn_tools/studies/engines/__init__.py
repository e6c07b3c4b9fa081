"""The engines that run a study, as objects in one registry.

An `Engine` declares what `run_study` needs to choose it: its `name` (the
value of `run_study(engine=...)` and of `RunResult.engine`), the `backends`
it runs on, the run `options` its implementation takes, and the features it
`supports`. `run_study` picks from `REGISTRY` by backend and capability
(`resolve_engine`, `Engine.options_for`), never by module:

- `fit` (every backend): `model.compile` + `model.fit`; takes the user's
  callbacks (`callbacks_factory`).
- `compiled` on TensorFlow: each run one `tf.function`; takes `jit_compile`
  (XLA), resolved by `resolve_jit_compile` (the one place that decides it).
- `compiled` on JAX: `jax.jit` + `lax.scan`, seeds mapped with `jax.vmap`.

Every implementation module exposes `run_seeds(protocol, config, seeds, *,
data, settings, **options) -> Iterator[RunResult]` (seeds read lazily; a
compiled engine compiles once per config), feeds the study's
`training_orders`, starts each seed from `fresh_model(protocol, config, seed)`
and reads the BN statistics as `MovingStatsTracker` does, so that the engines
agree run for run. Nothing here imports Keras: the CLI checks an engine
before any backend loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from keras_bn_tools._validation import check_choice

__all__ = [
    "AUTO",
    "CALLBACKS",
    "COMPILED_BACKENDS",
    "ENGINES",
    "GROUPED",
    "MOVING_STATS",
    "REGISTRY",
    "WHOLE_RUN",
    "XLA",
    "Engine",
    "EngineUnavailableError",
    "resolve_engine",
    "resolve_jit_compile",
]

#: Features an engine may support.
CALLBACKS = "callbacks"  # runs Keras callbacks (`callbacks_factory`)
MOVING_STATS = "moving_stats"  # records every BN statistic after every epoch
WHOLE_RUN = "whole_run"  # the whole run compiled, no Python per step: what "auto" prefers
XLA = "xla"  # XLA is an option (`jit_compile`)
GROUPED = "grouped"  # trains a unit's seeds together; its numbers depend on the group's size
#: `run_study(engine="auto")`: the fastest engine on the backend.
AUTO = "auto"


class EngineUnavailableError(ValueError):
    """An engine named for a backend it does not run on."""


@dataclass(frozen=True)
class Engine:
    """One study engine: what it is called, where it runs, what it takes and does.

    Attributes:
        name: `run_study(engine=name)` and `RunResult.engine`.
        implementation: the module with its `run_seeds`, imported on first use.
        backends: the Keras backends it runs on; empty: every backend.
        options: the keyword options its `run_seeds` takes besides the study's
            (e.g. `"jit_compile"`, `"callbacks_factory"`).
        supports: features from `CALLBACKS`, `MOVING_STATS`, `WHOLE_RUN`, `XLA`, `GROUPED`.
        summary: one line for people.
    """

    name: str
    implementation: str
    backends: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    supports: frozenset[str] = frozenset()
    summary: str = ""

    def runs_on(self, backend: str) -> bool:
        return not self.backends or backend in self.backends

    def options_for(self, protocol: Any, seeds: Any, *, jit_compile: bool | str = AUTO,
                    callbacks_factory: Callable | None = None) -> dict[str, Any]:  # fmt: skip
        """This engine's `run_seeds` options for a study of `protocol` over `seeds`.

        Raises:
            ValueError: `callbacks_factory` for an engine that runs no callbacks
                (the message names the engines that do).
        """
        options: dict[str, Any] = {}
        xla = resolve_jit_compile(jit_compile, protocol, len(seeds))  # checked on every engine
        if CALLBACKS in self.supports:
            options["callbacks_factory"] = callbacks_factory
        elif callbacks_factory is not None:
            able = sorted({e.name for e in REGISTRY if CALLBACKS in e.supports})
            raise ValueError(
                f"`callbacks_factory` needs an engine that runs Keras callbacks: "
                f"{' or '.join(f'engine={n!r}' for n in able)}; the {self.name!r} engine "
                f"calls none (its BN statistics per epoch are in RunResult.moving_stats)."
            )
        if XLA in self.supports:
            options["jit_compile"] = xla
        return options

    def run_seeds(self, protocol: Any, config: str, seeds: Any, *, data: Any, settings: Any,
                  **options: Any) -> Iterator[Any]:  # fmt: skip
        """The implementation's `run_seeds` (see the module docstring)."""
        module = importlib.import_module(self.implementation)
        return module.run_seeds(protocol, config, seeds, data=data, settings=settings, **options)


_HERE = "keras_bn_tools.studies.engines"
#: Every engine, in the order "auto" prefers them (the first one that runs on the
#: backend and supports `WHOLE_RUN`, else the first that runs on it).
REGISTRY: tuple[Engine, ...] = (
    Engine(
        "compiled", f"{_HERE}.tensorflow", ("tensorflow",), ("jit_compile",),
        frozenset({MOVING_STATS, WHOLE_RUN, XLA}),
        "each run one tf.function (XLA where it helps), seeds pipelined",
    ),
    Engine(
        "compiled", f"{_HERE}.jax", ("jax",), (), frozenset({MOVING_STATS, WHOLE_RUN, GROUPED}),
        "jax.jit + lax.scan per run, seeds mapped with jax.vmap",
    ),
    Engine(
        "fit", f"{_HERE}.fit", (), ("callbacks_factory",), frozenset({CALLBACKS, MOVING_STATS}),
        "model.compile + model.fit, one run after the other",
    ),
)  # fmt: skip

#: The values of `run_study(engine=...)`.
ENGINES: tuple[str, ...] = (AUTO, *dict.fromkeys(e.name for e in REGISTRY))
#: The backends with a `WHOLE_RUN` (compiled) engine.
COMPILED_BACKENDS: tuple[str, ...] = tuple(
    dict.fromkeys(b for e in REGISTRY if WHOLE_RUN in e.supports for b in e.backends)
)


def resolve_engine(engine: str, backend: str | None = None) -> Engine:
    """The `Engine` that runs `engine` on `backend` (default: Keras's backend).

    `"auto"` is the first engine of `REGISTRY` that runs on the backend and
    compiles the whole run, else the first that runs on it.

    Raises:
        ValueError: an unknown engine name.
        EngineUnavailableError: an engine that does not run on `backend` (the
            message names the backend and the alternative).
    """
    engine = check_choice("engine", engine, ENGINES)
    if backend is None:
        import keras

        backend = keras.backend.backend()
    here = [e for e in REGISTRY if e.runs_on(backend)]
    if engine == AUTO:
        return next((e for e in here if WHOLE_RUN in e.supports), here[0])
    for candidate in here:
        if candidate.name == engine:
            return candidate
    where = dict.fromkeys(b for e in REGISTRY if e.name == engine for b in e.backends)
    raise EngineUnavailableError(
        f"engine={engine!r} has no implementation on the {backend!r} backend (it has one "
        f"on {' and '.join(where)}); use engine={here[0].name!r} (--engine {here[0].name} on "
        f"the command line) or engine='auto', which picks {here[0].name!r} there."
    )


def resolve_jit_compile(requested: bool | str, protocol: Any, seeds: int) -> bool:
    """Whether an engine with the `XLA` option compiles with XLA: `requested` (`run_study`'s
    `jit_compile`) unless `"auto"`, then `protocol.jit_compile` unless `"auto"`, then XLA
    from 4 seeds on (where compiling pays off for small models on a CPU)."""
    for value in (requested, protocol.jit_compile):
        if value not in (True, False, AUTO):
            raise ValueError(f"`jit_compile` must be True, False or 'auto', got {value!r}.")
        if value != AUTO:
            return bool(value)
    return seeds >= 4
