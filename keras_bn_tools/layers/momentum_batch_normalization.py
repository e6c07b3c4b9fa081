"""`MomentumBatchNormalization`: Keras's batch normalization, made for experiments.

The layer subclasses `keras.layers.BatchNormalization` and, with its default
arguments, computes exactly what Keras computes (outputs and moving statistics,
bit for bit). On top of that it adds a momentum that can be changed while a
compiled model trains, a cumulative (true) average, bias-corrected moving
averages, ghost batches, batch renormalization, protection of the moving
statistics against non-finite batches, and readable training state.

Only `keras.ops` is used, so the layer runs on every Keras backend that Keras's
own layer runs on (TensorFlow and JAX are tested).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_bn_tools._keras_compat import jax_trainer_holds_value
from keras_bn_tools._validation import (
    RENORM_CLIPPING_KEYS,
    check_axis,
    check_bool,
    check_epsilon,
    check_int_in_range,
    check_momentum,
    check_positive_int,
    check_probability,
    check_renorm_clipping,
    check_statistic,
)
from keras_bn_tools.layers.interface import (
    assign_keras_variables,
    constructor_arguments,
    keras_variables_of,
)
from keras_bn_tools.ops import affine_from_statistics, to_numpy

__all__ = ["MomentumBatchNormalization"]


@keras.saving.register_keras_serializable(package="keras_bn_tools")
class MomentumBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization with a schedulable momentum and experiment options.

    With the default arguments the layer is numerically interchangeable with
    `keras.layers.BatchNormalization`: same outputs, same moving statistics,
    masks, `trainable=False` (inference behaviour, no updates) and mixed
    precision (statistics and variables in float32) behave alike.

    Training-mode update of the moving statistics, per feature, where `mean`
    and `var` are the statistics of the current batch:

    - `momentum=m` (a float): `moving = moving * m + batch * (1 - m)`;
    - `momentum=None`: the cumulative (true) average of every batch since the
      last reset, `moving = moving + (batch - moving) / n` where `n` counts
      the batches since the last `reset_moving_statistics()` (switching to
      `None` mid-training treats the current moving statistics as the average
      of the batches seen so far; reset first for a clean average).

    `momentum` is a Python property backed by non-trainable float32 variables:
    `layer.momentum = 0.9` (or `None`) after `compile()`, between `fit()`
    calls or from a callback, takes effect on the next training step of the
    already-compiled model, without retracing. On the JAX backend, `fit()`
    detaches the variables from the model during an epoch: assign at an
    epoch boundary (e.g. `on_epoch_begin`) or call `self.model.jax_state_sync()`
    in the callback before assigning.

    Args:
        axis: the feature axis (an integer; negative counts from the end).
        momentum: float in [0, 1], or None for a cumulative average.
        epsilon: positive float added to the variance.
        center: whether to add the learned offset `beta`.
        scale: whether to multiply by the learned scale `gamma`.
        beta_initializer: initializer of `beta`.
        gamma_initializer: initializer of `gamma`.
        moving_mean_initializer: initializer of `moving_mean` (also used by
            `reset_moving_statistics()`).
        moving_variance_initializer: initializer of `moving_variance` (also
            used by `reset_moving_statistics()`).
        beta_regularizer: regularizer of `beta`.
        gamma_regularizer: regularizer of `gamma`.
        beta_constraint: constraint of `beta`.
        gamma_constraint: constraint of `gamma`.
        renorm: whether to use Batch Renormalization (Ioffe, 2017) in
            training, with the semantics of tf.keras 2: the normalized batch is
            corrected by `r = stop_gradient(clip(std / renorm_std))` and
            `d = stop_gradient(clip((mean - renorm_mean) / renorm_std))`, the
            renorm statistics are moving averages with `renorm_momentum`, and
            the inference statistics track the mean and the standard deviation
            with `momentum` (`moving_variance = relu(moving_stddev**2 - epsilon)`).
        renorm_clipping: dict with optional keys `"rmax"`, `"rmin"`, `"dmax"`
            (missing ones mean no clipping on that side): finite,
            `0 <= rmin <= 1 <= rmax`, `dmax >= 0`. Only with `renorm=True`.
        renorm_momentum: momentum of the renorm statistics, in [0, 1].
        synchronized: TensorFlow only: compute the batch statistics over all
            replicas of a `tf.distribute` strategy (not for ghost batches,
            whose statistics are per replica).
        debias: keep bias-corrected moving averages: the raw EMA starts from
            zero and `moving_mean`/`moving_variance` hold
            `EMA / (1 - prod(momenta))` (`1 - momentum**t` for a constant
            momentum), so inference is sound from the first step (after one
            step they equal that batch's statistics). The correction
            `1 - prod(momenta)` is kept as the same moving average of ones
            (no cancellation for a momentum close to 1).
        virtual_batch_size: ghost batch normalization: in training, the batch
            is split into consecutive groups of `virtual_batch_size` samples,
            each normalized with its own statistics; a last, smaller group
            (batch size not divisible) is normalized with its own statistics.
            The moving statistics are updated once per step with the
            sample-weighted average of the group means and of the group
            (within-group) variances, i.e. the full-batch mean and the pooled
            within-group variance. Inference never depends on it.
        skip_nonfinite: when the batch statistics hold a NaN or an infinity,
            leave the moving statistics (and the counters, renorm and debias
            state) untouched for that step.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Attributes:
        batch_mean: variable holding the mean of the last training batch (for
            ghost batches, the aggregated mean used for the update).
        batch_variance: variable holding the variance of the last training batch.
        num_batches_tracked: integer variable counting the training batches
            that updated the moving statistics since the last reset.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        renorm: bool = False,
        renorm_clipping: dict[str, float | None] | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        *,
        debias: bool = False,
        virtual_batch_size: int | None = None,
        skip_nonfinite: bool = True,
        **kwargs: Any,
    ) -> None:
        axis = check_axis("axis", axis)
        center, scale, renorm, synchronized, debias, skip_nonfinite = (
            check_bool(name, value)
            for name, value in (
                ("center", center),
                ("scale", scale),
                ("renorm", renorm),
                ("synchronized", synchronized),
                ("debias", debias),
                ("skip_nonfinite", skip_nonfinite),
            )
        )
        momentum = check_momentum("momentum", momentum)
        epsilon = check_epsilon("epsilon", epsilon)
        renorm_clipping = check_renorm_clipping(renorm_clipping, renorm=bool(renorm))
        renorm_momentum = check_probability("renorm_momentum", renorm_momentum)
        virtual_batch_size = check_positive_int(
            "virtual_batch_size", virtual_batch_size, allow_none=True
        )
        # Renorm is handled here rather than passed on: Keras releases before
        # 3.10 have no renorm arguments.
        super().__init__(
            axis=axis,
            momentum=0.0 if momentum is None else momentum,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            synchronized=synchronized,
            **kwargs,
        )
        self.momentum = momentum
        self.renorm = bool(renorm)
        self.renorm_clipping = {} if self.renorm and renorm_clipping is None else renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.debias = bool(debias)
        self.virtual_batch_size = virtual_batch_size
        self.skip_nonfinite = bool(skip_nonfinite)

        self.batch_mean = None
        self.batch_variance = None
        self.num_batches_tracked = None

    # ------------------------------------------------------------------ momentum

    @property
    def momentum(self) -> float | None:
        """The momentum of the moving averages: a float in [0, 1], or None.

        Assigning a new value updates the backing variables, so an already
        compiled training step uses it from its next call, without retracing.
        """
        return self._momentum_value

    @momentum.setter
    def momentum(self, value: float | None) -> None:
        value = check_momentum("momentum", value)
        variables = getattr(self, "_momentum_variables", None)
        if variables is not None:
            self._check_attached("momentum")
            for variable, number in zip(variables, self._momentum_numbers(value), strict=True):
                variable.assign(number)
        self._momentum_value = value

    @staticmethod
    def _momentum_numbers(momentum: float | None) -> tuple[float, float, float]:
        """(momentum, 1 - momentum, cumulative flag) as stored in the variables.

        `1 - momentum` is computed here in double precision and stored, so the
        update `moving * m + batch * (1 - m)` uses exactly the float32
        constants that `keras.layers.BatchNormalization` uses.
        """
        if momentum is None:
            return (1.0, 0.0, 1.0)
        return (momentum, 1.0 - momentum, 0.0)

    def _sync_momentum_from_variables(self) -> None:
        """Make the Python-side momentum agree with restored variables."""
        momentum, _, cumulative = (float(ops.convert_to_numpy(v)) for v in self._momentum_variables)
        if cumulative > 0.5:
            self._momentum_value = None
        elif self._momentum_value is None or np.float32(self._momentum_value) != np.float32(
            momentum
        ):
            self._momentum_value = momentum

    def _check_attached(self, what: str) -> None:
        if jax_trainer_holds_value(self._momentum_variables[0]):
            raise RuntimeError(
                f"Cannot change `{what}` of layer {self.name!r} now: on the JAX backend, "
                "model.fit() keeps the model's variables outside the model during an "
                "epoch, so the change would be lost. Change it at an epoch boundary "
                "(e.g. in on_epoch_begin), or call `self.model.jax_state_sync()` in "
                "your callback first."
            )

    # ------------------------------------------------------------------- build

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        """Keras's `add_weight`, with replica aggregation for non-trainable state.

        Every non-trainable variable (the moving statistics created by
        Keras's `build` included) is averaged across replicas when a replica
        updates it (`"mean"`, as in tf.keras 2; integers take the first
        replica's value), so that under `tf.distribute` without
        `synchronized=True` the replicas' copies stay equal instead of each
        following its own slice. Outside a strategy this changes nothing.
        """
        if not kwargs.get("trainable", True) and kwargs.get("aggregation", "none") == "none":
            dtype = keras.backend.standardize_dtype(kwargs.get("dtype") or self.variable_dtype)
            integer = "int" in dtype
            kwargs["aggregation"] = "only_first_replica" if integer else "mean"
        return super().add_weight(*args, **kwargs)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_shape = tuple(input_shape)
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"Invalid `axis`={self.axis} for layer {self.name!r}: the input shape "
                f"{input_shape} has rank {rank}, so `axis` must be in "
                f"[{-rank}, {rank - 1}]."
            )
        feature_axis = self.axis % rank
        if input_shape[feature_axis] is None:
            raise ValueError(
                f"The feature axis (`axis`={self.axis}) of the input shape {input_shape} "
                f"must have a known size; layer {self.name!r}."
            )
        if self.virtual_batch_size is not None and feature_axis == 0:
            raise ValueError(
                f"`virtual_batch_size`={self.virtual_batch_size} needs a batch axis to "
                f"split, but `axis`={self.axis} makes axis 0 the feature axis; use a "
                "feature axis other than 0."
            )
        self._feature_axis = feature_axis
        super().build(input_shape)
        shape = (input_shape[feature_axis],)

        if self.renorm and getattr(self, "renorm_mean", None) is None:
            self._build_renorm_variables(shape)

        # float32 state (float64 in a float64 layer), whatever the dtype policy, so that
        # the momentum constants are exactly those keras.layers.BatchNormalization uses.
        float_dtype = "float64" if self.variable_dtype == "float64" else "float32"

        def state(name: str, initializer: Any, shape: tuple[int, ...] = (), dtype=float_dtype):
            return self.add_weight(
                shape=shape,
                name=name,
                initializer=initializer,
                dtype=dtype,
                trainable=False,
                autocast=False,
            )

        def exactly(number: float):
            # keras.initializers.Constant would round through float32 first.
            return lambda shape, dtype=None: np.full(shape, number, dtype=dtype)

        self._momentum_variables = tuple(
            state(name, exactly(number))
            for name, number in zip(
                ("momentum", "momentum_complement", "cumulative"),
                self._momentum_numbers(self._momentum_value),
                strict=True,
            )
        )
        # "int": int64 on TensorFlow, int32 on JAX (no int64 without x64).
        self.num_batches_tracked = state("num_batches_tracked", "zeros", dtype="int")
        self.batch_mean = state("batch_mean", "zeros", shape)
        self.batch_variance = state("batch_variance", "ones", shape)
        if self.debias:
            second = "stddev" if self.renorm else "variance"
            self._biased_moving_mean = state("biased_moving_mean", "zeros", shape)
            self._biased_moving_second = state(f"biased_moving_{second}", "zeros", shape)
            self._bias_correction = state("bias_correction", "zeros")

    def _build_renorm_variables(self, shape: tuple[int, ...]) -> None:
        """Batch renorm state as in Keras >= 3.10 (for older Keras releases)."""
        variance_initializer = self.moving_variance_initializer

        def stddev_initializer(shape, dtype=None):
            cloned = keras.initializers.get(keras.initializers.serialize(variance_initializer))
            return ops.sqrt(cloned(shape, dtype=dtype))

        for name, initializer in (
            ("moving_stddev", stddev_initializer),
            ("renorm_mean", self.moving_mean_initializer),
            ("renorm_stddev", stddev_initializer),
        ):
            setattr(
                self,
                name,
                self.add_weight(
                    shape=shape,
                    name=name,
                    initializer=initializer,
                    trainable=False,
                    autocast=False,
                ),
            )

    # -------------------------------------------------------------------- call

    def call(self, inputs, training=None, mask=None):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the inputs. "
                f"Received: mask.shape={mask.shape}, inputs.shape={inputs.shape}"
            )
        # Statistics in float32 at least (float16/bfloat16 overflow), as in Keras.
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        gamma = ops.cast(self.gamma, compute_dtype) if self.scale else None
        beta = ops.cast(self.beta, compute_dtype) if self.center else None

        if not (training and self.trainable):
            outputs = ops.batch_normalization(
                x=inputs,
                mean=ops.cast(self.moving_mean, compute_dtype),
                variance=ops.cast(self.moving_variance, compute_dtype),
                axis=self.axis,
                offset=beta,
                scale=gamma,
                epsilon=self.epsilon,
            )
            return ops.cast(outputs, self.compute_dtype)

        if self.virtual_batch_size is not None:
            outputs, mean, variance = self._ghost_batch_normalization(inputs, mask, gamma, beta)
        else:
            mean, variance = self._batch_moments(inputs, mask)
            if self.renorm:
                gamma, beta = self._renorm_transform(mean, variance, gamma, beta)
            outputs = ops.batch_normalization(
                x=inputs,
                mean=mean,
                variance=variance,
                axis=self.axis,
                offset=beta,
                scale=gamma,
                epsilon=self.epsilon,
            )
        self._update_statistics(mean, variance)
        return ops.cast(outputs, self.compute_dtype)

    def _batch_moments(self, inputs, mask):
        """Per-feature batch mean and variance, shape (features,)."""
        if mask is None:
            return ops.moments(inputs, axes=self._reduction_axes, synchronized=self.synchronized)
        # The arithmetic of keras.layers.BatchNormalization's masked moments.
        weights = ops.broadcast_to(ops.expand_dims(mask, axis=-1), ops.shape(inputs))
        weights = ops.cast(weights, "bool")
        sum_of_weights = ops.sum(
            ops.cast(weights, inputs.dtype), self._reduction_axes, keepdims=True
        )
        denominator = sum_of_weights + keras.backend.epsilon()
        masked_sum = ops.sum(ops.where(weights, inputs, 0), self._reduction_axes, keepdims=True)
        mean = masked_sum / denominator
        squared = ops.square(ops.where(weights, inputs - mean, 0))
        variance = ops.sum(squared, self._reduction_axes, keepdims=True) / denominator
        return ops.reshape(mean, (-1,)), ops.reshape(variance, (-1,))

    # ------------------------------------------------------------ ghost batches

    def _ghost_batch_normalization(self, inputs, mask, gamma, beta):
        """Normalize each virtual batch with its own statistics.

        The batch is zero-padded to a multiple of `virtual_batch_size` and
        reshaped to (groups, virtual_batch_size, ...); a weight tensor (0 for
        padding rows and masked positions) makes every group's statistics
        exact, the last, partial group's included. Works with a batch size
        known only at run time.

        Returns:
            (outputs, aggregated mean, aggregated variance); the aggregates
            are the sample-weighted averages of the group statistics.
        """
        dtype = inputs.dtype
        rank = len(inputs.shape)
        shape = ops.shape(inputs)
        batch = shape[0]
        # A virtual batch larger than the batch is the whole batch: never pad
        # beyond it (a huge size would allocate the padding).
        size = self.virtual_batch_size
        if isinstance(batch, int):
            size = max(1, min(size, batch))
        else:  # batch size known only at run time (a traced step)
            size = ops.minimum(ops.cast(batch, "int32"), min(size, 2**31 - 1))
        pad = (-batch) % size
        padded_rows = batch + pad

        grouped = ops.reshape(
            ops.pad(inputs, [[0, pad]] + [[0, 0]] * (rank - 1)), (-1, size, *shape[1:])
        )
        if mask is None:
            weights = ops.pad(ops.ones((batch,), dtype=dtype), [[0, pad]])
            weights = ops.reshape(weights, (-1, size) + (1,) * (rank - 1))
        else:
            mask_shape = ops.shape(mask)
            weights = ops.pad(ops.cast(mask, dtype), [[0, pad]] + [[0, 0]] * (rank - 2))
            weights = ops.reshape(weights, (-1, size, *mask_shape[1:]))
            weights = ops.expand_dims(weights, axis=-1)

        # Grouped layout: axis 0 = group, axis 1 = sample in group; the feature
        # axis moves one place to the right.
        feature = self._feature_axis + 1
        reduction = [i for i in range(1, rank + 1) if i != feature]
        grouped_shape = ops.shape(grouped)
        count = ops.sum(weights, axis=reduction, keepdims=True)
        for i in reduction:
            if weights.shape[i] == 1 and grouped.shape[i] != 1:
                count = count * ops.cast(grouped_shape[i], dtype)
        safe_count = ops.maximum(count, 1.0)

        group_mean = ops.sum(grouped * weights, axis=reduction, keepdims=True) / safe_count
        centered = grouped - group_mean
        group_variance = (
            ops.sum(ops.square(centered) * weights, axis=reduction, keepdims=True) / safe_count
        )

        total = ops.maximum(ops.sum(count, axis=0), 1.0)
        mean = ops.reshape(ops.sum(group_mean * count, axis=0) / total, (-1,))
        variance = ops.reshape(ops.sum(group_variance * count, axis=0) / total, (-1,))
        if self.renorm:
            gamma, beta = self._renorm_transform(mean, variance, gamma, beta)

        feature_shape = [1] * (rank + 1)
        feature_shape[feature] = -1
        scale = ops.rsqrt(group_variance + self.epsilon)
        if gamma is not None:
            scale = scale * ops.reshape(gamma, feature_shape)
        normalized = centered * scale
        if beta is not None:
            normalized = normalized + ops.reshape(beta, feature_shape)
        outputs = ops.reshape(normalized, (padded_rows, *shape[1:]))[:batch]
        return outputs, mean, variance

    # ------------------------------------------------------------------ renorm

    def _renorm_transform(self, mean, variance, gamma, beta):
        """Fold the batch renorm correction (r, d) into the scale and offset."""
        dtype = mean.dtype
        stddev = ops.sqrt(variance + self.epsilon)
        renorm_mean = ops.cast(self.renorm_mean, dtype)
        # Avoid dividing by zero early in training (as tf.keras 2 and Keras do).
        renorm_stddev = ops.maximum(
            ops.cast(self.renorm_stddev, dtype), ops.sqrt(ops.cast(self.epsilon, dtype))
        )
        r = ops.divide(stddev, renorm_stddev)
        d = ops.divide(ops.subtract(mean, renorm_mean), renorm_stddev)
        rmax, rmin, dmax = (self.renorm_clipping.get(key) for key in RENORM_CLIPPING_KEYS)
        if rmin is not None:
            r = ops.maximum(r, rmin)
        if rmax is not None:
            r = ops.minimum(r, rmax)
        if dmax is not None:
            d = ops.clip(d, -dmax, dmax)
        r = ops.stop_gradient(r)
        d = ops.stop_gradient(d)
        # (x_hat * r + d) * gamma + beta = x_hat * (r * gamma) + (d * gamma + beta)
        if gamma is not None:
            new_gamma, new_beta = r * gamma, d * gamma
        else:
            new_gamma, new_beta = r, d
        if beta is not None:
            new_beta = new_beta + beta
        return new_gamma, new_beta

    # ----------------------------------------------------------------- updates

    def _update_weights(self, count, dtype):
        """Weights (keep, take) of `moving = moving * keep + batch * take` for this step."""
        momentum, complement, cumulative = (ops.cast(v, dtype) for v in self._momentum_variables)
        inverse_count = 1.0 / (ops.cast(count, dtype) + 1.0)
        cumulative = ops.greater(cumulative, 0.5)
        keep = ops.where(cumulative, 1.0 - inverse_count, momentum)
        take = ops.where(cumulative, inverse_count, complement)
        return keep, take

    @staticmethod
    def _set(variable, value, finite, old=None):
        """Assign `value`, or keep the old value when `finite` is False; return it."""
        if finite is not None:
            if old is None:
                old = ops.cast(variable, value.dtype)
            value = ops.where(finite, value, old)
        variable.assign(value)
        return value

    def _blend(self, variable, value, keep, take, finite):
        """`variable = variable * keep + value * take` (guarded by `finite`)."""
        old = ops.cast(variable, value.dtype)
        return self._set(variable, old * keep + value * take, finite, old)

    def _update_statistics(self, mean, variance):
        """Record the batch statistics and update every moving statistic."""
        self.batch_mean.assign(mean)
        self.batch_variance.assign(variance)
        dtype = mean.dtype
        count = self.num_batches_tracked.value
        finite = None
        if self.skip_nonfinite:
            finite = ops.logical_and(ops.all(ops.isfinite(mean)), ops.all(ops.isfinite(variance)))
        keep, take = self._update_weights(count, dtype)

        if self.renorm:
            stddev = ops.sqrt(variance + self.epsilon)
            renorm_keep = self.renorm_momentum
            for variable, value in ((self.renorm_mean, mean), (self.renorm_stddev, stddev)):
                self._blend(variable, value, renorm_keep, 1.0 - renorm_keep, finite)
            tracked = ((self.moving_mean, mean), (self.moving_stddev, stddev))
        else:
            tracked = ((self.moving_mean, mean), (self.moving_variance, variance))

        if self.debias:
            accumulators = (self._biased_moving_mean, self._biased_moving_second)
            # 1 - prod(momenta) = the moving average of ones, started at 0.
            old_correction = ops.cast(self._bias_correction, dtype)
            correction = old_correction * keep + take
            self._set(self._bias_correction, correction, finite, old_correction)
            # False while every momentum so far was 1: nothing averaged yet.
            averaged = ops.greater(correction, 0.0)
            correction = ops.where(averaged, correction, 1.0)
            new_values = []
            for accumulator, (variable, value) in zip(accumulators, tracked, strict=True):
                biased = self._blend(accumulator, value, keep, take, finite)
                old = ops.cast(variable, dtype)
                debiased = ops.where(averaged, biased / correction, old)
                new_values.append(self._set(variable, debiased, finite, old))
        else:
            new_values = [
                self._blend(variable, value, keep, take, finite) for variable, value in tracked
            ]
        if self.renorm:
            # Derive the variance from the tracked stddev; relu guards round-off.
            variance_value = ops.relu(ops.square(new_values[1]) - self.epsilon)
            self._set(self.moving_variance, variance_value, finite)
        increment = 1 if finite is None else ops.cast(finite, count.dtype)
        self.num_batches_tracked.assign(count + increment)

    # ------------------------------------------------------------------- state

    def set_moving_statistics(self, mean: Any, variance: Any, *, count: int | None = None) -> None:
        """Replace the moving statistics, keeping the layer's hidden state consistent.

        Writes `moving_mean` and `moving_variance` (e.g. exact population
        statistics from a recalibration). With `renorm=True`, `moving_stddev`
        becomes `sqrt(variance + epsilon)`, from which training derives the
        variance. With `debias=True`, the raw averages are rescaled so that
        training continues as if the new statistics had been the published
        values all along (when nothing has been averaged yet, they count as a
        full average).

        Args:
            mean: per-feature means, shape `(features,)` (a scalar is broadcast).
            variance: per-feature variances, shape `(features,)`, finite and >= 0.
            count: how many batches the new statistics stand for:
                `num_batches_tracked` becomes `count`, so that a cumulative
                average (`momentum=None`) continues from them. None keeps the
                current count.

        Raises:
            ValueError: if the layer is not built yet, or `mean` / `variance`
                has the wrong shape, a NaN or an infinity, or `variance` a
                negative value.
        """
        if not self.built:
            raise ValueError(
                f"Cannot set the moving statistics (`mean`, `variance`) of layer {self.name!r}: "
                "it is not built yet. Call it on data or `build(input_shape)` first."
            )
        if count is not None:
            count = check_int_in_range("count", count, minimum=0)
        shape = tuple(int(d) for d in self.moving_mean.shape)
        dtype = keras.backend.standardize_dtype(self.moving_mean.dtype)
        mean = check_statistic("mean", mean, shape, variance=False, dtype=dtype)
        variance = check_statistic("variance", variance, shape, variance=True, dtype=dtype)
        self._check_attached("the moving statistics")
        dtype = self.moving_mean.dtype
        mean = ops.cast(mean, dtype)
        variance = ops.cast(variance, dtype)
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        second = variance
        if self.renorm:
            second = ops.sqrt(variance + self.epsilon)
            self.moving_stddev.assign(second)
        if self.debias:
            correction = ops.cast(self._bias_correction, dtype)
            correction = ops.where(ops.greater(correction, 0.0), correction, 1.0)
            self._bias_correction.assign(correction)
            self._biased_moving_mean.assign(mean * correction)
            self._biased_moving_second.assign(second * correction)
        if count is not None:
            self.num_batches_tracked.assign(count)

    # ------------------------------------------------------- the BN interface

    @property
    def channel_axis(self) -> int:
        """The feature axis, as given (`BatchNormInterface`)."""
        return int(self.axis)

    @property
    def training_is_plain(self) -> bool:
        """True when a training-mode call is plain BN with the batch's moments."""
        return bool(self.trainable) and not self.renorm and self.virtual_batch_size is None

    def moving_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """`(moving_mean, moving_variance)` as NumPy copies."""
        return to_numpy(self.moving_mean), to_numpy(self.moving_variance)

    def affine_parameters(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """`(gamma, beta)` as NumPy copies; None for one the layer does not have."""
        gamma = to_numpy(self.gamma) if self.scale else None
        beta = to_numpy(self.beta) if self.center else None
        return gamma, beta

    def inference_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """`(scale, shift)`, float64, with `layer(x, training=False) = x * scale + shift`."""
        return affine_from_statistics(
            *self.moving_statistics(), self.epsilon, *self.affine_parameters()
        )

    def keras_variables(self) -> dict[str, keras.Variable]:
        """The variables `keras.layers.BatchNormalization` has, by name, in `weights` order."""
        return keras_variables_of(self)

    def statistic_variables(self) -> dict[str, keras.Variable]:
        """Every state variable worth tracking, by name."""
        found = self.keras_variables()
        for name in ("batch_mean", "batch_variance", "num_batches_tracked"):
            variable = getattr(self, name)
            if variable is not None:
                found[name] = variable
        return found

    def set_keras_variables(self, values) -> None:
        """Assign Keras BN's variables (name -> array); the extra state starts fresh."""
        self._check_attached("the moving statistics")
        assign_keras_variables(self, values)
        self._restart_extra_state()

    def last_batch_statistics(self):
        """`(batch_mean, batch_variance)` of the last training call (None before build)."""
        if self.batch_mean is None:
            return None
        return (
            ops.copy(ops.convert_to_tensor(self.batch_mean)),
            ops.copy(ops.convert_to_tensor(self.batch_variance)),
        )

    def dropped_options(self, target: type) -> dict[str, Any]:
        """The options (name -> value) of this layer that class `target` cannot represent.

        An option is dropped when `target` has no such constructor argument
        and this layer's value is not the default (`skip_nonfinite` is not
        counted: it only matters for a non-finite batch), or when `target`
        is not a `MomentumBatchNormalization` and `momentum` is None.
        """
        if isinstance(target, type) and issubclass(target, MomentumBatchNormalization):
            return {}
        accepted = constructor_arguments(target)
        options = {"debias": (self.debias, False)}
        options["virtual_batch_size"] = (self.virtual_batch_size, None)
        options["renorm"] = (self.renorm, False)
        dropped = {
            name: value
            for name, (value, default) in options.items()
            if name not in accepted and value != default
        }
        if self.momentum is None:
            dropped["momentum"] = None
        return dropped

    def reset_moving_statistics(self) -> None:
        """Restart the moving statistics from their initial values.

        `moving_mean`/`moving_variance` go back to their initializers (zeros
        and ones by default), `num_batches_tracked` to 0, the debias
        accumulators and their bias correction to 0 and the renorm
        statistics to their initial values. `batch_mean`/`batch_variance`
        keep describing the last batch seen. Does nothing on an unbuilt layer.
        """
        if not self.built:
            return
        self._check_attached("the moving statistics")
        shape = tuple(self.moving_mean.shape)
        mean = self.moving_mean_initializer(shape, dtype=self.moving_mean.dtype)
        variance = self.moving_variance_initializer(shape, dtype=self.moving_variance.dtype)
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        if self.renorm:
            self.moving_stddev.assign(ops.sqrt(variance))
            self.renorm_mean.assign(mean)
            self.renorm_stddev.assign(ops.sqrt(variance))
        if self.debias:
            self._biased_moving_mean.assign(ops.zeros(shape))
            self._biased_moving_second.assign(ops.zeros(shape))
            self._bias_correction.assign(0.0)
        self.num_batches_tracked.assign(0)

    # ------------------------------------------- Keras BN weights and conversion

    @classmethod
    def from_batchnorm(
        cls, layer: keras.layers.BatchNormalization, **overrides: Any
    ) -> MomentumBatchNormalization:
        """A new layer of this class with `layer`'s configuration, name and weights.

        `layer` is a `keras.layers.BatchNormalization` (or a subclass, this one
        included). The new layer has the same arguments, name, gamma, beta and
        moving statistics; `overrides` replace arguments (e.g. `momentum=None,
        debias=True`). The extra state (`num_batches_tracked`, the last batch's
        statistics, debias accumulators) starts fresh, and with the default
        overrides the outputs are bit-identical to `layer`'s.

        Args:
            layer: the BN layer to copy; it is left untouched.
            **overrides: constructor arguments of this class.

        Returns:
            The new layer, built if `layer` is.

        Raises:
            TypeError: on a `layer` that is not a BN layer or an unknown override.
            ValueError: on an invalid override value.

        Example:

        ```python
        import keras
        from keras_bn_tools.layers import MomentumBatchNormalization

        bn = keras.layers.BatchNormalization()
        bn.build((None, 4))
        layer = MomentumBatchNormalization.from_batchnorm(bn, momentum=None)
        ```
        """
        from keras_bn_tools.convert import convert_layer  # convert imports this module

        return convert_layer(layer, cls, **overrides)

    def _keras_batchnorm_variables(self) -> list[keras.Variable]:
        """The variables `keras.layers.BatchNormalization` has, in its `weights` order."""
        names = ("gamma", "beta", "moving_mean", "moving_variance")
        names += ("moving_stddev", "renorm_mean", "renorm_stddev")
        own = {id(getattr(self, name, None)) for name in names}
        return [variable for variable in self.weights if id(variable) in own]

    def _restart_extra_state(self) -> None:
        """Fresh extra state around loaded Keras BN statistics (as PyTorch's BN does for
        checkpoints without `num_batches_tracked`): no batches counted, no last batch,
        and with `debias` the loaded statistics count as a full average."""
        self.num_batches_tracked.assign(0)
        self.batch_mean.assign(ops.zeros(self.batch_mean.shape))
        self.batch_variance.assign(ops.ones(self.batch_variance.shape))
        if self.debias:
            second = self.moving_stddev if self.renorm else self.moving_variance
            self._bias_correction.assign(1.0)
            self._biased_moving_mean.assign(self.moving_mean.value)
            self._biased_moving_second.assign(second.value)

    def _no_variables_error(self) -> ValueError:
        return ValueError(
            f"Layer {self.name!r} ({type(self).__name__}) found none of its variables in "
            "the weights file. Keras keys `.weights.h5` entries by layer class, so "
            "weights saved from a model with keras.layers.BatchNormalization cannot be "
            "loaded straight into one with MomentumBatchNormalization. Load them into the "
            "Keras-BN architecture, then convert: `model.load_weights(path); model = "
            "keras_bn_tools.convert_batchnorm(model)` (and convert back with "
            "`convert_batchnorm(model, to=keras.layers.BatchNormalization)` before saving "
            "weights for Keras-BN users)."
        )

    def load_own_variables(self, store) -> None:
        """Keras's loading, plus: a store holding only Keras BN's variables loads them
        with fresh extra state, and an empty store (a Keras-BN checkpoint, keyed by the
        other class name) raises an error that says how to load it."""
        if self.built:
            keras_variables = self._keras_batchnorm_variables()
            count = len(store.keys())
            if count == 0 and self.weights:
                raise self._no_variables_error()
            if count == len(keras_variables) < len(self.weights):
                # Keras BN stores its variables in its `weights` order, which ours keep.
                for index, variable in enumerate(keras_variables):
                    variable.assign(store[f"{index}"])
                self._restart_extra_state()
                self._sync_momentum_from_variables()
                return
        super().load_own_variables(store)
        if self.built:
            self._sync_momentum_from_variables()

    def set_weights(self, weights) -> None:
        """Set the layer's weights: all of them (`get_weights()` of this class), or
        only Keras BN's (`keras.layers.BatchNormalization.get_weights()` of a layer
        with the same `center`, `scale` and `renorm`), the extra state then fresh."""
        weights = list(weights)
        keras_variables = self._keras_batchnorm_variables() if self.built else []
        if self.built and len(weights) == len(keras_variables) < len(self.weights):
            for variable, value in zip(keras_variables, weights, strict=True):
                if tuple(variable.shape) != tuple(np.shape(value)):
                    raise ValueError(
                        f"Layer {self.name!r}: weight {variable.name!r} has shape "
                        f"{tuple(variable.shape)}, but the given array has shape "
                        f"{tuple(np.shape(value))}."
                    )
            for variable, value in zip(keras_variables, weights, strict=True):
                variable.assign(value)
            self._restart_extra_state()
            self._sync_momentum_from_variables()
            return
        if self.built and len(weights) != len(self.weights):
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}) takes either all its "
                f"{len(self.weights)} weights (`get_weights()` of this class) or the "
                f"{len(keras_variables)} of keras.layers.BatchNormalization (gamma, beta, "
                f"moving_mean, moving_variance, as enabled by `scale`, `center`, "
                f"`renorm`), got a list of {len(weights)} arrays."
            )
        super().set_weights(weights)
        self._sync_momentum_from_variables()

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "renorm": self.renorm,
                "renorm_clipping": (
                    None if self.renorm_clipping is None else dict(self.renorm_clipping)
                ),
                "renorm_momentum": self.renorm_momentum,
                "debias": self.debias,
                "virtual_batch_size": self.virtual_batch_size,
                "skip_nonfinite": self.skip_nonfinite,
            }
        )
        return config
