"""`Protocol`: the description of one experiment that a study runs, and its data order.

A study trains each config of a protocol once per seed. The protocol says
what data, which model per config, which optimizer and loss, how long, and
which test accuracy counts as "reached the target". The built-in protocols
(`circles`, `digits`, `sequence`) are instances of this class; users write
their own in the same way and run them with `run_study(protocol, ...)` or
`keras-bn-tools study MODULE:ATTR`.

The order in which a run sees the training rows belongs to the study, not to
Keras: `training_orders(seed, rows, epochs, shuffle)` draws it from the seed
with `np.random.default_rng(seed)`, and every engine feeds exactly these
orders (the `fit` engine through a `keras.utils.PyDataset`):

- `"epoch"` (default): a fresh permutation of the rows every epoch, the
  tutorial's protocol (Keras 2's `fit(shuffle=True)`).
- `"once"`: one permutation, reused every epoch. This is what Keras 3.15's
  `fit(shuffle=True)` does under `keras.utils.set_random_seed` with TensorFlow.
- `"none"`: the rows in the order the data has them.

Epoch `e`'s batch `b` holds rows `order[e][b * batch_size:(b + 1) * batch_size]`;
the last batch of an epoch is smaller when the batch size does not divide the
number of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_bn_tools._validation import check_choice, check_int_in_range, check_positive_int
from keras_bn_tools.studies.metrics import LEGACY_ACCURACY, NAMES, bounds_of, mode_of

__all__ = ["ACCURACIES", "SHUFFLES", "Config", "Data", "Protocol", "training_orders"]

#: `((train_x, train_y), (test_x, test_y))` as NumPy arrays.
Data = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: The data orders a study can feed (see the module docstring).
SHUFFLES = ("epoch", "once", "none")
#: How a protocol's accuracy is computed: `"auto"` decides from the model's output.
ACCURACIES = ("auto", "binary", "sparse_categorical")


@dataclass(frozen=True)
class Config:
    """A value of `Protocol.configs`: a description, and training settings that override
    the protocol's for this config's runs.

    Every engine honours the settings (a compiled engine compiles one program per
    config), and each `RunResult.settings` records them. A plain string in
    `Protocol.configs` means `Config(that_string)`: no overrides.

    Args:
        description: one line for people.
        batch_size: the training batch size of this config's runs (positive int).
        epochs: the number of epochs of this config's runs (positive int).
        optimizer: a zero-argument callable returning a fresh Keras optimizer.

    Example:
        ```python
        from keras_bn_tools.studies import Config

        configs = {
            "bn": "BN after each hidden layer",
            "bn-batch-4": Config("the same with batches of 4", batch_size=4),
        }
        ```
    """

    description: str
    batch_size: int | None = None
    epochs: int | None = None
    optimizer: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.description, str):
            raise TypeError(f"Config `description` must be a string, got {self.description!r}.")
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
            ):
                integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
                error = ValueError if integer else TypeError
                raise error(
                    f"Config {self.description!r}: `{name}` must be a positive integer or "
                    f"None (the protocol's), got {value!r}."
                )
        if self.optimizer is not None and not callable(self.optimizer):
            raise TypeError(
                f"Config {self.description!r}: `optimizer` must be a zero-argument callable "
                f"returning a fresh Keras optimizer (a factory, not an optimizer instance), "
                f"or None; got {self.optimizer!r}."
            )

    def overrides(self) -> dict[str, Any]:
        """The settings this config sets: `{"batch_size": 4}` etc."""
        names = ("batch_size", "epochs", "optimizer")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class Protocol:
    """One experiment: data, a model per config, optimizer, loss, length and target.

    Attributes:
        name: short name used in tables, files and the command line.
        description: one paragraph for people.
        load_data: zero-argument callable returning
            `((train_x, train_y), (test_x, test_y))` as arrays.
        build: `build(config) -> keras.Model`, a fresh, uncompiled, built model
            for the config named `config`. Give BN layers explicit names if the
            moving statistics of different runs should share keys.
        configs: ordered mapping from config name to a one-line description or
            a `Config` (a description plus training settings for its runs).
        default_configs: the configs a study runs when none are named.
        epochs: number of training epochs per run.
        batch_size: training batch size.
        optimizer: zero-argument callable returning a fresh Keras optimizer.
        loss: a Keras loss (name or instance), as `model.compile` takes it.
        target: the test metric whose first crossing "epochs to target" reports,
            in the metric's units: crossed when the test metric is `>=` the
            target (mode `"max"`) or `<=` it (mode `"min"`).
        accuracy: older protocols' way to name the accuracy: `"binary"`,
            `"sparse_categorical"` or `"auto"` (default); the same as `metric`
            `"binary_accuracy"`, `"sparse_categorical_accuracy"`, `"accuracy"`.
        jit_compile: whether TensorFlow's compiled engine uses XLA for this
            protocol's models: `True`, `False`, or `"auto"` (default: from 4
            seeds on). XLA speeds small dense and recurrent models up several
            times on a CPU but slows convolutions down (see docs/studies.md);
            `run_study(..., jit_compile=...)` overrides it.
        metric: what the study reports and targets (`keras_bn_tools.studies.metrics`):
            `"accuracy"` (default: binary, sparse or one-hot, decided from the
            model's output and the labels), `"binary_accuracy"`,
            `"sparse_categorical_accuracy"`, `"categorical_accuracy"`, `"mse"` /
            `"mean_squared_error"`, `"mae"` / `"mean_absolute_error"` or `"auc"`.
        mode: `"max"` or `"min"`; default (None): the metric's own direction. A
            mode that contradicts the metric is refused.

    A `build(config)` that returns a compiled model is refused: a study compiles
    with `loss` and the config's (or the protocol's) `optimizer`.

    Example:
        ```python
        import keras
        from keras_bn_tools import build_mlp
        from keras_bn_tools.studies import Protocol, run_study
        from keras_bn_tools.studies.circles import load_circles

        mine = Protocol(
            name="wide",
            description="A wider MLP on the circles data.",
            load_data=load_circles,
            build=lambda config: build_mlp(2, (64,), bn=config),
            configs={"none": "no BN", "after": "BN after the ReLU"},
            default_configs=("none", "after"),
            epochs=3,
            batch_size=32,
            optimizer=lambda: keras.optimizers.SGD(0.01, momentum=0.9),
            loss="binary_crossentropy",
            target=0.8,
        )
        print(run_study(mine, seeds=range(2)).table())
        ```
    """

    name: str
    description: str
    load_data: Callable[[], Data]
    build: Callable[[str], Any]
    configs: Mapping[str, str]
    default_configs: Sequence[str]
    epochs: int
    batch_size: int
    optimizer: Callable[[], Any]
    loss: Any
    target: float
    accuracy: str = "auto"
    jit_compile: bool | str = "auto"
    metric: str = "accuracy"
    mode: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Protocol `name` must be a non-empty string, got {self.name!r}.")
        for field_name in ("load_data", "build", "optimizer"):
            if not callable(getattr(self, field_name)):
                raise TypeError(
                    f"Protocol {self.name!r}: `{field_name}` must be callable, "
                    f"got {getattr(self, field_name)!r}."
                )
        if not isinstance(self.configs, Mapping) or not self.configs:
            raise TypeError(
                f"Protocol {self.name!r}: `configs` must be a non-empty mapping name -> "
                f"description, got {self.configs!r}."
            )
        if isinstance(self.default_configs, str):
            raise TypeError(
                f"Protocol {self.name!r}: `default_configs` must be a sequence of config "
                f"names, not the string {self.default_configs!r}."
            )
        unknown = [c for c in self.default_configs if c not in self.configs]
        if unknown or not self.default_configs:
            raise ValueError(
                f"Protocol {self.name!r}: `default_configs` must name some of "
                f"{list(self.configs)}, got {list(self.default_configs)!r}."
            )
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_choice("accuracy", self.accuracy, ACCURACIES)
        if self.jit_compile not in (True, False, "auto"):
            raise ValueError(
                f"Protocol {self.name!r}: `jit_compile` must be True, False or 'auto', "
                f"got {self.jit_compile!r}."
            )
        self._check_configs()
        self._check_metric()

    def _check_configs(self) -> None:
        for name, value in self.configs.items():
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"Protocol {self.name!r}: `configs` keys must be non-empty strings, "
                    f"got {name!r}."
                )
            if not isinstance(value, str | Config):
                raise TypeError(
                    f"Protocol {self.name!r}: `configs[{name!r}]` must be a description "
                    f"string or a studies.Config(description, batch_size=..., epochs=..., "
                    f"optimizer=...), got {value!r}."
                )

    def _check_metric(self) -> None:
        where = f"Protocol {self.name!r}"
        if self.metric not in NAMES:
            raise ValueError(
                f"{where}: unknown `metric` {self.metric!r}; allowed: {', '.join(NAMES)}."
            )
        if self.accuracy != "auto" and self.metric != "accuracy":
            raise ValueError(
                f"{where}: `accuracy`={self.accuracy!r} and `metric`={self.metric!r} both "
                f"name the metric; give `metric` alone."
            )
        natural = mode_of(self.resolved_metric)
        if self.mode is not None and self.mode not in ("max", "min"):
            raise ValueError(f"{where}: `mode` must be 'max', 'min' or None, got {self.mode!r}.")
        if self.mode is not None and self.mode != natural:
            raise ValueError(
                f"{where}: `mode`={self.mode!r} contradicts `metric`={self.metric!r}, which "
                f"is better when {'higher' if natural == 'max' else 'lower'}; allowed: "
                f"{natural!r} or None."
            )
        low, high = bounds_of(self.resolved_metric)
        target = self.target
        if (
            isinstance(target, bool)
            or not isinstance(target, int | float)
            or not low <= target <= high
            or not np.isfinite(target)
        ):
            raise ValueError(
                f"{where}: `target` must be a number in [{low:g}, {high:g}] (the range of "
                f"`metric` {self.metric!r}), got {target!r}."
            )

    @property
    def resolved_metric(self) -> str:
        """`metric`, or the metric an older protocol's `accuracy` names."""
        return LEGACY_ACCURACY[self.accuracy] if self.metric == "accuracy" else self.metric

    @property
    def direction(self) -> str:
        """`"max"` or `"min"`: `mode`, else the metric's."""
        return self.mode or mode_of(self.resolved_metric)

    def config(self, name: str) -> Config:
        """`configs[name]` as a `Config` (a plain description has no overrides)."""
        value = self.configs[name]
        return value if isinstance(value, Config) else Config(value)


