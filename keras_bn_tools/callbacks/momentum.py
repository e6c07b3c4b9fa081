"""Change the momentum of `MomentumBatchNormalization` layers epoch by epoch."""

from __future__ import annotations

import collections
from collections.abc import Callable

import keras

from keras_bn_tools._validation import check_momentum
from keras_bn_tools.graph import batchnorm_layers
from keras_bn_tools.layers import MomentumBatchNormalization

__all__ = ["MomentumScheduler"]


def _type_label(layer: keras.layers.Layer) -> str:
    cls = type(layer)
    if cls.__module__.startswith("keras."):
        return f"{cls.__name__} (keras)"
    return f"{cls.__module__}.{cls.__qualname__}"


class MomentumScheduler(keras.callbacks.Callback):
    """Set the momentum of every `MomentumBatchNormalization` at the start of each epoch.

    `schedule(epoch)` (0-based, as Keras counts) returns the momentum for that
    epoch: a float in [0, 1], or `None` for the layers' cumulative average
    (see `MomentumBatchNormalization`). It is applied in `on_epoch_begin`, so
    the compiled training step picks it up from the epoch's first batch, on
    every backend and without retracing. Other BN layers are left alone.

    Args:
        schedule: a callable `epoch -> float | None`.
        verbose: 1 prints the momentum set at each epoch.

    Attributes:
        history: dict epoch -> the momentum applied at that epoch.

    Raises:
        ValueError: when training starts, if the model has no
            `MomentumBatchNormalization`; at an epoch start, if `schedule`
            returns a number outside [0, 1] (NaN included).
        TypeError: at construction, if `schedule` is not callable; at an
            epoch start, if `schedule` returns neither a number nor None.

    Example:
        ```python
        # Momentum 0 (moving statistics = last batch's) for 3 epochs, then 0.99.
        scheduler = MomentumScheduler(lambda epoch: 0.0 if epoch < 3 else 0.99)
        model.fit(x, y, epochs=10, callbacks=[scheduler])
        ```
    """

    def __init__(self, schedule: Callable[[int], float | None], verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"`schedule` must be a callable epoch -> momentum, got {schedule!r} "
                f"({type(schedule).__name__})."
            )
        self.schedule = schedule
        self.verbose = verbose
        self.history: dict[int, float | None] = {}
        self._layers: list[keras.layers.Layer] = []

    def on_train_begin(self, logs=None):
        found = batchnorm_layers(self.model)
        self._layers = [layer for layer in found if isinstance(layer, MomentumBatchNormalization)]
        if not self._layers:
            counts = collections.Counter(_type_label(layer) for layer in found)
            kinds = ", ".join(f"{label} x{n}" for label, n in counts.items())
            raise ValueError(
                f"MomentumScheduler: model {self.model.name!r} has no layer whose momentum it "
                f"can schedule (found {kinds or 'no batch normalization layer'}); "
                "MomentumScheduler needs keras_bn_tools.layers.MomentumBatchNormalization."
            )

    def on_epoch_begin(self, epoch, logs=None):
        momentum = check_momentum(f"schedule({epoch})", self.schedule(epoch))
        for layer in self._layers:
            layer.momentum = momentum
        self.history[epoch] = momentum
        if self.verbose:
            keras.utils.io_utils.print_msg(
                f"\nEpoch {epoch + 1}: MomentumScheduler setting BN momentum to {momentum}."
            )
