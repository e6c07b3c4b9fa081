"""`run_study`: train each config of a protocol once per seed, on the chosen engine."""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_bn_tools._validation import check_bool, check_choice, check_positive_int, check_seeds
from keras_bn_tools.studies.engines import GROUPED, Engine, resolve_engine
from keras_bn_tools.studies.parallel import check_n_jobs
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


def execute(plan: StudyPlan, data: Any, *, n_jobs: int = 1, store: Any = None,
            progress: bool = False) -> list[RunResult]:  # fmt: skip
    """Every run of `plan` in config then seed order: the runs saved in `store` loaded,
    the others run in units of work (`keras_bn_tools.studies.parallel`), in this process
    (`n_jobs=1`) or through joblib, each saved in `store` the moment it finishes."""
    from tqdm.auto import tqdm

    from keras_bn_tools.studies import parallel
    from keras_bn_tools.studies.compile_cache import active_compile_cache

    keys = [(c, s) for c in plan.configs for s in plan.seeds]
    finished = store.load_many(keys) if store is not None else {}
    whole_units = GROUPED in plan.engine.supports
    units = parallel.plan_units(plan.configs, plan.seeds, done=finished, whole_units=whole_units)
    builtin = PROTOCOLS.get(plan.protocol.name) is plan.protocol
    context = parallel.UnitContext(
        protocol=plan.protocol.name if builtin else plan.protocol, engine=plan.engine,
        data=data, settings={c: plan.settings_for(c) for c in plan.configs},
        options=plan.options, backend=plan.backend,
        store=store, threads=parallel.worker_threads(n_jobs, len(units)) if n_jobs != 1 else 0,
        compile_cache=active_compile_cache() if plan.backend == "jax" else None,
        whole_units=whole_units,
    )  # fmt: skip
    with tqdm(total=len(keys), initial=len(finished), desc=plan.protocol.name, unit="run",
              file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
        try:
            for run in parallel.run_units(context, units, n_jobs, lambda run: bar.update(1)):
                finished.setdefault((run.config, run.seed), run)  # never counted twice
        except parallel.WorkerDiedError as error:
            where = (
                f"the {len(store.saved())} finished runs are saved in {str(store.directory)!r}: "
                f"run again with resume=True (--resume) to complete the study"
                if store is not None
                else "pass out=DIR to keep finished runs and resume=True to complete a study"
            )
            message = f"{error} Its unfinished runs are lost; {where}."
            raise parallel.WorkerDiedError(message) from error
    return [finished[key] for key in keys]


def open_store(plan: StudyPlan, data: Any, out: str | os.PathLike, *, resume: bool) -> Any:
    """The `RunStore` of `out` for `plan`, checked (`RunStore.open`)."""
    from keras_bn_tools.studies.fingerprint import config_fingerprint, study_fingerprint
    from keras_bn_tools.studies.store import RunStore

    fingerprint = study_fingerprint(
        plan.protocol, data=(data.train_x, data.train_y, data.test_x, data.test_y),
        epochs=plan.settings.epochs, batch_size=plan.settings.batch_size,
        shuffle=plan.settings.shuffle, engine=plan.engine.name, backend=plan.backend,
        options={k: v for k, v in plan.options.items() if k != "callbacks_factory"},
    )  # fmt: skip
    configs = {c: config_fingerprint(plan.protocol, c, plan.settings_for(c)) for c in plan.configs}
    return RunStore(out, fingerprint, configs).open(resume=resume)


def _check_scaling(n_jobs: Any, out: Any, resume: Any, callbacks_factory: Any) -> tuple:
    n_jobs = check_n_jobs(n_jobs)
    resume = check_bool("resume", resume)
    if resume and out is None:
        raise ValueError("`resume=True` needs `out`: the directory whose saved runs to reuse.")
    if out is not None and not isinstance(out, str | os.PathLike):
        raise TypeError(f"`out` must be a directory path, got {out!r}.")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`out` {os.fspath(out)!r} exists and is not a directory.")
    if callbacks_factory is not None and n_jobs != 1:
        raise ValueError(
            "`callbacks_factory` needs n_jobs=1: the callbacks it makes hold their run's "
            "model and stay in the process that trained it."
        )
    return n_jobs, resume


def collect(plan: StudyPlan, data: Any, runs: list[RunResult], seconds: float,
            n_jobs: int = 1) -> StudyResult:  # fmt: skip
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
        "n_jobs": n_jobs,
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
    n_jobs: int = 1,
    out: str | os.PathLike | None = None,
    resume: bool = False,
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
        n_jobs: processes, as joblib takes it (`-1`: every core). The study is
            cut into units (one config's chunk of up to 10 seeds) that joblib
            runs; inside `joblib.parallel_config(backend="dask")` (a
            `distributed.Client`) or `"ray"` they run on that cluster. Results
            are identical, run for run, whatever `n_jobs` and backend (see
            `keras_bn_tools.studies.parallel`).
        out: a directory where each run is saved (`out/runs/`) the moment it
            finishes, crash-safe, with its fingerprint (see
            `keras_bn_tools.studies.store`). Refused if it already holds
            finished runs and `resume` is False.
        resume: reuse the runs saved in `out` (every one checked: a run of
            another study or a corrupt file is refused, never skipped) and
            run only the missing ones; the result equals an uninterrupted
            study's, every number. Resumed runs have no `callbacks`.

    Returns:
        A `StudyResult`.

    Raises:
        ValueError: an unknown protocol, config, engine or shuffle; bad seeds;
            `engine="compiled"` on a backend without one (PyTorch);
            `callbacks_factory` with the compiled engine.
        TypeError: a non-integer seed, epochs, batch size or `n_jobs`.
        StudyMismatchError: (a ValueError) `out` holds runs of another study.
        CorruptRunFileError: (a ValueError) a damaged run file in `out`.
        WorkerDiedError: a worker process died (`resume=True` completes the study).

    Example:
        ```python
        from keras_bn_tools.studies import run_study

        result = run_study("circles", ["baseline", "bn-after"], seeds=range(2), epochs=3)
        print(result.engine, result.table())
        ```
    """
    # Keras (and with it TensorFlow) loads only now: `PROTOCOLS` and --help stay light.
    from keras_bn_tools.studies.engines.common import StudyData, Timer, fresh_model

    n_jobs, resume = _check_scaling(n_jobs, out, resume, callbacks_factory)
    plan = plan_study(
        protocol, configs, seeds, epochs=epochs, batch_size=batch_size, engine=engine,
        shuffle=shuffle, callbacks_factory=callbacks_factory, jit_compile=jit_compile,
    )  # fmt: skip
    data = StudyData.load(plan.protocol, fresh_model(plan.protocol, plan.configs[0], plan.seeds[0]))
    store = None if out is None else open_store(plan, data, out, resume=resume)
    timer = Timer()
    runs = execute(plan, data, n_jobs=n_jobs, store=store, progress=progress)
    return collect(plan, data, runs, timer.seconds, n_jobs)
