"""The diabetes protocol: batch normalization in an MLP regressor, and whether it can
replace standardizing the inputs or the target.

Data: `sklearn.datasets.load_diabetes(scaled=False)`, the 442 patients that ship
inside scikit-learn (no download), with their ten features in their own units
(age in years, sex 1/2, BMI, blood pressure, six blood serum measurements:
ranges from 1-2 to 97-301) and the target, a measure of disease progression one
year later (25-346). The split is fixed: every fifth patient (rows 4, 9, 14, ...)
is a test patient (88), the other 354 train.

Model: `Dense(32, relu) -> Dense(32, relu) -> Dense(1)` (linear), with BN as the
config says, trained with Adam(learning rate `LEARNING_RATE`) on the mean squared
error, batches of 32, `EPOCHS` epochs. The metric is the test set's mean absolute
error in the target's units (mode "min"); "epochs to target" counts the epochs
until it first falls to `TARGET` or below.

The configs ask what the tutorial's readers ask:

- `baseline`: raw inputs, raw target.
- `bn-after`, `bn-before`: BN after / before each hidden ReLU.
- `bn-input`: BN on the raw inputs, and after each hidden ReLU.
- `standardized`: the inputs standardized with the training set's mean and
  standard deviation (a fixed `keras.layers.Normalization`), no BN.
- `*-scaled-y` (`baseline-scaled-y`, `bn-input-scaled-y`, `standardized-scaled-y`):
  the same, with the target standardized: the network learns the standardized
  target and a fixed `keras.layers.Rescaling` maps its output back to the target's
  units (so the loss and the metric stay in those units).

Example:
    >>> from keras_bn_tools.studies.diabetes import PROTOCOL, load_diabetes_split
    >>> (train_x, train_y), (test_x, test_y) = load_diabetes_split()
    >>> train_x.shape, test_x.shape
    ((354, 10), (88, 10))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_bn_tools.studies.protocol import Data, Protocol

__all__ = [
    "CONFIGS",
    "DEFAULT_CONFIGS",
    "EPOCHS",
    "PROTOCOL",
    "TARGET",
    "DiabetesConfig",
    "build_model",
    "load_diabetes_split",
]

#: Every `TEST_EVERY`-th patient (counting from 1) is a test patient.
TEST_EVERY = 5
HIDDEN_UNITS = (32, 32)
EPOCHS = 100
BATCH_SIZE = 32
LEARNING_RATE = 0.01
#: The test MAE (target units) whose first crossing "epochs to target" reports.
TARGET = 50.0


def load_diabetes_split() -> Data:
    """The protocol's data: `load_diabetes(scaled=False)`, every fifth patient for testing.

    Returns:
        `((train_x, train_y), (test_x, test_y))`: `x` float32 `(rows, 10)` in the
        features' own units, `y` float32 `(rows,)`; 354 training and 88 test rows.
    """
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    x, y = x.astype("float32"), y.astype("float32")
    test = np.arange(len(y)) % TEST_EVERY == TEST_EVERY - 1
    return (x[~test], y[~test]), (x[test], y[test])


def _training_moments() -> tuple[np.ndarray, np.ndarray, float, float]:
    """Mean and variance of the training inputs; mean and sd of the training target."""
    (train_x, train_y), _ = load_diabetes_split()
    x64, y64 = train_x.astype("float64"), train_y.astype("float64")
    return x64.mean(0), x64.var(0), float(y64.mean()), float(y64.std())


@dataclass(frozen=True)
class DiabetesConfig:
    """One model of the protocol.

    Attributes:
        name: the config's name.
        description: one line for people.
        bn: BN at the hidden layers: `"none"`, `"after"` or `"before"` the ReLU.
        input_bn: a BN layer on the raw inputs.
        standardize_x: standardize the inputs with the training set's moments.
        standardize_y: learn the standardized target (output mapped back).
    """

    name: str
    description: str
    bn: str = "none"
    input_bn: bool = False
    standardize_x: bool = False
    standardize_y: bool = False

    def build(self):
        """A fresh, uncompiled, built `keras.Sequential` for this config."""
        import keras

        x_mean, x_var, y_mean, y_sd = _training_moments()
        layers: list = [keras.Input((10,))]
        if self.standardize_x:
            layers.append(keras.layers.Normalization(mean=x_mean, variance=x_var))
        if self.input_bn:
            layers.append(keras.layers.BatchNormalization(name="input_bn"))
        for i, units in enumerate(HIDDEN_UNITS):
            name = f"bn_{i}"
            if self.bn == "before":
                layers += [keras.layers.Dense(units), keras.layers.BatchNormalization(name=name),
                           keras.layers.Activation("relu")]  # fmt: skip
            else:
                layers.append(keras.layers.Dense(units, activation="relu"))
                if self.bn == "after":
                    layers.append(keras.layers.BatchNormalization(name=name))
        layers.append(keras.layers.Dense(1))
        if self.standardize_y:
            layers.append(keras.layers.Rescaling(scale=y_sd, offset=y_mean))
        return keras.Sequential(layers, name=self.name.replace("-", "_"))


def _make_configs() -> dict[str, DiabetesConfig]:
    configs = [
        DiabetesConfig("baseline", "raw inputs, raw target, no BN"),
        DiabetesConfig("bn-after", "raw inputs; BN after each hidden ReLU", bn="after"),
        DiabetesConfig("bn-before", "raw inputs; BN before each hidden ReLU", bn="before"),
        DiabetesConfig(
            "bn-input", "BN on the raw inputs and after each hidden ReLU", bn="after", input_bn=True
        ),
        DiabetesConfig(
            "standardized", "inputs standardized (training moments), no BN", standardize_x=True
        ),
        DiabetesConfig(
            "baseline-scaled-y", "baseline, learning the standardized target", standardize_y=True
        ),
        DiabetesConfig(
            "bn-input-scaled-y",
            "bn-input, learning the standardized target",
            bn="after",
            input_bn=True,
            standardize_y=True,
        ),
        DiabetesConfig(
            "standardized-scaled-y",
            "inputs and target standardized, no BN",
            standardize_x=True,
            standardize_y=True,
        ),
    ]
    return {config.name: config for config in configs}


#: Every config of the protocol: name -> `DiabetesConfig`.
CONFIGS: dict[str, DiabetesConfig] = _make_configs()
#: The configs a study runs when none are named: all of them.
DEFAULT_CONFIGS = tuple(CONFIGS)


def build_model(config: str):
    """A fresh, uncompiled, built model for the config named `config`.

    Raises:
        ValueError: if `config` is not a name in `CONFIGS`.
    """
    if config not in CONFIGS:
        raise ValueError(f"Unknown diabetes config {config!r}. Valid names: {', '.join(CONFIGS)}.")
    return CONFIGS[config].build()


def _optimizer():
    import keras

    return keras.optimizers.Adam(learning_rate=LEARNING_RATE)


#: The diabetes protocol, as `keras_bn_tools.studies.PROTOCOLS["diabetes"]` runs it.
PROTOCOL = Protocol(
    name="diabetes",
    description=(
        "An MLP regressor (Dense(32, relu) x 2 -> Dense(1)) on sklearn's 442 diabetes "
        "patients with their features in their own units, every fifth patient held out; "
        f"Adam(lr={LEARNING_RATE}), mean squared error, batches of {BATCH_SIZE}, {EPOCHS} "
        f"epochs; metric: test MAE; target: MAE <= {TARGET:g}."
    ),
    load_data=load_diabetes_split,
    build=build_model,
    configs={name: config.description for name, config in CONFIGS.items()},
    default_configs=DEFAULT_CONFIGS,
    epochs=EPOCHS,
    batch_size=BATCH_SIZE,
    optimizer=_optimizer,
    loss="mse",
    target=TARGET,
    metric="mae",
)
