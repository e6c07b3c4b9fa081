"""Checkpoint compatibility of `MomentumBatchNormalization` with Keras's BN.

A layer takes its own weights, or only those `keras.layers.BatchNormalization`
has (gamma, beta, moving statistics and renorm statistics, in Keras's order),
from `set_weights` and from a weights store; the extra state then starts
fresh, as PyTorch's BN does for checkpoints without `num_batches_tracked`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KerasCheckpointCompatibility", "no_variables_error"]


def no_variables_error(layer: Any) -> ValueError:
    return ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) found none of its variables in "
        "the weights file. Keras keys `.weights.h5` entries by layer class, so "
        "weights saved from a model with keras.layers.BatchNormalization cannot be "
        "loaded straight into one with MomentumBatchNormalization. Load them into the "
        "Keras-BN architecture, then convert: `model.load_weights(path); model = "
        "keras_bn_tools.convert_batchnorm(model)` (and convert back with "
        "`convert_batchnorm(model, to=keras.layers.BatchNormalization)` before saving "
        "weights for Keras-BN users)."
    )


class KerasCheckpointCompatibility:
    """`load_own_variables` and `set_weights` that also take Keras BN's variables.

    Mixed into a `keras.layers.BatchNormalization` subclass that implements
    `keras_variables()` (the BN interface), `_restart_extra_state()` and
    `_sync_momentum_from_variables()`.
    """

    def load_own_variables(self, store: Any) -> None:
        """Keras's loading, plus: a store holding only Keras BN's variables loads them
        with fresh extra state, and an empty store (a Keras-BN checkpoint, keyed by the
        other class name) raises an error that says how to load it."""
        if not (self.built and self._load_keras_store(store)):
            super().load_own_variables(store)
        if self.built:
            self._sync_momentum_from_variables()

    def _load_keras_store(self, store: Any) -> bool:
        """Load a store holding only Keras BN's variables: True if it was one."""
        keras_variables = list(self.keras_variables().values())
        count = len(store.keys())
        if count == 0 and self.weights:
            raise no_variables_error(self)
        if count == len(keras_variables) < len(self.weights):
            # Keras BN stores its variables in its `weights` order, which ours keep.
            for index, variable in enumerate(keras_variables):
                variable.assign(store[f"{index}"])
            self._restart_extra_state()
            return True
        return False

    def set_weights(self, weights: Any) -> None:
        """Set the layer's weights: all of them (`get_weights()` of this class), or
        only Keras BN's (`keras.layers.BatchNormalization.get_weights()` of a layer
        with the same `center`, `scale` and `renorm`), the extra state then fresh."""
        weights = list(weights)
        if not self._set_keras_weights(weights):
            super().set_weights(weights)
        if self.built:
            self._sync_momentum_from_variables()

    def _set_keras_weights(self, weights: list[Any]) -> bool:
        """Set Keras BN's arrays: True if `weights` were those (then set)."""
        keras_variables = list(self.keras_variables().values()) if self.built else []
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
            return True
        if self.built and len(weights) != len(self.weights):
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}) takes either all its "
                f"{len(self.weights)} weights (`get_weights()` of this class) or the "
                f"{len(keras_variables)} of keras.layers.BatchNormalization (gamma, beta, "
                f"moving_mean, moving_variance, as enabled by `scale`, `center`, "
                f"`renorm`), got a list of {len(weights)} arrays."
            )
        return False
