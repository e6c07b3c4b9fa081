"""Fold batch normalization into adjacent layers for inference.

At inference a batch normalization layer is a fixed per-channel affine map,
`y = s * x + t` with `s = gamma / sqrt(moving_variance + epsilon)` and
`t = beta - moving_mean * s`. `fold_batchnorm` merges that map into the
kernel and bias of a neighbouring `Dense` or convolution layer wherever the
result is exact, and replaces every other BN layer with a
`ChannelAffine` layer holding the same numbers. The folded model never
contains a `BatchNormalization` layer and never computes anything different
from `model(x, training=False)` beyond float32 round-off.

The folded weights are computed in float64 NumPy and cast once to each
layer's variable dtype.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_bn_tools._keras_compat import functional_graph, graph_nodes, is_functional
from keras_bn_tools._model_utils import batchnorm_layers
from keras_bn_tools.layers.channel_affine import ChannelAffine

__all__ = ["ChannelAffine", "FoldDecision", "fold_batchnorm", "plan_folding"]


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldDecision:
    """What `fold_batchnorm` does with one BN layer call.

    Attributes:
        layer: the BN layer's name; for a BN inside a nested model, the path of
            model names, e.g. `"block_1/batch_normalization"`.
        action: `"into_previous"` (merged into the linear layer that feeds it),
            `"into_next"` (merged into the layer(s) it feeds, possibly through
            pooling, dropout or flatten layers) or `"affine"` (kept as a
            `ChannelAffine` layer with the same numbers).
        into: names of the layers that absorbed it (empty for `"affine"`).
        reason: for `"affine"`, why it could not be folded; else empty.
    """

    layer: str
    action: str
    into: tuple[str, ...] = ()
    reason: str = ""


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """Return a new inference model with batch normalization folded away.

    Each BN layer is, at inference, the affine map `s * x + t` with
    `s = gamma / sqrt(moving_variance + epsilon)`, `t = beta - moving_mean * s`
    along its axis. It is merged, exactly, into:

    - the preceding `Dense`, `Conv1D`/`Conv2D`/`Conv3D`, `DepthwiseConv1D`/`2D`
      or `SeparableConv1D`/`2D` when that layer has a linear activation, feeds
      only this BN and has its output channels on the BN axis (placement
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
    tells which case applies to each BN, and why.

    Nested Sequential and functional models are folded recursively, each on
    its own: a BN is never merged into a layer on the other side of a nested
    model's boundary (a BN that ends a nested model becomes a
    `ChannelAffine`). Subclassed models and other layers are copied from
    their config with their weights, with a warning if a copied subclassed
    model contains BN layers.

    A BN inside `keras.layers.TimeDistributed` becomes a `ChannelAffine` on
    the matching axis of the wrapper's input (exact, not merged further); a
    BN inside any other wrapper raises `ValueError`.

    Both `keras.layers.BatchNormalization` and its subclasses (such as
    `keras_bn_tools.layers.MomentumBatchNormalization`) are folded; each BN's
    inference output is checked against the affine map read from its weights,
    and a layer whose inference is not that map raises rather than being
    folded wrongly.

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
    return _fold_model(model, prefix="")


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
    return _analyse(_Graph(model), prefix="", nested=True).decisions


# --------------------------------------------------------------------------------------
# Model checks and the graph view
# --------------------------------------------------------------------------------------

# A BN folds into these from either side ...
_LINEAR_TYPES = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
# ... and into these only when it follows them (their output channels are plain).
_DEPTHWISE_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_TYPES = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
# Identities at inference: a per-channel affine map passes through unchanged.
_INFERENCE_IDENTITIES = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.Identity,
)
_MAX_POOLS = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
# Average pooling weights sum to one (padded positions are not counted), so an
# affine map commutes with it whatever the sign of the scale.
_AVG_POOLS = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
_GLOBAL_MAX_POOLS = (
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_GLOBAL_AVG_POOLS = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)


def _is_graph_model(layer: Any) -> bool:
    return is_functional(layer)


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"fold_batchnorm expects a keras.Model, got {model!r} ({type(model).__name__})."
        )
    if not _is_graph_model(model):
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


