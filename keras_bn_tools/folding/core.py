"""`fold_batchnorm` and `plan_folding`: folding as a `graph.Policy`."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from keras_bn_tools._keras_compat import functional_graph, is_functional
from keras_bn_tools.folding.analysis import FoldDecision, Graph, Plan, analyse
from keras_bn_tools.folding.weights import folded_weights
from keras_bn_tools.graph import (
    DROP,
    Policy,
    Replacement,
    batchnorm_layers,
    clone_model,
    copy_layer,
)
from keras_bn_tools.layers.channel_affine import ChannelAffine

__all__ = ["fold_batchnorm", "plan_folding"]


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """Return a new inference model with batch normalization folded away.

    Each BN layer is, at inference, the affine map `s * x + t` with
    `s = gamma / sqrt(moving_variance + epsilon)`, `t = beta - moving_mean * s`
    along its axis. It is merged, exactly, into:

    - the preceding `Dense`, `Conv1D`/`Conv2D`/`Conv3D`, `DepthwiseConv1D`/`2D`,
      `SeparableConv1D`/`2D` or `Conv1DTranspose`/`Conv2DTranspose`/
      `Conv3DTranspose` when that layer has a linear activation, feeds only
      this BN and has its output channels on the BN axis (placement
      "before"): `w' = w * s`, `b' = b * s + t`;
    - otherwise the following layer(s) (placement "after"): a `Dense` whose
      input features are the BN axis (`W' = diag(s) W`, `b' = b + W^T t`), or
      a `Conv1D`/`Conv2D`/`Conv3D` with `groups=1` that does no padding
      (`padding="valid"` or a 1x1 kernel). The affine map is carried through
      inference-time identities (dropout, noise), average pooling, max
      pooling when every `s >= 0`, global pooling and `Flatten`.

    A BN that fits neither case (before a padded convolution, before max
    pooling with a negative scale, feeding several kinds of layers or the
    model output, shared by several calls, ...) becomes a `ChannelAffine`
    layer with the same numbers and the BN's name. `plan_folding(model)`
    tells which case applies to each BN, and why neither side works for a
    kept one.

    Nested Sequential and functional models are folded recursively, each on
    its own: a BN is never merged into a layer on the other side of a nested
    model's boundary (a BN that ends a nested model becomes a
    `ChannelAffine`). Subclassed models and other layers are copied from
    their config with their weights, with a warning if a copied subclassed
    model contains BN layers.

    A BN inside `keras.layers.TimeDistributed` becomes a `ChannelAffine` on
    the matching axis of the wrapper's input (exact, not merged further); a
    BN inside any other wrapper raises `ValueError`.

    `keras.layers.BatchNormalization`, its subclasses (such as
    `keras_bn_tools.layers.MomentumBatchNormalization`) and the layers that
    implement the BN interface (such as
    `keras_bn_tools.layers.FrozenBatchNormalization`) are folded; each BN's
    inference output is checked against the affine map read from it, and a
    layer whose inference is not that map raises rather than being folded
    wrongly.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model`.

    Returns:
        A new model of the same kind (Sequential in, Sequential out; functional
        in, functional out) with the same name and input signature, newly
        created layers and weights, for inference only (`training=True` does
        not bring batch statistics back). The input model is left untouched.

    Raises:
        TypeError: if `model` is not a `keras.Model`.
        ValueError: if `model` is not built, is a subclassed model, holds a
            BN layer whose inference output cannot be read from its weights, or
            a BN inside a wrapper other than `TimeDistributed`.

    Warns:
        UserWarning: if `model` has no BN layer (the result is then an
            equivalent copy), or if BN layers sit inside layers that are copied
            as they are.
    """
    _check_model(model)
    if not batchnorm_layers(model):
        warnings.warn(
            f"Model {model.name!r} has no BatchNormalization layer; fold_batchnorm returns an "
            "equivalent copy.",
            UserWarning,
            stacklevel=2,
        )
    return clone_model(model, _FoldPolicy(model, prefix=""))


def plan_folding(model: keras.Model) -> list[FoldDecision]:
    """What `fold_batchnorm(model)` would do with each BN layer call, in call order.

    Nested Sequential and functional models are included (their BN layers are
    named by path). The model is not changed.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model`.

    Returns:
        A list of `FoldDecision`.
    """
    _check_model(model)
    return analyse(Graph(model), prefix="", nested=True).decisions


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"fold_batchnorm expects a keras.Model, got {model!r} ({type(model).__name__})."
        )
    if not is_functional(model):
        raise ValueError(
            f"fold_batchnorm needs a keras.Sequential or functional model; {model.name!r} is a "
            f"subclassed model ({type(model).__name__}) whose layer graph cannot be rewritten."
        )
    if not model.built or functional_graph(model) is None:
        raise ValueError(
            f"Model {model.name!r} is not built, so its BN statistics and layer shapes are "
            "unknown. Start it with keras.Input(shape), call model.build(input_shape) or call "
            "it on data before fold_batchnorm."
        )


class _FoldPolicy(Policy):
    """One model's folding plan as replacements: BN calls dropped or made `ChannelAffine`,
    linear layers given folded weights."""

    def __init__(self, model: keras.Model, prefix: str) -> None:
        self.prefix = prefix
        self.plan: Plan = analyse(Graph(model), prefix)

    def nested(self, model: keras.Model) -> Policy:
        return _FoldPolicy(model, f"{self.prefix}{model.name}/")

    def replace(self, layer: Any) -> Any:
        key, plan = id(layer), self.plan
        if key in plan.drop:
            return DROP
        if key in plan.affine:
            scale, offset, axis = plan.affine[key]
            new = ChannelAffine(axis=axis, name=layer.name, dtype=layer.dtype_policy)
            return Replacement(new, [scale, offset])
        if key in plan.fold_in or key in plan.fold_out:
            config = {**layer.get_config(), "use_bias": True}
            weights = folded_weights(layer, plan.fold_in.get(key), plan.fold_out.get(key))
            return copy_layer(layer, config=config, weights=weights)
        if isinstance(layer, keras.Model) and batchnorm_layers(layer):
            warnings.warn(
                f"{self.prefix}{layer.name!r} is a subclassed model; its BN layers are copied "
                "unfolded.",
                UserWarning,
                stacklevel=6,
            )
        return None
