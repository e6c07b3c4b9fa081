"""The digits protocol: batch normalization in a small CNN on real handwritten digits.

Data: `sklearn.datasets.load_digits`, the 1,797 8x8 grey images of handwritten
digits that ship inside scikit-learn (no download). Pixels (integers 0-16) are
divided by 16, so inputs lie in [0, 1], and shaped `(n, 8, 8, 1)` (channels
last); labels are the digits 0-9 as int32. The split is fixed and does not
depend on any random generator: every fifth image (rows 4, 9, 14, ...) is a
test image (359 images), the other 1,438 train. Runs differ only by their seed
(initial weights and the order of the training rows).

Model (`build_cnn`): two 3x3 convolutions with ReLU, each followed by a 2x2
max-pooling, then `Flatten` and a 10-way softmax:

    Conv2D(16) -> MaxPool -> Conv2D(32) -> MaxPool -> Flatten -> Dense(10, softmax)

with BN at each convolution as the config says. Training: SGD(learning rate
0.03, momentum 0.9), sparse categorical cross-entropy, batches of 64 (23
updates per epoch), 20 epochs. "Epochs to target" counts the epochs until the
test accuracy (inference mode, after the epoch) first reaches `TARGET` = 0.97.
The target was chosen from the measured curves (10 seeds): every config
levels off between 0.98 and 0.99, every run reaches 0.97 within 20 epochs,
and at 0.97 the configs differ most.

Example:
    >>> from keras_bn_tools.studies.digits import PROTOCOL, load_digits_split
    >>> (train_x, train_y), (test_x, test_y) = load_digits_split()
    >>> train_x.shape, test_x.shape
    ((1438, 8, 8, 1), (359, 8, 8, 1))
    >>> model = PROTOCOL.build("bn-before")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_bn_tools.studies.protocol import Data, Protocol

__all__ = [
    "BATCH_SIZE",
    "CONFIGS",
    "DEFAULT_CONFIGS",
    "EPOCHS",
    "FILTERS",
    "LEARNING_RATE",
    "PROTOCOL",
    "TARGET",
    "TEST_EVERY",
    "DigitsConfig",
    "build_model",
    "load_digits_split",
]

#: Every `TEST_EVERY`-th image (counting from 1) is a test image.
TEST_EVERY = 5
#: Filters of the two convolutions; each is followed by a 2x2 max-pooling.
FILTERS = (16, 32)
#: A 2x2 max-pooling after every `POOL_EVERY` convolutions.
POOL_EVERY = 1
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 0.03
SGD_MOMENTUM = 0.9
#: The test accuracy whose first crossing "epochs to target" reports.
TARGET = 0.97


def load_digits_split() -> Data:
    """The protocol's data: `load_digits`, scaled to [0, 1], every fifth image for testing.

    Returns:
        `((train_x, train_y), (test_x, test_y))`: `x` float32 of shape
        `(rows, 8, 8, 1)` with values in [0, 1], `y` int32 of shape `(rows,)`
        with values 0-9; 1,438 training rows and 359 test rows (rows 4, 9, 14,
        ... of `load_digits`).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int32")
    test = np.arange(len(y)) % TEST_EVERY == TEST_EVERY - 1
    return (x[~test], y[~test]), (x[test], y[test])


def _batch_normalization(**kwargs: Any):
    import keras

    return keras.layers.BatchNormalization(**kwargs)


def _momentum_batch_normalization(**kwargs: Any):
    from keras_bn_tools.layers import MomentumBatchNormalization

    return MomentumBatchNormalization(**kwargs)


