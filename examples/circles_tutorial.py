"""The circles tutorial's three models, built with keras_bn_tools and trained with model.fit.

    python examples/circles_tutorial.py             # one seed, 100 epochs (~40 s)
    python examples/circles_tutorial.py --seed 3 --epochs 50

An MLP learns two noisy concentric circles (sklearn's make_circles): first
without batch normalization, then with BN after the hidden ReLU, then with BN
before it. For each model it prints the final train and test accuracy (from
`model.evaluate`, inference mode, as in the tutorial) and the first epoch whose
test accuracy reaches 80%.

This is the plain Keras workflow, one run per model. `keras-bn-tools circles`
(or `keras_bn_tools.studies.circles.run_study`) runs the same protocol over
many seeds, with the same numbers for the same seed, in a fraction of the time.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn_tools import build_mlp
from keras_bn_tools.studies.circles import load_circles

MODELS = {
    "no BN": "none",  # Dense(50, relu) -> Dense(1, sigmoid)
    "BN after ReLU": "after",  # Dense(50, relu) -> BN -> Dense(1, sigmoid)
    "BN before ReLU": "before",  # Dense(50) -> BN -> ReLU -> Dense(1, sigmoid)
}


def main() -> None:
    parser = argparse.ArgumentParser(description="The circles tutorial with model.fit.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()

    (train_x, train_y), (test_x, test_y) = load_circles()
    for label, placement in MODELS.items():
        keras.utils.set_random_seed(args.seed)
        model = build_mlp(2, (50,), bn=placement)  # he_uniform hidden layer, sigmoid output
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
        history = model.fit(
            train_x,
            train_y,
            validation_data=(test_x, test_y),
            epochs=args.epochs,
            batch_size=32,
            verbose=0,
        )
        _, train_acc = model.evaluate(train_x, train_y, verbose=0)
        _, test_acc = model.evaluate(test_x, test_y, verbose=0)
        val_acc = np.asarray(history.history["val_accuracy"])
        crossed = np.flatnonzero(val_acc >= 0.80)
        first = f"epoch {crossed[0] + 1}" if crossed.size else "never"
        print(
            f"{label:15s} train {train_acc:.3f}  test {test_acc:.3f}  "
            f"test acc >= 80% from {first}  "
            f"(fit-reported train acc, last epoch: {history.history['accuracy'][-1]:.3f})"
        )


if __name__ == "__main__":
    main()