def training_orders(seed: int, rows: int, epochs: int, shuffle: str = "epoch") -> np.ndarray:
    """The order of the training rows in every epoch of the run with seed `seed`.

    Args:
        seed: the run's seed, in `[0, 2**32 - 1]`.
        rows: number of training rows.
        epochs: number of epochs.
        shuffle: `"epoch"`, `"once"` or `"none"` (see the module docstring).

    Returns:
        An int32 array `(epochs, rows)`; row `e` is a permutation of
        `range(rows)`. With `"epoch"`, row `e` is the `e + 1`-th
        `np.random.default_rng(seed).permutation(rows)`.

    Example:
        ```python
        from keras_bn_tools.studies.protocol import training_orders

        orders = training_orders(seed=0, rows=5, epochs=3)
        assert orders.shape == (3, 5) and len({tuple(o) for o in orders}) > 1
        ```
    """
    seed = check_int_in_range("seed", seed, minimum=0, maximum=2**32 - 1)
    rows = check_positive_int("rows", rows)
    epochs = check_positive_int("epochs", epochs)
    shuffle = check_choice("shuffle", shuffle, SHUFFLES)
    if shuffle == "none":
        return np.tile(np.arange(rows, dtype="int32"), (epochs, 1))
    rng = np.random.default_rng(seed)
    if shuffle == "once":
        return np.tile(rng.permutation(rows).astype("int32"), (epochs, 1))
    return np.stack([rng.permutation(rows) for _ in range(epochs)]).astype("int32")
