"""Small protocols for the study tests: fast to train, covering what circles does not."""

from __future__ import annotations

import numpy as np

from keras_bn_tools.studies import Protocol


def _blobs():
    """Three Gaussian blobs in 4-D: 140 training rows (batches of 32 leave 12), 50 test rows."""
    rng = np.random.default_rng(3)
    centers = rng.normal(0.0, 2.0, size=(3, 4))
    y = rng.integers(0, 3, size=190)
    x = (centers[y] + rng.normal(size=(190, 4))).astype("float32")
    return (x[:140], y[:140]), (x[140:], y[140:])


def _build(config: str):
    import keras

    # No bias before BN: BN cancels it, its gradient is round-off, and Adam would turn
    # that round-off into full-size steps that differ between engines.
    dense = keras.layers.Dense(8, use_bias=config != "bn", kernel_regularizer="l2")
    layers = [keras.Input((4,)), dense]
    if config == "bn":
        layers.append(keras.layers.BatchNormalization(name="bn", momentum=0.8))
    layers += [keras.layers.Activation("relu"), keras.layers.Dense(3, activation="softmax")]
    return keras.Sequential(layers, name=f"blobs_{config}")


def _adam():
    import keras

    return keras.optimizers.Adam(learning_rate=0.02)


#: A user's protocol: softmax output, sparse labels, a regularization loss, Adam.
BLOBS = Protocol(
    name="blobs",
    description="Three Gaussian blobs, a small softmax MLP.",
    load_data=_blobs,
    build=_build,
    configs={"plain": "no BN", "bn": "BN before the ReLU"},
    default_configs=("plain", "bn"),
    epochs=3,
    batch_size=32,
    optimizer=_adam,
    loss="sparse_categorical_crossentropy",
    target=0.6,
)
