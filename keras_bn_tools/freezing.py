"""Freeze the batch normalization of an existing model, and unfreeze it again.

Fine-tuning a pretrained network on a small dataset usually keeps its BN statistics: small
batches of a new distribution give poor statistics, and a BN layer that normalizes with them
in training but with the old moving statistics in inference makes the two modes disagree.
PyTorch users have `timm.utils.freeze_batch_norm_2d` and detectron2's
`FrozenBatchNorm2d.convert_frozen_batchnorm`; `freeze_batchnorm` is the Keras equivalent:
every BN layer becomes a `layers.FrozenBatchNormalization`, the fixed inference map of that
layer, whose gamma and beta may still train (`train_affine=True`, the detection and
segmentation recipe). `unfreeze_batchnorm` reverses it.

Both are replacement policies of `keras_bn_tools.graph.clone_model`, so they reach BN layers
in nested models and inside wrappers (`TimeDistributed`), keep every other layer's weights and
the compile config, and leave the input model untouched.
"""

from __future__ import annotations

import warnings

import keras

from keras_bn_tools._validation import check_bool
from keras_bn_tools.graph import (
    BatchNormPolicy,
    batchnorm_layers,
    check_graph_model,
    clone_model,
)
from keras_bn_tools.layers import FrozenBatchNormalization

__all__ = ["freeze_batchnorm", "unfreeze_batchnorm"]


def freeze_batchnorm(model: keras.Model, *, train_affine: bool = False) -> keras.Model:
    """A copy of `model` whose every BN layer is a `FrozenBatchNormalization`.

    Each BN layer (`keras.layers.BatchNormalization`, `MomentumBatchNormalization`, one
    already frozen; in nested models and wrappers too) becomes the fixed inference map of
    that layer, with its name, axis, epsilon, dtype policy, gamma, beta and moving
    statistics. The copy's outputs are bit-identical to `model(x, training=False)`, in
    inference and in training mode; no fit or call updates its statistics. Other layers
    are copied with their weights and `trainable` flags.

    Args:
        model: a `keras.Sequential` or functional `keras.Model`.
        train_affine: keep gamma and beta trainable (frozen statistics, trainable affine);
            by default the frozen layers have no trainable weight.

    Returns:
        The new model, of the same kind, name and compile config.

    Raises:
        TypeError: if `model` is not a Sequential or functional model, or `train_affine`
            is not a bool.

    Warns:
        UserWarning: if `model` has no BN layer; the result is then an equivalent copy (as
            `convert_batchnorm` does), so a pipeline that freezes whatever model it gets
            keeps working.

    Example:

    ```python
    import keras
    from keras_bn_tools import freeze_batchnorm

    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=3)
    model = freeze_batchnorm(base, train_affine=True)
    model.compile("adam", "sparse_categorical_crossentropy")  # fine-tune: statistics fixed
    ```
    """
    train_affine = check_bool("train_affine", train_affine)
    check_graph_model(model)
    _warn_without(model, "freeze_batchnorm", "BatchNormalization", batchnorm_layers(model))

    def freeze(bn: keras.layers.Layer) -> FrozenBatchNormalization:
        return FrozenBatchNormalization.from_batchnorm(bn, train_affine=train_affine)

    return clone_model(model, BatchNormPolicy(freeze))


def unfreeze_batchnorm(
    model: keras.Model, to: type[keras.layers.Layer] = keras.layers.BatchNormalization
) -> keras.Model:
    """A copy of `model` whose every `FrozenBatchNormalization` is a trainable BN of class `to`.

    The new layers have the frozen layers' names, axes, epsilons, gamma, beta and moving
    statistics, so the copy's inference outputs are bit-identical to `model`'s; `to`'s
    training options (`momentum`, ...) take their defaults. Other BN layers and every other
    layer are copied unchanged.

    Args:
        model: a `keras.Sequential` or functional `keras.Model`.
        to: `keras.layers.BatchNormalization` (default), `MomentumBatchNormalization` or
            another subclass of `keras.layers.BatchNormalization`.

    Returns:
        The new model, of the same kind, name and compile config.

    Raises:
        TypeError: if `model` is not a Sequential or functional model, or `to` is not a
            subclass of `keras.layers.BatchNormalization`.

    Warns:
        UserWarning: if `model` has no `FrozenBatchNormalization` (an equivalent copy).
    """
    if not (isinstance(to, type) and issubclass(to, keras.layers.BatchNormalization)):
        raise TypeError(
            "`to` must be keras.layers.BatchNormalization or a subclass of it (e.g. "
            f"keras_bn_tools.layers.MomentumBatchNormalization), got {to!r}."
        )
    check_graph_model(model)
    frozen = [layer for layer in batchnorm_layers(model) if _is_frozen(layer)]
    _warn_without(model, "unfreeze_batchnorm", "FrozenBatchNormalization", frozen)

    def unfreeze(bn: keras.layers.Layer) -> keras.layers.Layer | None:
        return bn.to_batchnorm(to) if _is_frozen(bn) else None

    return clone_model(model, BatchNormPolicy(unfreeze))


def _is_frozen(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, FrozenBatchNormalization)


def _warn_without(model: keras.Model, function: str, kind: str, found: list) -> None:
    if not found:
        warnings.warn(
            f"Model {model.name!r} has no {kind} layer; {function} returns an equivalent copy.",
            UserWarning,
            stacklevel=3,
        )