class _Graph:
    """The call graph of a Sequential or functional model, in execution order."""

    def __init__(self, model: keras.Model) -> None:
        # A built Sequential keeps the functional graph of its layers (checked by _check_model).
        functional = functional_graph(model)
        self.nodes: list[Any] = graph_nodes(functional)
        self.producer: dict[int, Any] = {}
        self.consumers: dict[int, list[Any]] = defaultdict(list)
        for node in self.nodes:
            for tensor in node.outputs:
                self.producer[id(tensor)] = node
            for tensor in node.input_tensors:
                self.consumers[id(tensor)].append(node)
        self.calls = Counter(id(node.operation) for node in self.nodes)
        self.output_ids = {id(tensor) for tensor in functional.outputs}


# --------------------------------------------------------------------------------------
# Analysis: what happens to each BN
# --------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A per-channel affine map `s * x + t` along `axis` of a tensor of `shape`."""

    scale: np.ndarray
    offset: np.ndarray
    axis: int
    shape: tuple[int | None, ...]


@dataclass
class _Plan:
    drop: set[int]  # ids of BN layers removed (folded)
    affine: dict[int, tuple[np.ndarray, np.ndarray, int]]  # BN layer id -> (scale, offset, axis)
    fold_in: dict[int, tuple[np.ndarray, np.ndarray]]  # target id -> input-side (s, t)
    fold_out: dict[int, tuple[np.ndarray, np.ndarray]]  # target id -> output-side (s, t)
    decisions: list[FoldDecision]


def _channel_axis(layer: keras.layers.Layer, rank: int) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _is_plain(layer: keras.layers.Layer) -> bool:
    """A Dense/convolution layer whose call is exactly `activation(linear(x) + bias)`."""
    return (
        type(layer) in _LINEAR_TYPES + _DEPTHWISE_TYPES + _SEPARABLE_TYPES
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
    )


def _is_linear_activation(layer: keras.layers.Layer) -> bool:
    return layer.activation is keras.activations.linear  # also what activation=None gives


def _to_numpy(value: Any) -> np.ndarray:
    # Through a tensor copy: NumPy's conversion of a variable warns on TF and on JAX.
    return ops.convert_to_numpy(ops.copy(value))


def _to_numpy64(value: Any) -> np.ndarray:
    return np.asarray(_to_numpy(value), dtype=np.float64)


def _bn_affine(layer: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """`(s, t)` in float64 with `BN(x) == s * x + t` at inference."""
    mean = _to_numpy64(layer.moving_mean)
    variance = _to_numpy64(layer.moving_variance)
    gamma = _to_numpy64(layer.gamma) if layer.scale else np.ones_like(mean)
    beta = _to_numpy64(layer.beta) if layer.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + float(layer.epsilon))
    return scale, beta - mean * scale


def _check_bn_affine(
    layer: keras.layers.BatchNormalization,
    scale: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int | None, ...],
    axis: int,
) -> None:
    """Raise if the layer's inference output on a probe is not `scale * x + offset`."""
    # BN acts per channel, so one position per channel is enough: rows of zeros and ones.
    broadcast = [1] * len(shape)
    broadcast[axis] = -1
    probe_shape = [1] * len(shape)
    probe_shape[0], probe_shape[axis] = 2, len(scale)
    probe = np.zeros(probe_shape, dtype="float32")
    probe[1] = 1.0
    got = _to_numpy64(layer(probe, training=False))
    s, t = scale.reshape(broadcast), offset.reshape(broadcast)
    eps = float(np.finfo(keras.backend.standardize_dtype(layer.compute_dtype)).eps)
    tolerance = max(1e-5, 10 * eps) * (np.abs(probe * s) + np.abs(t) + 1.0)
    if not np.all(np.abs(got - (probe * s + t)) <= tolerance):
        raise ValueError(
            f"Cannot fold {layer.name!r} ({type(layer).__name__}): its inference output is not "
            "gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta as read from its "
            "weights, so folding it would change the model."
        )


