"""`sync_replica_statistics` under MirroredStrategy on two logical CPU devices.

Usage: ``python replica_sync_worker.py OUT.npz`` (see conftest.py for why a child
process). Keras's BN and `MomentumBatchNormalization` (synchronized=False) train a
few steps through `strategy.run` on global batches whose two replica slices differ;
the per-replica copies of their moving statistics are recorded before and after
`sync_replica_statistics`.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_bn_tools.layers import MomentumBatchNormalization  # noqa: E402
from keras_bn_tools.layers.distribute import sync_replica_statistics  # noqa: E402


def copies(variable):
    return np.stack([np.asarray(part.numpy()) for part in variable.value.values])


def main(path: str) -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    batches = [
        np.concatenate([rng.normal(0.0, 1.0, (8, 3)), rng.normal(4.0, 3.0, (8, 3))])
        for _ in range(3)
    ]
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches).astype("float32"))
    out = {}
    for name, make in {
        "keras": lambda: keras.layers.BatchNormalization(momentum=0.5),
        "ours": lambda: MomentumBatchNormalization(momentum=0.5),
    }.items():
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), make()])

        @tf.function
        def step(batch, model=model):
            return strategy.run(lambda x: model(x, training=True), args=(batch,))

        for batch in strategy.experimental_distribute_dataset(dataset.batch(16)):
            step(batch)
        layer = model.layers[0]
        for stat in ("moving_mean", "moving_variance"):
            out[f"{name}/before/{stat}"] = copies(getattr(layer, stat))
        out[f"{name}/changed"] = np.asarray(sync_replica_statistics(model))
        for stat in ("moving_mean", "moving_variance"):
            out[f"{name}/after/{stat}"] = copies(getattr(layer, stat))
            out[f"{name}/read/{stat}"] = keras.ops.convert_to_numpy(getattr(layer, stat))
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
