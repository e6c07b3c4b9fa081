"""The command line's scaling options: `--jobs`, `--cluster`, `--address`, `--resume`,
`--compile-cache` (parsed by `keras_bn_tools_cli`), each checked before any work
(bad input: exit 2, the option named).

- `--jobs N` is `run_study(n_jobs=N)`; `--cluster dask|ray` runs the jobs on a
  Dask or Ray cluster (`--address` of a running one, else a local one of
  `--jobs` workers) through `keras_bn_tools.studies.clusters.cluster_backend`.
- `--resume` is `run_study(out=..., resume=True)` on `--out`'s `runs/` folder.
- `--compile-cache DIR|off` is JAX's persistent compilation cache (default:
  `keras_bn_tools.studies.compile_cache.default_location()`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from keras_bn_tools._cli_output import UsageError

__all__ = ["check_scaling", "prepare_out", "scaled"]


def check_scaling(args: argparse.Namespace, backend: str, *, experiment: bool = False
                  ) -> str | None:  # fmt: skip
    """Check the scaling options before any work; return the compile cache folder
    to use (None: none)."""
    from keras_bn_tools.studies import compile_cache
    from keras_bn_tools.studies.clusters import check_cluster_backend

    if experiment and (args.jobs != 1 or args.resume or args.cluster != "loky"):
        raise UsageError(
            f"--jobs/--cluster/--resume: the {args.protocol} experiment runs its own "
            f"measurements in one process; run it without them"
        )
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite: choose one (keep the runs, or start over)")
    if args.address is not None and args.cluster == "loky":
        raise UsageError("--address: needs --cluster dask or --cluster ray")
    try:
        check_cluster_backend(args.cluster)
    except ValueError as error:
        raise UsageError(f"--cluster {args.cluster}: {error}") from None
    if args.cluster != "loky" and args.jobs == 1:
        args.jobs = -1  # a cluster's every worker
    cache = args.compile_cache
    if cache is not None and not compile_cache.is_off(cache) and backend != "jax":
        raise UsageError(
            f"--compile-cache: JAX's compilation cache; the Keras backend is {backend!r} "
            f"(run with KERAS_BACKEND=jax)"
        )
    if backend != "jax" or (cache is not None and compile_cache.is_off(cache)):
        return None
    folder = compile_cache.default_location() if cache is None else Path(cache).expanduser()
    if folder is not None and folder.exists() and not folder.is_dir():
        raise UsageError(f"--compile-cache {str(folder)!r} exists and is not a directory")
    return None if folder is None else os.fspath(folder)


def prepare_out(out: Path, *, overwrite: bool) -> None:
    """With `--overwrite`, drop the earlier study's finished runs before this one saves
    its own (its final results stay until this study's replace them)."""
    runs = out.expanduser().absolute() / "runs"
    if overwrite and runs.is_dir():
        shutil.rmtree(runs)


@contextlib.contextmanager
def scaled(args: argparse.Namespace, cache: str | None) -> Iterator[None]:
    """The compile cache on, and the `--cluster`'s joblib backend around the study."""
    if cache is not None:
        from keras_bn_tools.studies.compile_cache import use_compile_cache

        use_compile_cache(cache)
    if args.cluster == "loky":
        yield
        return
    from keras_bn_tools.studies.clusters import cluster_backend

    workers = None if args.jobs == -1 else args.jobs
    with cluster_backend(args.cluster, address=args.address, workers=workers):
        yield
