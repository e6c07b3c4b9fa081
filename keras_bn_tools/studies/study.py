"""`run_study`: train each config of a protocol once per seed, on the chosen engine."""

from __future__ import annotations

import dataclasses
import importlib
import platform
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_bn_tools._validation import check_choice, check_positive_int, check_seeds
from keras_bn_tools.studies.engines import Engine, resolve_engine
from keras_bn_tools.studies.protocol import SHUFFLES, Protocol
from keras_bn_tools.studies.registry import PROTOCOLS, resolve_protocol
from keras_bn_tools.studies.results import RunResult, StudyResult

__all__ = ["PROTOCOLS", "StudyPlan", "plan_study", "resolve_protocol", "run_study"]


def _resolve_configs(protocol: Protocol, configs: Any) -> tuple[str, ...]:
    if configs is None:
        return tuple(protocol.default_configs)
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, Sequence | set | frozenset | Mapping) or not configs:
        raise ValueError(
            f"`configs` must name at least one of {list(protocol.configs)}, got {configs!r}."
        )
    names = list(configs)
    unknown = [c for c in names if c not in protocol.configs]
    if unknown:
        raise ValueError(
            f"`configs`: unknown {protocol.name} config(s) {unknown}; valid: "
            f"{', '.join(protocol.configs)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"`configs` names a config more than once: {names}.")
    return tuple(names)


def _versions(backend: str) -> dict[str, str]:
    import keras

    from keras_bn_tools import __version__

    versions = {"python": platform.python_version(), "keras": keras.__version__}
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        versions[module] = importlib.import_module(module).__version__
    versions.update(keras_bn_tools=__version__, backend=backend)
    return versions


@dataclass(frozen=True)
class StudyPlan:
    """What a study runs, every argument checked: built by `plan_study` before any
    training, run by `execute`, collected by `collect`.

    Attributes:
        protocol: the protocol.
        configs: the config names, in order.
        seeds: the seeds, in order (a `range` stays a range).
        settings: the study's `RunSettings` (epochs, batch size, data order).
        config_settings: each config's `RunSettings`: the study's with the
            config's `Config` overrides applied (`settings_for`).
        engine: the `Engine` that runs them.
        options: the engine's run options (`Engine.options_for`).
        backend: Keras's backend.
    """

    protocol: Protocol
    configs: tuple[str, ...]
    seeds: Sequence[int]
    settings: Any
    engine: Engine
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    config_settings: dict[str, Any] = field(default_factory=dict)

    def settings_for(self, config: str) -> Any:
        """The `RunSettings` of `config`'s runs."""
        return self.config_settings.get(config, self.settings)


def plan_study(protocol: str | Protocol = "circles", configs: Sequence[str] | str | None = None,
               seeds: Sequence[int] | range = range(10), *, epochs: int | None = None,
               batch_size: int | None = None, engine: str = "auto", shuffle: str = "epoch",
               callbacks_factory: Callable[[str, int], Sequence[Any]] | None = None,
               jit_compile: bool | str = "auto") -> StudyPlan:  # fmt: skip
    """Check `run_study`'s arguments (same meaning) and resolve them into a `StudyPlan`."""
    from keras_bn_tools.studies.engines.common import RunSettings

    protocol = resolve_protocol(protocol)
    configs = _resolve_configs(protocol, configs)
    seeds = check_seeds("seeds", seeds)
    epochs = check_positive_int("epochs", epochs, allow_none=True)
    batch_size = check_positive_int("batch_size", batch_size, allow_none=True)
    settings = RunSettings(
        protocol.epochs if epochs is None else epochs,
        protocol.batch_size if batch_size is None else batch_size,
        check_choice("shuffle", shuffle, SHUFFLES),
    )
    # run_study's own epochs / batch_size apply to every config; else the config's, else
    # the protocol's.
    config_settings = {}
    for name in configs:
        own = protocol.config(name)
        config_settings[name] = dataclasses.replace(
            settings,
            epochs=epochs or own.epochs or protocol.epochs,
            batch_size=batch_size or own.batch_size or protocol.batch_size,
            optimizer=own.optimizer,
        )
    if callbacks_factory is not None and not callable(callbacks_factory):
        raise TypeError(f"`callbacks_factory` must be callable, got {callbacks_factory!r}.")
    import keras

    backend = keras.backend.backend()
    chosen = resolve_engine(engine, backend)
    options = chosen.options_for(
        protocol, seeds, jit_compile=jit_compile, callbacks_factory=callbacks_factory
    )
    return StudyPlan(protocol, configs, seeds, settings, chosen, options, backend,
                     config_settings)  # fmt: skip


def execute(plan: StudyPlan, data: Any, *, progress: bool = False) -> Iterator[RunResult]:
    """Every run of `plan`, config by config, seed by seed, as the engine finishes them."""
    from tqdm.auto import tqdm

    total = len(plan.configs) * len(plan.seeds)
    with tqdm(total=total, desc=plan.protocol.name, unit="run", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
        for config in plan.configs:
            bar.set_postfix_str(config)
            settings = plan.settings_for(config)
            for run in plan.engine.run_seeds(plan.protocol, config, plan.seeds, data=data,
                                             settings=settings, **plan.options):  # fmt: skip
                yield run
                bar.update(1)


def collect(plan: StudyPlan, data: Any, runs: list[RunResult], seconds: float) -> StudyResult:
    """The `StudyResult` of `plan`'s `runs`, with the study's metadata."""
    protocol = plan.protocol
    metadata = {
        "versions": _versions(plan.backend),
        "description": protocol.description,
        "config_descriptions": {c: protocol.config(c).description for c in plan.configs},
        "config_overrides": {c: _overrides(plan, c) for c in plan.configs},
        "config_settings": {c: plan.settings_for(c).record() for c in plan.configs},
        "loss": str(protocol.loss),
        "accuracy": data.accuracy,
        "metric_name": data.metric.name,
        "compile_seconds": sum(r.compile_seconds for r in runs),
        **({"jit_compile": plan.options["jit_compile"]} if "jit_compile" in plan.options else {}),
    }
    return StudyResult(
        protocol=protocol.name,
        runs=runs,
        configs=plan.configs,
        seeds=plan.seeds,
        epochs=plan.settings.epochs,
        batch_size=plan.settings.batch_size,
        engine=plan.engine.name,
        shuffle=plan.settings.shuffle,
        target=protocol.target,
        seconds=seconds,
        metadata=metadata,
        metric=data.metric.key,
        mode=protocol.direction,
    )


def _overrides(plan: StudyPlan, config: str) -> dict[str, Any]:
    """What differs in `config`'s settings from the study's (for the table's note)."""
    mine, study = plan.settings_for(config).record(), plan.settings.record()
    return {k: v for k, v in mine.items() if v != study[k]}


def run_study(
    protocol: str | Protocol = "circles",
    configs: Sequence[str] | str | None = None,
    seeds: Sequence[int] | range = range(10),
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    engine: str = "auto",
    shuffle: str = "epoch",
    callbacks_factory: Callable[[str, int], Sequence[Any]] | None = None,
    progress: bool = False,
    jit_compile: bool | str = "auto",
) -> StudyResult:
    """Train each config of `protocol` once per seed and collect the results.

    Args:
        protocol: a `Protocol` or a built-in name (`PROTOCOLS`).
        configs: config names (default: the protocol's `default_configs`).
        seeds: distinct integers in `[0, 2**32 - 1]`; a `range` is streamed.
            Each run calls `keras.utils.set_random_seed(seed)` before building
            its model and draws its data order from the seed.
        epochs: epochs per run, for every config (default: each config's
            `Config.epochs`, else the protocol's).
        batch_size: training batch size, for every config (default: each
            config's `Config.batch_size`, else the protocol's).
        engine: `"auto"` (the compiled engine where the backend has one:
            TensorFlow and JAX; else `"fit"`), `"compiled"` or `"fit"`
            (`keras_bn_tools.studies.engines.REGISTRY`). `StudyResult.engine`
            says which ran.
        shuffle: `"epoch"` (a fresh order every epoch), `"once"` or `"none"`
            (see `keras_bn_tools.studies.protocol`).
        callbacks_factory: `callbacks_factory(config, seed)` returns callbacks
            for that run's `model.fit` (kept in `RunResult.callbacks`); needs
            an engine that runs callbacks (`fit`).
        progress: show a progress bar over the runs on stderr.
        jit_compile: engines with an XLA option (TensorFlow's compiled engine):
            `True`, `False` or `"auto"`: as `protocol.jit_compile` says, which
            by default means from 4 seeds on, where it pays off
            (`engines.resolve_jit_compile`).

    Returns:
        A `StudyResult`.

    Raises:
        ValueError: an unknown protocol, config, engine or shuffle; bad seeds;
            `engine="compiled"` on a backend without one (PyTorch);
            `callbacks_factory` with the compiled engine.
        TypeError: a non-integer seed, epochs or batch size.

    Example:
        ```python
        from keras_bn_tools.studies import run_study

        result = run_study("circles", ["baseline", "bn-after"], seeds=range(2), epochs=3)
        print(result.engine, result.table())
        ```
    """
    # Keras (and with it TensorFlow) loads only now: `PROTOCOLS` and --help stay light.
    from keras_bn_tools.studies.engines.common import StudyData, Timer, fresh_model

    plan = plan_study(
        protocol, configs, seeds, epochs=epochs, batch_size=batch_size, engine=engine,
        shuffle=shuffle, callbacks_factory=callbacks_factory, jit_compile=jit_compile,
    )  # fmt: skip
    data = StudyData.load(plan.protocol, fresh_model(plan.protocol, plan.configs[0], plan.seeds[0]))
    timer = Timer()
    runs = list(execute(plan, data, progress=progress))
    return collect(plan, data, runs, timer.seconds)
