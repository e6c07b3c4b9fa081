"""Overhead of MovingStatsTracker on `model.fit` for the circles study's BN-after model.

Run: `python3 benchmarks/tracker_overhead.py` (`--help` for options).

The model is the circles study's `2 -> Dense(50, relu, he_uniform) -> BN ->
Dense(1, sigmoid)`, SGD(0.01, momentum 0.9), binary cross-entropy, batch 32,
500 training rows (16 steps per epoch) and, as in the study, the 500 test rows
as validation data every epoch (`--no-validation` to drop it, which makes the
relative overhead larger).

Variants, each with its own model (same initial weights, compiled alike,
warmed up with one fit so that tracing is not timed):

- `none` and `none (A/A)`: no tracker; the second one shows the noise floor;
- `epoch`: `MovingStatsTracker()` (a record after each epoch);
- `every=1`: `MovingStatsTracker(every=1)` (a record after every batch);
- `epoch+log_dir`, `every=1+log_dir`: the same, also appending each record to
  disk.

Each round runs `fit(epochs=E)` once per variant, in an order that rotates
from round to round, with a fresh tracker each time (its set-up is timed too).
Two measures per variant, each the median over rounds:

- `overhead`: (fit time of the variant / fit time of `none`) - 1 in wall
  time, so slow drifts of a shared machine cancel out (the same in process CPU
  time alongside); `none (A/A)` shows how noisy this is on the machine;
- `in tracker`: time spent inside the tracker's own hooks / the fit time of
  the same run. It misses indirect costs (Keras dispatches batch hooks
  synchronously once a callback has a real one) but hardly depends on other
  processes sharing the machine.

Targets: <= 3% per epoch, <= 15% every batch. The verdict uses the CPU-time
overhead and the in-tracker share (both robust to other processes); the
wall-time overhead is meaningful only where it is well above the A/A row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras

from keras_bn_tools.builders import build_mlp
from keras_bn_tools.callbacks import MovingStatsTracker
from keras_bn_tools.studies.circles import load_circles

TARGETS = {"epoch": 0.03, "every=1": 0.15, "epoch+log_dir": 0.03, "every=1+log_dir": 0.15}


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_mlp(2, (50,), bn="after")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_end", "on_epoch_end", "on_train_end")


def timed_tracker(variant: str, log_root: str) -> tuple[MovingStatsTracker, list[float]]:
    """A tracker whose hooks add the seconds they take to the returned one-item list."""
    every = 1 if variant.startswith("every=1") else "epoch"
    log_dir = os.path.join(log_root, variant) if variant.endswith("log_dir") else None
    tracker = MovingStatsTracker(every=every, log_dir=log_dir)
    spent = [0.0]
    for name in HOOKS:
        hook = getattr(tracker, name)

        def timed(*args, _hook=hook, **kwargs):
            start = time.perf_counter()
            try:
                return _hook(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(tracker, name, timed)
    return tracker, spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per timed fit")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (one fit per variant)")
    parser.add_argument("--no-validation", action="store_true", help="no per-epoch validation")
    args = parser.parse_args(argv)

    (x, y), (test_x, test_y) = load_circles()
    validation = None if args.no_validation else (test_x, test_y)
    variants = ["none", "none (A/A)", "epoch", "every=1", "epoch+log_dir", "every=1+log_dir"]
    models = {variant: build() for variant in variants}
    log_root = tempfile.mkdtemp(prefix="tracker_overhead_")

    def fit(variant: str) -> tuple[float, float, float]:
        """(wall, CPU, in-tracker) seconds of one fit."""
        callbacks, spent = [], [0.0]
        if not variant.startswith("none"):
            tracker, spent = timed_tracker(variant, log_root)
            callbacks = [tracker]
        wall, cpu = time.perf_counter(), time.process_time()
        models[variant].fit(
            x,
            y,
            epochs=args.epochs,
            batch_size=32,
            validation_data=validation,
            verbose=0,
            callbacks=callbacks,
        )
        return time.perf_counter() - wall, time.process_time() - cpu, spent[0]

    for variant in variants:  # trace and warm up
        models[variant].fit(x, y, epochs=1, validation_data=validation, verbose=0)
        fit(variant)

    times: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            times[variant].append(fit(variant))

    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds of fit(epochs={args.epochs}, 16 steps/epoch"
        f"{'' if args.no_validation else ', validation each epoch'})"
    )
    print(f"{'variant':<17} {'ms/epoch':>9} {'overhead':>9} {'CPU':>7} {'in tracker':>11}  target")
    verdicts = []
    for variant in variants:
        per_epoch = 1e3 * statistics.median(t[0] for t in times[variant]) / args.epochs
        if variant == "none":
            print(f"{variant:<17} {per_epoch:9.2f}")
            continue
        pairs = list(zip(times[variant], times["none"], strict=True))
        overhead = statistics.median(v[0] / n[0] for v, n in pairs) - 1
        cpu_overhead = statistics.median(v[1] / n[1] for v, n in pairs) - 1
        share = statistics.median(t[2] / t[0] for t in times[variant])
        target = TARGETS.get(variant)
        shown = ""
        if target is not None:
            verdict = "ok" if cpu_overhead <= target and share <= target else "OVER"
            verdicts.append(verdict)
            shown = f"<= {target:.0%} {verdict}"
        print(
            f"{variant:<17} {per_epoch:9.2f} {overhead:+9.1%} {cpu_overhead:+7.1%} "
            f"{share:11.2%}  {shown}",
            flush=True,
        )
    print(
        f"{verdicts.count('ok')} of {len(verdicts)} tracker variants within target "
        "(CPU overhead and in-tracker share)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
