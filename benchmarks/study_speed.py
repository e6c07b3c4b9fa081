"""Time the study's engines side by side, in one process, on the current Keras backend.

    python benchmarks/study_speed.py                       # TensorFlow
    KERAS_BACKEND=jax python benchmarks/study_speed.py     # JAX
    python benchmarks/study_speed.py --sweep               # also 100 seeds x 6 configs

The compiled engine runs the default circles study (3 configs x 10 seeds x 100
epochs). The `fit` engine is timed on the first `--fit-seeds` seeds of every
config; `fit` costs about the same for every run, so the subset's mean per
run is a fair estimate of the whole study's. Printed: seconds per run for both
engines and their ratio, with the compiled engine's compile time included and
apart (JAX: measured; TensorFlow: the first run of each config minus a later
run, i.e. tracing + XLA), and the largest gap between the two engines on the
runs both made (same seeds, same batches: float round-off).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SWEEP_CONFIGS = ("baseline", "bn-after", "bn-before", "bn-after-no-affine",
                 "bn-after-momentum0", "bn-input")  # fmt: skip


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


def _compile_seconds(result) -> float:
    """Measured (JAX) or estimated (TF: first run of a config minus its median later run)."""
    measured = sum(run.compile_seconds for run in result.runs)
    if measured > 0:
        return measured
    total = 0.0
    for config in result.configs:
        seconds = [run.seconds for run in result.runs_for(config)]
        if len(seconds) > 1:
            total += seconds[0] - statistics.median(seconds[1:])
    return total


def _gap(fit, compiled) -> float:
    import numpy as np

    gaps = []
    for run in fit.runs:
        twin = next(r for r in compiled.runs_for(run.config) if r.seed == run.seed)
        for m in ("loss", "val_loss", "accuracy", "val_accuracy"):
            gaps.append(float(np.max(np.abs(run.history[m] - twin.history[m]))))
        gaps.append(abs(run.final_test_accuracy - twin.final_test_accuracy))
    return max(gaps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the compiled study")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--fit-seeds", type=int, default=1, help="fit runs timed per config")
    parser.add_argument("--sweep", action="store_true", help="also 100 seeds x 6 configs")
    args = parser.parse_args(argv)

    import keras

    from keras_bn_tools.studies import run_study

    configs = ["baseline", "bn-after", "bn-before"]
    print(
        f"Study speed on {keras.backend.backend()}: circles, {len(configs)} configs x "
        f"{args.seeds} seeds x {args.epochs} epochs; Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load {_load():.1f}"
    )
    # Once per process, not per engine: the first `keras.utils.set_random_seed` imports
    # TensorFlow (seconds, on JAX too); pay it here so that neither engine's timing does.
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    compiled = run_study("circles", configs, range(args.seeds), epochs=args.epochs,
                         engine="compiled")  # fmt: skip
    total = time.perf_counter() - start
    compile_s = _compile_seconds(compiled)
    n = len(compiled.runs)
    print(
        f"compiled: {total:.1f} s for {n} runs = {total / n:.3f} s per run with compiling; "
        f"compile {compile_s:.1f} s in all; {(total - compile_s) / n:.4f} s per run without"
    )
    start = time.perf_counter()
    fit = run_study("circles", configs, range(args.fit_seeds), epochs=args.epochs, engine="fit")
    fit_per_run = (time.perf_counter() - start) / len(fit.runs)
    print(f"fit: {fit_per_run:.2f} s per run ({len(fit.runs)} runs); the study would take "
          f"about {fit_per_run * n:.0f} s")  # fmt: skip
    print(f"speed-up per run: {fit_per_run / (total / n):.0f}x with compile time, "
          f"{fit_per_run / ((total - compile_s) / n):.0f}x without")  # fmt: skip
    print(f"largest gap between the engines on the same runs: {_gap(fit, compiled):.2g}")
    if args.sweep:
        start = time.perf_counter()
        sweep = run_study("circles", SWEEP_CONFIGS, range(100), epochs=args.epochs)
        print(f"sweep: {len(sweep.runs)} runs (100 seeds x {len(SWEEP_CONFIGS)} configs, "
              f"engine {sweep.engine}) in {time.perf_counter() - start:.1f} s")  # fmt: skip
    print(f"load average at the end: {_load():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
