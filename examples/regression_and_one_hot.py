"""Studies beyond binary accuracy: a regressor scored by MAE, and one-hot labels.

Two protocols of your own, written the way `examples/own_protocol.py` writes one:

- `FRIEDMAN`: regression. scikit-learn's `make_friedman1` (y = 10 sin(pi x0 x1) +
  20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise; five more inputs are pure noise), an MLP
  with a linear output, mean squared error as the loss and the test set's mean
  absolute error as the metric (`metric="mae"`: lower is better, so the target is
  reached when the test MAE falls to it or below). One config sets its own batch
  size with `studies.Config`: does BN still help when each batch holds 8 rows?
- `WINE`: three classes with one-hot labels. scikit-learn's wine data (13 raw
  measurements, from ~0.1 to ~1,000), a softmax MLP and categorical cross-entropy;
  `metric="accuracy"` sees one-hot labels and a 3-way softmax and scores
  categorical accuracy.

Run both from Python:

    python examples/regression_and_one_hot.py [--seeds N] [--epochs E]

or either one from the command line, by file path:

    keras-bn-tools study examples/regression_and_one_hot.py:WINE --seeds 10
    keras-bn-tools study examples/regression_and_one_hot.py:FRIEDMAN --seeds 10
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn_tools.studies import Config, Protocol, run_study


def load_friedman():
    """600 points of `make_friedman1` (fixed seed): 450 train, 150 test."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=600, noise=1.0, random_state=0)
    x, y = x.astype("float32"), y.astype("float32")
    return (x[:450], y[:450]), (x[450:], y[450:])


def build_friedman(config: str):
    """Dense(64) -> Dense(64) -> Dense(1), BN before each ReLU unless `baseline`."""
    bn = config != "baseline"
    layers = [keras.Input((10,))]
    for i in range(2):
        layers.append(keras.layers.Dense(64, use_bias=not bn))
        if bn:
            layers.append(keras.layers.BatchNormalization(name=f"bn_{i}"))
        layers.append(keras.layers.Activation("relu"))
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers, name=config.replace("-", "_"))


def adam():
    return keras.optimizers.Adam(learning_rate=0.003)


FRIEDMAN = Protocol(
    name="friedman",
    description="make_friedman1 (600 points, noise 1), MLP regressor; metric: test MAE.",
    load_data=load_friedman,
    build=build_friedman,
    configs={
        "baseline": "no BN",
        "bn": "BN before each ReLU, batches of 32",
        # The same model trained with batches of 8: the config sets its own batch size.
        "bn-batch-8": Config("BN before each ReLU, batches of 8", batch_size=8),
    },
    default_configs=("baseline", "bn", "bn-batch-8"),
    epochs=40,
    batch_size=32,
    optimizer=adam,
    loss="mse",
    metric="mae",
    target=1.5,
)


def load_wine():
    """The wine data, unscaled, labels one-hot; every third row is a test row."""
    from sklearn.datasets import load_wine as wine

    x, y = wine(return_X_y=True)
    x = x.astype("float32")
    one_hot = np.eye(3, dtype="float32")[y]
    test = np.arange(len(y)) % 3 == 2
    return (x[~test], one_hot[~test]), (x[test], one_hot[test])


def build_wine(config: str):
    """[BN ->] Dense(32, relu) -> Dense(3, softmax)."""
    layers = [keras.Input((13,))]
    if config == "bn-input":
        layers.append(keras.layers.BatchNormalization(name="input_bn"))
    layers += [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3, "softmax")]
    return keras.Sequential(layers, name=config.replace("-", "_"))


WINE = Protocol(
    name="wine",
    description="sklearn's wine data unscaled, one-hot labels, a softmax MLP.",
    load_data=load_wine,
    build=build_wine,
    configs={
        "raw": "raw features -> Dense(32, relu) -> Dense(3, softmax)",
        "bn-input": "BatchNormalization on the raw features first",
    },
    default_configs=("raw", "bn-input"),
    epochs=40,
    batch_size=16,
    optimizer=adam,
    loss="categorical_crossentropy",
    target=0.9,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per config (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: 40)")
    args = parser.parse_args(argv)
    results = {}
    for protocol in (FRIEDMAN, WINE):
        result = run_study(protocol, seeds=range(args.seeds), epochs=args.epochs)
        print(result.table(), end="\n\n")
        results[protocol.name] = result
    return results


if __name__ == "__main__":
    main()