def _fold_in_reason(layer: keras.layers.Layer, graph: _Graph, pending: _Pending) -> str | None:
    """None if `pending` (on the layer's input) can be merged into `layer`, else why not."""
    rank = len(pending.shape)
    name = f"{layer.name!r} ({type(layer).__name__})"
    if graph.calls[id(layer)] > 1:
        return f"{name} is called more than once"
    if type(layer) not in _LINEAR_TYPES:
        return f"{name} absorbs a BN only on its output side"
    if isinstance(layer, keras.layers.Dense):
        if pending.axis != rank - 1:
            return f"{name} contracts the last axis, not the BN axis {pending.axis}"
        return None
    if _channel_axis(layer, rank) != pending.axis:
        return f"{name} has its channels on another axis than the BN axis {pending.axis}"
    if layer.groups != 1:
        return f"{name} is a grouped convolution"
    if layer.padding != "valid" and any(k != 1 for k in layer.kernel_size):
        return f"{name} pads its input (padding={layer.padding!r})"
    return None


def _push(
    tensor: Any, pending: _Pending, graph: _Graph
) -> tuple[list[tuple[keras.layers.Layer, _Pending]] | None, str]:
    """Carry `pending` forward from `tensor` to layers that can absorb it.

    Returns `(targets, "")` with each absorbing layer and the map it receives,
    or `(None, reason)`.
    """
    if id(tensor) in graph.output_ids:
        return None, "its output is a model output"
    consumers = graph.consumers[id(tensor)]
    if not consumers:
        return None, "its output is not used"
    targets: list[tuple[keras.layers.Layer, _Pending]] = []
    for node in consumers:
        layer = node.operation
        several = len(node.input_tensors) != 1 or len(node.outputs) != 1
        if _is_plain(layer):
            reason = _fold_in_reason(layer, graph, pending)
            if reason is None and several:
                reason = f"{layer.name!r} ({type(layer).__name__}) is called on several tensors"
            if reason is not None:
                return None, reason
            targets.append((layer, pending))
            continue
        moved, reason = _through(layer, pending, node.outputs[0].shape)
        if moved is not None and several:
            moved, reason = (
                None,
                f"{layer.name!r} ({type(layer).__name__}) is called on several tensors",
            )
        if moved is None:
            return None, reason
        found, reason = _push(node.outputs[0], moved, graph)
        if found is None:
            return None, reason
        targets.extend(found)
    return targets, ""


def _through(
    layer: keras.layers.Layer, pending: _Pending, out_shape: tuple[int | None, ...]
) -> tuple[_Pending | None, str]:
    """The map on `layer`'s output equivalent to `pending` on its input, or why none is."""
    kind = type(layer)
    name = f"{layer.name!r} ({kind.__name__})"
    rank = len(pending.shape)
    out_shape = tuple(out_shape)
    if kind in _INFERENCE_IDENTITIES:
        return _Pending(pending.scale, pending.offset, pending.axis, out_shape), ""
    pools = _MAX_POOLS + _AVG_POOLS + _GLOBAL_MAX_POOLS + _GLOBAL_AVG_POOLS
    if kind in pools:
        if _channel_axis(layer, rank) != pending.axis:
            return None, f"{name} pools along the BN axis {pending.axis}"
        if kind in _MAX_POOLS + _GLOBAL_MAX_POOLS and np.any(pending.scale < 0):
            return None, f"{name} is a max pooling and the BN has a negative scale"
        axis = pending.axis if len(out_shape) == rank else len(out_shape) - 1
        return _Pending(pending.scale, pending.offset, axis, out_shape), ""
    if kind is keras.layers.Flatten:
        features = pending.shape[1:]
        if any(d is None for d in features):
            return None, f"{name} flattens a tensor of unknown shape {pending.shape}"
        broadcast = [1] * len(features)
        broadcast[pending.axis - 1] = -1

        def flat(vector: np.ndarray) -> np.ndarray:
            full = np.broadcast_to(vector.reshape(broadcast), features)
            if layer.data_format == "channels_first" and full.ndim > 1:
                full = np.moveaxis(full, 0, -1)
            return np.ascontiguousarray(full).reshape(-1)

        return _Pending(flat(pending.scale), flat(pending.offset), 1, out_shape), ""
    return None, f"it feeds {name}, which the BN map cannot be moved through"


