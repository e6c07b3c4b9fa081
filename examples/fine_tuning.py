"""Fine-tuning with batch normalization: the "Keras BN is broken" article (Vryniotis, 2018),
measured again on Keras 3, next to the fixes.

The article: fine-tune a pretrained network whose base is frozen, but whose BN layers still
normalize with the *batch's* statistics in training mode (Keras 2 did that for
`trainable=False` layers; Keras 3 runs them in inference mode). The new head learns on
features normalized with the new data's batch statistics; inference normalizes them with the
pretraining data's moving statistics, so training and inference disagree: a high training
accuracy, a low test accuracy.

Here: a small CNN (three Conv-BN-ReLU blocks) is pretrained on the digits 0-4 of
`sklearn.datasets.load_digits`, then its base is reused with a new 5-way head on the digits
5-9, with the base's convolutions frozen and BN

- (a) `trainable`: BN layers train (batch statistics, moving statistics updated, gamma/beta
  learn);
- (b) `keras-frozen`: `base.trainable = False` (Keras 3: BN in inference mode, nothing learns);
- (c) `frozen-affine`: `freeze_batchnorm(base, train_affine=True)` (statistics frozen, in
  every mode; gamma/beta learn);
- (d) `batch-stats-2018`: frozen weights and statistics, but batch statistics in training
  mode (the 2018 behaviour, as a `BatchNormalization` subclass).

For each it reports the training accuracy in training mode (what `fit` reports, and what the
article saw), the training accuracy in inference mode, the test accuracy, and the two gaps.
Run it with

    python examples/fine_tuning.py [--seeds N] [--pretrain-epochs E] [--epochs E]

The defaults (3 seeds) take about 60 s of CPU time (5 minutes of wall time on two heavily
shared cores).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import ops

from keras_bn_tools import freeze_batchnorm
from keras_bn_tools.graph import clone_model
from keras_bn_tools.studies.digits import load_digits_split

BATCH_SIZE = 32
VARIANTS = ("trainable", "keras-frozen", "frozen-affine", "batch-stats-2018")


class BatchStatisticsBatchNormalization(keras.layers.BatchNormalization):
    """Keras 2's BN with `trainable=False`, as the article describes it: batch statistics
    in training mode (moving statistics never updated), moving statistics in inference."""

    def call(self, inputs, training=None, mask=None):
        if not training:
            return super().call(inputs, training=False, mask=mask)
        axes = [i for i in range(len(inputs.shape)) if i != self.axis % len(inputs.shape)]
        mean, variance = ops.moments(inputs, axes=axes)
        return ops.batch_normalization(
            inputs, mean, variance, self.axis, self.beta, self.gamma, self.epsilon
        )


def build_base(bn_class: type = keras.layers.BatchNormalization) -> keras.Sequential:
    """Three Conv(3x3)-BN-ReLU blocks (16, 32, 32 filters), pooled: 32 features."""
    layers = [keras.Input((8, 8, 1))]
    for filters in (16, 32, 32):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
            bn_class(),
            keras.layers.ReLU(),
        ]
    layers.append(keras.layers.GlobalAveragePooling2D())
    return keras.Sequential(layers, name="base")


def fit(model, x, y, epochs: int, seed: int) -> float:
    """Trains with a fresh permutation every epoch; returns the last epoch's accuracy (the
    training-mode accuracy `fit` reports)."""
    rng = np.random.default_rng(seed)
    accuracy = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(x))
        history = model.fit(
            x[order], y[order], batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0
        )
        accuracy = history.history["accuracy"][-1]
    return accuracy


def pretrain(x, y, epochs: int, seed: int) -> keras.Sequential:
    """The base, trained with a 5-way head on digits 0-4."""
    keras.utils.set_random_seed(seed)
    base = build_base()
    model = keras.Sequential([base, keras.layers.Dense(5, activation="softmax")])
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    fit(model, x, y, epochs, seed)
    return base


def variant_base(base: keras.Sequential, variant: str) -> keras.Sequential:
    """A copy of the pretrained base, its convolutions frozen, its BN as `variant` says."""
    if variant == "batch-stats-2018":
        copy = build_base(BatchStatisticsBatchNormalization)
        copy.set_weights(base.get_weights())
        copy.trainable = False
        return copy
    if variant == "frozen-affine":
        copy = freeze_batchnorm(base, train_affine=True)
    else:
        copy = clone_model(base)
    is_bn = variant in ("trainable", "frozen-affine")
    for layer in copy.layers:
        layer.trainable = is_bn and "normalization" in type(layer).__name__.lower()
    return copy


def accuracy(model, x, y, *, training: bool) -> float:
    """Accuracy of `model` called batch by batch (as `fit` sees the data) in training or
    inference mode; a training-mode call runs on a copy, so no moving statistic changes."""
    if training:
        model = clone_model(model)
    correct = 0
    for start in range(0, len(x), BATCH_SIZE):
        batch = x[start : start + BATCH_SIZE]
        predicted = ops.convert_to_numpy(ops.argmax(model(batch, training=training), axis=1))
        correct += int((predicted == y[start : start + BATCH_SIZE]).sum())
    return correct / len(x)


def run(seed: int, pretrain_epochs: int, epochs: int) -> dict[str, dict[str, float]]:
    (train_x, train_y), (test_x, test_y) = load_digits_split()
    old, new = train_y < 5, test_y >= 5
    base = pretrain(train_x[old], train_y[old], pretrain_epochs, seed)
    x, y = train_x[~old], train_y[~old] - 5
    tx, ty = test_x[new], test_y[new] - 5
    results = {}
    for variant in VARIANTS:
        keras.utils.set_random_seed(seed + 1)
        model = keras.Sequential(
            [keras.Input((8, 8, 1)), variant_base(base, variant), keras.layers.Dense(5, "softmax")]
        )
        model.compile(
            keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        results[variant] = {
            "fit": fit(model, x, y, epochs, seed + 1),
            "train_training_mode": accuracy(model, x, y, training=True),
            "train_inference": accuracy(model, x, y, training=False),
            "test": accuracy(model, tx, ty, training=False),
        }
    return results


def table(runs: list[dict[str, dict[str, float]]]) -> str:
    """Markdown table of the mean (and range over seeds) of each measure per variant."""
    header = (
        "| BN while fine-tuning | train acc, training mode | train acc, inference | "
        "test acc | training-mode vs inference gap | train (training mode) - test |\n"
        "|---|---|---|---|---|---|\n"
    )
    rows = []
    for variant in VARIANTS:
        get = {key: np.array([run[variant][key] for run in runs]) for key in runs[0][variant]}
        mode_gap = get["train_training_mode"] - get["train_inference"]
        test_gap = get["train_training_mode"] - get["test"]
        cells = [
            get["train_training_mode"],
            get["train_inference"],
            get["test"],
            mode_gap,
            test_gap,
        ]
        # (+ 0.0 turns a negative zero into 0.000)
        text = " | ".join(
            f"{v.mean() + 0.0:.3f} ({v.min() + 0.0:.3f} to {v.max() + 0.0:.3f})" for v in cells
        )
        rows.append(f"| ({'abcd'[VARIANTS.index(variant)]}) {variant} | {text} |")
    return header + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    runs = [run(seed, args.pretrain_epochs, args.epochs) for seed in range(args.seeds)]
    print(table(runs))
    print(f"\n{args.seeds} seeds in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
