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
    """Saving, loading and `set_weights` of a BN layer whose `weights` leave state out.

    Mixed into a `keras.layers.BatchNormalization` subclass that implements
    `keras_variables()` (the BN interface), `_state_outside_weights()` (the
    variables that are state, not weights, once built), `_state_since_0_1()` (the
    variables added since keras-bn-tools 0.1), `_restart_extra_state()`
    and `_sync_momentum_from_variables()`.

    A layer saves its `weights` only. It loads a store holding its `weights`,
    only Keras BN's variables (the extra state then starts fresh), or every
    variable of the former format (all of the layer's variables, the momentum
    and the last batch's statistics included, as Keras saves a layer by
    default).
    """

    @property
    def weights(self) -> list[Any]:
        """Keras's `weights` without the state that is not a weight."""
        weights = super().weights
        if not self.built:
            return weights
        hidden = {id(variable) for variable in self._state_outside_weights()}
        return [variable for variable in weights if id(variable) not in hidden]

    def _legacy_variables(self) -> list[Any]:
        """Every variable, in the order keras-bn-tools 0.1 saved them (Keras's default)."""
        added = {id(variable) for variable in self._state_since_0_1()}
        variables = self._trainable_variables + self._non_trainable_variables
        return [variable for variable in variables if id(variable) not in added]

    def save_own_variables(self, store: Any) -> None:
        """Save `weights` (the state outside them is transient or in the config)."""
        for index, variable in enumerate(self.weights):
            store[f"{index}"] = variable

    def load_own_variables(self, store: Any) -> None:
        """Load any of the three formats; an empty store (a Keras-BN checkpoint, keyed by
        the other class name) raises an error that says how to load it.

        Raises:
            ValueError: on a store of none of the formats (naming the counts).
        """
        if not self.built:
            super().load_own_variables(store)
            return
        count = len(store.keys())
        own = self.weights
        keras_variables = list(self.keras_variables().values())
        legacy = self._legacy_variables()
        if count == 0 and own:
            raise no_variables_error(self)
        if count == len(keras_variables):
            # Keras BN stores its variables in its `weights` order, which ours keep.
            _assign_all(keras_variables, store)
            self._restart_extra_state()
        elif count == len(own):
            _assign_all(own, store)
        elif count == len(legacy):
            _assign_all(legacy, store)
        else:
            raise ValueError(
                f"Layer {self.name!r} ({type(self).__name__}) expected {len(own)} variables "
                f"(its weights), {len(keras_variables)} (keras.layers.BatchNormalization's) "
                f"or {len(legacy)} (a checkpoint of keras-bn-tools 0.1), but the file holds "
                f"{count}."
            )
        self._sync_momentum_from_variables()

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
        """Set Keras BN's arrays: True if `weights` were those (then set, and the state
        outside them restarted; with default arguments a layer's weights are those)."""
        keras_variables = list(self.keras_variables().values()) if self.built else []
        if self.built and len(weights) == len(keras_variables):
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


def _assign_all(variables: list[Any], store: Any) -> None:
    for index, variable in enumerate(variables):
        variable.assign(store[f"{index}"])
