"""Fixtures for the callback tests: the circles data and its BN-after model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.builders import build_mlp
from keras_bn_tools.studies.circles import load_circles


@pytest.fixture(scope="session")
def circles() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`((train_x, train_y), (test_x, test_y))`: make_circles(1000, noise 0.1, seed 1), 500/500."""
    return load_circles()


def compile_circles(model: keras.Model) -> keras.Model:
    """The tutorial's optimizer, loss and metric."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


@pytest.fixture
def circles_model() -> keras.Model:
    """2 -> Dense(50, relu, he_uniform) -> BatchNormalization -> Dense(1, sigmoid), compiled."""
    return compile_circles(build_mlp(2, (50,), bn="after"))
