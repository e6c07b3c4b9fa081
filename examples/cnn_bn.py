"""Batch normalization placements in a small CNN, then folding BN away for inference.

The task, generated here: 16x16 grey images holding one bright 4x4 square on noise; the
label says whether the square sits in the left or the right half. The script trains
`build_cnn` with each placement:

- "none":   Conv2D(relu) -> Conv2D(relu) -> MaxPool -> ... -> Dense
- "after":  Conv2D(relu) -> BatchNormalization -> ...
- "before": Conv2D -> BatchNormalization -> Activation(relu) -> ...   (the paper's order)

prints the test accuracy of each after the first epoch and at the end, and finally folds
the "before" model's BN layers into its convolutions with `fold_batchnorm`, showing that
the folded model has no BN layer and predicts the same numbers. (The `digits` study,
`keras-bn-tools digits`, measures BN placement in a CNN on real digits over many seeds.)
Run it with

    python examples/cnn_bn.py [--epochs N] [--seed S]

It takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn_tools import batchnorm_layers, build_cnn, fold_batchnorm

SIDE = 16
SQUARE = 4


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy images `(SIDE, SIDE, 1)` with one bright square; label 1 = right half."""
    images = rng.normal(scale=1.0, size=(n, SIDE, SIDE, 1)).astype("float32")
    labels = rng.integers(0, 2, size=n)
    rows = rng.integers(0, SIDE - SQUARE + 1, size=n)
    half = SIDE // 2
    right = rng.integers(half, SIDE - SQUARE + 1, size=n)
    left = rng.integers(0, half - SQUARE + 1, size=n)
    cols = np.where(labels == 1, right, left)
    for image, row, col in zip(images, rows, cols, strict=True):
        image[row : row + SQUARE, col : col + SQUARE, 0] += 0.7
    return images, labels.astype("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    train_x, train_y = make_images(2000, rng)
    test_x, test_y = make_images(1000, rng)

    models = {}
    print(f"{'placement':10s} {'test acc ep 1':>13s} {'test acc':>9s} {'BN layers':>9s}")
    for placement in ("none", "after", "before"):
        keras.utils.set_random_seed(args.seed)
        model = build_cnn((SIDE, SIDE, 1), filters=(8, 8, 16, 16), bn=placement)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
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
        val = history.history["val_accuracy"]
        n_bn = len(batchnorm_layers(model))
        print(f"{placement:10s} {val[0]:13.3f} {val[-1]:9.3f} {n_bn:9d}")
        models[placement] = model

    original = models["before"]
    folded = fold_batchnorm(original)
    gap = np.max(np.abs(folded.predict(test_x, verbose=0) - original.predict(test_x, verbose=0)))
    left = len(batchnorm_layers(folded))
    print(f"\nfold_batchnorm on the 'before' model: {left} BN layers left, max |diff| {gap:.2e}")


if __name__ == "__main__":
    main()
