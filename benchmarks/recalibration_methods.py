"""How far `method="single_pass"` (fvcore) lands from `method="exact"`: statistics and accuracy.

Run: `python3 benchmarks/recalibration_methods.py` (about a minute on 2 CPU cores).

Two models, each trained briefly, then recalibrated from the same weights with
both methods over the training data (batches of 32, as in training):

- circles: `build_mlp(2, (50,), bn="after")`, the circles study's BN model,
  5 epochs of SGD(0.01, momentum 0.9) on `load_circles()` (seed 0);
- cnn: `build_cnn((16, 16, 1), filters=(16, 16, 32, 32), bn="before")` on the
  square-left-or-right images of `examples/cnn_bn.py` (2000 train, 1000 test),
  3 epochs of Adam (seed 0).

Printed per model: test accuracy in inference mode with the moving averages,
after exact and after single-pass recalibration; and, per BN layer, how far
the single-pass statistics are from the exact ones: the largest mean gap in
units of the exact standard deviation, and the largest relative variance gap.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from keras_bn_tools import build_cnn, build_mlp, recalibrate_batchnorm
from keras_bn_tools.studies.circles import load_circles


def square_images(n: int, rng: np.random.Generator, side: int = 16, square: int = 4):
    """Noisy images with one bright square; label 1 = the square is in the right half."""
    images = rng.normal(size=(n, side, side, 1)).astype("float32")
    labels = rng.integers(0, 2, size=n)
    rows = rng.integers(0, side - square + 1, size=n)
    right = rng.integers(side // 2, side - square + 1, size=n)
    left = rng.integers(0, side // 2 - square + 1, size=n)
    for image, row, col in zip(images, rows, np.where(labels == 1, right, left), strict=True):
        image[row : row + square, col : col + square, 0] += 0.7
    return images, labels.astype("float32")


def circles_case():
    (x, y), (tx, ty) = load_circles()
    keras.utils.set_random_seed(0)
    model = build_mlp(2, (50,), bn="after")
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9), loss="binary_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    return model, x, (tx, ty)


def cnn_case():
    rng = np.random.default_rng(0)
    x, y = square_images(2000, rng)
    tx, ty = square_images(1000, rng)
    keras.utils.set_random_seed(0)
    model = build_cnn((16, 16, 1), filters=(16, 16, 32, 32), bn="before")
    model.compile("adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model, x, (tx, ty)


def compare(name, case):
    model, x, (tx, ty) = case()
    trained = [w.copy() for w in model.get_weights()]

    def accuracy():
        return model.evaluate(tx, ty, verbose=0, return_dict=True)["accuracy"]

    results = {"moving averages": (accuracy(), None)}
    for method in ("exact", "single_pass"):
        model.set_weights(trained)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = recalibrate_batchnorm(model, x, batch_size=32, method=method)
        results[method] = (accuracy(), report)
    print(f"\n{name}: test accuracy (inference mode)")
    for label, (value, _) in results.items():
        print(f"  {label:<16} {value:.4f}")
    exact, single = results["exact"][1], results["single_pass"][1]
    print("  single_pass vs exact, per BN layer: max |dmean|/std_exact, max |dvar|/var_exact")
    for key in exact:
        e, s = exact[key], single[key]
        std = np.sqrt(e["new_variance"] + 1e-3)
        mean_gap = np.max(np.abs(s["new_mean"] - e["new_mean"]) / std)
        var_gap = np.max(np.abs(s["new_variance"] - e["new_variance"]) / (e["new_variance"] + 1e-3))
        print(f"  {key:<24} {mean_gap:8.4f} {var_gap:8.4f}")


def main() -> int:
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    compare("circles (build_mlp, 1 BN layer)", circles_case)
    compare("cnn (build_cnn, 4 BN layers)", cnn_case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