def _analyse(graph: _Graph, prefix: str, nested: bool = False) -> _Plan:
    plan = _Plan(drop=set(), affine={}, fold_in={}, fold_out={}, decisions=[])
    for node in graph.nodes:
        layer = node.operation
        if nested and _is_graph_model(layer):
            plan.decisions.extend(
                _analyse(_Graph(layer), f"{prefix}{layer.name}/", nested=True).decisions
            )
            continue
        if _wrapped_batchnorm(layer) is not None:
            _plan_wrapped(layer, node, plan, prefix)
            continue
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        name = prefix + layer.name
        # The input comes first; a second tensor can only be a mask, which BN ignores at
        # inference (it only restricts the batch moments in training).
        x = node.input_tensors[0]
        shape = tuple(x.shape)
        axis = layer.axis % len(shape)
        scale, offset = _bn_affine(layer)
        _check_bn_affine(layer, scale, offset, shape, axis)

        if graph.calls[id(layer)] > 1:
            reason = "the BN layer is called more than once"
        else:
            reason = ""
            producer = graph.producer.get(id(x))
            if (
                producer is not None
                and _is_plain(producer.operation)
                and _is_linear_activation(producer.operation)
                and graph.calls[id(producer.operation)] == 1
                and len(graph.consumers[id(x)]) == 1
                and id(x) not in graph.output_ids
                and _channel_axis(producer.operation, len(shape)) == axis
            ):
                target = producer.operation
                plan.fold_out[id(target)] = (scale, offset)
                plan.drop.add(id(layer))
                plan.decisions.append(FoldDecision(name, "into_previous", (prefix + target.name,)))
                continue
            targets, reason = _push(node.outputs[0], _Pending(scale, offset, axis, shape), graph)
            if targets is not None:
                for target, pending in targets:
                    plan.fold_in[id(target)] = (pending.scale, pending.offset)
                plan.drop.add(id(layer))
                into = tuple(prefix + target.name for target, _ in targets)
                plan.decisions.append(FoldDecision(name, "into_next", into))
                continue
        plan.affine[id(layer)] = (scale, offset, axis)
        plan.decisions.append(FoldDecision(name, "affine", (), reason))
    return plan


def _wrapped_batchnorm(layer: Any) -> keras.layers.BatchNormalization | None:
    """The BN layer inside a wrapper such as `TimeDistributed(BatchNormalization())`."""
    if isinstance(layer, keras.layers.Wrapper) and isinstance(
        layer.layer, keras.layers.BatchNormalization
    ):
        return layer.layer
    return None


def _plan_wrapped(wrapper: keras.layers.Wrapper, node: Any, plan: _Plan, prefix: str) -> None:
    """A `TimeDistributed` BN becomes a `ChannelAffine` on the same axis of the outer tensor.

    At inference `TimeDistributed` applies the BN's affine map at every time step, which is
    the same map on the outer tensor, one axis further right. It is not merged into a
    neighbour (kept simple and exact); other wrappers have no known equivalent and raise.
    """
    bn = _wrapped_batchnorm(wrapper)
    name = f"{prefix}{wrapper.name}/{bn.name}"
    if not isinstance(wrapper, keras.layers.TimeDistributed):
        raise ValueError(
            f"Cannot fold {name!r}: a BN layer inside a {type(wrapper).__name__} wrapper has "
            "no known equivalent affine layer. fold_batchnorm handles BN inside "
            "keras.layers.TimeDistributed; move the BN out of the wrapper (or fold the model "
            "by hand)."
        )
    outer_shape = tuple(node.input_tensors[0].shape)
    inner_shape = (outer_shape[0], *outer_shape[2:])
    inner_axis = bn.axis % len(inner_shape)
    scale, offset = _bn_affine(bn)
    _check_bn_affine(bn, scale, offset, inner_shape, inner_axis)
    outer_axis = inner_axis + 1 if inner_axis > 0 else None
    if outer_axis is None:
        raise ValueError(
            f"Cannot fold {name!r}: its BN normalizes axis 0 of each time step, the batch "
            "axis, which has no fixed size."
        )
    plan.affine[id(wrapper)] = (scale, offset, outer_axis)
    reason = f"the BN is wrapped in {type(wrapper).__name__} {wrapper.name!r}"
    plan.decisions.append(FoldDecision(name, "affine", (), reason))


# --------------------------------------------------------------------------------------
# Rewriting
# --------------------------------------------------------------------------------------


class _Drop:
    """Marks a BN call that disappears: its output is its input."""


