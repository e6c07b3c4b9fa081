"""The circles protocol: does batch normalization speed up learning, and where should it go?

The well-known "circles" tutorial as a `Protocol`. A small MLP
(2 -> Dense(50, relu, he_uniform) -> Dense(1, sigmoid)) learns
`sklearn.datasets.make_circles(n_samples=1000, noise=0.1, random_state=1)`,
first 500 rows for training, last 500 for testing, with SGD(learning_rate=0.01,
momentum=0.9), binary cross-entropy and batches of 32 for 100 epochs; the
target is 80% test accuracy. `CONFIGS` holds the tutorial's three models
(`baseline`, `bn-after`, `bn-before`) and variants.

Example:
    >>> from keras_bn_tools.studies.circles import run_study
    >>> result = run_study(seeds=range(10))          # doctest: +SKIP
    >>> print(result.table())                        # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_bn_tools._validation import check_int_in_range
from keras_bn_tools.studies.protocol import Data, Protocol
from keras_bn_tools.studies.results import StudyResult

__all__ = ["CONFIGS", "DEFAULT_CONFIGS", "PROTOCOL", "CirclesConfig", "load_circles", "run_study"]

#: The tutorial's three models.
DEFAULT_CONFIGS = ("baseline", "bn-after", "bn-before")
LEARNING_RATE = 0.01
SGD_MOMENTUM = 0.9
TARGET_ACCURACY = 0.80


def load_circles(
    n_samples: int = 1000, noise: float = 0.1, random_state: int = 1, n_train: int = 500
) -> Data:
    """The tutorial's data: `make_circles`, first `n_train` rows train, the rest test.

    Args:
        n_samples: total number of points (>= 2).
        noise: standard deviation of the Gaussian noise added to the points.
        random_state: seed of `make_circles` (the tutorial's is 1).
        n_train: number of leading rows used for training, in `[1, n_samples - 1]`.

    Returns:
        `((train_x, train_y), (test_x, test_y))`: `x` float32 `(rows, 2)`,
        `y` float32 `(rows,)` with values 0 and 1.

    Raises:
        ValueError: `n_samples < 2` or `n_train` outside `[1, n_samples - 1]`.
        TypeError: a non-integer `n_samples` or `n_train`.
    """
    from sklearn.datasets import make_circles

    n_samples = check_int_in_range("n_samples", n_samples, minimum=2, maximum=10**8)
    n_train = check_int_in_range("n_train", n_train, minimum=1, maximum=n_samples - 1)
    x, y = make_circles(n_samples=n_samples, noise=noise, random_state=random_state)
    x, y = x.astype("float32"), y.astype("float32")
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _momentum_batch_normalization(**kwargs: Any):
    from keras_bn_tools.layers import MomentumBatchNormalization

    return MomentumBatchNormalization(**kwargs)


@dataclass(frozen=True)
class CirclesConfig:
    """One model of the circles study: where BN goes and which BN layer it is.

    `.build()` (or calling the config) returns a fresh, uncompiled
    `build_mlp(2, hidden_units, bn=bn, input_bn=input_bn, bn_layer=...)`
    whose BN layers are named `batch_normalization`, `batch_normalization_1`,
    ... in call order (after the layer's class), whatever was built before,
    so that moving statistics have the same keys in every run and engine.

    Attributes:
        name: the config's name in tables, files and plots.
        description: one line for people.
        bn: BN placement at the hidden layer: `"none"`, `"after"` or `"before"`.
        input_bn: also put a BN layer right after the input.
        bn_layer: callable taking keyword arguments and returning a new
            normalization layer (default `keras.layers.BatchNormalization`).
        bn_kwargs: keyword arguments passed to `bn_layer`.
        hidden_units: units of the hidden `Dense` layers.
    """

    name: str
    description: str = ""
    bn: str = "after"
    input_bn: bool = False
    bn_layer: Callable[..., Any] | None = None
    bn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    hidden_units: tuple[int, ...] = (50,)

    def build(self):
        """A fresh, uncompiled, built `keras.Sequential` for this config."""
        import keras

        from keras_bn_tools.builders import build_mlp

        make = self.bn_layer if self.bn_layer is not None else keras.layers.BatchNormalization
        counts: dict[str, int] = {}

        def bn_layer():
            layer = make(**dict(self.bn_kwargs))
            base = _snake_case(type(layer).__name__)
            counts[base] = counts.get(base, 0) + 1
            layer.name = base if counts[base] == 1 else f"{base}_{counts[base] - 1}"
            return layer

        return build_mlp(
            2, tuple(self.hidden_units), bn=self.bn, input_bn=self.input_bn,
            bn_layer=bn_layer, name=self.name,
        )  # fmt: skip

    def __call__(self):
        return self.build()


_MOMENTUM = _momentum_batch_normalization
#: Every named config of the study: name -> `CirclesConfig` (callable: builds the model).
CONFIGS: dict[str, CirclesConfig] = {
    c.name: c
    for c in (
        CirclesConfig("baseline", "no BN: Dense(50, relu) -> Dense(1, sigmoid)", bn="none"),
        CirclesConfig("bn-after", "BN after the ReLU: Dense(50, relu) -> BN -> Dense(1)"),
        CirclesConfig(
            "bn-before", "BN before the ReLU: Dense(50) -> BN -> ReLU -> Dense(1)", bn="before"
        ),
        CirclesConfig(
            "bn-after-no-affine",
            "BN after the ReLU without beta and gamma (center=False, scale=False)",
            bn_kwargs={"center": False, "scale": False},
        ),
        CirclesConfig(
            "bn-after-momentum0",
            "BN after the ReLU with momentum 0 (moving statistics = last batch's)",
            bn_kwargs={"momentum": 0.0},
        ),
        CirclesConfig(
            "bn-input",
            "BN at the input and after the ReLU: BN -> Dense(50, relu) -> BN -> Dense(1)",
            input_bn=True,
        ),
        CirclesConfig(
            "bn-after-cumulative",
            "BN after the ReLU, MomentumBatchNormalization(momentum=None): moving statistics "
            "are the true average over every batch so far",
            bn_layer=_MOMENTUM,
            bn_kwargs={"momentum": None},
        ),
        CirclesConfig(
            "bn-after-debiased",
            "BN after the ReLU, MomentumBatchNormalization(momentum=0.99, debias=True): "
            "bias-corrected moving averages",
            bn_layer=_MOMENTUM,
            bn_kwargs={"momentum": 0.99, "debias": True},
        ),
    )
}


def _sgd():
    import keras

    return keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=SGD_MOMENTUM)


def _protocol(configs: Mapping[str, CirclesConfig], load_data: Callable[[], Data]) -> Protocol:
    return Protocol(
        name="circles",
        description=(
            "make_circles(n_samples=1000, noise=0.1, random_state=1), first 500 rows train, "
            "last 500 test; MLP 2 -> Dense(50, relu, he_uniform) -> Dense(1, sigmoid); "
            f"SGD(learning_rate={LEARNING_RATE}, momentum={SGD_MOMENTUM}); binary "
            "cross-entropy; batch 32; 100 epochs; target: 80% test accuracy."
        ),
        load_data=load_data,
        build=lambda config: configs[config].build(),
        configs={name: c.description for name, c in configs.items()},
        default_configs=DEFAULT_CONFIGS,
        epochs=100,
        batch_size=32,
        optimizer=_sgd,
        loss="binary_crossentropy",
        target=TARGET_ACCURACY,
        accuracy="binary",
    )


#: The circles protocol (`keras_bn_tools.studies.PROTOCOLS["circles"]`).
PROTOCOL = _protocol(CONFIGS, load_circles)


def run_study(configs: Any = None, seeds: Any = range(10), *, data: Data | None = None,
              **kwargs: Any) -> StudyResult:  # fmt: skip
    """`keras_bn_tools.studies.run_study("circles", configs, seeds, **kwargs)`.

    Args:
        configs: names from `CONFIGS`, `CirclesConfig` objects or a mix
            (default: `DEFAULT_CONFIGS`).
        seeds: the seeds (default `range(10)`).
        data: `((train_x, train_y), (test_x, test_y))` instead of `load_circles()`.
        **kwargs: `run_study`'s keyword arguments (`epochs`, `engine`, `shuffle`, ...).
    """
    from keras_bn_tools.studies.study import run_study as run_any

    protocol = PROTOCOL
    if isinstance(configs, str | CirclesConfig):
        configs = [configs]
    custom = [c for c in configs or () if isinstance(c, CirclesConfig)]
    if custom or data is not None:
        named = {**CONFIGS, **{c.name: c for c in custom}}
        loader = load_circles if data is None else (lambda: data)
        protocol = _protocol(named, loader)
    if configs is not None:
        configs = [c.name if isinstance(c, CirclesConfig) else c for c in configs]
    return run_any(protocol, configs, seeds, **kwargs)
