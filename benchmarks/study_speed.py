"""Time the study's engines side by side, in one process, on the current Keras backend.

    python benchmarks/study_speed.py                       # TensorFlow
    KERAS_BACKEND=jax python benchmarks/study_speed.py     # JAX
    python benchmarks/study_speed.py --sweep               # also 100 seeds x 6 configs

The compiled engine runs the default circles study (3 configs x 10 seeds x 100
epochs). Two references are timed on the first `--fit-seeds` seeds of every
config (a run through `fit` costs about the same for every seed, so the
subset's mean per run is a fair estimate of the whole study's):

- the `fit` engine: `model.fit` fed the study's orders through a `PyDataset`,
  with `MovingStatsTracker` recording BN statistics;
- the tutorial's plain `model.fit(train_x, train_y, validation_data=(test_x,
  test_y), epochs=100, verbose=0)` (Keras shuffles; no callbacks).

Before anything is timed the process is warmed up once (data loaded, one model
of each config built): the first Keras model of a process pays one-time costs
(imports, small kernels) that would otherwise land on whichever engine runs
first. Printed: seconds per run and the ratios, with the compiled engine's
compile time included and apart (JAX: measured; TensorFlow: the first run of
each config minus the median later run: tracing and XLA, plus the later seeds'
models the engine builds while XLA compiles), and the largest
gap between the engines on the runs both made (same seeds, same batches:
float round-off). `--against-tensorflow-fit` (JAX) also times the plain
`model.fit` under TensorFlow, in a child process since a process has one
Keras backend, for the ratio against the tutorial's own setting.
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


def _plain_fit_seconds(configs, seeds: int, epochs: int) -> float:
    """Seconds per run of the tutorial's `model.fit` on arrays (Keras shuffles)."""
    import keras

    from keras_bn_tools.studies.circles import PROTOCOL, load_circles

    (train_x, train_y), test = load_circles()
    seconds = []
    for config in configs:
        for seed in range(seeds):
            keras.utils.set_random_seed(seed)
            model = PROTOCOL.build(config)
            model.compile(PROTOCOL.optimizer(), PROTOCOL.loss, metrics=["accuracy"])
            start = time.perf_counter()
            model.fit(train_x, train_y, validation_data=test, epochs=epochs, verbose=0)
            seconds.append(time.perf_counter() - start)
    return statistics.fmean(seconds)


def _tensorflow_plain_fit_seconds(args) -> float:
    """`_plain_fit_seconds` under TensorFlow, in a child process."""
    import subprocess

    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    command = [sys.executable, __file__, "--plain-fit-only", "--fit-seeds", str(args.fit_seeds),
               "--epochs", str(args.epochs)]  # fmt: skip
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the compiled study")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--fit-seeds", type=int, default=1, help="fit runs timed per config")
    parser.add_argument("--sweep", action="store_true", help="also 100 seeds x 6 configs")
    parser.add_argument(
        "--against-tensorflow-fit",
        action="store_true",
        help="also time plain model.fit on TensorFlow (child process)",
    )
    parser.add_argument("--plain-fit-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import keras

    from keras_bn_tools.studies import run_study
    from keras_bn_tools.studies.circles import PROTOCOL

    configs = ["baseline", "bn-after", "bn-before"]
    if args.plain_fit_only:  # the child of --against-tensorflow-fit
        # Warm, as the parent's references are: one short fit pays the process's
        # one-time costs (imports, first model, first traced train step).
        _plain_fit_seconds(configs, 1, 1)
        print(_plain_fit_seconds(configs, args.fit_seeds, args.epochs))
        return 0
    print(
        f"Study speed on {keras.backend.backend()}: circles, {len(configs)} configs x "
        f"{args.seeds} seeds x {args.epochs} epochs; Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load {_load():.1f}"
    )
    # Once per process, not per engine: the first `keras.utils.set_random_seed` imports
    # TensorFlow (seconds, on JAX too), and the first model of each config compiles
    # small kernels; pay it here so that neither engine's timing does.
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    PROTOCOL.load_data()
    for config in configs:
        PROTOCOL.build(config)
    print(f"warm-up (imports, data, one model per config): {time.perf_counter() - start:.1f} s")
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
    plain_per_run = _plain_fit_seconds(configs, args.fit_seeds, args.epochs)
    with_compile, without = total / n, (total - compile_s) / n
    references = [("fit engine", fit_per_run), ("plain model.fit", plain_per_run)]
    if args.against_tensorflow_fit and keras.backend.backend() != "tensorflow":
        references.append(("plain model.fit on TensorFlow", _tensorflow_plain_fit_seconds(args)))
    for name, per_run in references:
        print(f"{name}: {per_run:.2f} s per run; speed-up per run {per_run / with_compile:.0f}x "
              f"with compile time, {per_run / without:.0f}x without")  # fmt: skip
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
