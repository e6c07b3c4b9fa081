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

__all__ = ["ACCURACIES", "SHUFFLES", "Data", "Protocol", "training_orders"]

#: `((train_x, train_y), (test_x, test_y))` as NumPy arrays.
Data = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: The data orders a study can feed (see the module docstring).
SHUFFLES = ("epoch", "once", "none")
#: How a protocol's accuracy is computed: `"auto"` decides from the model's output.
ACCURACIES = ("auto", "binary", "sparse_categorical")


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
        configs: ordered mapping from config name to a one-line description.
        default_configs: the configs a study runs when none are named.
        epochs: number of training epochs per run.
        batch_size: training batch size.
        optimizer: zero-argument callable returning a fresh Keras optimizer.
        loss: a Keras loss (name or instance), as `model.compile` takes it.
        target: the test accuracy whose first crossing "epochs to target" reports.
        accuracy: `"binary"` (one sigmoid output, threshold 0.5),
            `"sparse_categorical"` (one output per class, integer labels) or
            `"auto"` (default): binary when the model has one output unit.
        jit_compile: whether TensorFlow's compiled engine uses XLA for this
            protocol's models: `True`, `False`, or `"auto"` (default: from 4
            seeds on). XLA speeds small dense and recurrent models up several
            times on a CPU but slows convolutions down (see docs/studies.md);
            `run_study(..., jit_compile=...)` overrides it.

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
        target = self.target
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 <= target <= 1:
            raise ValueError(f"Protocol {self.name!r}: `target` must be in [0, 1], got {target!r}.")
        check_choice("accuracy", self.accuracy, ACCURACIES)
        if self.jit_compile not in (True, False, "auto"):
            raise ValueError(
                f"Protocol {self.name!r}: `jit_compile` must be True, False or 'auto', "
                f"got {self.jit_compile!r}."
            )


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
