"""The joblib backend a parallel study runs on: local processes, Dask or Ray.

`cluster_backend(name)` makes the `joblib.Parallel` calls of `run_study(...,
n_jobs=N)` (`keras_bn_tools.studies.parallel`) run on loky's local processes, a
Dask cluster (a `LocalCluster` it starts, or a running scheduler) or a Ray
cluster; `check_cluster_backend` refuses one whose package is missing, naming
the extra that installs it. Starting workers is Dask's and Ray's work, not ours.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

__all__ = ["CLUSTER_BACKENDS", "QUIET_LOCAL_DASK", "check_cluster_backend", "cluster_backend"]

#: The joblib backends that need a package of their own, and the extra that installs it.
CLUSTER_BACKENDS = {"dask": ("distributed", "dask"), "ray": ("ray", "ray")}
#: Dask diagnostics that a local cluster started here turns down. It has no dashboard to
#: show them, and each takes the GIL from the workers' tasks: the event loop's health
#: tick (every 20 ms), the statistical profiler (every 10 ms) and the system monitor
#: (every 0.5 s) cost the digits study 8-12% of its compute time on 2 cores.
QUIET_LOCAL_DASK = {
    "distributed.admin.tick.interval": "1000ms",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5000ms",
}


def check_cluster_backend(name: str) -> None:
    """Refuse a joblib backend whose package is not installed, naming the extra.

    Raises:
        ValueError: an unknown backend, or `"dask"`/`"ray"` without its package.
    """
    if name == "loky":
        return
    if name not in CLUSTER_BACKENDS:
        raise ValueError(f"joblib backend must be 'loky', 'dask' or 'ray', got {name!r}.")
    package, extra = CLUSTER_BACKENDS[name]
    try:
        importlib.import_module(package)
    except ImportError:
        raise ValueError(
            f"The {name!r} joblib backend needs the {package!r} package, which is not "
            f"installed: pip install 'keras-bn-tools[{extra}]'."
        ) from None


@contextlib.contextmanager
def cluster_backend(name: str, *, address: str | None = None,
                    workers: int | None = None) -> Iterator[None]:  # fmt: skip
    """Run the `joblib.Parallel` calls inside on `name`'s workers.

    Args:
        name: `"loky"` (local processes, joblib's default), `"dask"` or `"ray"`.
        address: the Dask scheduler's address (`tcp://host:8786`) or the Ray
            cluster's (`ray://host:10001`, `auto`); None starts a local one
            (Dask: a `distributed.LocalCluster` of `workers` one-thread worker
            processes, its diagnostics turned down (`QUIET_LOCAL_DASK`); Ray:
            `ray.init(num_cpus=workers)`).
        workers: local workers (default: every core).

    Example:
        ```python
        from keras_bn_tools.studies import run_study
        from keras_bn_tools.studies.clusters import cluster_backend

        with cluster_backend("dask", workers=2):
            result = run_study("circles", n_jobs=-1, out="circles_runs")
        ```
    """
    import joblib

    check_cluster_backend(name)
    if name == "loky":
        with joblib.parallel_config(backend="loky"):
            yield
        return
    if name == "dask":
        import dask
        import distributed

        with contextlib.ExitStack() as stack:
            if address is None:
                with dask.config.set(QUIET_LOCAL_DASK):  # the nannies pass it on to the workers
                    cluster = stack.enter_context(distributed.LocalCluster(
                        n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                        processes=True, dashboard_address=None))  # fmt: skip
                address = cluster
            stack.enter_context(distributed.Client(address))
            stack.enter_context(joblib.parallel_config(backend="dask"))
            yield
        return
    import ray
    from ray.util.joblib import register_ray

    started = not ray.is_initialized()
    if started and address is None:  # local: workers import what this process can
        path = os.pathsep.join(p for p in sys.path if p)
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})  # fmt: skip
    elif started:
        ray.init(address=address, log_to_driver=False)
    register_ray()
    try:
        with joblib.parallel_config(backend="ray"):
            yield
    finally:
        if started:
            ray.shutdown()
