"""One worker of a two-worker MultiWorkerMirroredStrategy run on loopback.

Usage: ``TF_CONFIG=... python multiworker_worker.py OUT.npz [EPOCHS]``

Trains the circles study's BN-after model (2 -> Dense(50, relu, he_uniform) ->
MomentumBatchNormalization(synchronized=True) -> Dense(1, sigmoid)) on the first 500
rows of make_circles(1000, noise=0.1, random_state=1), global batch 32 (16 per
worker, each worker reading its own half of the rows), then writes this worker's
final weights and BN moving statistics to OUT. test_multiworker.py starts two of
these and compares the files.

The loop is a custom one (``strategy.run`` on a per-replica step): with Keras 3,
``model.fit`` under MultiWorkerMirroredStrategy fails before the first step
("Attempt to convert a value (PerReplica...) ... to a Tensor", from
``_maybe_symbolic_build``; keras-team/keras#20585).
"""

from __future__ import annotations

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from keras_bn_tools.builders import build_mlp
from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.studies.circles import load_circles

GLOBAL_BATCH = 32


def _dataset(strategy: tf.distribute.Strategy, x: np.ndarray, y: np.ndarray):
    """Each worker reads every other row (its shard) in batches of 16."""

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(GLOBAL_BATCH)
        rows = tf.data.Dataset.from_tensor_slices((x, y.reshape(-1, 1)))
        return rows.shard(context.num_input_pipelines, context.input_pipeline_id).batch(batch)

    return strategy.distribute_datasets_from_function(per_worker)


def main(path: str, epochs: int) -> None:
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    # First: starts this worker's gRPC server and waits for the other worker.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(3)  # the chief's initial values are broadcast anyway
    (train_x, train_y), _ = load_circles()
    dataset = _dataset(strategy, train_x.astype("float32"), train_y.astype("float32"))
    with strategy.scope():
        model = build_mlp(
            2, (50,), bn="after", bn_layer=lambda: MomentumBatchNormalization(synchronized=True)
        )
        optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = keras.losses.binary_crossentropy(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example)  # / global batch size
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    epoch_losses = []
    for _ in range(epochs):
        step_losses = [float(train_step(batch)) for batch in dataset]
        epoch_losses.append(np.mean(step_losses))
    (bn,) = [layer for layer in model.layers if isinstance(layer, MomentumBatchNormalization)]
    out = {
        "task_index": np.asarray(task["index"]),
        "num_replicas": np.asarray(strategy.num_replicas_in_sync),
        "loss": np.asarray(epoch_losses),
        "num_batches_tracked": np.asarray(bn.num_batches_tracked.numpy()),
        "moving_mean": np.asarray(bn.moving_mean.numpy()),
        "moving_variance": np.asarray(bn.moving_variance.numpy()),
    }
    for i, weight in enumerate(model.get_weights()):
        out[f"weight{i}"] = weight
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
