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


def _regression():
    """A noisy linear target of the blobs' inputs (the same 140/50 rows)."""
    (train_x, _), (test_x, _) = _blobs()
    weights = np.array([1.5, -2.0, 0.5, 1.0], dtype="float32")
    rng = np.random.default_rng(4)
    train_y = train_x @ weights + rng.normal(0, 0.3, len(train_x)).astype("float32") + 10.0
    test_y = test_x @ weights + rng.normal(0, 0.3, len(test_x)).astype("float32") + 10.0
    return (train_x, train_y), (test_x, test_y)


def _build_regression(config: str):
    import keras

    layers = [keras.Input((4,)), keras.layers.Dense(8, use_bias=config != "bn")]
    if config == "bn":
        layers.append(keras.layers.BatchNormalization(name="bn", momentum=0.8))
    layers += [keras.layers.Activation("relu"), keras.layers.Dense(1)]
    return keras.Sequential(layers, name=f"regression_{config}")


#: A regression protocol: one linear output, MSE loss, MAE metric.
REGRESSION = Protocol(
    name="regression",
    description="A linear target of four features, a small MLP regressor.",
    load_data=_regression,
    build=_build_regression,
    configs={"plain": "no BN", "bn": "BN before the ReLU"},
    default_configs=("plain", "bn"),
    epochs=3,
    batch_size=32,
    optimizer=_adam,
    loss="mse",
    target=2.0,
    metric="mae",
)


def _one_hot_blobs():
    (train_x, train_y), (test_x, test_y) = _blobs()
    eye = np.eye(3, dtype="float32")
    return (train_x, eye[train_y]), (test_x, eye[test_y])


#: BLOBS with one-hot labels and categorical cross-entropy ("accuracy" finds categorical).
ONE_HOT = Protocol(
    name="one-hot",
    description="Three Gaussian blobs, one-hot labels, a small softmax MLP.",
    load_data=_one_hot_blobs,
    build=_build,
    configs={"plain": "no BN", "bn": "BN before the ReLU"},
    default_configs=("plain", "bn"),
    epochs=3,
    batch_size=32,
    optimizer=_adam,
    loss="categorical_crossentropy",
    target=0.6,
)
