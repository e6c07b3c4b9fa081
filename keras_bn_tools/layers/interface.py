"""The one BN interface: what keras-bn-tools needs from a batch normalization layer.

Recalibration, conversion, folding, the trackers and the study engines read
and write BN state through `as_batchnorm(layer)` only, never through
`hasattr`/`getattr` probes of a layer's attributes. `keras.layers.BatchNormalization`
gets an adapter (`KerasBatchNorm`); this package's own BN layers
(`MomentumBatchNormalization`) implement `BatchNormInterface` themselves.
Adding a piece of layer state therefore means changing the layer and, at
most, this module.

Example:

```python
import keras
import numpy as np
from keras_bn_tools.layers.interface import as_batchnorm

layer = keras.layers.BatchNormalization()
layer.build((None, 3))
bn = as_batchnorm(layer)
bn.set_moving_statistics(np.zeros(3), np.full(3, 4.0))
scale, shift = bn.inference_affine()  # y = x * scale + shift, float64
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import keras
import numpy as np

from keras_bn_tools._validation import check_statistic
from keras_bn_tools.ops import affine_from_statistics, moments, to_numpy

__all__ = [
    "KERAS_BN_VARIABLES",
    "BatchNormInterface",
    "BatchNormReads",
    "KerasBatchNorm",
    "as_batchnorm",
    "assign_keras_variables",
    "checked_statistics",
    "is_batchnorm",
    "keras_variables_of",
]

#: The variables of `keras.layers.BatchNormalization`, in the order its `weights` lists
#: them (`gamma`/`beta` only with `scale`/`center`, the last three only with `renorm`).
KERAS_BN_VARIABLES = (
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
)


@runtime_checkable
class BatchNormInterface(Protocol):
    """What the package needs from a BN layer, whatever its class.

    Attributes:
        channel_axis: the feature axis, as the layer was given it (may be
            negative).
        epsilon: the float added to the variance.
        training_is_plain: True when a training-mode call is plain BN: it
            normalizes with the batch's own moments (no ghost batches, no
            renorm correction), so `keras.ops.batch_normalization` with
            `ops.moments` reproduces it. False for a frozen layer
            (`trainable=False`), which runs in inference mode.
    """

    @property
    def channel_axis(self) -> int: ...

    @property
    def epsilon(self) -> float: ...

    @property
    def training_is_plain(self) -> bool: ...

    def moving_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """`(moving_mean, moving_variance)`: NumPy copies in the variables' dtype."""
        ...

    def set_moving_statistics(self, mean: Any, variance: Any, *, count: int | None = None) -> None:
        """Write the moving statistics, keeping any derived state consistent.

        `count`: how many batches the statistics stand for (a layer keeping a
        cumulative average continues from it, e.g. a recalibration passes its
        number of batches); None lets the layer decide (a cumulative
        `MomentumBatchNormalization` counts them as at least one batch).
        """
        ...

    def affine_parameters(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """`(gamma, beta)` as NumPy copies; None for one the layer does not have."""
        ...

    def inference_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """`(scale, shift)` in float64 with `inference(x) = x * scale + shift` per channel."""
        ...

    def statistic_variables(self) -> dict[str, keras.Variable]:
        """Every state variable worth tracking, by name (gamma, beta, moving statistics...)."""
        ...

    def keras_variables(self) -> dict[str, keras.Variable]:
        """The variables `keras.layers.BatchNormalization` has, by name, in its `weights` order."""
        ...

    def set_keras_variables(self, values: Mapping[str, Any]) -> None:
        """Assign Keras BN's variables from `values` (name -> array); other state restarts."""
        ...

    def last_batch_statistics(self) -> tuple[Any, Any] | None:
        """`(mean, variance)` tensors the last training call used, or None if not kept."""
        ...

    def dropped_options(self, target: type) -> dict[str, Any]:
        """The options (name -> value) a conversion to class `target` would lose."""
        ...


def _assign(variable: keras.Variable, value: Any) -> None:
    dtype = keras.backend.standardize_dtype(variable.dtype)
    variable.assign(np.asarray(value, dtype=dtype))


def checked_statistics(
    layer: keras.layers.Layer, mean: Any, variance: Any
) -> tuple[np.ndarray, np.ndarray]:
    """`mean`, `variance` checked against a built BN layer's moving statistics.

    Raises:
        ValueError: if the layer is not built, or a statistic has the wrong
            shape, a NaN or an infinity (one beyond the variables' float
            range included), or the variance a negative value.
    """
    if not layer.built:
        raise ValueError(
            f"Cannot set the moving statistics (`mean`, `variance`) of layer {layer.name!r}: "
            "it is not built yet. Call it on data or `build(input_shape)` first."
        )
    shape = tuple(int(d) for d in layer.moving_mean.shape)
    dtype = keras.backend.standardize_dtype(layer.moving_mean.dtype)
    mean = check_statistic("mean", mean, shape, variance=False, dtype=dtype)
    variance = check_statistic("variance", variance, shape, variance=True, dtype=dtype)
    return mean, variance


class BatchNormReads:
    """The members of `BatchNormInterface` that read Keras BN's own variables.

    Shared by the Keras adapter and the package's BN layers; `_batchnorm_layer()`
    returns the `keras.layers.BatchNormalization` (or subclass) read. (A method,
    not an attribute: `keras.saving` walks a layer's attributes, and one that
    returns the layer itself would never end.)
    """

    def _batchnorm_layer(self) -> keras.layers.BatchNormalization:
        # The hook each class that mixes this in defines (the adapter returns the layer
        # it wraps, the package's BN layers return themselves); reached only by a class
        # that forgot to.
        raise TypeError(f"{type(self).__name__} must define `_batchnorm_layer()`.")

    @property
    def channel_axis(self) -> int:
        """The feature axis, as the layer was given it (may be negative)."""
        return int(self._batchnorm_layer().axis)

    def moving_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """`(moving_mean, moving_variance)` as NumPy copies."""
        layer = self._batchnorm_layer()
        return to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)

    def affine_parameters(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """`(gamma, beta)` as NumPy copies; None for one the layer does not have."""
        layer = self._batchnorm_layer()
        gamma = to_numpy(layer.gamma) if layer.scale else None
        beta = to_numpy(layer.beta) if layer.center else None
        return gamma, beta

    def inference_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """`(scale, shift)`, float64, with `layer(x, training=False) = x * scale + shift`."""
        return affine_from_statistics(
            *self.moving_statistics(),
            float(self._batchnorm_layer().epsilon),
            *self.affine_parameters(),
        )

    def keras_variables(self) -> dict[str, keras.Variable]:
        """The variables `keras.layers.BatchNormalization` has, by name, in `weights` order."""
        return keras_variables_of(self._batchnorm_layer())

    def training_moments(self, inputs: Any, mask: Any = None) -> tuple[Any, Any]:
        """The `(mean, variance)` a training-mode call on `inputs` would average into the
        moving statistics, per feature, computed without touching any state."""
        rank = len(inputs.shape)
        axes = [i for i in range(rank) if i != self.channel_axis % rank]
        return moments(inputs, axes, mask=mask)


class KerasBatchNorm(BatchNormReads):
    """`BatchNormInterface` for a `keras.layers.BatchNormalization` (or a subclass that
    does not implement the interface itself)."""

    def __init__(self, layer: keras.layers.BatchNormalization) -> None:
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise TypeError(
                "`layer` must be a keras.layers.BatchNormalization, got "
                f"{layer!r} ({type(layer).__name__})."
            )
        self._layer = layer

    def _batchnorm_layer(self) -> keras.layers.BatchNormalization:
        return self._layer

    def __repr__(self) -> str:
        return f"KerasBatchNorm({self._batchnorm_layer().name!r})"

    @property
    def layer(self) -> keras.layers.BatchNormalization:
        """The adapted layer."""
        return self._batchnorm_layer()

    @property
    def epsilon(self) -> float:
        return float(self._batchnorm_layer().epsilon)

    @property
    def training_is_plain(self) -> bool:
        return bool(self._batchnorm_layer().trainable) and not self._batchnorm_layer().renorm

    def set_moving_statistics(self, mean: Any, variance: Any, *, count: int | None = None) -> None:
        """Write `moving_mean`/`moving_variance`; with renorm, `moving_stddev` too.

        Keras's batch renormalization derives `moving_variance` from
        `moving_stddev` at each training step, so `moving_stddev` becomes
        `sqrt(variance + epsilon)`. `count` is accepted for the interface's
        sake and ignored: an exponential average keeps no count.
        """
        del count
        layer = self._layer
        mean, variance = checked_statistics(layer, mean, variance)
        _assign(layer.moving_mean, mean)
        _assign(layer.moving_variance, variance)
        if layer.renorm:
            _assign(layer.moving_stddev, np.sqrt(variance + self.epsilon))

    def statistic_variables(self) -> dict[str, keras.Variable]:
        return self.keras_variables()

    def set_keras_variables(self, values: Mapping[str, Any]) -> None:
        assign_keras_variables(self._batchnorm_layer(), values)

    def last_batch_statistics(self) -> tuple[Any, Any] | None:
        return None

    def dropped_options(self, target: type) -> dict[str, Any]:
        del target  # every option of Keras's BN is an option of its subclasses
        return {}


def keras_variables_of(layer: keras.layers.BatchNormalization) -> dict[str, keras.Variable]:
    """The variables of `layer` that `keras.layers.BatchNormalization` defines, by name,
    in `layer.weights` order."""
    found = {}
    by_id = {}
    for name in KERAS_BN_VARIABLES:
        variable = vars(layer).get(name)
        if isinstance(variable, keras.Variable):
            by_id[id(variable)] = name
    for variable in layer.weights:
        if id(variable) in by_id:
            found[by_id[id(variable)]] = variable
    return found


def assign_keras_variables(
    layer: keras.layers.BatchNormalization, values: Mapping[str, Any]
) -> None:
    """Assign `layer`'s Keras BN variables from `values` (name -> array).

    Every variable the layer has must be given, except the renorm statistics
    (`moving_stddev`, `renorm_mean`, `renorm_stddev`): a missing one starts
    from the moving statistics, as Keras initializes it (stddev =
    sqrt(variance)).

    Raises:
        ValueError: on a missing value or a shape that does not fit.
    """
    variables = keras_variables_of(layer)
    derived = {}
    if "moving_mean" in values and "moving_variance" in values:
        mean = np.asarray(values["moving_mean"], np.float64)
        stddev = np.sqrt(np.asarray(values["moving_variance"], np.float64))
        derived = {"moving_stddev": stddev, "renorm_mean": mean, "renorm_stddev": stddev}
    arrays = {}
    for name, variable in variables.items():
        value = values.get(name, derived.get(name))
        if value is None:
            raise ValueError(
                f"Layer {layer.name!r}: no value given for its variable {name!r}; "
                f"expected values for {list(variables)}."
            )
        if tuple(np.shape(value)) != tuple(variable.shape):
            raise ValueError(
                f"Layer {layer.name!r}: weight {name!r} has shape {tuple(variable.shape)}, "
                f"but the given array has shape {tuple(np.shape(value))}."
            )
        arrays[name] = value
    for name, value in arrays.items():
        _assign(variables[name], value)


def is_batchnorm(layer: Any) -> bool:
    """True for a layer the BN interface covers: Keras's BN (and subclasses) or a layer
    implementing `BatchNormInterface` itself. A wrapper around one is not (see
    `keras_bn_tools.graph` for wrapped BN)."""
    return isinstance(layer, keras.layers.BatchNormalization) or (
        isinstance(layer, keras.layers.Layer) and isinstance(layer, BatchNormInterface)
    )


def as_batchnorm(layer: Any) -> BatchNormInterface:
    """`layer` seen through the BN interface.

    A layer implementing `BatchNormInterface` (e.g. `MomentumBatchNormalization`)
    is returned as is; a `keras.layers.BatchNormalization` gets a `KerasBatchNorm`
    adapter.

    Raises:
        TypeError: if `layer` is not a BN layer.
    """
    if isinstance(layer, keras.layers.Layer) and isinstance(layer, BatchNormInterface):
        return layer
    if isinstance(layer, keras.layers.BatchNormalization):
        return KerasBatchNorm(layer)
    raise TypeError(
        "`layer` must be a batch normalization layer (keras.layers.BatchNormalization, "
        "keras_bn_tools.layers.MomentumBatchNormalization or a layer implementing "
        f"BatchNormInterface), got {layer!r} ({type(layer).__name__})."
    )
