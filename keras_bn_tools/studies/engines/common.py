"""What every engine shares: the run's settings, the study's data, the fresh model of a
seed, the protocol's loss, the scoring of a run's predictions, and which variables are
"the BN statistics".

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

from keras_bn_tools._keras_compat import keras_default_seeds
from keras_bn_tools.graph import batchnorm_layers, layer_keys, statistic_variables
from keras_bn_tools.studies.metrics import Metric, prepare_labels
from keras_bn_tools.studies.protocol import Protocol, training_orders

#: What an engine returns per run, before scoring (`score_run`).
RAW_KEYS = ("loss", "train_predictions", "val_loss", "test_predictions", "train_loss",
            "final_train_predictions")  # fmt: skip

__all__ = [
    "RAW_KEYS",
    "RunSettings",
    "StudyData",
    "fresh_model",
    "fresh_model_like",
    "loss_fn",
    "nest_stats",
    "score_run",
    "stat_variables",
]


@dataclass(frozen=True)
class RunSettings:
    """The settings of a config's runs: epochs, batch size, data order and optimizer.

    `run_study` makes one per config: the study's settings with the config's
    `Config` overrides applied. A compiled engine compiles one program per
    `RunSettings`.
    """

    epochs: int
    batch_size: int
    shuffle: str = "epoch"
    #: The optimizer factory (None: the protocol's).
    optimizer: Callable[[], Any] | None = None

    def orders(self, seed: int, rows: int) -> np.ndarray:
        """`training_orders(seed, rows, epochs, shuffle)`: what every engine feeds."""
        return training_orders(seed, rows, self.epochs, self.shuffle)

    def make_optimizer(self, protocol: Protocol) -> Any:
        """A fresh optimizer: this config's factory, else the protocol's."""
        return (self.optimizer or protocol.optimizer)()

    def record(self) -> dict[str, Any]:
        """The settings as plain values, for `RunResult.settings` and the files."""
        optimizer = "protocol" if self.optimizer is None else _describe(self.optimizer)
        return {"epochs": self.epochs, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "optimizer": optimizer}  # fmt: skip


def _describe(factory: Callable[[], Any]) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)


@dataclass(frozen=True)
class StudyData:
    """A protocol's data as NumPy arrays, loaded once per study, with its metric.

    `train_y`/`test_y` are the labels as every engine feeds them to the loss
    (`metrics.prepare_labels`); `metric` is the resolved `Metric`;
    `output_shape` the model's output per row.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    metric: Metric
    output_shape: tuple[int, ...] = (1,)

    @classmethod
    def load(cls, protocol: Protocol, model: Any) -> StudyData:
        """Load `protocol`'s data and check it against its metric and `model` (one built
        for any config): the labels must fit the metric and the model's output, and the
        protocol's loss must take them (one call on two rows), before any training."""
        arrays = _load_arrays(protocol)
        import keras

        output = model(arrays[0][:2], training=False)
        output_shape = tuple(int(d) for d in output.shape[1:])
        metric, train_y, test_y = prepare_labels(
            protocol.name, protocol.resolved_metric, output_shape, arrays[1], arrays[3]
        )
        try:
            value = loss_fn(protocol)(train_y[:2], output)
            keras.ops.convert_to_numpy(value)
        except Exception as error:  # Keras says which shapes clash
            raise ValueError(
                f"Protocol {protocol.name!r}: `loss`={protocol.loss!r} does not take these "
                f"labels {train_y.shape[1:]} and the model's output {output_shape} "
                f"({type(error).__name__}: {str(error)[:300]})."
            ) from None
        return cls(arrays[0], train_y, arrays[2], test_y, metric, output_shape)

    @property
    def rows(self) -> int:
        return len(self.train_x)

    @property
    def accuracy(self) -> str:
        """The accuracy kind (`"binary"`, `"sparse_categorical"`, `"categorical"`), or
        the metric's name for other metrics (older results' `metadata["accuracy"]`)."""
        return self.metric.name.removesuffix("_accuracy")


def _load_arrays(protocol: Protocol) -> list[np.ndarray]:
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
    return arrays


def score_run(data: StudyData, orders: np.ndarray, raw: dict[str, Any]):
    """`(history, final)` of a run from what its engine returned (`RAW_KEYS`): the
    metric scored in NumPy, in float64, from the predictions, the same way for
    every engine. Training curve: epoch `e`'s training-mode predictions, in the
    order the rows were fed (`orders[e]`); test curve: inference mode after each
    epoch; `final`: inference mode after the last epoch (the test set's is the last
    epoch's)."""
    metric, key = data.metric, data.metric.key
    train = [metric.score(data.train_y[order], p)
             for order, p in zip(orders, raw["train_predictions"], strict=True)]  # fmt: skip
    test = [metric.score(data.test_y, p) for p in raw["test_predictions"]]
    history = {
        "loss": np.asarray(raw["loss"], dtype="float32"),
        key: np.asarray(train, dtype="float64"),
        "val_loss": np.asarray(raw["val_loss"], dtype="float32"),
        f"val_{key}": np.asarray(test, dtype="float64"),
    }
    final = {
        "train_loss": float(raw["train_loss"]),
        f"train_{key}": metric.score(data.train_y, raw["final_train_predictions"]),
        "test_loss": float(history["val_loss"][-1]),
        f"test_{key}": float(test[-1]),
    }
    return history, final


def fresh_model(protocol: Protocol, config: str, seed: int) -> Any:
    """`keras.utils.set_random_seed(seed)`, then `protocol.build(config)`: every engine
    starts the run of `seed` from these initial weights.

    Keras's default seeds come from `random.Random(seed)` during the build
    (`keras_default_seeds`), so that the weights are a function of the seed alone, in
    whatever process and next to whatever threads (a Dask worker's) the run is."""
    import keras

    keras.utils.set_random_seed(seed)
    with keras_default_seeds(seed):
        model = protocol.build(config)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Protocol {protocol.name!r}: `build({config!r})` must return a keras.Model, "
            f"got {type(model).__name__}."
        )
    if model.compiled:
        raise ValueError(
            f"Protocol {protocol.name!r}: `build({config!r})` returned a compiled model; a "
            f"study compiles each run itself with `Protocol.loss` and the config's (or "
            f"`Protocol.optimizer`) optimizer, so return the model uncompiled and put the "
            f"loss and optimizer in the protocol."
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
