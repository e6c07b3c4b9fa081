"""Inference time of a BN network, its folded copy and the same network without BN.

    python benchmarks/fold_speed.py [--rounds 15] [--batch 256]

Builds `build_cnn((32, 32, 3), filters=(32, 32, 64, 64), bn="before")` with
random BN statistics, folds it with `fold_batchnorm`, and builds the same
network with `bn="none"`. All three run on one batch of 256 images, in one
process, interleaved (each round runs every model once, in a rotating order,
so drift in the machine's load hits all of them alike), in two modes:

- eager: `model(x, training=False)`, result copied to NumPy;
- predict: `model.predict(x, batch_size=256, verbose=0)`.

It prints the median and the fastest time per call, and both relative to the
network without BN (1.00 = as fast; 1.26 = 26% slower).
Wall-clock times on a shared machine are noisy: compare the ratios, run it
more than once, and prefer an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn_tools import batchnorm_layers, build_cnn, fold_batchnorm

INPUT_SHAPE = (32, 32, 3)
FILTERS = (32, 32, 64, 64)


def _randomize_bn(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in batchnorm_layers(model):
        channels = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0.0, 1.0, channels))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
        layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
        layer.beta.assign(rng.normal(0.0, 0.1, channels))


def _models(seed: int) -> dict[str, keras.Model]:
    keras.utils.set_random_seed(seed)
    with_bn = build_cnn(INPUT_SHAPE, FILTERS, bn="before", name="bn_before")
    _randomize_bn(with_bn, np.random.default_rng(seed))
    return {
        "original (BN)": with_bn,
        "folded": fold_batchnorm(with_bn),
        "no BN": build_cnn(INPUT_SHAPE, FILTERS, bn="none", name="no_bn"),
    }


def _eager(model: keras.Model, x: np.ndarray, batch: int) -> None:
    keras.ops.convert_to_numpy(model(x, training=False))


def _predict(model: keras.Model, x: np.ndarray, batch: int) -> None:
    model.predict(x, batch_size=batch, verbose=0)


def _time(models: dict[str, keras.Model], run, x: np.ndarray, batch: int, rounds: int, warmup: int):
    names = list(models)
    for _ in range(warmup):
        for name in names:
            run(models[name], x, batch)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            run(models[name], x, batch)
            times[name].append(time.perf_counter() - start)
    return times


def _report(mode: str, times: dict[str, list[float]]) -> None:
    median_ref = statistics.median(times["no BN"])
    best_ref = min(times["no BN"])
    print(f"\n{mode}")
    print(
        f"  {'model':<14} {'median ms':>10} {'best ms':>9} {'median/no BN':>13} {'best/no BN':>11}"
    )
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(
            f"  {name:<14} {1e3 * median:>10.1f} {1e3 * best:>9.1f} "
            f"{median / median_ref:>13.3f} {best / best_ref:>11.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per model and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model and mode")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    models = _models(args.seed)
    x = np.random.default_rng(args.seed).normal(size=(args.batch, *INPUT_SHAPE)).astype("float32")
    expected = keras.ops.convert_to_numpy(models["original (BN)"](x, training=False))
    got = keras.ops.convert_to_numpy(models["folded"](x))
    print(
        f"backend {keras.backend.backend()}, keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs, batch {args.batch}, {args.rounds} rounds"
    )
    print(
        "layers: "
        + ", ".join(f"{name}: {len(model.layers)}" for name, model in models.items())
        + f"; folded vs original max |diff| {np.max(np.abs(got - expected)):.2e}"
    )
    for mode, run in (("eager: model(x, training=False)", _eager), ("predict", _predict)):
        _report(mode, _time(models, run, x, args.batch, args.rounds, args.warmup))


if __name__ == "__main__":
    main()