def _folded_weights(
    layer: keras.layers.Layer,
    fold_in: tuple[np.ndarray, np.ndarray] | None,
    fold_out: tuple[np.ndarray, np.ndarray] | None,
) -> list[np.ndarray]:
    """The weights of `layer` with the input-side and output-side maps merged in.

    `fold_in` only for Dense/Conv layers; a separable convolution's map goes into
    its pointwise kernel, a depthwise convolution's into its (in, multiplier) pairs.
    """
    separable = type(layer) in _SEPARABLE_TYPES
    kernel = _to_numpy64(layer.pointwise_kernel if separable else layer.kernel)
    # kernel: (in, out) for Dense, (*window, in, out) for a convolution, (*window, in,
    # multiplier) for a depthwise one, whose output channel c * multiplier + m.
    depthwise = type(layer) in _DEPTHWISE_TYPES
    channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    bias = _to_numpy64(layer.bias) if layer.use_bias else np.zeros(channels)
    if fold_in is not None:
        scale, offset = fold_in
        shifted = np.tensordot(kernel, offset, axes=([kernel.ndim - 2], [0]))
        bias = bias + shifted.reshape(-1, kernel.shape[-1]).sum(axis=0)
        kernel = kernel * scale[:, None]
    if fold_out is not None:
        scale, offset = fold_out
        kernel = kernel * scale.reshape(kernel.shape[-2:] if depthwise else (-1,))
        bias = bias * scale + offset
    if separable:
        return [_to_numpy64(layer.depthwise_kernel), kernel, bias]
    return [kernel, bias]


def _copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as error:
        raise ValueError(
            f"Cannot copy layer {layer.name!r} ({type(layer).__name__}) from its config "
            f"({error}); give it a complete get_config()."
        ) from error


def _warn_opaque(layer: keras.layers.Layer, prefix: str) -> None:
    if isinstance(layer, keras.Model) and batchnorm_layers(layer):
        warnings.warn(
            f"{prefix}{layer.name!r} is a subclassed model; its BN layers are copied unfolded.",
            UserWarning,
            stacklevel=4,
        )


def _fold_model(model: keras.Model, prefix: str) -> keras.Model:
    graph = _Graph(model)
    plan = _analyse(graph, prefix)
    new_layers: dict[int, Any] = {}
    weights: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []

    def replacement(layer: keras.layers.Layer) -> Any:
        key = id(layer)
        if key in new_layers:
            return new_layers[key]
        if key in plan.drop:
            new: Any = _Drop()
        elif key in plan.affine:
            scale, offset, axis = plan.affine[key]
            new = ChannelAffine(axis=axis, name=layer.name, dtype=layer.dtype_policy)
            weights.append((new, [scale, offset]))
        elif _is_graph_model(layer):
            new = _fold_model(layer, f"{prefix}{layer.name}/")
        elif key in plan.fold_in or key in plan.fold_out:
            config = layer.get_config()
            config["use_bias"] = True
            new = layer.__class__.from_config(config)
            folded = _folded_weights(layer, plan.fold_in.get(key), plan.fold_out.get(key))
            weights.append((new, folded))
        else:
            _warn_opaque(layer, prefix)
            new = _copy_layer(layer)
            if isinstance(layer, keras.layers.Layer):  # not a bare op such as keras.ops.add
                weights.append((new, [_to_numpy(w) for w in layer.weights]))
        new_layers[key] = new
        return new

    if isinstance(model, keras.Sequential):
        source = model.inputs[0]
        layers = [replacement(layer) for layer in model.layers]
        new_model: keras.Model = keras.Sequential(
            [
                keras.Input(batch_shape=source.shape, dtype=source.dtype, name=source.name),
                *(layer for layer in layers if not isinstance(layer, _Drop)),
            ],
            name=model.name,
            trainable=model.trainable,
        )
    else:

        def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(layer, _Drop):
                # The BN's single input tensor (checked by the analysis) passes through.
                return next(
                    value
                    for value in keras.tree.flatten((args, kwargs))
                    if isinstance(value, keras.KerasTensor)
                )
            return layer(*args, **kwargs)

        new_model = keras.models.clone_model(model, clone_function=replacement, call_function=call)
        new_model.trainable = model.trainable

    for new, values in weights:
        new.set_weights(
            [np.asarray(v).astype(w.dtype) for v, w in zip(values, new.weights, strict=True)]
        )
    return new_model
