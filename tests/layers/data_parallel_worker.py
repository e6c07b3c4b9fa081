"""Run by test_momentum_distribution.py in a fresh process: 4 virtual CPU devices on JAX.

Usage: ``XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax
python data_parallel_worker.py OUT.npz``. Under `keras.distribution.DataParallel`,
one `fit` step (momentum 0, so the moving statistics are that batch's) of Keras's
BN and of `MomentumBatchNormalization` (with and without `synchronized=True`), on
a global batch whose four device slices come from different distributions.
"""

from __future__ import annotations

import sys

import jax
import keras
import numpy as np

from keras_bn_tools.layers import MomentumBatchNormalization

CASES = {
    "keras": lambda: keras.layers.BatchNormalization(momentum=0.0),
    "ours": lambda: MomentumBatchNormalization(momentum=0.0),
    "ours-synchronized": lambda: MomentumBatchNormalization(momentum=0.0, synchronized=True),
    "ours-cumulative-synchronized": lambda: MomentumBatchNormalization(
        momentum=None, synchronized=True
    ),
}


def main(path: str) -> None:
    out = {"devices": np.asarray(len(jax.devices()))}
    rng = np.random.default_rng(0)
    # Four slices of 8 rows, each from its own distribution: per-device statistics
    # would differ clearly from the global batch's.
    x = np.concatenate([rng.normal(2.0 * i, 1.0 + i, size=(8, 3)) for i in range(4)])
    x = x.astype("float32")
    out["x"] = x
    try:
        MomentumBatchNormalization(synchronized=True)
    except ValueError as error:
        out["error_without_distribution"] = np.asarray(str(error))
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    for name, make in CASES.items():
        keras.utils.set_random_seed(0)
        layer = make()
        model = keras.Sequential([keras.Input((3,)), layer])
        model.compile(keras.optimizers.SGD(0.0), "mse")
        model.fit(x, np.zeros_like(x), batch_size=32, epochs=1, shuffle=False, verbose=0)
        out[f"{name}/moving_mean"] = keras.ops.convert_to_numpy(layer.moving_mean)
        out[f"{name}/moving_variance"] = keras.ops.convert_to_numpy(layer.moving_variance)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
