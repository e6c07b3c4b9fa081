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
from keras import ops

from keras_bn_tools._validation import (
    check_int_in_range,
    check_momentum,
)
from keras_bn_tools.layers._checkpoint import KerasCheckpointCompatibility
from keras_bn_tools.layers._ghost import ghost_batch_normalization
from keras_bn_tools.layers._momentum_interface import MomentumInterface
from keras_bn_tools.layers._moving_statistics import MovingStatistics
from keras_bn_tools.layers._options import check_input_shape, check_options
from keras_bn_tools.layers._renorm import ClippingLimits, ScheduledClipping, renorm_affine
from keras_bn_tools.layers.conversion import copy_batchnorm
from keras_bn_tools.layers.distribute import ReplicaMeanState
from keras_bn_tools.layers.interface import (
    checked_statistics,
)
from keras_bn_tools.ops import compute_dtype, moments

__all__ = ["MomentumBatchNormalization"]


@keras.saving.register_keras_serializable(package="keras_bn_tools")
class MomentumBatchNormalization(
    KerasCheckpointCompatibility,
    MomentumInterface,
    ReplicaMeanState,
    ScheduledClipping,
    keras.layers.BatchNormalization,
):
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

    Weights and state: `weights` (so `get_weights`, `set_weights`,
    `count_params`, `summary` and saved files) holds what
    `keras.layers.BatchNormalization` holds, plus what a feature needs to
    resume: `num_batches_tracked` with `momentum=None` or `debias`, and the
    debias accumulators. The momentum, the renorm clipping limits, the last
    batch's statistics (and otherwise the counter) are layer state outside
    `weights`, as a `SeedGenerator`'s state is: listed in `variables`, so a
    compiled step reads them as inputs and assigning one needs no retracing,
    but neither counted as parameters nor saved (the momentum and the limits
    are in the config). Keras has no public "not a weight" flag; a variable
    kept out of Keras's tracking instead is read as a constant by a
    JAX-compiled step (measured: an assignment is then ignored until a
    retrace), and one held by a `keras.metrics.Metric` is reset by
    `reset_metrics()` and listed in `model.metrics`. Checkpoints that hold
    every variable (keras-bn-tools 0.1) or only Keras BN's still load.

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
            (missing: no clipping on that side): finite, `0 <= rmin <= 1 <= rmax`,
            `dmax >= 0`; only with `renorm=True`. `rmax`/`dmax` can change during
            training without retracing (`set_renorm_clipping`).
        renorm_momentum: momentum of the renorm statistics, in [0, 1].
        synchronized: batch statistics over all devices: across the replicas
            of a `tf.distribute` strategy (TensorFlow; not for ghost batches,
            whose statistics are per replica), or under an active
            `keras.distribution` (JAX, where a sharded batch's statistics are
            global anyway). Refused elsewhere. Without it, under
            `MirroredStrategy` each replica normalizes with its own slice and
            the moving statistics are the average of the replicas' updates
            (Keras's BN keeps replica 0's); see `sync_replica_statistics`.
        debias: keep bias-corrected moving averages: the raw EMA starts from
            zero and `moving_mean`/`moving_variance` hold
            `EMA / (1 - prod(momenta))` (`1 - momentum**t` for a constant
            momentum), so inference is sound from the first step (after one
            step they equal that batch's statistics). The correction
            `1 - prod(momenta)` is kept as the same moving average of ones
            (no cancellation for a momentum close to 1).
        virtual_batch_size: ghost batch normalization: in training, each group of
            `virtual_batch_size` consecutive samples (a smaller last one included)
            is normalized with its own statistics; the moving statistics take the
            full-batch mean and the pooled within-group variance once per step.
            Inference never depends on it.
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
        options = check_options(
            {
                "axis": axis, "momentum": momentum, "epsilon": epsilon, "center": center,
                "scale": scale, "renorm": renorm, "renorm_clipping": renorm_clipping,
                "renorm_momentum": renorm_momentum, "synchronized": synchronized,
                "debias": debias, "virtual_batch_size": virtual_batch_size,
                "skip_nonfinite": skip_nonfinite,
            }
        )  # fmt: skip
        # Renorm is handled here rather than passed on: Keras releases before
        # 3.10 have no renorm arguments.
        super().__init__(
            axis=options["axis"],
            momentum=0.0 if options["momentum"] is None else options["momentum"],
            epsilon=options["epsilon"],
            center=options["center"],
            scale=options["scale"],
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            # Keras refuses synchronized=True outside TensorFlow; see check_synchronized.
            synchronized=options["synchronized"] and keras.backend.backend() == "tensorflow",
            **kwargs,
        )
        self.synchronized = options["synchronized"]
        self.momentum = options["momentum"]
        for name in ("renorm", "renorm_momentum", "debias", "virtual_batch_size", "skip_nonfinite"):
            setattr(self, name, options[name])
        self._clipping = ClippingLimits(options["renorm_clipping"]) if self.renorm else None
        self.batch_mean = self.batch_variance = self.num_batches_tracked = None

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
        statistics = getattr(self, "_statistics", None)
        if statistics is not None:
            statistics.assign_momentum(value)
        self._momentum_value = value

    def _state_outside_weights(self) -> list[keras.Variable]:
        return [*self._statistics.state_outside_weights(self.momentum), *self._state_since_0_1()]

    def _state_since_0_1(self) -> list[keras.Variable]:
        return [] if self._clipping is None else list(self._clipping.variables.values())

    def _check_attached(self, what: str) -> None:
        self._statistics.check_attached(what)

    def _restart_extra_state(self) -> None:
        self._statistics.restart()

    def _sync_momentum_from_variables(self) -> None:
        """Make the Python-side momentum agree with restored variables."""
        self._momentum_value = self._statistics.stored_momentum(self._momentum_value)

    # ------------------------------------------------------------------- build

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_shape = tuple(input_shape)
        self._feature_axis = check_input_shape(self, input_shape)
        super().build(input_shape)
        self._statistics = MovingStatistics(self, self._momentum_value)
        self.num_batches_tracked = self._statistics.count
        self.batch_mean = self._statistics.batch_mean
        self.batch_variance = self._statistics.batch_variance
        if self._clipping is not None:
            self._clipping.build(self.add_weight)

    # -------------------------------------------------------------------- call

    def call(self, inputs, training=None, mask=None):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the inputs. "
                f"Received: mask.shape={mask.shape}, inputs.shape={inputs.shape}"
            )
        # Statistics in float32 at least (float16/bfloat16 overflow), as in Keras.
        dtype = compute_dtype(inputs.dtype)
        inputs = ops.cast(inputs, dtype)
        gamma = ops.cast(self.gamma, dtype) if self.scale else None
        beta = ops.cast(self.beta, dtype) if self.center else None
        if not (training and self.trainable):
            mean, variance = (ops.cast(v, dtype) for v in (self.moving_mean, self.moving_variance))
        elif self.virtual_batch_size is not None:
            correct = self._renorm_affine if self.renorm else None
            outputs, mean, variance = ghost_batch_normalization(
                inputs, self.virtual_batch_size, axis=self.axis, epsilon=self.epsilon,
                gamma=gamma, beta=beta, mask=mask, correct_affine=correct,
            )  # fmt: skip
            self._statistics.update(mean, variance)
            return ops.cast(outputs, self.compute_dtype)
        else:
            mean, variance = moments(
                inputs, self._reduction_axes, mask=mask, synchronized=self.synchronized
            )
            if self.renorm:
                gamma, beta = self._renorm_affine(mean, variance, gamma, beta)
            self._statistics.update(mean, variance)
        outputs = ops.batch_normalization(
            inputs, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        return ops.cast(outputs, self.compute_dtype)

    def _renorm_affine(self, mean, variance, gamma, beta):
        return renorm_affine(
            mean,
            variance,
            gamma,
            beta,
            renorm_mean=self.renorm_mean,
            renorm_stddev=self.renorm_stddev,
            epsilon=self.epsilon,
            clipping=self._clipping.tensors(),
        )

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
                `num_batches_tracked` becomes `count`, and a cumulative average
                (`momentum=None`) continues from them as from the average of
                `count` batches (0: the next batch replaces them). None keeps
                the current count, but with `momentum=None` at least 1: set
                statistics (e.g. a recalibration's) count as history, never
                silently dropped by the next training batch.

        Raises:
            ValueError: if the layer is not built yet, or `mean` / `variance`
                has the wrong shape, a NaN or an infinity, or `variance` a
                negative value, or `count` is negative.
        """
        if count is not None:
            count = check_int_in_range("count", count, minimum=0)
        mean, variance = checked_statistics(self, mean, variance)
        self._check_attached("the moving statistics")
        self._statistics.write(mean, variance, count)

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
        self._statistics.reset()

    # ------------------------------------------- Keras BN weights and conversion

    @classmethod
    def from_batchnorm(
        cls, layer: keras.layers.BatchNormalization, **overrides: Any
    ) -> MomentumBatchNormalization:
        """A new layer of this class with `layer`'s configuration, name and weights.

        `layer` is a `keras.layers.BatchNormalization` (or subclass, this one
        included), left untouched. `overrides` replace arguments (e.g.
        `momentum=None, debias=True`). The new layer is built if `layer` is, with
        its gamma, beta and moving statistics and fresh extra state; with no
        overrides its outputs are bit-identical to `layer`'s.

        Raises:
            TypeError: on a `layer` that is not a BN layer or an unknown override.
            ValueError: on an invalid override value.

        Example: `MomentumBatchNormalization.from_batchnorm(bn, momentum=None)`.
        """
        return copy_batchnorm(layer, cls, overrides)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "renorm": self.renorm,
                "renorm_clipping": None if self._clipping is None else dict(self._clipping.config),
                "renorm_momentum": self.renorm_momentum,
                "debias": self.debias,
                "virtual_batch_size": self.virtual_batch_size,
                "skip_nonfinite": self.skip_nonfinite,
            }
        )
        return config
