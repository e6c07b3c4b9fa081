"""`BatchNormInterface` as `MomentumBatchNormalization` implements it (a mixin)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_bn_tools.layers._options import dropped_options
from keras_bn_tools.layers.interface import BatchNormReads, assign_keras_variables
from keras_bn_tools.ops import ghost_moments

__all__ = ["MomentumInterface"]


class MomentumInterface(BatchNormReads):
    """The interface members that know `MomentumBatchNormalization`'s options and extra
    state (ghost batches, renorm, the last batch's statistics, the counter)."""

    def _batchnorm_layer(self) -> keras.layers.BatchNormalization:
        return self

    @property
    def training_is_plain(self) -> bool:
        """True when a training-mode call is plain BN with the batch's moments."""
        return bool(self.trainable) and not self.renorm and self.virtual_batch_size is None

    def training_moments(self, inputs: Any, mask: Any = None) -> tuple[Any, Any]:
        """The per-feature `(mean, variance)` a training call on `inputs` averages into the
        moving statistics (with ghost batches, the pooled group statistics)."""
        if self.virtual_batch_size is None:
            return super().training_moments(inputs, mask)
        stats = ghost_moments(inputs, self.virtual_batch_size, axis=self.axis, mask=mask)
        return stats.mean, stats.variance

    def statistic_variables(self) -> dict[str, keras.Variable]:
        """Every state variable worth tracking, by name."""
        found = self.keras_variables()
        if self.built:
            found["batch_mean"] = self.batch_mean
            found["batch_variance"] = self.batch_variance
            found["num_batches_tracked"] = self.num_batches_tracked
        return found

    def set_keras_variables(self, values: Mapping[str, Any]) -> None:
        """Assign Keras BN's variables (name -> array); the extra state starts fresh."""
        self._check_attached("the moving statistics")
        assign_keras_variables(self, values)
        self._restart_extra_state()
        self._sync_momentum_from_variables()

    def last_batch_statistics(self) -> tuple[Any, Any] | None:
        """Copies of `(batch_mean, batch_variance)` (None before the layer is built)."""
        if not self.built:
            return None
        return ops.copy(self.batch_mean.value), ops.copy(self.batch_variance.value)

    def dropped_options(self, target: type) -> dict[str, Any]:
        """The options (name -> value) that BN class `target` cannot represent (debias,
        ghost batches, renorm where it has no such argument; `momentum=None`)."""
        return dropped_options(self, target, MomentumInterface)
