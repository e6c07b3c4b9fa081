"""What the testing kit's assertions read from the layer under test.

A BN layer (`keras_bn_tools.layers.interface.is_batchnorm`) is read through
the BN interface (`as_batchnorm`) and its options through `get_config()`, the
public list of a Keras layer's arguments. The assertions also take any other
callable that normalizes (a user's own layer): for those, and only here, the
kit falls back to reading the attributes Keras's BN has by name (`epsilon`,
`gamma`, `beta`, `moving_mean`...), with Keras BN's defaults for missing ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_bn_tools.layers.interface import as_batchnorm, is_batchnorm
from keras_bn_tools.ops import to_numpy

__all__ = ["Subject", "read_subject"]


def _numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return np.asarray(to_numpy(value), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Subject:
    """The layer under test, as the assertions see it.

    Attributes:
        name: the layer's class and name, for messages.
        axis: the feature axis (or axes) the layer declares, or None.
        epsilon: the float added to the variance (1e-3 when unknown).
        gamma: the scale as float64 NumPy, or None (no scale).
        beta: the offset as float64 NumPy, or None (no offset).
        trainable: False holds a training call to inference behaviour.
        virtual_batch_size: the ghost batch size, or None.
        debias: whether the moving averages are bias-corrected.
        momentum: the layer's momentum (None: cumulative average).
        num_batches_tracked: the layer's batch counter (0 without one).
        statistics_dtype: the dtype of the moving statistics, or None.
        read_moving: returns `(moving_mean, moving_variance)` as float64
            NumPy, read now, or None when the layer has none.
    """

    name: str
    axis: Any
    epsilon: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    trainable: bool
    virtual_batch_size: int | None
    debias: bool
    momentum: Any
    num_batches_tracked: int
    statistics_dtype: Any
    read_moving: Callable[[], tuple[np.ndarray, np.ndarray] | None]


def _name(layer: Any) -> str:
    name = layer.name if isinstance(getattr(layer, "name", None), str) else None
    return f"{type(layer).__name__} {name!r}" if name else type(layer).__name__


def _batchnorm_subject(layer: Any) -> Subject:
    bn = as_batchnorm(layer)
    gamma, beta = bn.affine_parameters()
    config = layer.get_config()
    counter = bn.statistic_variables().get("num_batches_tracked") if layer.built else None

    def read_moving() -> tuple[np.ndarray, np.ndarray]:
        mean, variance = bn.moving_statistics()
        return _numpy(mean), _numpy(variance)

    return Subject(
        name=_name(layer),
        axis=bn.channel_axis,
        epsilon=float(bn.epsilon),
        gamma=_numpy(gamma),
        beta=_numpy(beta),
        trainable=bool(layer.trainable),
        virtual_batch_size=config.get("virtual_batch_size"),
        debias=bool(config.get("debias", False)),
        momentum=layer.momentum,
        num_batches_tracked=0 if counter is None else int(to_numpy(counter)),
        statistics_dtype=bn.keras_variables()["moving_mean"].dtype if layer.built else None,
        read_moving=read_moving,
    )


def _generic_subject(layer: Any) -> Subject:
    """A layer outside the BN interface: Keras BN's attribute names, Keras BN's defaults."""

    def attribute(name: str, default: Any = None) -> Any:
        return getattr(layer, name, default)

    def read_moving() -> tuple[np.ndarray, np.ndarray] | None:
        mean, variance = attribute("moving_mean"), attribute("moving_variance")
        if mean is None or variance is None:
            return None
        return _numpy(mean), _numpy(variance)

    tracked = attribute("num_batches_tracked")
    moving_mean = attribute("moving_mean")
    return Subject(
        name=_name(layer),
        axis=attribute("axis"),
        epsilon=float(attribute("epsilon", 1e-3)),
        gamma=_numpy(attribute("gamma")) if attribute("scale", True) else None,
        beta=_numpy(attribute("beta")) if attribute("center", True) else None,
        trainable=bool(attribute("trainable", True)),
        virtual_batch_size=attribute("virtual_batch_size"),
        debias=bool(attribute("debias", False)),
        momentum=attribute("momentum"),
        num_batches_tracked=0 if tracked is None else int(to_numpy(tracked)),
        statistics_dtype=None if moving_mean is None else moving_mean.dtype,
        read_moving=read_moving,
    )


def read_subject(layer: Any) -> Subject:
    """`layer` as the assertions see it: through the BN interface for a BN layer, by
    Keras BN's attribute names for any other layer."""
    return _batchnorm_subject(layer) if is_batchnorm(layer) else _generic_subject(layer)
