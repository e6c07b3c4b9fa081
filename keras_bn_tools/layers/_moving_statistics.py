"""`MovingStatistics`: the state `MomentumBatchNormalization` keeps beyond Keras BN's.

The layer owns Keras BN's variables (gamma, beta, moving statistics, renorm
statistics); this object creates, through the layer's `add_weight`, and
updates the rest: the momentum variables, the batch counter, the last batch's
statistics and the debias accumulators. It applies the moving-average rules
of `_moving_average` to the layer's moving (and renorm) statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from keras_bn_tools._keras_compat import jax_trainer_holds_value
from keras_bn_tools.layers._moving_average import (
    blend,
    debiased_update,
    guarded_assign,
    momentum_numbers,
    update_weights,
)
from keras_bn_tools.layers._renorm import renormalized_variance
from keras_bn_tools.ops import to_numpy

__all__ = ["MovingStatistics"]


def _exactly(number: float):
    # keras.initializers.Constant would round through float32 first.
    return lambda shape, dtype=None: np.full(shape, number, dtype=dtype)


class MovingStatistics:
    """The extra state of a built `MomentumBatchNormalization` and its update rules.

    Args:
        layer: the built layer (its Keras BN variables exist).
        momentum: the momentum to start from (a float or None).
    """

    def __init__(self, layer: Any, momentum: float | None) -> None:
        self.layer = layer
        shape = tuple(layer.moving_mean.shape)
        # float32 state (float64 in a float64 layer), whatever the dtype policy, so that
        # the momentum constants are exactly those keras.layers.BatchNormalization uses.
        dtype = "float64" if layer.variable_dtype == "float64" else "float32"

        def state(name: str, initializer: Any, shape: tuple[int, ...] = (), dtype: str = dtype):
            return layer.add_weight(
                shape=shape,
                name=name,
                initializer=initializer,
                dtype=dtype,
                trainable=False,
                autocast=False,
            )

        names = ("momentum", "momentum_complement", "cumulative")
        numbers = momentum_numbers(momentum)
        self.momentum_variables = tuple(
            state(name, _exactly(number)) for name, number in zip(names, numbers, strict=True)
        )
        # "int": int64 on TensorFlow, int32 on JAX (no int64 without x64).
        self.count = state("num_batches_tracked", "zeros", dtype="int")
        self.batch_mean = state("batch_mean", "zeros", shape)
        self.batch_variance = state("batch_variance", "ones", shape)
        self.accumulators: tuple[Any, Any] | None = None
        self.correction = None
        if layer.debias:
            second = "stddev" if layer.renorm else "variance"
            self.accumulators = (
                state("biased_moving_mean", "zeros", shape),
                state(f"biased_moving_{second}", "zeros", shape),
            )
            self.correction = state("bias_correction", "zeros")

    def state_outside_weights(self, momentum: float | None) -> list[Any]:
        """The variables that are layer state but not weights (see the layer's docstring):
        the momentum, the last batch's statistics, and the counter unless the average
        depends on it (`momentum=None` or debias)."""
        hidden = [*self.momentum_variables, self.batch_mean, self.batch_variance]
        if momentum is not None and self.accumulators is None:
            hidden.append(self.count)
        return hidden

    # -- momentum

    def check_attached(self, what: str) -> None:
        """Refuse a change that `model.fit` on JAX would overwrite at the epoch's end."""
        if jax_trainer_holds_value(self.momentum_variables[0]):
            raise RuntimeError(
                f"Cannot change `{what}` of layer {self.layer.name!r} now: on the JAX "
                "backend, model.fit() keeps the model's variables outside the model during "
                "an epoch, so the change would be lost. Change it at an epoch boundary "
                "(e.g. in on_epoch_begin), or call `self.model.jax_state_sync()` in your "
                "callback first."
            )

    def assign_momentum(self, momentum: float | None) -> None:
        self.check_attached("momentum")
        for variable, number in zip(
            self.momentum_variables, momentum_numbers(momentum), strict=True
        ):
            variable.assign(number)

    def stored_momentum(self, current: float | None) -> float | None:
        """The momentum the variables hold (`current` when it rounds to the same float32)."""
        momentum, _, cumulative = (float(to_numpy(v)) for v in self.momentum_variables)
        if cumulative > 0.5:
            return None
        if current is not None and np.float32(current) == np.float32(momentum):
            return current
        return momentum

    # -- updates

    def update(self, mean: Any, variance: Any) -> None:
        """Record the batch statistics and update every moving statistic of the layer."""
        layer = self.layer
        self.batch_mean.assign(mean)
        self.batch_variance.assign(variance)
        count = self.count.value
        finite = None
        if layer.skip_nonfinite:
            finite = ops.logical_and(ops.all(ops.isfinite(mean)), ops.all(ops.isfinite(variance)))
        keep, take = update_weights(self.momentum_variables, count, mean.dtype)
        tracked = ((layer.moving_mean, mean), (layer.moving_variance, variance))
        if layer.renorm:
            stddev = ops.sqrt(variance + layer.epsilon)
            renorm_keep = layer.renorm_momentum
            for variable, value in ((layer.renorm_mean, mean), (layer.renorm_stddev, stddev)):
                blend(variable, value, renorm_keep, 1.0 - renorm_keep, finite)
            tracked = ((layer.moving_mean, mean), (layer.moving_stddev, stddev))
        if self.accumulators is not None:
            new_values = debiased_update(
                tracked, self.accumulators, self.correction, keep, take, finite
            )
        else:
            new_values = [blend(variable, value, keep, take, finite) for variable, value in tracked]
        if layer.renorm:
            variance_value = renormalized_variance(new_values[1], layer.epsilon)
            guarded_assign(layer.moving_variance, variance_value, finite)
        increment = 1 if finite is None else ops.cast(finite, count.dtype)
        self.count.assign(count + increment)

    def write(self, mean: Any, variance: Any, count: int | None) -> None:
        """The layer's moving statistics become `mean`, `variance` (checked values)."""
        layer = self.layer
        dtype = layer.moving_mean.dtype
        mean, variance = ops.cast(mean, dtype), ops.cast(variance, dtype)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        second = variance
        if layer.renorm:
            second = ops.sqrt(variance + layer.epsilon)
            layer.moving_stddev.assign(second)
        if self.accumulators is not None:
            correction = ops.cast(self.correction, dtype)
            correction = ops.where(ops.greater(correction, 0.0), correction, 1.0)
            self.correction.assign(correction)
            self.accumulators[0].assign(mean * correction)
            self.accumulators[1].assign(second * correction)
        if count is not None:
            self.count.assign(count)
        elif self.layer.momentum is None:
            # Written statistics are history: at least one batch's worth, so that the
            # next batch is averaged with them instead of replacing them.
            self.count.assign(ops.maximum(self.count.value, 1))

    def reset(self) -> None:
        """Every moving statistic back to its initial value, no batch counted."""
        layer = self.layer
        shape = tuple(layer.moving_mean.shape)
        mean = layer.moving_mean_initializer(shape, dtype=layer.moving_mean.dtype)
        variance = layer.moving_variance_initializer(shape, dtype=layer.moving_variance.dtype)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        if layer.renorm:
            layer.moving_stddev.assign(ops.sqrt(variance))
            layer.renorm_mean.assign(mean)
            layer.renorm_stddev.assign(ops.sqrt(variance))
        if self.accumulators is not None:
            for accumulator in self.accumulators:
                accumulator.assign(ops.zeros(shape))
            self.correction.assign(0.0)
        self.count.assign(0)

    def restart(self) -> None:
        """Fresh extra state around Keras BN's variables: no batch counted, no last batch,
        and with debias the moving statistics count as a full average."""
        layer = self.layer
        self.count.assign(0)
        self.batch_mean.assign(ops.zeros(self.batch_mean.shape))
        self.batch_variance.assign(ops.ones(self.batch_variance.shape))
        if self.accumulators is not None:
            second = layer.moving_stddev if layer.renorm else layer.moving_variance
            self.correction.assign(1.0)
            self.accumulators[0].assign(layer.moving_mean.value)
            self.accumulators[1].assign(second.value)
