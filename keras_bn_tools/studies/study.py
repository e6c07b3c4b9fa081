"""`run_study`: train each config of a protocol once per seed, on the chosen engine."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from keras_bn_tools._validation import check_bool, check_choice, check_positive_int, check_seeds
from keras_bn_tools.studies.engines import resolve_engine
from keras_bn_tools.studies.parallel import check_n_jobs
from keras_bn_tools.studies.protocol import SHUFFLES, Protocol
from keras_bn_tools.studies.results import RunResult, StudyResult

__all__ = ["PROTOCOLS", "resolve_protocol", "run_study"]


class _BuiltinProtocols(Mapping):
    """`"circles"`, `"digits"`, `"sequence"` -> their `Protocol`, each module imported on use."""

    names = ("circles", "digits", "sequence")

    def __getitem__(self, name: str) -> Protocol:
        if name not in self.names:
            raise KeyError(name)
        return importlib.import_module(f"keras_bn_tools.studies.{name}").PROTOCOL

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"PROTOCOLS({', '.join(self.names)})"


#: The built-in protocols by name (each module is imported when first looked up).
PROTOCOLS: Mapping[str, Protocol] = _BuiltinProtocols()


def resolve_protocol(protocol: str | Protocol) -> Protocol:
    """A `Protocol`, or the built-in one named `protocol`."""
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str) and protocol in PROTOCOLS:
        return PROTOCOLS[protocol]
    raise ValueError(
        f"`protocol` must be a Protocol or one of {', '.join(map(repr, PROTOCOLS))}, "
        f"got {protocol!r}."
    )


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


def _run_all(protocol, configs, seeds, *, module, data, settings, options, backend, n_jobs,
             store, resume, progress) -> list[RunResult]:  # fmt: skip
    """Every run of the study in config then seed order: saved ones loaded (`resume`),
    the others run in units (`keras_bn_tools.studies.parallel`), each saved as it ends."""
    from tqdm.auto import tqdm

    from keras_bn_tools.studies import parallel
    from keras_bn_tools.studies.compile_cache import active_compile_cache

    keys = [(c, s) for c in configs for s in seeds]
    finished = store.load_many(keys, protocol) if store is not None and resume else {}
    whole_units = module.__name__.endswith(".jax")  # vmapped: numbers depend on the group
    units = parallel.plan_units(configs, seeds, done=finished, whole_units=whole_units)
    context = parallel.UnitContext(
        protocol=protocol.name if PROTOCOLS.get(protocol.name) is protocol else protocol,
        resolve=resolve_protocol, engine=module.__name__, data=data, settings=settings,
        options=options, backend=backend, store=store,
        threads=parallel.worker_threads(n_jobs, len(units)) if n_jobs != 1 else 0,
        compile_cache=active_compile_cache() if backend == "jax" else None,
        whole_units=whole_units,
    )  # fmt: skip
    with tqdm(total=len(keys), initial=len(finished), desc=protocol.name, unit="run",
              file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
        try:
            for run in parallel.run_units(context, units, n_jobs, lambda run: bar.update(1)):
                finished.setdefault((run.config, run.seed), run)
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
        protocol: a `Protocol` or a built-in name (`"circles"`, `"digits"`, `"sequence"`).
        configs: config names (default: the protocol's `default_configs`).
        seeds: distinct integers in `[0, 2**32 - 1]`; a `range` is streamed.
            Each run calls `keras.utils.set_random_seed(seed)` before building
            its model and draws its data order from the seed.
        epochs: epochs per run (default: the protocol's).
        batch_size: training batch size (default: the protocol's).
        engine: `"auto"` (the compiled engine where the backend has one:
            TensorFlow and JAX; else `"fit"`), `"compiled"` or `"fit"`.
            `StudyResult.engine` says which ran.
        shuffle: `"epoch"` (a fresh order every epoch), `"once"` or `"none"`
            (see `keras_bn_tools.studies.protocol`).
        callbacks_factory: `callbacks_factory(config, seed)` returns callbacks
            for that run's `model.fit` (kept in `RunResult.callbacks`); needs
            the `fit` engine.
        progress: show a progress bar over the runs on stderr.
        jit_compile: TensorFlow's compiled engine: compile with XLA (`True`,
            `False` or `"auto"`: as `protocol.jit_compile` says, which by
            default means from 4 seeds on, where it pays off).
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
    from keras_bn_tools.studies.engines.common import RunSettings, StudyData, Timer, fresh_model

    protocol = resolve_protocol(protocol)
    configs = _resolve_configs(protocol, configs)
    seeds = check_seeds("seeds", seeds)
    epochs = protocol.epochs if epochs is None else check_positive_int("epochs", epochs)
    batch_size = protocol.batch_size if batch_size is None else batch_size
    settings = RunSettings(
        epochs,
        check_positive_int("batch_size", batch_size),
        check_choice("shuffle", shuffle, SHUFFLES),
    )
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")
    if callbacks_factory is not None and not callable(callbacks_factory):
        raise TypeError(f"`callbacks_factory` must be callable, got {callbacks_factory!r}.")
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
    import keras

    backend = keras.backend.backend()
    module = resolve_engine(engine, backend)
    options: dict[str, Any] = {}
    if module.NAME == "fit":
        options["callbacks_factory"] = callbacks_factory
    elif callbacks_factory is not None:
        raise ValueError(
            "`callbacks_factory` needs engine='fit': the compiled engine calls no Keras "
            "callbacks (its BN statistics per epoch are in RunResult.moving_stats)."
        )
    if module.__name__.endswith(".tensorflow"):
        if jit_compile == "auto":
            jit_compile = protocol.jit_compile
        options["jit_compile"] = len(seeds) >= 4 if jit_compile == "auto" else jit_compile
    data = StudyData.load(protocol, fresh_model(protocol, configs[0], seeds[0]))
    store = None
    if out is not None:
        from keras_bn_tools.studies.store import RunStore, study_fingerprint

        fingerprint = study_fingerprint(
            protocol, data=(data.train_x, data.train_y, data.test_x, data.test_y),
            epochs=settings.epochs, batch_size=settings.batch_size, shuffle=settings.shuffle,
            engine=module.NAME, backend=backend,
            options={k: v for k, v in options.items() if k != "callbacks_factory"},
        )  # fmt: skip
        store = RunStore(out, fingerprint).open(resume=resume)
    timer = Timer()
    runs = _run_all(
        protocol, configs, seeds, module=module, data=data, settings=settings, options=options,
        backend=backend, n_jobs=n_jobs, store=store, resume=resume, progress=progress,
    )  # fmt: skip
    metadata = {
        "versions": _versions(backend),
        "description": protocol.description,
        "config_descriptions": {c: protocol.configs[c] for c in configs},
        "loss": str(protocol.loss),
        "accuracy": data.accuracy,
        "compile_seconds": sum(r.compile_seconds for r in runs),
        "n_jobs": n_jobs,
        **({"jit_compile": options["jit_compile"]} if "jit_compile" in options else {}),
    }
    return StudyResult(
        protocol=protocol.name,
        runs=runs,
        configs=configs,
        seeds=seeds,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        engine=module.NAME,
        shuffle=settings.shuffle,
        target=protocol.target,
        seconds=timer.seconds,
        metadata=metadata,
    )
