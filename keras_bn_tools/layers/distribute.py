"""Batch normalization across replicas: what keeps replicas' moving statistics equal.

- `ReplicaMeanState`: a layer mixin whose non-trainable state is averaged across
  `tf.distribute` replicas when each updates it.
- `sync_replica_statistics(model)`: make every replica's copy of a model's
  non-trainable state (BN moving statistics above all) agree before evaluation,
  as timm's `distribute_bn` does for PyTorch.

Under `tf.distribute.MirroredStrategy` with `synchronized=False`, each replica
normalizes its slice of the batch with the slice's statistics.
`MomentumBatchNormalization` averages the replicas' updates of its moving
statistics (its state is `ReplicaMeanState`), so every replica holds the same
values. Keras's `BatchNormalization` lets each replica's copy follow its own
slice, and what is read back (`get_weights`, saving, a single-device
evaluation) is the first replica's: call `sync_replica_statistics(model)`
before evaluating or saving to give every replica their average. On JAX
(`keras.distribution`) and PyTorch a variable has one value: nothing to do.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_bn_tools._validation import check_choice

__all__ = ["ReplicaMeanState", "sync_replica_statistics"]


class ReplicaMeanState:
    """A layer mixin: `add_weight` gives non-trainable state replica aggregation."""

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        """Keras's `add_weight`; non-trainable state is averaged across replicas.

        Under `tf.distribute` without `synchronized=True`, each replica's update
        of a non-trainable variable (Keras's moving statistics included) is
        averaged (`"mean"`, as in tf.keras 2; integers take the first replica's)
        so the replicas' copies stay equal. Outside a strategy nothing changes.
        """
        if not kwargs.get("trainable", True) and kwargs.get("aggregation", "none") == "none":
            dtype = keras.backend.standardize_dtype(kwargs.get("dtype") or self.variable_dtype)
            integer = "int" in dtype
            kwargs["aggregation"] = "only_first_replica" if integer else "mean"
        return super().add_weight(*args, **kwargs)


def sync_replica_statistics(model: keras.layers.Layer, *, reduce: str = "mean") -> int:
    """Give every replica's copy of `model`'s non-trainable state the same value.

    timm's `distribute_bn` for `tf.distribute` (MirroredStrategy and the like):
    for each non-trainable variable whose per-replica copies differ, every copy
    becomes their average (`reduce="mean"`, float variables; integer ones, such
    as counters, take the first replica's) or the first replica's
    (`reduce="first"`). Call it between training and evaluation, outside
    `strategy.run`. Trainable weights are kept equal by the strategy already.

    Args:
        model: a `keras.Model` or layer built under the strategy's scope.
        reduce: `"mean"` or `"first"`.

    Returns:
        How many variables had copies that differed and were synchronized (0
        outside a strategy, and on the JAX and PyTorch backends).

    Raises:
        ValueError: on an unknown `reduce`.
        TypeError: if `model` is not a Keras layer or model.

    Example:

    ```python
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = build_model()  # with keras.layers.BatchNormalization
    model.fit(dataset, epochs=3)
    sync_replica_statistics(model)  # replicas agree: the average of their statistics
    model.evaluate(test_dataset)
    ```
    """
    reduce = check_choice("reduce", reduce, ("mean", "first"))
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"`model` must be a keras.Model or layer, got {model!r} ({type(model).__name__})."
        )
    if keras.backend.backend() != "tensorflow":
        return 0
    changed = 0
    for variable in model.non_trainable_variables:
        # Why `.value`: under a tf.distribute strategy it is the distributed variable,
        # whose `.values` are the per-replica copies (plain TF variables have none).
        copies = getattr(variable.value, "values", None)
        if not copies or len(copies) < 2:
            continue
        arrays = [np.asarray(copy.numpy()) for copy in copies]
        if all(np.array_equal(arrays[0], array) for array in arrays[1:]):
            continue
        target = arrays[0]
        if reduce == "mean" and np.issubdtype(target.dtype, np.floating):
            target = np.mean(np.stack(arrays), axis=0).astype(target.dtype)
        for copy in copies:
            copy.assign(target)
        changed += 1
    return changed