@dataclass(frozen=True)
class DigitsConfig:
    """One model of the protocol: where BN goes and which BN layer it is.

    The BN layers are named `layer_name`, `layer_name_1`, ... in call order in
    every build, whatever was built before in the session, so that a study's
    per-layer moving statistics have the same keys in every run.

    Attributes:
        name: the config's name in tables, files and plots.
        description: one line for people.
        bn: BN placement at each convolution: `"none"`, `"after"` or `"before"`
            the ReLU.
        bn_layer: callable taking keyword arguments and returning a new
            normalization layer (default `keras.layers.BatchNormalization`).
        bn_kwargs: keyword arguments passed to `bn_layer`.
        layer_name: base name of the BN layers.
    """

    name: str
    description: str
    bn: str = "none"
    bn_layer: Callable[..., Any] = _batch_normalization
    bn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    layer_name: str = "batch_normalization"

    def build(self):
        """A fresh, uncompiled, built `keras.Sequential` for this config."""
        from keras_bn_tools.builders import build_cnn

        # `build_cnn` numbers repeated names (`name`, `name_1`, ...) in call order.
        def make_bn():
            return self.bn_layer(name=self.layer_name, **dict(self.bn_kwargs))

        return build_cnn(
            (8, 8, 1),
            FILTERS,
            kernel_size=3,
            bn=self.bn,
            pool_every=POOL_EVERY,
            output_units=10,
            output_activation="softmax",
            bn_layer=make_bn,
            # PyTorch's parameter names cannot contain dots (`momentum0.9`).
            name=self.name.replace(".", "_"),
        )


def _make_configs() -> dict[str, DigitsConfig]:
    configs = [
        DigitsConfig(
            "baseline",
            "no BN: Conv2D(16, relu) -> MaxPool -> Conv2D(32, relu) -> MaxPool -> Dense(10)",
        ),
        DigitsConfig(
            "bn-after", "BN after each ReLU: Conv2D(relu) -> BN -> MaxPool, twice", bn="after"
        ),
        DigitsConfig(
            "bn-before",
            "BN before each ReLU: Conv2D -> BN -> ReLU -> MaxPool, twice (the paper's order)",
            bn="before",
        ),
        DigitsConfig(
            "bn-before-momentum0.9",
            "bn-before with MomentumBatchNormalization(momentum=0.9): moving statistics "
            "that follow the weights within an epoch",
            bn="before",
            bn_layer=_momentum_batch_normalization,
            bn_kwargs={"momentum": 0.9},
            layer_name="momentum_batch_normalization",
        ),
        DigitsConfig(
            "bn-before-debiased",
            "bn-before with MomentumBatchNormalization(momentum=0.99, debias=True): "
            "bias-corrected moving averages",
            bn="before",
            bn_layer=_momentum_batch_normalization,
            bn_kwargs={"momentum": 0.99, "debias": True},
            layer_name="momentum_batch_normalization",
        ),
    ]
    return {config.name: config for config in configs}


#: Every config of the protocol: name -> `DigitsConfig`.
CONFIGS: dict[str, DigitsConfig] = _make_configs()
#: The configs a study runs when none are named.
DEFAULT_CONFIGS = ("baseline", "bn-after", "bn-before", "bn-before-momentum0.9")


def build_model(config: str):
    """A fresh, uncompiled, built model for the config named `config`.

    Args:
        config: a name in `CONFIGS`.

    Returns:
        A `keras.Sequential` with input shape `(8, 8, 1)` and 10 softmax outputs.

    Raises:
        ValueError: if `config` is not a name in `CONFIGS`.
    """
    if config not in CONFIGS:
        raise ValueError(f"Unknown digits config {config!r}. Valid names: {', '.join(CONFIGS)}.")
    return CONFIGS[config].build()


def _optimizer():
    import keras

    return keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=SGD_MOMENTUM)


#: The digits protocol, as `keras_bn_tools.studies.PROTOCOLS["digits"]` runs it.
PROTOCOL = Protocol(
    name="digits",
    description=(
        "A small CNN (two 3x3 convolutions with max-pooling, 10-way softmax) on "
        "sklearn's 1,797 8x8 handwritten digits, every fifth image held out for testing; "
        f"SGD(lr={LEARNING_RATE}, momentum={SGD_MOMENTUM}), batches of {BATCH_SIZE}, "
        f"{EPOCHS} epochs; target: {TARGET:.0%} test accuracy."
    ),
    load_data=load_digits_split,
    build=build_model,
    configs={name: config.description for name, config in CONFIGS.items()},
    default_configs=DEFAULT_CONFIGS,
    epochs=EPOCHS,
    batch_size=BATCH_SIZE,
    optimizer=_optimizer,
    loss="sparse_categorical_crossentropy",
    target=TARGET,
    # XLA's CPU convolutions make this study about three times slower (docs/studies.md).
    jit_compile=False,
)
