"""Time the circles study's two engines side by side on the default study.

    python benchmarks/study_speed.py                 # 3 configs x 10 seeds x 100 epochs
    python benchmarks/study_speed.py --fit-seeds 2   # time 2 fit runs per config
    python benchmarks/study_speed.py --jit both      # compiled engine with and without XLA

The compiled engine runs the whole default study (every config and seed). The
`fit` engine is timed on a subset (the first `--fit-seeds` seeds of every
config), and its per-run time is extrapolated: `fit` costs the same for every
run, so the subset's mean is a fair estimate. Both engines' per-run seconds
are printed with their ratio; the compiled engine's figure includes building
the graph (tracing, and compiling with XLA when on), spread over its runs.
Because both engines use the same seeds, initial weights and batches, the
subset's results also show how far apart they are (float round-off only).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the compiled study")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--fit-seeds", type=int, default=1, help="fit runs timed per config")
    parser.add_argument(
        "--jit",
        choices=["auto", "true", "false", "both"],
        default="auto",
        help="compiled engine's jit_compile ('both' times XLA and plain graph)",
    )
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_bn_tools.studies.circles import DEFAULT_CONFIGS, run_study

    configs = list(DEFAULT_CONFIGS)
    print(
        f"Circles study speed: {len(configs)} configs x {args.seeds} seeds x {args.epochs} "
        f"epochs; Keras {keras.__version__}, TensorFlow {tf.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {_load():.1f}"
    )

    jit_modes = {"auto": ["auto"], "true": [True], "false": [False], "both": [True, False]}
    compiled = {}
    for jit in jit_modes[args.jit]:
        start = time.perf_counter()
        result = run_study(configs, seeds=range(args.seeds), epochs=args.epochs, jit_compile=jit)
        total = time.perf_counter() - start
        first = [result.runs_for(c)[0].seconds for c in configs]
        rest = [r.seconds for c in configs for r in result.runs_for(c)[1:]]
        label = f"compiled (jit_compile={jit!r} -> XLA {result.metadata['jit_compile']})"
        compiled[label] = (result, total)
        print(
            f"{label}: {total:.1f} s for {len(result.runs)} runs = "
            f"{total / len(result.runs):.3f} s per run including graph building; "
            f"first run per config {statistics.mean(first):.2f} s (tracing"
            f"{' + XLA compile' if result.metadata['jit_compile'] else ''}), later runs "
            f"median {statistics.median(rest) if rest else float('nan'):.3f} s"
        )

    start = time.perf_counter()
    fit = run_study(configs, seeds=range(args.fit_seeds), epochs=args.epochs, engine="fit")
    fit_total = time.perf_counter() - start
    fit_per_run = fit_total / len(fit.runs)
    print(
        f"fit: {fit_total:.1f} s for {len(fit.runs)} runs (seeds 0-{args.fit_seeds - 1} of "
        f"each config) = {fit_per_run:.2f} s per run; the whole study would take about "
        f"{fit_per_run * len(configs) * args.seeds:.0f} s"
    )
    for label, (result, total) in compiled.items():
        per_run = total / len(result.runs)
        print(f"speed-up of {label} over fit, per run: {fit_per_run / per_run:.1f}x")
        gaps = []
        for run in fit.runs:
            twin = next(r for r in result.runs_for(run.config) if r.seed == run.seed)
            gaps.append(
                max(
                    float(np.max(np.abs(run.history[m] - twin.history[m])))
                    for m in ("loss", "val_loss")
                )
            )
            gaps.append(abs(run.final_test_accuracy - twin.final_test_accuracy))
        print(f"  largest gap to fit over the same seeds (losses, final test acc): {max(gaps):.2g}")
    print(f"load average at the end: {_load():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
