"""Your own model in a study: write a `Protocol`, run it over seeds, read the table.

The question here: a table of raw measurements whose columns differ in scale by four
orders of magnitude (scikit-learn's breast-cancer data: radii around 10, areas around
1,000, smoothness around 0.1). Can a BatchNormalization layer at the input stand in for
standardizing the data? Three models answer it, with the same MLP behind them:

- "raw":          the raw features -> Dense(32, relu) -> Dense(1, sigmoid)
- "standardized": a `keras.layers.Normalization` with the training set's mean and
                  variance first (what one would normally do)
- "bn-input":     a `BatchNormalization` layer first, learning nothing from the data
                  beforehand

A protocol is plain data: a loader, a `build(config)` that returns a fresh, uncompiled,
built model, an optimizer factory, a loss, a length and a target test accuracy. The study
does the rest (seeds, data order, engines, statistics, files, plots). Run it from Python:

    python examples/own_protocol.py [--seeds N] [--epochs E] [--out DIR]

or hand the same object to the command line (from the repository root, so that
`examples.own_protocol` can be imported):

    python -m keras_bn_tools study examples.own_protocol:PROTOCOL --seeds 10 --out cancer
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn_tools.studies import Protocol, run_study


def load_data():
    """Breast-cancer data, unscaled; every fourth row is a test row (a fixed split)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x, y = x.astype("float32"), y.astype("float32")
    test = np.arange(len(y)) % 4 == 3
    return (x[~test], y[~test]), (x[test], y[test])


CONFIGS = {
    "raw": "raw features -> Dense(32, relu) -> Dense(1, sigmoid)",
    "standardized": "Normalization(training mean and variance) -> Dense(32, relu) -> Dense(1)",
    "bn-input": "BatchNormalization -> Dense(32, relu) -> Dense(1, sigmoid)",
}


def build(config: str) -> keras.Model:
    """A fresh, uncompiled, built model for one config of `CONFIGS`."""
    if config not in CONFIGS:
        raise ValueError(f"Unknown config {config!r}; valid: {', '.join(CONFIGS)}.")
    first = []
    if config == "standardized":
        (train_x, _), _ = load_data()
        first = [keras.layers.Normalization(mean=train_x.mean(0), variance=train_x.var(0))]
    elif config == "bn-input":
        # A fixed name: the study keys each BN layer's moving statistics by its name.
        first = [keras.layers.BatchNormalization(name="input_bn")]
    return keras.Sequential(
        [
            keras.Input((30,)),
            *first,
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name=config,
    )


PROTOCOL = Protocol(
    name="cancer",
    description="An MLP on sklearn's unscaled breast-cancer data: standardize, or BN at the input?",
    load_data=load_data,
    build=build,
    configs=CONFIGS,
    default_configs=tuple(CONFIGS),
    epochs=30,
    batch_size=32,
    optimizer=lambda: keras.optimizers.Adam(learning_rate=1e-3),
    loss="binary_crossentropy",
    target=0.95,
)


def main(argv: list[str] | None = None):
    """Run the study, print its table, write its files under `--out`; return the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--out", default=None, help="write results.json, CSVs and plots here")
    args = parser.parse_args(argv)

    result = run_study(PROTOCOL, seeds=range(args.seeds), epochs=args.epochs)
    print(result.table())
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
        result.to_json(os.path.join(args.out, "results.json"))
        result.plot(os.path.join(args.out, "curves.png"))
    return result


if __name__ == "__main__":
    main()
