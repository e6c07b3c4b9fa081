"""`FrozenBatchNormalization`: batch normalization frozen to its inference map.

Fine-tuning a pretrained network often keeps its BN statistics as they are: small fine-tuning
batches give poor statistics, and detection or segmentation recipes freeze them while gamma
and beta train (detectron2's `FrozenBatchNorm2d`, timm's `FrozenBatchNormAct2d`). In Keras,
`BatchNormalization(trainable=False)` runs in inference mode, but its gamma and beta cannot
train while its statistics stay frozen, and `model.trainable = True` unfreezes everything
again. This layer is the frozen state as a layer of its own: it always computes the inference
map, never updates its statistics in any mode, and trains gamma and beta only when built with
`train_affine=True`. It keeps the statistics, so it can be unfrozen
(`keras_bn_tools.unfreeze_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_bn_tools._validation import check_axis, check_bool, check_channel_axis, check_epsilon
from keras_bn_tools.layers.conversion import copy_batchnorm
from keras_bn_tools.layers.interface import (
    BatchNormReads,
    as_batchnorm,
    assign_keras_variables,
    checked_statistics,
)

__all__ = ["FrozenBatchNormalization"]

# Arguments shared with keras.layers.BatchNormalization, carried over by `from_batchnorm`
# and by `to_batchnorm`.
_SHARED_ARGUMENTS = (
    "axis",
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)


@keras.saving.register_keras_serializable(package="keras_bn_tools")
class FrozenBatchNormalization(BatchNormReads, keras.layers.Layer):
    """Batch normalization frozen to its inference map, in every mode.

    `outputs = gamma * (inputs - moving_mean) / sqrt(moving_variance + epsilon) + beta`,
    per channel, computed exactly as `keras.layers.BatchNormalization` computes it in
    inference, so a frozen copy of a BN layer gives bit-identical outputs. `training=True`
    changes nothing: the moving statistics are never updated and never replaced by batch
    statistics. gamma and beta are trainable weights only with `train_affine=True` (the
    "frozen statistics, trainable affine" fine-tuning recipe); otherwise every weight is
    non-trainable, and stays so when a caller sets `model.trainable = True`.

    Build one from an existing BN layer with `FrozenBatchNormalization.from_batchnorm(bn)`,
    or a whole model with `keras_bn_tools.freeze_batchnorm(model)`; `to_batchnorm()` (and
    `keras_bn_tools.unfreeze_batchnorm(model)`) give back a trainable BN layer with the
    same gamma, beta and statistics.

    Args:
        axis: the channel axis (an integer, negative counts from the end).
        epsilon: positive float added to the variance.
        center: whether the layer has a shift `beta`.
        scale: whether the layer has a scale `gamma`.
        train_affine: whether `gamma` and `beta` are trainable.
        beta_initializer: initializer of `beta` (for a layer not made from a BN).
        gamma_initializer: initializer of `gamma`.
        moving_mean_initializer: initializer of `moving_mean`.
        moving_variance_initializer: initializer of `moving_variance`.
        beta_regularizer: regularizer of `beta` (it matters with `train_affine=True`).
        gamma_regularizer: regularizer of `gamma`.
        beta_constraint: constraint of `beta`.
        gamma_constraint: constraint of `gamma`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a tensor with the channel axis `axis`.
        training: ignored (the layer always computes its inference map).
        mask: ignored, and passed on (`supports_masking`), as Keras's BN does in inference.

    Weights: `gamma` and `beta` (`(channels,)`, when `scale`/`center`), `moving_mean` and
    `moving_variance` (`(channels,)`), in `keras.layers.BatchNormalization`'s order, so
    `get_weights()`/`set_weights()` are interchangeable with a Keras BN layer's.

    Example:

    ```python
    bn = keras.layers.BatchNormalization()
    bn.build((None, 3))
    frozen = FrozenBatchNormalization.from_batchnorm(bn, train_affine=True)
    [w.name for w in frozen.trainable_weights]  # ['gamma', 'beta']
    ```

    Reference:
        detectron2's `FrozenBatchNorm2d`; timm's `FrozenBatchNormAct2d` and
        `freeze_batch_norm_2d`.
    """

    def __init__(
        self,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        train_affine: bool = False,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        self.axis = check_axis("axis", axis)
        self.epsilon = check_epsilon("epsilon", epsilon)
        self.center = check_bool("center", center)
        self.scale = check_bool("scale", scale)
        self.train_affine = check_bool("train_affine", train_affine)
        super().__init__(**kwargs)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.supports_masking = True
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        rank = len(input_shape)
        channels = check_channel_axis(self.axis, input_shape)
        shape = (channels,)
        for name, wanted in (("gamma", self.scale), ("beta", self.center)):
            if wanted:
                variable = self.add_weight(
                    shape=shape,
                    name=name,
                    initializer=getattr(self, f"{name}_initializer"),
                    regularizer=getattr(self, f"{name}_regularizer"),
                    constraint=getattr(self, f"{name}_constraint"),
                    trainable=self.train_affine,
                    autocast=False,
                )
                setattr(self, name, variable)
        for name in ("moving_mean", "moving_variance"):
            variable = self.add_weight(
                shape=shape,
                name=name,
                initializer=getattr(self, f"{name}_initializer"),
                trainable=False,
                autocast=False,
            )
            setattr(self, name, variable)
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        del training, mask  # always the inference map; masks pass through
        # Keras's BN inference branch, operation for operation (bit-identical outputs):
        # statistics in float32 at least, the result in the compute dtype.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, dtype)
        outputs = ops.batch_normalization(
            x=inputs,
            mean=ops.cast(self.moving_mean, dtype),
            variance=ops.cast(self.moving_variance, dtype),
            axis=self.axis,
            offset=ops.cast(self.beta, dtype) if self.center else None,
            scale=ops.cast(self.gamma, dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        serialize = keras.saving.serialize_keras_object
        config = {
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "train_affine": self.train_affine,
        }
        for name in _SHARED_ARGUMENTS[4:]:
            config[name] = serialize(getattr(self, name))
        return {**super().get_config(), **config}

    # ------------------------------------------------------------------ conversions

    @classmethod
    def from_batchnorm(
        cls, layer: keras.layers.Layer, *, train_affine: bool = False
    ) -> FrozenBatchNormalization:
        """A frozen copy of BN layer `layer`: same name, axis, epsilon, dtype policy, gamma,
        beta and moving statistics (built when `layer` is).

        Args:
            layer: any layer of the BN interface (`keras.layers.BatchNormalization`,
                `MomentumBatchNormalization`, another `FrozenBatchNormalization`).
            train_affine: whether the copy's gamma and beta are trainable.

        Raises:
            TypeError: if `layer` is not a BN layer or `train_affine` not a bool.
        """
        train_affine = check_bool("train_affine", train_affine)
        bn = as_batchnorm(layer)
        # `layer`'s `trainable` flag is not copied: the copy keeps the default (True).
        overrides = {"axis": bn.channel_axis, "epsilon": bn.epsilon, "trainable": True}
        return copy_batchnorm(layer, cls, {**overrides, "train_affine": train_affine})

    def to_batchnorm(
        self, to: type[keras.layers.Layer] = keras.layers.BatchNormalization
    ) -> keras.layers.Layer:
        """A trainable BN layer of class `to` with this layer's name, arguments, gamma, beta
        and moving statistics (built when this layer is); `to`'s other arguments
        (`momentum`, ...) take their defaults.

        Raises:
            TypeError: if `to` is not a subclass of `keras.layers.BatchNormalization`.
        """
        if not (isinstance(to, type) and issubclass(to, keras.layers.BatchNormalization)):
            raise TypeError(
                "`to` must be keras.layers.BatchNormalization or a subclass of it (e.g. "
                f"keras_bn_tools.layers.MomentumBatchNormalization), got {to!r}."
            )
        return copy_batchnorm(self, to, {"trainable": True})

    # ------------------------------------------------------------------ BN interface
    # (channel_axis, moving_statistics, affine_parameters, inference_affine, keras_variables
    # and training_moments read the Keras BN variables this layer shares: BatchNormReads.)

    def _batchnorm_layer(self) -> FrozenBatchNormalization:
        return self

    @property
    def training_is_plain(self) -> bool:
        """False: a training-mode call computes the inference map."""
        return False

    def set_moving_statistics(self, mean: Any, variance: Any, *, count: int | None = None) -> None:
        """Write the frozen statistics (`count` is ignored: they are not an average)."""
        del count
        mean, variance = checked_statistics(self, mean, variance)
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)

    def statistic_variables(self) -> dict[str, keras.Variable]:
        return self.keras_variables()

    def set_keras_variables(self, values: Mapping[str, Any]) -> None:
        assign_keras_variables(self, values)

    def last_batch_statistics(self) -> None:
        return None  # it never computes batch statistics

    def dropped_options(self, target: type) -> dict[str, Any]:
        """`{"frozen": True}` for a target that is not frozen: converted, the statistics
        would train again (use `unfreeze_batchnorm` to do that on purpose)."""
        if isinstance(target, type) and issubclass(target, FrozenBatchNormalization):
            return {}
        return {"frozen": True}
