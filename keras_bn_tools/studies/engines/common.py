"""What every engine shares: the run's settings, the study's data, the fresh model of a
seed, the loss and accuracy of a protocol, and which variables are "the BN statistics".

The BN statistics are found exactly as `keras_bn_tools.callbacks.MovingStatsTracker`
finds them: `batchnorm_layers`, keyed by `layer_keys`, read through
`statistic_variables` (`keras_bn_tools.graph`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_bn_tools.graph import batchnorm_layers, layer_keys, statistic_variables
from keras_bn_tools.studies.protocol import Protocol, training_orders

#: The names of `RunResult.final`, in the order the compiled engines return them.
FINAL_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")

__all__ = [
    "FINAL_KEYS",
    "RunSettings",
    "StudyData",
    "accuracy_fn",
    "fresh_model",
    "fresh_model_like",
    "loss_fn",
    "nest_stats",
    "stat_variables",
]


@dataclass(frozen=True)
class RunSettings:
    """The settings a study passes to every run: epochs, batch size, data order."""

    epochs: int
    batch_size: int
    shuffle: str = "epoch"

    def orders(self, seed: int, rows: int) -> np.ndarray:
        """`training_orders(seed, rows, epochs, shuffle)`: what every engine feeds."""
        return training_orders(seed, rows, self.epochs, self.shuffle)


@dataclass(frozen=True)
class StudyData:
    """A protocol's data as NumPy arrays, loaded once per study, with its accuracy kind."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    accuracy: str

    @classmethod
    def load(cls, protocol: Protocol, model: Any) -> StudyData:
        """Load `protocol`'s data; `model` (one built for any config) decides `"auto"`
        accuracy: binary for one output unit, sparse categorical otherwise."""
        loaded = protocol.load_data()
        try:
            (train_x, train_y), (test_x, test_y) = loaded
        except (TypeError, ValueError):
            raise TypeError(
                f"Protocol {protocol.name!r}: `load_data()` must return "
                f"((train_x, train_y), (test_x, test_y)), got {type(loaded).__name__}."
            ) from None
        arrays = [np.asarray(a) for a in (train_x, train_y, test_x, test_y)]
        if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]):
            raise ValueError(
                f"Protocol {protocol.name!r}: `load_data()` returned x and y of different "
                f"lengths: train {len(arrays[0])} vs {len(arrays[1])}, test {len(arrays[2])} "
                f"vs {len(arrays[3])}."
            )
        if len(arrays[0]) == 0 or len(arrays[2]) == 0:
            raise ValueError(f"Protocol {protocol.name!r}: `load_data()` returned no rows.")
        for i in (0, 2):
            if arrays[i].dtype.kind == "f":
                arrays[i] = arrays[i].astype("float32")
        accuracy = protocol.accuracy
        if accuracy == "auto":  # one call on one row: works for any model, subclassed too
            units = int(model(arrays[0][:1], training=False).shape[-1])
            accuracy = "binary" if units == 1 else "sparse_categorical"
        if accuracy == "binary":
            # Labels shaped like the (rows, 1) output, as fit's compiled loss sees them.
            arrays[1] = arrays[1].astype("float32").reshape(len(arrays[1]), -1)
            arrays[3] = arrays[3].astype("float32").reshape(len(arrays[3]), -1)
        else:
            arrays[1] = arrays[1].astype("int32").reshape(len(arrays[1]))
            arrays[3] = arrays[3].astype("int32").reshape(len(arrays[3]))
        return cls(*arrays, accuracy=accuracy)

    @property
    def rows(self) -> int:
        return len(self.train_x)


def fresh_model(protocol: Protocol, config: str, seed: int) -> Any:
    """`keras.utils.set_random_seed(seed)`, then `protocol.build(config)`: every engine
    starts the run of `seed` from these initial weights."""
    import keras

    keras.utils.set_random_seed(seed)
    model = protocol.build(config)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Protocol {protocol.name!r}: `build({config!r})` must return a keras.Model, "
            f"got {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"Protocol {protocol.name!r}: `build({config!r})` returned an unbuilt model; "
            f"start it with keras.Input(...) or call model.build(...) before returning it."
        )
    return model


def fresh_model_like(protocol: Protocol, config: str, seed: int, reference: Any) -> Any:
    """`fresh_model(protocol, config, seed)`, checked to have `reference`'s variables
    (shapes and dtypes): a compiled engine runs every seed of a config through the
    one program it built for `reference`."""
    model = fresh_model(protocol, config, seed)
    if [(tuple(v.shape), v.dtype) for v in model.variables] != [
        (tuple(v.shape), v.dtype) for v in reference.variables
    ]:
        raise ValueError(
            f"Protocol {protocol.name!r}: `build({config!r})` returned models with "
            f"different variables from one call to the next; the compiled engine needs "
            f"one architecture per config (use engine='fit')."
        )
    return model


def loss_fn(protocol: Protocol) -> Callable[[Any, Any], Any]:
    """The protocol's loss as `f(y_true, y_pred) -> scalar` (a batch mean, as `fit`'s)."""
    import keras

    loss = keras.losses.get(protocol.loss)
    if isinstance(loss, keras.losses.Loss):
        return loss

    def mean_loss(y_true, y_pred):
        return keras.ops.mean(loss(y_true, y_pred))

    return mean_loss


def accuracy_fn(kind: str) -> Callable[[Any, Any], Any]:
    """`f(y_true, y_pred) -> number of correct predictions` (float32), in `keras.ops`."""
    import keras

    metric = (
        keras.metrics.binary_accuracy
        if kind == "binary"
        else keras.metrics.sparse_categorical_accuracy
    )

    def correct(y_true, y_pred):
        return keras.ops.sum(keras.ops.cast(metric(y_true, y_pred), "float32"))

    return correct


def accuracy_metric(kind: str) -> Any:
    """The Keras metric `fit` reports as `accuracy` for this accuracy kind."""
    import keras

    if kind == "binary":
        return keras.metrics.BinaryAccuracy(name="accuracy")
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def stat_variables(model: Any) -> list[tuple[str, str, Any]]:
    """`(layer key, stat, variable)` of every BN statistic of `model`, as the tracker reads them."""
    layers = batchnorm_layers(model)
    return statistic_variables(list(zip(layer_keys(layers), layers, strict=True)))


def nest_stats(keys: list[tuple[str, str]], values: list[np.ndarray]) -> dict:
    """`[(layer, stat)]`, `[array]` -> `{layer: {stat: array}}`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for (layer, stat), value in zip(keys, values, strict=True):
        out.setdefault(layer, {})[stat] = np.asarray(value)
    return out


class Timer:
    """Seconds since construction (wall clock)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
