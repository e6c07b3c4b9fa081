"""A study's runs spread over processes and machines through joblib.

`run_study(..., n_jobs=N)` cuts the study into units of work, one config's chunk
of up to `SEEDS_PER_UNIT` consecutive seeds of the study's seed list, and hands
them to `joblib.Parallel`: to local processes (joblib's default, loky), or to
whatever backend `joblib.parallel_config` names: `"dask"` with a
`distributed.Client` (a `LocalCluster`, or a cluster that dask-jobqueue or
dask-kubernetes started), `"ray"` after `ray.util.joblib.register_ray()`
(`keras_bn_tools.studies.clusters.cluster_backend` sets either up). Nothing
here schedules anything: joblib and the cluster do.

Why units of one config: a compiled engine compiles once per config and then
runs every seed through the same program (vmapped on JAX), so a unit pays one
compile for up to `SEEDS_PER_UNIT` runs. Why the grouping comes from the seed
list and not from `n_jobs`: on JAX the seeds of a unit are trained together
by one vmapped program whose size changes the float rounding, so the same
units everywhere are what makes the results identical, run for run, whatever
`n_jobs` and backend.

Each worker process limits its backend's threads (`limit_threads`): N workers
on a machine with C cores use C // N threads each, so that they do not
oversubscribe the cores. With `out`, a worker saves each run the moment it
finishes (`keras_bn_tools.studies.store`), so a killed worker loses only its
unfinished runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_bn_tools.studies.registry import resolve_protocol

__all__ = [
    "SEEDS_PER_UNIT",
    "Unit",
    "UnitContext",
    "check_n_jobs",
    "limit_threads",
    "plan_units",
    "run_units",
]

#: The most seeds of one config in one unit of work.
SEEDS_PER_UNIT = 10
#: Exceptions (by class name) that mean a worker process died, not that a run failed.
_WORKER_DEATHS = ("TerminatedWorkerError", "KilledWorker", "WorkerCrashedError",
                  "BrokenProcessPool", "RayActorError", "NodeDiedError")  # fmt: skip


def check_n_jobs(n_jobs: Any) -> int:
    """`n_jobs` as joblib takes it: a positive integer, or -1 for every core.

    Raises:
        TypeError: not an integer (a bool, a float, a string).
        ValueError: 0, or a negative number other than -1.
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
        raise TypeError(
            f"`n_jobs` must be an integer (a number of processes, or -1 for every core), "
            f"got {n_jobs!r}."
        )
    if n_jobs == 0 or n_jobs < -1:
        raise ValueError(
            f"`n_jobs` must be a positive number of processes or -1 (every core), got {n_jobs}."
        )
    return n_jobs


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One unit of work: `config` trained on `seeds` by one engine call.

    Attributes:
        config: the config's name.
        seeds: the seeds the engine trains together (the whole unit, on an
            engine whose numbers depend on the grouping).
        keep: the seeds whose runs are wanted (the others are saved already).
    """

    config: str
    seeds: tuple[int, ...]
    keep: tuple[int, ...]


def plan_units(configs: Sequence[str], seeds: Sequence[int], *, done: Any = (),
               whole_units: bool = False) -> list[Unit]:  # fmt: skip
    """The study's units: per config, chunks of `SEEDS_PER_UNIT` consecutive seeds.

    Args:
        configs: the study's configs, in order.
        seeds: the study's seeds, in order.
        done: `(config, seed)` pairs already finished (saved): left out.
        whole_units: the engine trains a unit's seeds together and its numbers
            depend on how many (JAX's vmap): a partly finished unit is trained
            whole again, keeping only the missing runs; otherwise only the
            missing seeds are trained.
    """
    done = set(done)
    units = []
    for config in configs:
        for start in range(0, len(seeds), SEEDS_PER_UNIT):
            chunk = tuple(int(s) for s in seeds[start : start + SEEDS_PER_UNIT])
            keep = tuple(s for s in chunk if (config, s) not in done)
            if keep:
                units.append(Unit(config, chunk if whole_units else keep, keep))
    return units


@dataclass
class UnitContext:
    """Everything a worker needs to run units: sent once per unit, small.

    Attributes:
        protocol: a built-in protocol's name, or the `Protocol` itself.
        engine: the `Engine` that runs the units.
        data: the study's `StudyData`.
        settings: config name -> the `RunSettings` of its runs.
        options: the engine's keyword options.
        backend: the Keras backend the study runs on.
        store: a `RunStore` to save each run in as it finishes, or None.
        threads: threads each worker process may use.
        compile_cache: JAX's persistent compilation cache folder, or None.
        whole_units: the engine's numbers depend on how many seeds it trains
            together (see `plan_units`).
        parent: the process id of the study's process (not limited).
    """

    protocol: Any
    engine: Any
    data: Any
    settings: Any
    options: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "tensorflow"
    store: Any = None
    threads: int = 1
    compile_cache: str | None = None
    whole_units: bool = False
    parent: int = field(default_factory=os.getpid)


# --------------------------------------------------------------------------- workers

_LIMITED: dict[str, int] = {}


def limit_threads(threads: int, backend: str) -> None:
    """Make this process use at most `threads` threads for its numeric work.

    Sets the variables that OpenMP, MKL, OpenBLAS, TensorFlow and XLA read at
    start-up (effective when the backend is not imported yet, as in a fresh
    worker), and TensorFlow's thread pools when TensorFlow has not started them.
    Called once per worker process; later calls change nothing.
    """
    if _LIMITED:
        return
    _LIMITED["threads"] = threads
    count = str(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "TF_NUM_INTRAOP_THREADS"):  # fmt: skip
        os.environ[name] = count
    # Two inter-op threads whatever `threads`: they schedule more than they compute, and
    # the TensorFlow engine's graph calls and its next seeds' models need one each.
    os.environ["TF_NUM_INTEROP_THREADS"] = "2"
    if threads == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    if backend == "tensorflow":
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # TensorFlow started its pools already
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(int(os.environ[
                "TF_NUM_INTEROP_THREADS"]))  # fmt: skip


def _prepare_worker(context: UnitContext) -> None:
    """In a worker process: its Keras backend, its thread limits, JAX's compile cache."""
    if os.getpid() != context.parent:
        if "keras" not in sys.modules:
            os.environ["KERAS_BACKEND"] = context.backend
        limit_threads(context.threads, context.backend)
    import keras

    if keras.backend.backend() != context.backend:
        raise RuntimeError(
            f"This worker runs Keras on {keras.backend.backend()!r}, the study on "
            f"{context.backend!r}: start the workers with KERAS_BACKEND={context.backend}."
        )
    if context.compile_cache and context.backend == "jax":
        from keras_bn_tools.studies.compile_cache import use_compile_cache

        use_compile_cache(context.compile_cache)


def run_unit(context: UnitContext, unit: Unit,
             on_run: Callable[[Any], None] | None = None) -> list[Any]:  # fmt: skip
    """Run one unit (in whatever process joblib chose) and return its kept runs.

    With a store, each run is saved the moment it finishes, and the unit's runs
    that are saved already (by an earlier attempt at this unit, on a worker that
    died) are loaded, not run again (on JAX the unit is trained whole all the
    same, for identical numbers, and only the missing runs are saved)."""
    _prepare_worker(context)
    protocol = resolve_protocol(context.protocol)
    found = {}
    if context.store is not None:
        found = {seed: run for (_, seed), run in context.store.load_many(
            [(unit.config, s) for s in unit.keep]).items()}  # fmt: skip
    wanted = [s for s in unit.keep if s not in found]
    seeds = list(unit.seeds) if context.whole_units else wanted
    runs = []
    if wanted:
        settings = context.settings[unit.config]
        runner = context.engine.run_seeds(protocol, unit.config, seeds, data=context.data,
                                          settings=settings, **context.options)  # fmt: skip
        for run in runner:
            if run.seed not in wanted:
                continue
            if context.store is not None:
                context.store.save(run)
            found[run.seed] = run
    for seed in unit.keep:
        if on_run is not None:
            on_run(found[seed])
        runs.append(found[seed])
    return runs


def _run_unit_remote(context: UnitContext, unit: Unit) -> list[Any]:
    runs = run_unit(context, unit)
    for run in runs:
        run.callbacks = []  # callbacks hold their run's model: they stay in the worker
    return runs


# --------------------------------------------------------------------------- the study side


#: Sets the threads of each worker process, in place of cores // workers.
THREADS_ENV = "KERAS_BN_TOOLS_WORKER_THREADS"


def worker_threads(n_jobs: int, units: int) -> int:
    """Threads per worker: this machine's cores shared by the workers that run at once
    (`$KERAS_BN_TOOLS_WORKER_THREADS` if set)."""
    import joblib

    setting = os.environ.get(THREADS_ENV, "").strip()
    if setting:
        if not setting.isdecimal() or int(setting) < 1:  # no sign, point or superscript
            raise ValueError(
                f"${THREADS_ENV}={setting!r}: the threads each worker may use must be a whole "
                "number >= 1; unset it to share this machine's cores among the workers."
            )
        return int(setting)

    workers = max(1, min(joblib.effective_n_jobs(n_jobs), units))
    return max(1, (os.cpu_count() or 1) // workers)


def run_units(context: UnitContext, units: Sequence[Unit], n_jobs: int,
              on_run: Callable[[Any], None]) -> Iterator[Any]:  # fmt: skip
    """Every kept run of `units`, as they finish: in this process for `n_jobs=1`
    (`on_run` called per run), else through `joblib.Parallel` (`on_run` called per
    run as each unit returns). A worker that died is reported as `WorkerDiedError`."""
    if n_jobs == 1:
        for unit in units:
            yield from run_unit(context, unit, on_run)
        return
    import joblib

    tasks = [joblib.delayed(_run_unit_remote)(context, unit) for unit in units]
    try:
        for runs in _in_parallel(tasks, n_jobs):
            for run in runs:
                on_run(run)
                yield run
    except Exception as error:
        if type(error).__name__ in _WORKER_DEATHS:
            raise WorkerDiedError(
                f"A worker process died mid-study ({type(error).__name__}: {error})."
            ) from error
        raise


def _in_parallel(tasks: list, n_jobs: int) -> Any:
    """`joblib.Parallel`'s results as each unit finishes; in order where the backend
    cannot return them unordered (Ray's), all at once where it cannot stream them."""
    import joblib

    for return_as in ("generator_unordered", "generator", "list"):
        try:
            return joblib.Parallel(n_jobs=n_jobs, return_as=return_as)(tasks)
        except ValueError as error:
            if "return_as" not in str(error):
                raise
    raise AssertionError("unreachable: joblib returns lists on every backend")


class WorkerDiedError(RuntimeError):
    """A worker process of a parallel study died (killed, out of memory)."""
